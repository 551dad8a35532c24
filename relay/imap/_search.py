"""SEARCH evaluation (RFC 3501 §6.4.4) over one message at a time.

What must stay true: a message's body is decrypted (in memory) only when a
key needs it (BODY, TEXT), and its cached structure only when a header key
does; flag, date, size, UID and sequence keys read the index alone.
Strings match case-insensitively as substrings of the decoded text
(RFC 3501 §6.4.4), encoded-words (RFC 2047) decoded in headers.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass, field
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser, BytesParser
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import date

    from mssante.proto import imap
    from relay.store import MessageInfo, ParsedStructure

# compat32 builds plain strings; policy.default builds a header object per
# field (about 1.5 ms a message), which SEARCH over a folder cannot afford.
# Encoded-words are decoded only where a value holds one.
_POLICY = email.policy.compat32


def _decoded(value: str) -> str:
    """RFC 2047 encoded-words decoded; the raw value when it has none."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


@dataclass(slots=True)
class Candidate:
    """One message as SEARCH sees it; structure and body load lazily."""

    seq: int
    info: MessageInfo
    largest_seq: int
    largest_uid: int
    recent: bool
    load_structure: Callable[[], ParsedStructure]
    load_message: Callable[[], bytes]
    _headers: dict[str, list[str]] | None = field(default=None)
    _text: str | None = field(default=None)
    _body_text: str | None = field(default=None)
    _sent: date | None = field(default=None)

    def headers(self) -> dict[str, list[str]]:
        if self._headers is None:
            parsed = BytesHeaderParser(policy=_POLICY).parsebytes(
                self.load_structure().header
            )
            out: dict[str, list[str]] = {}
            for name, value in parsed.items():
                out.setdefault(name.upper(), []).append(_decoded(str(value)))
            self._headers = out
        return self._headers

    def sent(self) -> date | None:
        if self._sent is None:
            values = self.headers().get("DATE")
            if values:
                try:
                    self._sent = parsedate_to_datetime(values[0]).date()
                except (TypeError, ValueError):
                    return None
        return self._sent

    def body_text(self) -> str:
        if self._body_text is None:
            message = BytesParser(policy=_POLICY).parsebytes(self.load_message())
            texts = []
            for part in message.walk():
                if part.get_content_maintype() == "multipart":
                    continue
                payload = part.get_payload(decode=True)
                if not isinstance(payload, bytes):
                    continue
                charset = part.get_content_charset() or "utf-8"
                try:
                    texts.append(payload.decode(charset, "replace"))
                except LookupError:
                    texts.append(payload.decode("utf-8", "replace"))
            self._body_text = "\n".join(texts).casefold()
        return self._body_text


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace").casefold()


def matches(key: imap.SearchKey, c: Candidate) -> bool:
    op = key.op
    if op == "ALL":
        return True
    if op == "AND":
        return all(matches(k, c) for k in key.keys)
    if op == "OR":
        return matches(key.keys[0], c) or matches(key.keys[1], c)
    if op == "NOT":
        return not matches(key.keys[0], c)
    if op == "FLAG":
        wanted = key.text.casefold()
        return any(f.casefold() == wanted for f in c.info.flags)
    if op == "RECENT":
        return c.recent
    if op in ("LARGER", "SMALLER"):
        return c.info.size > key.number if op == "LARGER" else c.info.size < key.number
    if op == "UID":
        assert key.set is not None  # noqa: S101 - the parser sets it
        return key.set.contains(c.info.uid, c.largest_uid)
    if op == "SEQ":
        assert key.set is not None  # noqa: S101
        return key.set.contains(c.seq, c.largest_seq)
    if op in ("BEFORE", "ON", "SINCE"):
        # RFC 3501 §6.4.4: the internal date, disregarding time and zone.
        return _compare(op, c.info.internal_date.date(), key.day)
    if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        sent = c.sent()
        return sent is not None and _compare(op.removeprefix("SENT"), sent, key.day)
    if op == "HEADER":
        needle = _text(key.value)
        values = c.headers().get(key.field, [])
        # RFC 3501 §6.4.4: HEADER with an empty string matches any message
        # that has the field.
        return any(needle in v.casefold() for v in values)
    if op == "BODY":
        return _text(key.value) in c.body_text()
    if op == "TEXT":
        needle = _text(key.value)
        header_text = "\n".join(
            f"{k}: {v}" for k, vs in c.headers().items() for v in vs
        ).casefold()
        return needle in header_text or needle in c.body_text()
    raise ValueError(f"unknown search op {op!r}")  # a bug in the parser


def _compare(op: str, day: date, bound: date | None) -> bool:
    if bound is None:
        return False
    if op == "BEFORE":
        return day < bound
    if op == "ON":
        return day == bound
    return day >= bound
