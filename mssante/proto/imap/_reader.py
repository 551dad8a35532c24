"""Reading commands: framing lines and literals, then the generic grammar.

Owns two things:

- :class:`CommandFramer`: cuts the byte stream into complete commands. A
  command is one line, or several when lines end with a literal announcement
  ``{n}`` (synchronizing, RFC 3501 §7.5) or ``{n+}`` (non-synchronizing,
  RFC 7888 §3), each followed by exactly ``n`` bytes.
- :func:`parse_command`: reads a framed command into a
  :class:`~mssante.proto.imap.CommandReceived` of generic values (atoms,
  strings, lists; RFC 3501 §9), raising :class:`CommandSyntaxError` for
  anything else.

What must stay true:

- The framer never buffers more than ``max_line_length`` bytes of an
  unterminated line, nor accepts a literal over its limit: an oversized
  synchronizing literal is refused before one byte of it is read.
- The framer gives the same commands whatever the chunking of the input
  (tested whole and one byte at a time).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Final

from mssante.proto.imap._events import Atom, CommandReceived, Value
from mssante.proto.imap._state import UID_COMMANDS

__all__ = ["CommandSyntaxError", "Framed", "LiteralAnnounced", "parse_command"]

# RFC 3501 §9 literal = "{" number "}" CRLF; RFC 7888 §3 literal+ adds "+".
# A number is at most 2^32 - 1 (ten digits).
_LITERAL_AT_END: Final = re.compile(rb"\{(\d{1,10})(\+?)\}\r?\Z")
# RFC 3501 §9 atom-specials minus the list wildcards and resp-specials that
# mailbox names, flags and sections use: ( ) { SP CTL " (and [ opens a section).
_ATOM_STOP: Final = frozenset(b'(){ "') | frozenset(range(0x21))
# RFC 3501 §9 tag: astring chars except "+".
_BAD_TAG_CHARS: Final = frozenset(b"+*%\\[]")


class CommandSyntaxError(Exception):
    """The command does not follow the grammar; answered ``BAD``.

    ``tag`` is the tag when it could be read.
    """

    def __init__(self, tag: str | None, text: str) -> None:
        self.tag = tag
        self.text = text
        super().__init__(text)


@dataclass(frozen=True, slots=True)
class LiteralAnnounced:
    """A line ended with ``{size}`` or ``{size+}``."""

    size: int
    synchronizing: bool


@dataclass(slots=True)
class Framed:
    """The pieces of one command: ``texts[i]`` is followed by ``literals[i]``."""

    texts: list[bytes] = field(default_factory=list)
    literals: list[bytes] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(map(len, self.texts)) + sum(map(len, self.literals))


def split_literal(line: bytes) -> tuple[bytes, LiteralAnnounced | None]:
    """Remove a trailing literal announcement from ``line`` (no CRLF)."""
    m = _LITERAL_AT_END.search(line)
    if m is None:
        return line, None
    return line[: m.start()], LiteralAnnounced(int(m.group(1)), not m.group(2))


def read_tag(line: bytes) -> str | None:
    """The tag at the start of ``line``, if it has a well-formed one."""
    raw = line.split(b" ", 1)[0]
    if not raw or any(b in _ATOM_STOP or b in _BAD_TAG_CHARS or b > 0x7E for b in raw):
        return None
    return raw.decode("ascii")


class _Parser:
    def __init__(self, framed: Framed) -> None:
        self.texts = framed.texts
        self.literals = framed.literals
        self.part = 0
        self.pos = 0
        self.tag: str | None = None

    def error(self, text: str) -> CommandSyntaxError:
        return CommandSyntaxError(self.tag, text)

    @property
    def text(self) -> bytes:
        return self.texts[self.part]

    def at_end(self) -> bool:
        return self.pos >= len(self.text) and self.part >= len(self.literals)

    def at_literal(self) -> bool:
        return self.pos >= len(self.text) and self.part < len(self.literals)

    def peek(self) -> int | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def space(self) -> None:
        if self.peek() != 0x20:
            raise self.error("expected a space")
        while self.peek() == 0x20:
            self.pos += 1

    def value(self, depth: int = 0) -> Value:
        if self.at_literal():
            data = self.literals[self.part]
            self.part += 1
            self.pos = 0
            return data
        c = self.peek()
        if c is None:
            raise self.error("unexpected end of command")
        if c == 0x28:  # (
            if depth > 16:
                raise self.error("lists nested too deeply")
            return self.list(depth + 1)
        if c == 0x22:  # "
            return self.quoted()
        return self.atom()

    def list(self, depth: int) -> tuple[Value, ...]:
        self.pos += 1
        items: list[Value] = []
        may_read = True
        while True:
            if self.peek() == 0x29:  # )
                self.pos += 1
                return tuple(items)
            if self.at_end():
                raise self.error("unterminated list")
            if not may_read and not self.at_literal():
                self.space()
                may_read = True
                continue
            items.append(self.value(depth))
            may_read = False

    def quoted(self) -> bytes:
        # RFC 3501 §9: quoted = DQUOTE *QUOTED-CHAR DQUOTE; only " and \ are
        # escaped; CR and LF never appear (the framer cut at them).
        text, i = self.text, self.pos + 1
        out = bytearray()
        while i < len(text):
            c = text[i]
            if c == 0x22:
                self.pos = i + 1
                return bytes(out)
            if c == 0x5C:
                i += 1
                if i >= len(text) or text[i] not in (0x22, 0x5C):
                    raise self.error("bad escape in quoted string")
                c = text[i]
            out.append(c)
            i += 1
        raise self.error("unterminated quoted string")

    def atom(self) -> Atom:
        text, start, i = self.text, self.pos, self.pos
        while i < len(text):
            c = text[i]
            if c == 0x5B:  # [ opens a section: read to its ] (RFC 3501 §6.4.5)
                i = self._section_end(text, i)
                continue
            if c in _ATOM_STOP or c == 0x7F:
                break
            i += 1
        if i == start:
            raise self.error(f"unexpected {chr(text[i])!r}")
        self.pos = i
        try:
            return Atom(text[start:i].decode("utf-8"))
        except UnicodeDecodeError:
            raise self.error("atom is not UTF-8") from None

    def _section_end(self, text: bytes, i: int) -> int:
        depth = 0
        while i < len(text):
            c = text[i]
            if c == 0x22:
                j = text.find(b'"', i + 1)
                while j > 0 and text[j - 1] == 0x5C:
                    j = text.find(b'"', j + 1)
                if j < 0:
                    break
                i = j
            elif c == 0x5B:
                depth += 1
            elif c == 0x5D:
                depth -= 1
                if depth == 0:
                    return i + 1
            elif c < 0x20:
                break
            i += 1
        raise self.error("unterminated [section]")


def parse_command(framed: Framed) -> CommandReceived:
    """Read ``tag SP command *(SP value)``.

    Raises:
        CommandSyntaxError: the command does not follow the grammar.
    """
    p = _Parser(framed)
    first = framed.texts[0]
    p.tag = read_tag(first)
    if p.tag is None:
        raise CommandSyntaxError(None, "missing or malformed tag")
    p.pos = len(p.tag)
    if p.at_end():
        raise p.error("missing command")
    p.space()
    if p.at_literal():
        raise p.error("missing command")
    name = p.atom().upper()
    uid = False
    if name == "UID":
        p.space()
        if p.at_literal():
            raise p.error("missing command after UID")
        name = p.atom().upper()
        if name not in UID_COMMANDS:
            raise p.error(f"UID {name} is not a command")
        uid = True
    args: list[Value] = []
    while not p.at_end():
        if not p.at_literal():
            p.space()
            if p.at_end():  # tolerate trailing spaces
                break
        args.append(p.value())
    return CommandReceived(p.tag, name, tuple(args), uid)
