"""Serialization of server responses (RFC 3501 §4, §7).

Owns the choice of wire form for each value. What must stay true:

- A ``str`` goes out quoted when it is short 7-bit text without CR, LF,
  ``"`` or ``\\`` escaping trouble, as a literal otherwise; ``bytes`` always
  go out as a literal (message data may hold anything, RFC 3501 §4.3).
- Text of a status response never contains CR or LF: a peer-chosen string
  echoed in a response cannot inject a second response line.
"""

from __future__ import annotations

from typing import Final

from mssante.proto.imap._events import Atom, Raw, status_text

__all__ = ["Raw", "encode_value", "encode_values", "status_text"]

# Strings longer than this go as literals: quoted strings of any length are
# legal, but clients read literals more cheaply (Dovecot uses a similar cut).
_MAX_QUOTED: Final = 1024


def _quoted_ok(s: str) -> bool:
    return len(s) <= _MAX_QUOTED and all(0x20 <= ord(c) < 0x7F for c in s)


def encode_value(value: object, out: bytearray) -> None:
    """Append the wire form of ``value`` to ``out``.

    Raises:
        TypeError: a value of a type the grammar has no form for (a bug).
    """
    if value is None:
        out += b"NIL"
    elif isinstance(value, Raw):
        out += value.data
    elif isinstance(value, bool):
        raise TypeError("a bool has no IMAP form")
    elif isinstance(value, int):
        out += str(value).encode()
    elif isinstance(value, Atom):
        out += value.value.encode("ascii")
    elif isinstance(value, str):
        if _quoted_ok(value):
            # RFC 3501 §9: quoted-specials are " and \.
            out += (
                b'"' + value.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'
            )
        else:
            data = value.encode("utf-8", "surrogateescape")
            out += b"{%d}\r\n" % len(data) + data
    elif isinstance(value, bytes | bytearray | memoryview):
        out += b"{%d}\r\n" % len(value)
        out += value
    elif isinstance(value, tuple | list):
        out += b"("
        for i, item in enumerate(value):
            if i:
                out += b" "
            encode_value(item, out)
        out += b")"
    else:
        raise TypeError(f"no IMAP form for {type(value).__name__}")


def encode_values(values: tuple[object, ...] | list[object]) -> bytes:
    out = bytearray()
    for i, item in enumerate(values):
        if i:
            out += b" "
        encode_value(item, out)
    return bytes(out)
