"""SMTP replies as the client reads them (RFC 5321 §4.2, RFC 3463).

A reply is one or more lines ``CODE-text`` ending with a line ``CODE text``
(or just ``CODE``). :class:`ReplyReader` takes bytes as they arrive, in any
chunking, and hands out complete replies; a malformed line or one past the
limits raises :class:`RemoteProtocolError`, after which the reader is
unusable (the connection must be closed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from mssante._errors import TransportError

# RFC 5321 §4.5.3.1.5 sets 512 octets per reply line; servers in the wild
# send longer EHLO and error lines, so we allow 4 times that.
DEFAULT_MAX_REPLY_LINE: Final = 2048
# No server needs more than a few dozen lines (EHLO lists); bound the memory.
DEFAULT_MAX_REPLY_LINES: Final = 100
_ENHANCED: Final = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")


class RemoteProtocolError(TransportError):
    """The server sent something that is not an SMTP reply."""


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: its code and the text of each line."""

    code: int
    lines: tuple[str, ...]

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 status code of the first line, if present."""
        found = _ENHANCED.match(self.lines[0]) if self.lines else None
        return ".".join(found.groups()) if found else None

    @property
    def text(self) -> str:
        """All lines, without the enhanced code, joined by spaces."""
        out = []
        for line in self.lines:
            found = _ENHANCED.match(line)
            out.append(line[found.end() :] if found else line)
        return " ".join(part for part in out if part)

    @property
    def positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    def __str__(self) -> str:
        status = f" {self.enhanced}" if self.enhanced else ""
        return f"{self.code}{status} {self.text}".rstrip()


class ReplyReader:
    """Accumulates bytes and yields complete replies."""

    def __init__(
        self,
        *,
        max_line: int = DEFAULT_MAX_REPLY_LINE,
        max_lines: int = DEFAULT_MAX_REPLY_LINES,
    ) -> None:
        self._buffer = bytearray()
        self._lines: list[str] = []
        self._code: int | None = None
        self._max_line = max_line
        self._max_lines = max_lines
        self._broken = False

    def feed(self, data: bytes) -> None:
        if self._broken:
            raise RemoteProtocolError("reader already failed")
        self._buffer += data
        if len(self._buffer) > self._max_line and b"\n" not in self._buffer:
            self._fail(f"reply line longer than {self._max_line} octets")

    def _fail(self, why: str) -> None:
        self._broken = True
        raise RemoteProtocolError(why)

    def next_reply(self) -> Reply | None:
        """The next complete reply, or None until more bytes arrive."""
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                return None
            raw = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            if len(raw) > self._max_line:
                self._fail(f"reply line longer than {self._max_line} octets")
            reply = self._line(raw)
            if reply is not None:
                return reply

    def _line(self, raw: bytes) -> Reply | None:
        # RFC 5321 §4.2: Reply-code [ SP / "-" textstring ]
        if (
            len(raw) < 3
            or not raw[:3].isdigit()
            or (len(raw) > 3 and raw[3:4] not in b" -")
        ):
            self._fail(f"not an SMTP reply line: {raw[:40]!r}")
        code = int(raw[:3])
        if not 200 <= code <= 599:
            self._fail(f"reply code out of range: {code}")
        if self._code is not None and code != self._code:
            self._fail("reply code changed within a multi-line reply")
        self._code = code
        self._lines.append(raw[4:].decode("utf-8", "replace"))
        if len(self._lines) > self._max_lines:
            self._fail(f"reply longer than {self._max_lines} lines")
        if raw[3:4] == b"-":
            return None
        reply = Reply(code, tuple(self._lines))
        self._code = None
        self._lines = []
        return reply
