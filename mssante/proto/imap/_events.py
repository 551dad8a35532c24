"""Events of the IMAP core: what the peer sent, and what we send.

Inbound events are named ``...Received``; outbound ones are named for what
they are on the wire (``Tagged``, ``Untagged``, ``ContinuationRequest``).
All are frozen slotted dataclasses: an event never changes once made.

Command arguments are kept as the generic values of RFC 3501 §9 and the
command-specific grammar (sequence sets, FETCH items, SEARCH keys) is read
from them by :mod:`mssante.proto.imap._grammar`:

- :class:`Atom` for atoms (``INBOX``, ``\\Seen``, ``BODY.PEEK[HEADER]<0.10>``:
  a section with its brackets is one atom, as the grammar's ``fetch-att``);
- ``bytes`` for strings, quoted or literal (the wire side is bytes; decode
  with an explicit charset);
- ``tuple`` for parenthesized lists.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TypeAlias

__all__ = [
    "Atom",
    "CommandReceived",
    "ConnectionClosed",
    "ContinuationReceived",
    "ContinuationRequest",
    "Event",
    "InvalidCommandReceived",
    "LiteralAwaited",
    "Raw",
    "Status",
    "Tagged",
    "Untagged",
    "Value",
]


@dataclass(frozen=True, slots=True)
class Atom:
    """An atom as sent (case kept); compare with :meth:`upper`."""

    value: str

    def upper(self) -> str:
        return self.value.upper()


Value: TypeAlias = "Atom | bytes | tuple[Value, ...]"


class Status(enum.Enum):
    """RFC 3501 §7.1: status responses."""

    OK = "OK"
    NO = "NO"
    BAD = "BAD"
    BYE = "BYE"
    PREAUTH = "PREAUTH"


@dataclass(frozen=True, slots=True)
class Raw:
    """Bytes already in wire form (section names such as ``BODY[1]<0>``)."""

    data: bytes


def status_text(text: str, code: str | None = None) -> bytes:
    """``[CODE] text`` for a status response, CR and LF replaced by spaces:
    a peer-chosen string echoed in a reply cannot start a second line."""
    line = f"[{code}] {text}" if code else text
    return line.replace("\r", " ").replace("\n", " ").encode("utf-8", "replace")


# -- inbound -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommandReceived:
    """A complete command, literals included.

    ``name`` is upper case without the ``UID`` prefix; ``uid`` says whether
    it had one (RFC 3501 §6.4.8).
    """

    tag: str
    name: str
    args: tuple[Value, ...] = ()
    uid: bool = False


@dataclass(frozen=True, slots=True)
class InvalidCommandReceived:
    """A command the core could not accept; the session goes on.

    ``tag`` is ``None`` when not even a tag could be read (answer ``* BAD``).
    ``status`` is ``BAD`` for syntax, unknown commands and commands not
    allowed in the current state, ``NO`` for a synchronizing literal over the
    limit (with ``code`` ``TOOBIG``, RFC 7889 §4). Answer it with
    :meth:`reply`.
    """

    tag: str | None
    text: str
    status: Status = Status.BAD
    code: str | None = None

    def reply(self) -> Tagged | Untagged:
        if self.tag is None:
            return Untagged.status(self.status, self.text, code=self.code)
        return Tagged(self.tag, self.status, self.text, code=self.code)


@dataclass(frozen=True, slots=True)
class LiteralAwaited:
    """The peer announced a synchronizing literal (RFC 3501 §7.5).

    The transport sends a :class:`ContinuationRequest` and keeps reading;
    the core already checked the size against its limit.
    """

    tag: str
    size: int


@dataclass(frozen=True, slots=True)
class ContinuationReceived:
    """A line sent in answer to our :class:`ContinuationRequest`.

    AUTHENTICATE responses (RFC 3501 §6.2.2) and IDLE's ``DONE``
    (RFC 2177 §3), without the line ending.
    """

    line: bytes


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its side (``receive_data(b"")``)."""


# -- outbound ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tagged:
    """The tagged status that completes the pending command (RFC 3501 §7.1)."""

    tag: str
    status: Status
    text: str
    code: str | None = None


@dataclass(frozen=True, slots=True)
class Untagged:
    """``* <data>``: the items are serialized by :func:`encode_values`.

    Items are :data:`Value` s plus ``int``, ``str`` (quoted or literal as
    needed), ``None`` (``NIL``) and :class:`~mssante.proto.imap.Raw` bytes
    already in wire form.
    """

    items: tuple[object, ...] = field(default=())

    @classmethod
    def status(cls, status: Status, text: str, *, code: str | None = None) -> Untagged:
        return cls((Raw(status.value.encode()), Raw(status_text(text, code))))


@dataclass(frozen=True, slots=True)
class ContinuationRequest:
    """``+ <text>`` (RFC 3501 §7.5): send a literal or a continuation line."""

    text: str = "Ready"


Event: TypeAlias = (
    "CommandReceived | InvalidCommandReceived | LiteralAwaited"
    " | ContinuationReceived | ConnectionClosed"
)
