"""The IMAP server connection: bytes in, events out; events in, bytes out.

Shaped like h11's ``Connection``::

    conn = Connection(SERVER, max_literal_size=cfg.max_literal_size)
    conn.receive_data(chunk)                  # b"" means EOF
    while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
        ...                                   # CommandReceived, LiteralAwaited, ...
    writer.write(conn.send(Tagged(tag, Status.OK, "SELECT completed")))

What must stay true:

- One command at a time (RFC 3501 §5.5 allows pipelining; we answer in
  order): after a :class:`CommandReceived` the connection is ``PAUSED``
  until we send its :class:`Tagged` reply. Meanwhile we may send untagged
  data and :class:`ContinuationRequest` s (AUTHENTICATE, IDLE), each of which
  lets exactly one continuation line through as :class:`ContinuationReceived`.
- Literals are the core's job: a synchronizing literal yields
  :class:`LiteralAwaited` (send ``+``), a non-synchronizing one (RFC 7888)
  is read at once. Both are checked against the limits *before* any of
  their bytes is read; before authentication the limit is the tiny
  ``max_unauthenticated_literal_size``.
- Limits (line, literal, whole command) are keyword arguments with sourced
  defaults. A line over the limit is skipped up to its end and answered
  ``BAD``; a non-synchronizing literal over the limit cannot be skipped
  safely, so it is a :class:`RemoteProtocolError` (RFC 7888 §4 allows
  closing) and the connection goes to ``ERROR``.
- STARTTLS (RFC 3501 §6.2.1): bytes received after the STARTTLS command and
  before its ``OK`` are discarded when the ``OK`` is sent, so nothing sent in
  clear is read as if it came over TLS (the STARTTLS injection of
  CVE-2011-0411).
- The session state changes only through ``_state.TRANSITIONS``.
"""

from __future__ import annotations

import enum
from typing import Final

from mssante.proto.imap._errors import LocalProtocolError, RemoteProtocolError
from mssante.proto.imap._events import (
    CommandReceived,
    ConnectionClosed,
    ContinuationReceived,
    ContinuationRequest,
    Event,
    InvalidCommandReceived,
    LiteralAwaited,
    Status,
    Tagged,
    Untagged,
)
from mssante.proto.imap._reader import (
    CommandSyntaxError,
    Framed,
    parse_command,
    read_tag,
    split_literal,
)
from mssante.proto.imap._state import (
    COMMANDS_BY_STATE,
    State,
    Transition,
    next_state,
    transition_for,
)
from mssante.proto.imap._writer import Raw, encode_values, status_text

__all__ = [
    "DEFAULT_MAX_COMMAND_SIZE",
    "DEFAULT_MAX_LINE_LENGTH",
    "DEFAULT_MAX_LITERAL_SIZE",
    "DEFAULT_MAX_UNAUTHENTICATED_LITERAL_SIZE",
    "NEED_DATA",
    "PAUSED",
    "SERVER",
    "Connection",
    "Role",
    "Sentinel",
]

# Dovecot's imap_max_line_length default is 64 kB; RFC 7162 §4 asks servers
# to accept at least 8192 octets (long UID sets from resynchronizing clients).
DEFAULT_MAX_LINE_LENGTH: Final = 64 * 1024
# DESIGN §4: 25 MB per message (the MSSanté limit); APPEND carries one message.
DEFAULT_MAX_LITERAL_SIZE: Final = 25 * 1024 * 1024
# Before authentication only LOGIN and AUTHENTICATE take strings (a login, a
# password, a SASL response): a few hundred bytes. Dovecot's login process
# likewise refuses big input before login.
DEFAULT_MAX_UNAUTHENTICATED_LITERAL_SIZE: Final = 4096
# One message literal plus the rest of an APPEND line and its flags.
DEFAULT_MAX_COMMAND_SIZE: Final = DEFAULT_MAX_LITERAL_SIZE + DEFAULT_MAX_LINE_LENGTH


class Role(enum.Enum):
    SERVER = "server"  # the client role comes with the library's IMAP client


SERVER: Final = Role.SERVER


class Sentinel(enum.Enum):
    NEED_DATA = "need data"  # feed more bytes with receive_data
    PAUSED = "paused"  # our reply (or a continuation request) is due


NEED_DATA: Final = Sentinel.NEED_DATA
PAUSED: Final = Sentinel.PAUSED


class _Phase(enum.Enum):
    LINE = "line"
    LITERAL = "literal"
    SKIP_LINE = "skip line"
    PAUSED = "paused"
    CONTINUATION = "continuation"


class Connection:
    """The server side of one IMAP connection (no I/O)."""

    def __init__(
        self,
        role: Role = SERVER,
        *,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        max_literal_size: int = DEFAULT_MAX_LITERAL_SIZE,
        max_unauthenticated_literal_size: int = DEFAULT_MAX_UNAUTHENTICATED_LITERAL_SIZE,
        max_command_size: int = DEFAULT_MAX_COMMAND_SIZE,
        state: State = State.NOT_AUTHENTICATED,
    ) -> None:
        self.role = role
        self.max_line_length = max_line_length
        self.max_literal_size = max_literal_size
        self.max_unauthenticated_literal_size = max_unauthenticated_literal_size
        self.max_command_size = max_command_size
        self.state = state
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no LF
        self._eof = False
        self._phase = _Phase.LINE
        self._framed = Framed()
        self._literal_left = 0
        self._skip_tag: str | None = None
        self._pending: CommandReceived | None = None
        self._awaiting_literal = False
        self._rejected: list[str] = []  # tags of invalid commands, BAD due

    # -- inbound -------------------------------------------------------------

    @property
    def pending(self) -> CommandReceived | None:
        """The command whose tagged reply is due, if any."""
        return self._pending

    def receive_data(self, data: bytes) -> None:
        """Add bytes from the peer; ``b""`` means the peer closed its side.

        Raises:
            RemoteProtocolError: data after EOF (a bug in the transport).
        """
        if not data:
            self._eof = True
            return
        if self._eof:
            raise LocalProtocolError("data received after EOF")
        self._buf += data

    def next_event(self) -> Event | Sentinel:
        """The next event, :data:`NEED_DATA` or :data:`PAUSED`.

        Raises:
            RemoteProtocolError: the peer broke the protocol beyond repair;
                ``state`` is now ``ERROR`` and the connection must close
                (after an untagged ``BYE``, if the transport wishes).
        """
        if self.state is State.ERROR:
            raise RemoteProtocolError("the connection is in ERROR")
        try:
            return self._next()
        except RemoteProtocolError:
            self.state = next_state(self.state, Transition.PROTOCOL_ERROR)
            raise

    def _take_line(self) -> bytes | None:
        i = self._buf.find(b"\n", self._scanned)
        if i < 0:
            self._scanned = len(self._buf)
            return None
        line = bytes(self._buf[:i])
        del self._buf[: i + 1]
        self._scanned = 0
        return line.removesuffix(b"\r")

    def _next(self) -> Event | Sentinel:
        event = self._next_unchecked()
        if isinstance(event, InvalidCommandReceived) and event.tag is not None:
            self._rejected.append(event.tag)
        return event

    def _next_unchecked(self) -> Event | Sentinel:
        while True:
            if self.state is State.LOGOUT or self._phase is _Phase.PAUSED:
                return PAUSED
            if self._phase is _Phase.CONTINUATION:
                line = self._take_line()
                if line is None:
                    if len(self._buf) > self.max_line_length:
                        raise RemoteProtocolError("continuation line too long")
                    return ConnectionClosed() if self._eof else NEED_DATA
                self._phase = _Phase.PAUSED
                return ContinuationReceived(line)
            if self._phase is _Phase.LITERAL:
                if len(self._buf) < self._literal_left:
                    return ConnectionClosed() if self._eof else NEED_DATA
                self._framed.literals.append(bytes(self._buf[: self._literal_left]))
                del self._buf[: self._literal_left]
                self._scanned = 0
                self._phase = _Phase.LINE
                self._awaiting_literal = False
                continue
            if self._phase is _Phase.SKIP_LINE:
                if self._take_line() is None:
                    self._buf.clear()
                    self._scanned = 0
                    return ConnectionClosed() if self._eof else NEED_DATA
                self._phase = _Phase.LINE
                return InvalidCommandReceived(self._skip_tag, "Command line too long")
            event = self._read_line()
            if event is not None:
                return event

    def _read_line(self) -> Event | Sentinel | None:
        line = self._take_line()
        if line is None:
            if len(self._buf) > self.max_line_length:
                first = (
                    self._framed.texts[0] if self._framed.texts else bytes(self._buf)
                )
                self._skip_tag = read_tag(first)
                self._framed = Framed()
                self._buf.clear()
                self._scanned = 0
                self._phase = _Phase.SKIP_LINE
                return None
            return ConnectionClosed() if self._eof else NEED_DATA
        first = self._framed.texts[0] if self._framed.texts else line
        tag = read_tag(first)
        if len(line) > self.max_line_length:
            self._framed = Framed()
            return InvalidCommandReceived(tag, "Command line too long")
        text, literal = split_literal(line)
        self._framed.texts.append(text)
        if literal is None:
            return self._complete()
        limit = (
            self.max_unauthenticated_literal_size
            if self.state is State.NOT_AUTHENTICATED
            else self.max_literal_size
        )
        too_big = (
            literal.size > limit
            or self._framed.size + literal.size > self.max_command_size
        )
        if too_big:
            if not literal.synchronizing:
                # RFC 7888 §4: a non-synchronizing literal over the limit; its
                # bytes are already on their way and cannot be told apart
                # from commands: close.
                raise RemoteProtocolError(
                    f"non-synchronizing literal of {literal.size} octets over the limit"
                )
            self._framed = Framed()
            # RFC 7889 §4 (APPENDLIMIT), RFC 4469 §3: TOOBIG, refused unread.
            return InvalidCommandReceived(
                tag, "Literal too big", status=Status.NO, code="TOOBIG"
            )
        self._phase = _Phase.LITERAL
        self._literal_left = literal.size
        if literal.synchronizing:
            if tag is None:
                self._framed = Framed()
                self._phase = _Phase.LINE
                return InvalidCommandReceived(None, "missing or malformed tag")
            self._awaiting_literal = True
            return LiteralAwaited(tag, literal.size)
        return None

    def _complete(self) -> Event:
        framed, self._framed = self._framed, Framed()
        try:
            command = parse_command(framed)
        except CommandSyntaxError as exc:
            return InvalidCommandReceived(exc.tag, f"Syntax error: {exc.text}")
        if command.name not in COMMANDS_BY_STATE[self.state]:
            return InvalidCommandReceived(
                command.tag, f"{command.name} not allowed in state {self.state.value}"
            )
        self._pending = command
        self._phase = _Phase.PAUSED
        return command

    # -- outbound ------------------------------------------------------------

    def send(self, event: Tagged | Untagged | ContinuationRequest) -> bytes:
        """The bytes for ``event``; moves the state as the reply implies.

        Raises:
            LocalProtocolError: a tagged reply for a command that is not
                pending, a continuation request with nothing to continue, or
                a state change the transition table does not have.
        """
        if isinstance(event, Tagged):
            return self._send_tagged(event)
        if isinstance(event, ContinuationRequest):
            if self._awaiting_literal:
                self._awaiting_literal = False
            elif self._pending is not None and self._phase is _Phase.PAUSED:
                self._phase = _Phase.CONTINUATION
            else:
                raise LocalProtocolError("continuation request with nothing pending")
            return b"+ " + status_text(event.text) + b"\r\n"
        if event.items and event.items[0] == Raw(b"BYE"):
            self.state = next_state(self.state, Transition.BYE)
        return b"* " + encode_values(event.items) + b"\r\n"

    def _send_tagged(self, event: Tagged) -> bytes:
        pending = self._pending
        if pending is None and event.tag in self._rejected:
            self._rejected.remove(event.tag)
            return self._tagged_bytes(event)
        if pending is None or pending.tag != event.tag:
            raise LocalProtocolError(f"no pending command with tag {event.tag!r}")
        if self._phase is _Phase.CONTINUATION:
            # The command ended while a continuation line was expected
            # (AUTHENTICATE aborted by the server): nothing more to read.
            self._phase = _Phase.PAUSED
        ok = event.status is Status.OK
        transition = transition_for(pending.name, ok)
        if transition is not None and self.state is not State.LOGOUT:
            self.state = next_state(self.state, transition)
        if pending.name == "STARTTLS" and ok:
            # RFC 3501 §6.2.1: nothing sent before the TLS handshake counts.
            self._buf.clear()
            self._scanned = 0
        self._pending = None
        self._phase = _Phase.LINE
        return self._tagged_bytes(event)

    @staticmethod
    def _tagged_bytes(event: Tagged) -> bytes:
        return (
            event.tag.encode("ascii")
            + b" "
            + event.status.value.encode()
            + b" "
            + status_text(event.text, event.code)
            + b"\r\n"
        )
