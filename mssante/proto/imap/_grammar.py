"""Command-specific grammar: sequence sets, FETCH items, SEARCH keys, dates,
flags and mailbox names, read from the generic values of a command.

Pure functions of :data:`~mssante.proto.imap.Value` s; each raises
:class:`CommandSyntaxError` (answered ``BAD``) for input off the grammar.
What must stay true: nothing here expands a sequence set into a list (a
client may send ``1:4294967295``); membership is tested range by range.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Final

from mssante.proto.imap._events import Atom, Value
from mssante.proto.imap._reader import CommandSyntaxError

__all__ = [
    "FetchItem",
    "SearchKey",
    "Section",
    "SequenceSet",
    "astring",
    "atom",
    "decode_mailbox",
    "encode_mailbox",
    "format_datetime",
    "number",
    "parse_date",
    "parse_datetime",
    "parse_fetch_items",
    "parse_flags",
    "parse_search",
    "parse_sequence_set",
]

# RFC 3501 §9: nz-number, number are 32-bit unsigned.
MAX_NUMBER: Final = 2**32 - 1
_MONTHS: Final = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")  # fmt: skip
_MONTH_NUMBER: Final = {m.upper(): i + 1 for i, m in enumerate(_MONTHS)}


def _error(text: str) -> CommandSyntaxError:
    return CommandSyntaxError(None, text)


def atom(value: Value, what: str) -> str:
    if not isinstance(value, Atom):
        raise _error(f"{what}: expected an atom")
    return value.value


def astring(value: Value, what: str) -> bytes:
    """RFC 3501 §9 astring: an atom or a string, as bytes."""
    if isinstance(value, Atom):
        return value.value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise _error(f"{what}: expected a string")


def number(value: Value, what: str) -> int:
    text = atom(value, what)
    if not text.isdigit() or len(text) > 10 or int(text) > MAX_NUMBER:
        raise _error(f"{what}: expected a number")
    return int(text)


# -- sequence sets -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """RFC 3501 §9 sequence-set: ranges, ``None`` standing for ``*``."""

    ranges: tuple[tuple[int | None, int | None], ...]

    def contains(self, n: int, largest: int) -> bool:
        """Whether ``n`` is in the set when ``*`` means ``largest``."""
        for lo, hi in self.ranges:
            a = largest if lo is None else lo
            b = largest if hi is None else hi
            if min(a, b) <= n <= max(a, b):
                return True
        return False

    def select(self, values: list[int]) -> list[int]:
        """The members of ascending ``values`` in the set (``*`` = the last).

        RFC 3501 §6.4.8: for UID sets, ``*`` is the largest UID in use, and a
        range whose ends are missing still matches what lies between.
        """
        if not values:
            return []
        largest = values[-1]
        return [v for v in values if self.contains(v, largest)]


def parse_sequence_set(value: Value) -> SequenceSet:
    text = atom(value, "sequence set")
    ranges: list[tuple[int | None, int | None]] = []
    for item in text.split(","):
        lo_text, _, hi_text = item.partition(":")
        lo = _seq_number(lo_text)
        hi = _seq_number(hi_text) if hi_text else lo
        if not hi_text and item.endswith(":"):
            raise _error("sequence set: malformed range")
        ranges.append((lo, hi))
    return SequenceSet(tuple(ranges))


def _seq_number(text: str) -> int | None:
    if text == "*":
        return None
    if not text.isdigit() or text.startswith("0") or len(text) > 10:
        raise _error(f"sequence set: {text!r} is not a number or *")
    n = int(text)
    if n > MAX_NUMBER:
        raise _error("sequence set: number too large")
    return n


# -- flags ---------------------------------------------------------------------

# RFC 3501 §2.3.2 system flags a client may set (\Recent is the server's).
_SYSTEM_FLAGS: Final = {
    f.upper(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")
}


def parse_flags(value: Value | list[Value]) -> list[str]:
    """A flag list ``(\\Seen $Label)`` or a single flag, system flags canonical."""
    items = value if isinstance(value, tuple | list) else [value]
    out = []
    for item in items:
        flag = atom(item, "flag")
        if flag.startswith("\\"):
            canonical = _SYSTEM_FLAGS.get(flag.upper())
            if canonical is None:
                raise _error(f"flag {flag!r} is not a system flag a client may set")
            flag = canonical
        elif any(c in flag for c in "[]%*\\") or not flag:
            raise _error(f"flag {flag!r} is not an atom")
        out.append(flag)
    return out


# -- dates ---------------------------------------------------------------------

_DATE: Final = re.compile(r"(\d{1,2})-([A-Za-z]{3})-(\d{4})\Z")
_DATE_TIME: Final = re.compile(
    r"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)\Z"
)


def parse_date(value: Value) -> date:
    """RFC 3501 §9 date: ``1-Feb-1994`` (an atom or a quoted string)."""
    text = astring(value, "date").decode("ascii", "replace")
    m = _DATE.match(text)
    month = _MONTH_NUMBER.get(m.group(2).upper()) if m else None
    if m is None or month is None:
        raise _error(f"{text!r} is not a date (d-Mon-yyyy)")
    try:
        return date(int(m.group(3)), month, int(m.group(1)))
    except ValueError:
        raise _error(f"{text!r} is not a date") from None


def parse_datetime(value: Value) -> datetime:
    """RFC 3501 §9 date-time: ``"17-Jul-1996 02:44:25 -0700"``."""
    if not isinstance(value, bytes):
        raise _error("date-time: expected a quoted string")
    text = value.decode("ascii", "replace")
    m = _DATE_TIME.match(text)
    month = _MONTH_NUMBER.get(m.group(2).upper()) if m else None
    if m is None or month is None:
        raise _error(f"{text!r} is not a date-time")
    sign = -1 if m.group(7) == "-" else 1
    offset = timedelta(hours=int(m.group(8)), minutes=int(m.group(9))) * sign
    try:
        return datetime(
            int(m.group(3)),
            month,
            int(m.group(1)),
            int(m.group(4)),
            int(m.group(5)),
            int(m.group(6)),
            tzinfo=timezone(offset),
        )
    except ValueError:
        raise _error(f"{text!r} is not a date-time") from None


def format_datetime(when: datetime) -> str:
    """RFC 3501 §9 date-time for INTERNALDATE: ``17-Jul-1996 02:44:25 -0700``."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    offset = when.utcoffset() or timedelta()
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return (
        f"{when.day:2d}-{_MONTHS[when.month - 1]}-{when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} "
        f"{sign}{minutes // 60:02d}{minutes % 60:02d}"
    )


# -- mailbox names ---------------------------------------------------------------


def decode_mailbox(raw: bytes, *, utf8: bool = False) -> str:
    """A mailbox name from the wire (RFC 3501 §5.1.3 modified UTF-7).

    With UTF8=ACCEPT enabled (RFC 6855 §3) names are UTF-8 as sent.
    """
    if utf8:
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _error("mailbox name is not UTF-8") from None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise _error("mailbox name has 8-bit bytes (use modified UTF-7)") from None
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c != "&":
            out.append(c)
            i += 1
            continue
        j = text.find("-", i)
        if j < 0:
            raise _error("mailbox name: unterminated &... sequence")
        chunk = text[i + 1 : j]
        if not chunk:
            out.append("&")
        else:
            b64 = chunk.replace(",", "/")
            b64 += "=" * (-len(b64) % 4)
            try:
                out.append(base64.b64decode(b64, validate=True).decode("utf-16-be"))
            except (ValueError, UnicodeDecodeError):
                raise _error("mailbox name: bad modified UTF-7") from None
        i = j + 1
    return "".join(out)


def encode_mailbox(name: str, *, utf8: bool = False) -> str:
    """RFC 3501 §5.1.3: printable ASCII as is, ``&`` as ``&-``, the rest in
    modified BASE64 of UTF-16."""
    if utf8:
        return name
    out = []
    run: list[str] = []

    def flush() -> None:
        if run:
            data = "".join(run).encode("utf-16-be")
            out.append(
                "&"
                + base64.b64encode(data).decode().rstrip("=").replace("/", ",")
                + "-"
            )
            run.clear()

    for c in name:
        if 0x20 <= ord(c) <= 0x7E:
            flush()
            out.append("&-" if c == "&" else c)
        else:
            run.append(c)
    flush()
    return "".join(out)


# -- FETCH -----------------------------------------------------------------------

_FETCH_MACROS: Final = {
    # RFC 3501 §6.4.5
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
_SIMPLE_ITEMS: Final = frozenset(
    {
        "FLAGS",
        "INTERNALDATE",
        "RFC822.SIZE",
        "ENVELOPE",
        "BODY",
        "BODYSTRUCTURE",
        "UID",
        "RFC822",
        "RFC822.HEADER",
        "RFC822.TEXT",
    }
)
_SECTION_ITEM: Final = re.compile(
    r"(BODY|BODY\.PEEK)\[([^\]]*)\](?:<(\d{1,10})\.(\d{1,10})>|<(\d{1,10})>)?\Z",
    re.IGNORECASE,
)
_SECTION_TEXTS: Final = frozenset(
    {"", "HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT", "MIME"}
)


@dataclass(frozen=True, slots=True)
class Section:
    """RFC 3501 §6.4.5 section: part numbers, then a text specifier."""

    part: tuple[int, ...] = ()
    text: str = ""  # "", HEADER, HEADER.FIELDS, HEADER.FIELDS.NOT, TEXT, MIME
    fields: tuple[str, ...] = ()  # upper case

    def spec(self) -> str:
        """The section as it is echoed in the response."""
        head = ".".join(str(n) for n in self.part)
        text = self.text
        if self.fields:
            text += " (" + " ".join(self.fields) + ")"
        return head + ("." if head and text else "") + text


@dataclass(frozen=True, slots=True)
class FetchItem:
    """One FETCH attribute. ``section`` is set for ``BODY[...]`` forms."""

    name: str  # FLAGS, UID, ..., BODY (with a section), BODY.PEEK
    section: Section | None = None
    partial: tuple[int, int | None] | None = None  # origin, length

    @property
    def peek(self) -> bool:
        return self.name == "BODY.PEEK" or self.name in ("RFC822.HEADER", "RFC822.SIZE")

    @property
    def sets_seen(self) -> bool:
        """RFC 3501 §6.4.5: BODY[...], RFC822 and RFC822.TEXT set \\Seen."""
        return self.name in ("RFC822", "RFC822.TEXT") or (
            self.name == "BODY" and self.section is not None
        )

    def response_name(self) -> str:
        if self.section is None:
            return self.name
        origin = f"<{self.partial[0]}>" if self.partial else ""
        return f"BODY[{self.section.spec()}]{origin}"


def _parse_section(text: str) -> Section:
    spec, _, field_list = text.partition(" ")
    parts: list[int] = []
    words = spec.split(".") if spec else []
    while words and words[0].isdigit():
        n = int(words.pop(0))
        if n == 0 or n > MAX_NUMBER:
            raise _error("section part numbers start at 1")
        parts.append(n)
    name = ".".join(words).upper()
    if name not in _SECTION_TEXTS or (name == "MIME" and not parts):
        raise _error(f"unknown section {text!r}")
    fields: tuple[str, ...] = ()
    if name.startswith("HEADER.FIELDS"):
        inner = field_list.strip()
        if (
            not (inner.startswith("(") and inner.endswith(")"))
            or not inner[1:-1].split()
        ):
            raise _error("HEADER.FIELDS needs a list of field names")
        fields = tuple(f.strip('"').upper() for f in inner[1:-1].split())
    elif field_list:
        raise _error(f"unexpected text in section {text!r}")
    return Section(tuple(parts), name, fields)


def _fetch_item(value: Value) -> list[FetchItem]:
    text = atom(value, "fetch attribute")
    upper = text.upper()
    if upper in _SIMPLE_ITEMS:
        return [FetchItem(upper)]
    m = _SECTION_ITEM.match(text)
    if m is None:
        raise _error(f"unknown fetch attribute {text!r}")
    partial: tuple[int, int | None] | None = None
    if m.group(3) is not None:
        partial = (int(m.group(3)), int(m.group(4)))
        if partial[1] == 0:
            raise _error("a partial fetch of 0 octets")
    elif m.group(5) is not None:
        partial = (int(m.group(5)), None)
    return [FetchItem(m.group(1).upper(), _parse_section(m.group(2)), partial)]


def parse_fetch_items(value: Value) -> list[FetchItem]:
    """A macro (ALL, FAST, FULL), one attribute, or a list of attributes."""
    if isinstance(value, Atom) and value.upper() in _FETCH_MACROS:
        return [FetchItem(n) for n in _FETCH_MACROS[value.upper()]]
    items = value if isinstance(value, tuple) else (value,)
    if not items:
        raise _error("empty fetch attribute list")
    out: list[FetchItem] = []
    for item in items:
        out.extend(_fetch_item(item))
    return out


# -- SEARCH ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchKey:
    """One node of a search program (RFC 3501 §6.4.4), normalized.

    ``op`` is one of: ALL, AND (``keys``), OR (``keys`` of two), NOT
    (``keys`` of one), FLAG (``text`` is the flag), RECENT, HEADER (``field``,
    ``value``), BODY, TEXT (``value``), BEFORE, ON, SINCE, SENTBEFORE, SENTON,
    SENTSINCE (``day``), LARGER, SMALLER (``number``), UID, SEQ (``set``).
    """

    op: str
    keys: tuple[SearchKey, ...] = ()
    text: str = ""
    field: str = ""
    value: bytes = b""
    day: date | None = None
    number: int = 0
    set: SequenceSet | None = None


_FLAG_KEYS: Final = {
    "ANSWERED": ("\\Answered", True),
    "DELETED": ("\\Deleted", True),
    "DRAFT": ("\\Draft", True),
    "FLAGGED": ("\\Flagged", True),
    "SEEN": ("\\Seen", True),
    "UNANSWERED": ("\\Answered", False),
    "UNDELETED": ("\\Deleted", False),
    "UNDRAFT": ("\\Draft", False),
    "UNFLAGGED": ("\\Flagged", False),
    "UNSEEN": ("\\Seen", False),
}
_HEADER_KEYS: Final = frozenset({"BCC", "CC", "FROM", "SUBJECT", "TO"})
_DATE_KEYS: Final = frozenset(
    {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
)
_SEQ_SET: Final = re.compile(r"[\d*][\d*:,]*\Z")


class _SearchParser:
    def __init__(self, args: tuple[Value, ...]) -> None:
        self.args = args
        self.i = 0

    def take(self, what: str) -> Value:
        if self.i >= len(self.args):
            raise _error(f"SEARCH: missing {what}")
        value = self.args[self.i]
        self.i += 1
        return value

    def key(self, depth: int = 0) -> SearchKey:
        if depth > 64:
            raise _error("SEARCH: keys nested too deeply")
        value = self.take("search key")
        if isinstance(value, tuple):
            sub = _SearchParser(value)
            keys = []
            while sub.i < len(value):
                keys.append(sub.key(depth + 1))
            if not keys:
                raise _error("SEARCH: empty parenthesized list")
            return SearchKey("AND", tuple(keys))
        name = atom(value, "search key").upper()
        if name == "ALL":
            return SearchKey("ALL")
        if name in _FLAG_KEYS:
            flag, present = _FLAG_KEYS[name]
            return _maybe_not(SearchKey("FLAG", text=flag), present)
        if name in ("KEYWORD", "UNKEYWORD"):
            flag = parse_flags(self.take("keyword"))[0]
            return _maybe_not(SearchKey("FLAG", text=flag), name == "KEYWORD")
        if name == "RECENT":
            return SearchKey("RECENT")
        if name == "OLD":
            return SearchKey("NOT", (SearchKey("RECENT"),))
        if name == "NEW":
            return SearchKey(
                "AND",
                (
                    SearchKey("RECENT"),
                    SearchKey("NOT", (SearchKey("FLAG", text="\\Seen"),)),
                ),
            )
        if name in _HEADER_KEYS:
            return SearchKey(
                "HEADER", field=name, value=astring(self.take("string"), name)
            )
        if name == "HEADER":
            field = astring(self.take("field name"), name).decode("ascii", "replace")
            return SearchKey(
                "HEADER", field=field.upper(), value=astring(self.take("string"), name)
            )
        if name in ("BODY", "TEXT"):
            return SearchKey(name, value=astring(self.take("string"), name))
        if name in _DATE_KEYS:
            return SearchKey(name, day=parse_date(self.take("date")))
        if name in ("LARGER", "SMALLER"):
            return SearchKey(name, number=number(self.take("number"), name))
        if name == "NOT":
            return SearchKey("NOT", (self.key(depth + 1),))
        if name == "OR":
            return SearchKey("OR", (self.key(depth + 1), self.key(depth + 1)))
        if name == "UID":
            return SearchKey("UID", set=parse_sequence_set(self.take("UID set")))
        if _SEQ_SET.match(name):
            return SearchKey("SEQ", set=parse_sequence_set(value))
        raise _error(f"SEARCH: unknown key {name!r}")


def _maybe_not(key: SearchKey, present: bool) -> SearchKey:
    return key if present else SearchKey("NOT", (key,))


def parse_search(args: tuple[Value, ...]) -> tuple[str | None, SearchKey]:
    """``[CHARSET name] key...`` -> (charset, the keys ANDed).

    Raises:
        CommandSyntaxError: off the grammar (answered BAD). An unsupported
            charset is the caller's ``NO [BADCHARSET]``.
    """
    charset: str | None = None
    if len(args) >= 2 and isinstance(args[0], Atom) and args[0].upper() == "CHARSET":
        charset = astring(args[1], "charset").decode("ascii", "replace").upper()
        args = args[2:]
    parser = _SearchParser(args)
    keys = []
    while parser.i < len(args):
        keys.append(parser.key())
    if not keys:
        raise _error("SEARCH: no search key")
    return charset, keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))
