"""The parsed structure of a message, computed once at delivery.

Owns: splitting an RFC 5322 message into its MIME tree with byte offsets
(header start, body start, body end of every part), the IMAP ENVELOPE fields
(RFC 3501 §7.4.2) and the BODYSTRUCTURE data of every part, and the compact
JSON form in which the store keeps them (encrypted, like the message).

What must stay true:

- Pure: bytes in, values out; no I/O, no clock.
- Every message parses. Malformed input yields a best-effort tree (a
  multipart without delimiters gets one empty text/plain part, nesting beyond
  :data:`MAX_DEPTH` or :data:`MAX_PARTS` is kept as an opaque leaf), never an
  exception: the relay has already accepted the message when this runs.
- Offsets are exact: ``message[part.header_start:part.body_start]`` is the
  part's MIME header (``BODY[n.MIME]``), ``message[part.body_start:part.body_end]``
  its body (``BODY[n]``), so IMAP answers section fetches by slicing.
- Header values are kept raw (unfolded, encoded-words left as they are, 8-bit
  bytes preserved through ``surrogateescape``): RFC 3501 §7.4.2 hands them to
  the client undecoded.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from email.utils import getaddresses
from typing import Any, Final

from directory.identifiers import ATEXT, DOT_ATOM

__all__ = [
    "MAX_DEPTH",
    "MAX_PARTS",
    "Address",
    "BodyPart",
    "Envelope",
    "ParsedStructure",
    "parse_structure",
]

# Nesting and part-count limits: real mail nests a few levels (a forwarded
# message inside a multipart/mixed inside a multipart/signed); these bound the
# work a hostile message can cause. Dovecot uses similar limits
# (mime_max_parts, mime_max_depth defaults 10000 / 100); ours are lower because
# the structure is cached per message.
MAX_DEPTH: Final = 32
MAX_PARTS: Final = 1000

_NL = re.compile(rb"\r?\n")
_BLANK_LINE = re.compile(rb"\n\r?\n")
# RFC 5322 §2.2.3: unfolding removes CRLF that is followed by WSP.
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_ENC = "utf-8"
# A dot-atom address (RFC 5322 §3.4.1) with a domain of letters, digits and
# hyphens; a display name of atext words (§3.2.5 phrase, unquoted).
_DOT_ATOM_ADDR = rf"{DOT_ATOM}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_PLAIN_ADDRESS = re.compile(
    rf"(?P<bare>{_DOT_ATOM_ADDR})"
    rf"|(?P<name>{ATEXT}+(?: {ATEXT}+)*) <(?P<addr>{_DOT_ATOM_ADDR})>"
)
_ERRORS = "surrogateescape"


@dataclass(frozen=True, slots=True)
class Address:
    """One address of an ENVELOPE list (RFC 3501 §7.4.2): name, adl, mailbox, host."""

    name: str | None
    adl: str | None
    mailbox: str | None
    host: str | None


@dataclass(frozen=True, slots=True)
class Envelope:
    """RFC 3501 §7.4.2 ENVELOPE, raw header values.

    ``sender`` and ``reply_to`` already default to ``from_`` as the RFC
    requires when the header is absent.
    """

    date: str | None
    subject: str | None
    from_: tuple[Address, ...]
    sender: tuple[Address, ...]
    reply_to: tuple[Address, ...]
    to: tuple[Address, ...]
    cc: tuple[Address, ...]
    bcc: tuple[Address, ...]
    in_reply_to: str | None
    message_id: str | None


@dataclass(frozen=True, slots=True)
class BodyPart:
    """One node of the MIME tree, with the BODYSTRUCTURE fields (RFC 3501 §7.4.2).

    ``type`` and ``subtype`` are lower case; ``params`` keep the raw attribute
    (lower case) and value (unquoted). For ``message/rfc822`` parts,
    ``envelope`` and ``body`` describe the encapsulated message, whose
    ``header_start`` equals this part's ``body_start``.
    """

    type: str
    subtype: str
    params: tuple[tuple[str, str], ...]
    id: str | None
    description: str | None
    encoding: str
    size: int
    lines: int | None
    md5: str | None
    disposition: tuple[str, tuple[tuple[str, str], ...]] | None
    language: tuple[str, ...]
    location: str | None
    parts: tuple[BodyPart, ...]
    envelope: Envelope | None
    body: BodyPart | None
    header_start: int
    body_start: int
    body_end: int

    @property
    def is_multipart(self) -> bool:
        return self.type == "multipart" and bool(self.parts)

    @property
    def is_message(self) -> bool:
        return self.body is not None


@dataclass(frozen=True, slots=True)
class ParsedStructure:
    """Everything IMAP needs to answer without re-parsing the message.

    ``header`` is the top-level header block (``BODY[HEADER]``), kept so that
    header fetches and header searches need not decrypt the whole message.
    """

    size: int
    envelope: Envelope
    body: BodyPart
    header: bytes

    def part(self, section: tuple[int, ...]) -> BodyPart:
        """The part an IMAP section number names (RFC 3501 §6.4.5).

        Raises:
            KeyError: no such part.
        """
        node = self.body
        for depth, n in enumerate(section):
            if depth > 0 and node.body is not None:
                node = node.body
            if node.is_multipart:
                if not 1 <= n <= len(node.parts):
                    raise KeyError(section)
                node = node.parts[n - 1]
            elif n != 1:
                raise KeyError(section)
        return node

    def with_return_path(self, field: bytes) -> ParsedStructure | None:
        """The structure of ``field + message`` without parsing again, where
        ``field`` is one ``Return-Path`` header field ending in CRLF (RFC 5321
        §4.4: final delivery adds it on top): every offset moves by its
        length, the top-level header gains it, nothing else changes (no
        ENVELOPE or BODYSTRUCTURE value reads Return-Path).

        Returns None when that does not hold for this message (it begins
        with a folded line, which would continue the added field): the
        caller parses ``field + message`` instead.

        Raises:
            ValueError: ``field`` is not one Return-Path line (a bug in the
                caller).
        """
        if not (
            field[:12].lower() == b"return-path:"
            and field.endswith(b"\r\n")
            and b"\n" not in field[:-1]
            and b"\r" not in field[:-2]
        ):
            raise ValueError("not one Return-Path header line")
        if self.header[:1] in (b" ", b"\t"):
            return None
        shift = len(field)
        root = _shifted(self.body, shift)
        return ParsedStructure(
            size=self.size + shift,
            envelope=self.envelope,
            # The root header still starts at the top: the added field is in it.
            body=dataclasses.replace(root, header_start=0),
            header=field + self.header,
        )

    def to_json(self) -> bytes:
        return json.dumps(
            [
                1,
                self.size,
                _env_out(self.envelope),
                _part_out(self.body),
                _s(self.header),
            ],
            separators=(",", ":"),
        ).encode("ascii")

    @staticmethod
    def header_from_json(data: bytes) -> bytes:
        """The top-level header of the JSON form, without building the tree
        (header fetches and header searches need nothing else)."""
        version, _size, _env, _body, header = json.loads(data)
        if version != 1:
            raise ValueError(f"unknown structure version {version}")
        return _b(header)

    @classmethod
    def from_json(cls, data: bytes) -> ParsedStructure:
        version, size, env, body, header = json.loads(data)
        if version != 1:
            raise ValueError(f"unknown structure version {version}")
        return cls(size, _env_in(env), _part_in(body), _b(header))


def parse_structure(message: bytes) -> ParsedStructure:
    """Parse ``message`` into its structure. Never raises on malformed mail."""
    budget = [MAX_PARTS]
    root = _parse_part(message, 0, len(message), ("text", "plain"), 0, budget)
    fields = _header_fields(message, 0, root.body_start)
    return ParsedStructure(
        size=len(message),
        envelope=_envelope(fields),
        body=root,
        header=message[: root.body_start],
    )


def _shifted(part: BodyPart, shift: int) -> BodyPart:
    """``part`` with every offset, its children's too, moved by ``shift``."""
    return dataclasses.replace(
        part,
        parts=tuple(_shifted(child, shift) for child in part.parts),
        body=_shifted(part.body, shift) if part.body is not None else None,
        header_start=part.header_start + shift,
        body_start=part.body_start + shift,
        body_end=part.body_end + shift,
    )


# --- parsing -------------------------------------------------------------


def _header_end(data: bytes, start: int, end: int) -> int:
    """Offset where the body of the part at ``start`` begins."""
    # RFC 5322 §2.1: the header ends at the first empty line.
    if data.startswith(b"\r\n", start, end):
        return start + 2
    if data.startswith(b"\n", start, end):
        return start + 1
    m = _BLANK_LINE.search(data, start, end)
    return m.end() if m else end


def _header_fields(data: bytes, start: int, end: int) -> list[tuple[str, str]]:
    """(lower-case name, unfolded raw value) of each header field, in order."""
    text = data[start:end].decode(_ENC, _ERRORS)
    fields: list[tuple[str, str]] = []
    for raw in re.split(r"\r?\n(?![ \t])", text):
        name, sep, value = raw.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            continue
        fields.append((name.lower(), _FOLD.sub("", value).strip()))
    return fields


def _first(fields: list[tuple[str, str]], name: str) -> str | None:
    for n, v in fields:
        if n == name:
            return v
    return None


def _split_params(value: str) -> list[str]:
    """Split at each ``;`` outside a quoted string (a backslash inside quotes
    escapes the next character; an unclosed quote runs to the end). Runs of
    plain text are copied by slices, not character by character."""
    items: list[str] = []
    piece: list[str] = []
    pos, end = 0, len(value)
    while True:
        semi = value.find(";", pos)
        quote = value.find('"', pos, semi if semi >= 0 else end)
        if quote < 0:
            if semi < 0:
                piece.append(value[pos:])
                items.append("".join(piece))
                return items
            piece.append(value[pos:semi])
            items.append("".join(piece))
            piece = []
            pos = semi + 1
            continue
        # A quoted string: up to its closing quote, skipping escaped characters.
        at = quote + 1
        while True:
            close = value.find('"', at)
            escape = value.find("\\", at, close if close >= 0 else end)
            if escape >= 0:
                at = escape + 2
                continue
            break
        if close < 0:  # unclosed: the rest of the value is in it
            piece.append(value[pos:])
            items.append("".join(piece))
            return items
        piece.append(value[pos : close + 1])
        pos = close + 1


def _params(value: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """Split ``type/subtype; a=b; c="d"`` into the head and raw parameters."""
    items = _split_params(value)
    head = _strip_comment(items[0]).strip()
    params: list[tuple[str, str]] = []
    for item in items[1:]:
        name, sep, val = item.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = re.sub(r"\\(.)", r"\1", val[1:-1])
        params.append((name, val))
    return head, tuple(params)


def _strip_comment(value: str) -> str:
    return re.sub(r"\([^()]*\)", "", value)


def _content_type(
    fields: list[tuple[str, str]], default: tuple[str, str]
) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    raw = _first(fields, "content-type")
    if raw is not None:
        head, params = _params(raw)
        typ, slash, sub = head.lower().partition("/")
        if slash and typ.strip() and sub.strip():
            return typ.strip(), sub.strip(), params
    # RFC 2045 §5.2: the default is text/plain; charset=us-ascii
    # (RFC 2046 §5.1.5: message/rfc822 inside multipart/digest).
    if default == ("text", "plain"):
        return "text", "plain", (("charset", "us-ascii"),)
    return default[0], default[1], ()


def _lines(data: bytes, start: int, end: int) -> int:
    if start >= end:
        return 0
    n = data.count(b"\n", start, end)
    return n if data[end - 1 : end] == b"\n" else n + 1


def _parse_part(
    data: bytes,
    start: int,
    end: int,
    default: tuple[str, str],
    depth: int,
    budget: list[int],
) -> BodyPart:
    budget[0] -= 1
    body_start = _header_end(data, start, end)
    fields = _header_fields(data, start, body_start)
    typ, sub, params = _content_type(fields, default)
    encoding = (_first(fields, "content-transfer-encoding") or "7bit").strip().lower()
    disposition = None
    if (raw_disp := _first(fields, "content-disposition")) is not None:
        head, dparams = _params(raw_disp)
        disposition = (head.lower(), dparams)
    language_raw = _first(fields, "content-language")
    language = (
        tuple(x.strip() for x in _strip_comment(language_raw).split(",") if x.strip())
        if language_raw
        else ()
    )
    parts: tuple[BodyPart, ...] = ()
    envelope = None
    inner = None
    too_deep = depth >= MAX_DEPTH or budget[0] <= 0
    if typ == "multipart" and not too_deep:
        boundary = dict(params).get("boundary")
        child_default = ("message", "rfc822") if sub == "digest" else ("text", "plain")
        parts = _split_multipart(
            data, body_start, end, boundary, child_default, depth, budget
        )
    elif typ == "message" and sub in ("rfc822", "global") and not too_deep:
        # RFC 2046 §5.2.1 (RFC 6532 §3.5 for message/global): the body is a
        # whole message, with its own header and structure.
        inner = _parse_part(data, body_start, end, ("text", "plain"), depth + 1, budget)
        envelope = _envelope(_header_fields(data, body_start, inner.body_start))
    elif typ == "multipart" or (typ == "message" and sub in ("rfc822", "global")):
        # Over the limits: kept as an opaque leaf.
        typ, sub, params = "application", "octet-stream", ()
    lines = (
        _lines(data, body_start, end) if typ == "text" or inner is not None else None
    )
    return BodyPart(
        type=typ,
        subtype=sub,
        params=params,
        id=_first(fields, "content-id"),
        description=_first(fields, "content-description"),
        encoding=encoding,
        size=end - body_start,
        lines=lines,
        md5=_first(fields, "content-md5"),
        disposition=disposition,
        language=language,
        location=_first(fields, "content-location"),
        parts=parts,
        envelope=envelope,
        body=inner,
        header_start=start,
        body_start=body_start,
        body_end=end,
    )


def _split_multipart(
    data: bytes,
    start: int,
    end: int,
    boundary: str | None,
    child_default: tuple[str, str],
    depth: int,
    budget: list[int],
) -> tuple[BodyPart, ...]:
    ranges: list[tuple[int, int]] = []
    if boundary:
        part_start: int | None = None
        pos = start
        while (found := _delimiter(data, start, pos, end, boundary)) is not None:
            at, after, close = found
            if part_start is not None:
                ranges.append((part_start, _before_newline(data, part_start, at)))
            if close:
                part_start = None
                break
            part_start = pos = after
        if part_start is not None:
            ranges.append((part_start, end))
    if not ranges:
        # No delimiter: one empty part, so that BODYSTRUCTURE stays well formed.
        ranges.append((end, end))
    parts = []
    for s, e in ranges:
        if budget[0] <= 0:
            break
        parts.append(_parse_part(data, s, e, child_default, depth + 1, budget))
    return tuple(parts)


def _delimiter(
    data: bytes, body_start: int, pos: int, end: int, boundary: str
) -> tuple[int, int, bool] | None:
    """The next delimiter line at or after ``pos``: (start, end of line, close).

    RFC 2046 §5.1.1: a delimiter is CRLF "--" boundary at the start of a line,
    optionally followed by "--" (the close delimiter) and linear white space;
    the CRLF before it belongs to the delimiter. A plain ``find`` is used
    because a multiline ``^`` regex scans attachments several times slower.
    """
    needle = b"--" + boundary.encode(_ENC, _ERRORS)
    while (at := data.find(needle, pos, end)) >= 0:
        pos = at + 1
        if at != body_start and data[at - 1] != 0x0A:
            continue
        j = at + len(needle)
        close = data.startswith(b"--", j, end)
        if close:
            j += 2
        while j < end and data[j] in (0x20, 0x09):
            j += 1
        if j == end:
            return at, end, close
        if data[j] == 0x0A:
            return at, j + 1, close
        if data.startswith(b"\r\n", j, end):
            return at, j + 2, close
    return None


def _before_newline(data: bytes, lo: int, pos: int) -> int:
    if pos > lo and data[pos - 1] == 0x0A:
        pos -= 1
        if pos > lo and data[pos - 1] == 0x0D:
            pos -= 1
    return pos


def _plain_addresses(values: list[str]) -> list[tuple[str, str]] | None:
    """What ``getaddresses`` returns, for header values that are each one
    plain ``local@domain`` or ``Words <local@domain>`` (dot-atoms, words of
    atom characters): the common case, without the general parser's
    character-by-character walk. None for anything else."""
    out: list[tuple[str, str]] = []
    for value in values:
        m = _PLAIN_ADDRESS.fullmatch(value)
        if m is None:
            return None
        out.append((m["name"] or "", m["addr"] or m["bare"]))
    return out


def _addresses(fields: list[tuple[str, str]], name: str) -> tuple[Address, ...]:
    values = [v for n, v in fields if n == name]
    if not values:
        return ()
    out = []
    pairs = _plain_addresses(values)
    for display, addr in getaddresses(values) if pairs is None else pairs:
        if not addr and not display:
            continue
        mailbox, at, host = addr.rpartition("@")
        if not at:
            mailbox, host = addr, ""
        out.append(Address(display or None, None, mailbox or None, host))
    return tuple(out)


def _envelope(fields: list[tuple[str, str]]) -> Envelope:
    from_ = _addresses(fields, "from")
    # RFC 3501 §7.4.2: sender and reply-to default to from.
    return Envelope(
        date=_first(fields, "date"),
        subject=_first(fields, "subject"),
        from_=from_,
        sender=_addresses(fields, "sender") or from_,
        reply_to=_addresses(fields, "reply-to") or from_,
        to=_addresses(fields, "to"),
        cc=_addresses(fields, "cc"),
        bcc=_addresses(fields, "bcc"),
        in_reply_to=_first(fields, "in-reply-to"),
        message_id=_first(fields, "message-id"),
    )


# --- compact JSON form -----------------------------------------------------


def _s(b: bytes) -> str:
    return b.decode(_ENC, _ERRORS)


def _b(s: str) -> bytes:
    return s.encode(_ENC, _ERRORS)


def _addr_out(addrs: tuple[Address, ...]) -> list[list[str | None]]:
    return [[a.name, a.adl, a.mailbox, a.host] for a in addrs]


def _addr_in(raw: list[list[str | None]]) -> tuple[Address, ...]:
    return tuple(Address(*a) for a in raw)


def _env_out(e: Envelope) -> list[Any]:
    return [
        e.date,
        e.subject,
        _addr_out(e.from_),
        _addr_out(e.sender),
        _addr_out(e.reply_to),
        _addr_out(e.to),
        _addr_out(e.cc),
        _addr_out(e.bcc),
        e.in_reply_to,
        e.message_id,
    ]


def _env_in(r: list[Any]) -> Envelope:
    return Envelope(
        r[0],
        r[1],
        _addr_in(r[2]),
        _addr_in(r[3]),
        _addr_in(r[4]),
        _addr_in(r[5]),
        _addr_in(r[6]),
        _addr_in(r[7]),
        r[8],
        r[9],
    )


def _part_out(p: BodyPart) -> list[Any]:
    return [
        p.type,
        p.subtype,
        [list(kv) for kv in p.params],
        p.id,
        p.description,
        p.encoding,
        p.size,
        p.lines,
        p.md5,
        None
        if p.disposition is None
        else [p.disposition[0], [list(kv) for kv in p.disposition[1]]],
        list(p.language),
        p.location,
        [_part_out(c) for c in p.parts],
        None if p.envelope is None else _env_out(p.envelope),
        None if p.body is None else _part_out(p.body),
        p.header_start,
        p.body_start,
        p.body_end,
    ]


def _part_in(r: list[Any]) -> BodyPart:
    disp = r[9]
    return BodyPart(
        type=r[0],
        subtype=r[1],
        params=tuple((k, v) for k, v in r[2]),
        id=r[3],
        description=r[4],
        encoding=r[5],
        size=r[6],
        lines=r[7],
        md5=r[8],
        disposition=None
        if disp is None
        else (disp[0], tuple((k, v) for k, v in disp[1])),
        language=tuple(r[10]),
        location=r[11],
        parts=tuple(_part_in(c) for c in r[12]),
        envelope=None if r[13] is None else _env_in(r[13]),
        body=None if r[14] is None else _part_in(r[14]),
        header_start=r[15],
        body_start=r[16],
        body_end=r[17],
    )
