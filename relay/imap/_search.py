"""SEARCH evaluation (RFC 3501 §6.4.4) over a selected folder's messages.

Owns: the searchable form of a message (:class:`SearchDoc`, its headers
decoded; :func:`body_text`, its text parts decoded) and the evaluation of a
parsed key over a list of UIDs (:func:`evaluate`), each key filtering what
the keys before it kept.

What must stay true:

- Pure: no I/O. The caller (``commands.cmd_search``) loads what
  :func:`needs` names, in one worker-thread call per command, from the
  session's cache (``relay/imap/_session.py``) or the store.
- Flag, date, size, UID and sequence keys read the index data alone; header
  keys the cached structure's header; BODY and TEXT the decrypted message,
  which never leaves memory.
- Strings match case-insensitively as substrings (RFC 3501 §6.4.4), of the
  header values with RFC 2047 encoded-words decoded and of the text parts
  (``text/*`` and ``message/*`` leaves) with their transfer encoding and
  charset decoded. Attachments (other media types) are not searched, as
  Dovecot does without a full-text index.
"""

from __future__ import annotations

import binascii
import contextlib
import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from datetime import date, datetime

    from mssante.proto import imap
    from relay.store import BodyPart, ParsedStructure

# RFC 5322 §2.2: a field ends at a line break not followed by WSP.
_FIELD_SPLIT: Final = re.compile(r"\r?\n(?![ \t])")
# RFC 5322 §2.2.3: unfolding removes the CRLF before WSP.
_UNFOLD: Final = re.compile(r"\r?\n(?=[ \t])")
# RFC 3501 §2.3.2: system flags are stored canonical; keywords keep the
# first spelling and compare case-insensitively.
_SYSTEM_FLAGS: Final = {
    f.casefold(): f
    for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
}


def _decoded(value: str) -> str:
    """RFC 2047 encoded-words decoded; the raw value when it has none."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


@dataclass(frozen=True, slots=True)
class SearchDoc:
    """The header of one message as SEARCH reads it.

    ``fields`` maps an upper-case field name to its values, decoded and
    case-folded; ``text`` is every field as ``name: value`` lines, for TEXT.
    """

    fields: dict[str, tuple[str, ...]]
    text: str
    sent: date | None

    @classmethod
    def of(cls, header: bytes) -> SearchDoc:
        fields: dict[str, list[str]] = {}
        lines: list[str] = []
        date_value: str | None = None
        for raw in _FIELD_SPLIT.split(header.decode("utf-8", "replace")):
            name, sep, value = raw.partition(":")
            if not sep or not name or name != name.strip() or " " in name:
                continue
            decoded = _decoded(_UNFOLD.sub("", value).strip())
            upper = name.upper()
            if upper == "DATE" and date_value is None:
                date_value = decoded
            folded = decoded.casefold()
            fields.setdefault(upper, []).append(folded)
            lines.append(f"{name.casefold()}: {folded}")
        return cls(
            {k: tuple(v) for k, v in fields.items()},
            "\n".join(lines),
            _sent(date_value),
        )

    def cost(self) -> int:
        """Bytes this document holds, roughly (the session's cache budget)."""
        return 2 * len(self.text) + 64 * len(self.fields) + 200


def _sent(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return parsedate_to_datetime(value).date()
    except (TypeError, ValueError, IndexError):
        return None


def body_text(structure: ParsedStructure, message: bytes) -> str:
    """The text parts of ``message``, decoded and case-folded, for BODY/TEXT.

    Uses the cached part offsets: attachments are skipped without decoding.
    The header of an encapsulated message (``message/rfc822``) is body text
    of the outer one and is included.
    """
    out: list[str] = []
    _collect(structure.body, message, out, top=True)
    return "\n".join(out).casefold()


def _collect(part: BodyPart, message: bytes, out: list[str], *, top: bool) -> None:
    if part.is_multipart:
        for child in part.parts:
            _collect(child, message, out, top=False)
        return
    if part.body is not None:  # message/rfc822: its header, then its body
        inner = part.body
        out.append(
            _decoded(
                _UNFOLD.sub(
                    "",
                    message[inner.header_start : inner.body_start].decode(
                        "utf-8", "replace"
                    ),
                )
            )
        )
        _collect(inner, message, out, top=False)
        return
    if part.type not in ("text", "message"):
        return
    data = message[part.body_start : part.body_end]
    # RFC 2045 §6: undo the transfer encoding; a broken one is searched raw.
    if part.encoding == "base64":
        with contextlib.suppress(binascii.Error):
            data = binascii.a2b_base64(data)
    elif part.encoding == "quoted-printable":
        data = binascii.a2b_qp(data)
    charset = dict(part.params).get("charset") or "utf-8"
    try:
        out.append(data.decode(charset, "replace"))
    except LookupError:  # an unknown charset: read as UTF-8
        out.append(data.decode("utf-8", "replace"))


def needle(value: bytes) -> str:
    """A search string as matched: UTF-8 (RFC 3501 §6.4.4 CHARSET), case-folded."""
    return value.decode("utf-8", "replace").casefold()


# What a key reads, besides the flags and UIDs the session always has.
META: Final = "meta"  # internal date and size (the index)
DOC: Final = "doc"  # the header (the cached structure)
BODY: Final = "body"  # the text parts (the decrypted message)


def needs(key: imap.SearchKey) -> frozenset[str]:
    """Which of :data:`META`, :data:`DOC`, :data:`BODY` ``key`` reads."""
    op = key.op
    out: set[str] = set()
    if op in ("BEFORE", "ON", "SINCE", "LARGER", "SMALLER"):
        out.add(META)
    elif op in ("HEADER", "SENTBEFORE", "SENTON", "SENTSINCE"):
        out.add(DOC)
    elif op == "BODY":
        out.add(BODY)
    elif op == "TEXT":
        out |= {DOC, BODY}
    for k in key.keys:
        out |= needs(k)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class View:
    """What :func:`evaluate` reads: one entry per UID it may be asked about.

    ``meta``, ``docs`` and ``bodies`` hold what :func:`needs` named;
    ``seq_of`` gives a UID's message sequence number.
    """

    flags: Mapping[int, frozenset[str]]
    recent: set[int]
    largest_uid: int
    largest_seq: int
    seq_of: Callable[[int], int | None]
    meta: Mapping[int, tuple[datetime, int]]
    docs: Mapping[int, SearchDoc]
    bodies: Mapping[int, str]


def evaluate(key: imap.SearchKey, view: View, within: list[int]) -> list[int]:
    """The UIDs of ``within`` that match ``key``, in the same order."""
    op = key.op
    if op == "ALL":
        return within
    if op == "AND":
        for k in key.keys:
            within = evaluate(k, view, within)
            if not within:
                break
        return within
    if op == "OR":
        first = set(evaluate(key.keys[0], view, within))
        rest = evaluate(key.keys[1], view, [u for u in within if u not in first])
        either = first.union(rest)
        return [u for u in within if u in either]
    if op == "NOT":
        inner = key.keys[0]
        if inner.op == "FLAG" and (
            canonical := _SYSTEM_FLAGS.get(inner.text.casefold())
        ):
            # UNSEEN, UNDELETED...: one pass, no set of the complement.
            flags = view.flags
            return [u for u in within if canonical not in flags[u]]
        excluded = set(evaluate(inner, view, within))
        return [u for u in within if u not in excluded]
    if op == "FLAG":
        flags = view.flags
        canonical = _SYSTEM_FLAGS.get(key.text.casefold())
        if canonical is not None:
            return [u for u in within if canonical in flags[u]]
        wanted = key.text.casefold()
        return [u for u in within if any(f.casefold() == wanted for f in flags[u])]
    if op == "RECENT":
        return [u for u in within if u in view.recent]
    if op == "LARGER":
        return [u for u in within if view.meta[u][1] > key.number]
    if op == "SMALLER":
        return [u for u in within if view.meta[u][1] < key.number]
    if op == "UID":
        assert key.set is not None  # noqa: S101 - the parser sets it
        return _in_ranges(within, _ranges(key.set, view.largest_uid), int)
    if op == "SEQ":
        assert key.set is not None  # noqa: S101
        return _in_ranges(
            within,
            _ranges(key.set, view.largest_seq),
            lambda u: view.seq_of(u) or 0,
        )
    if op in ("BEFORE", "ON", "SINCE"):
        # RFC 3501 §6.4.4: the internal date, disregarding time and zone.
        return [u for u in within if _compare(op, view.meta[u][0].date(), key.day)]
    if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
        bare = op.removeprefix("SENT")
        out = []
        for u in within:
            sent = view.docs[u].sent
            if sent is not None and _compare(bare, sent, key.day):
                out.append(u)
        return out
    if op == "HEADER":
        text = needle(key.value)
        docs = view.docs
        # RFC 3501 §6.4.4: HEADER with an empty string matches any message
        # that has the field.
        return [
            u
            for u in within
            if any(text in v for v in docs[u].fields.get(key.field, ()))
        ]
    if op == "BODY":
        text = needle(key.value)
        return [u for u in within if text in view.bodies[u]]
    if op == "TEXT":
        text = needle(key.value)
        return [
            u for u in within if text in view.docs[u].text or text in view.bodies[u]
        ]
    raise ValueError(f"unknown search op {op!r}")  # a bug in the parser


def _ranges(numbers: imap.SequenceSet, largest: int) -> list[tuple[int, int]]:
    """RFC 3501 §9 seq-range: ``*`` is ``largest``, ``a:b`` is ``b:a``."""
    out = []
    for lo, hi in numbers.ranges:
        a = largest if lo is None else lo
        b = largest if hi is None else hi
        out.append((min(a, b), max(a, b)))
    return out


def _in_ranges(
    within: list[int], ranges: list[tuple[int, int]], number: Callable[[int], int]
) -> list[int]:
    if len(ranges) == 1:
        lo, hi = ranges[0]
        if number is int:
            return [u for u in within if lo <= u <= hi]
        return [u for u in within if lo <= number(u) <= hi]
    return [u for u in within if any(lo <= number(u) <= hi for lo, hi in ranges)]


def _compare(op: str, day: date, bound: date | None) -> bool:
    if bound is None:
        return False
    if op == "BEFORE":
        return day < bound
    if op == "ON":
        return day == bound
    return day >= bound
