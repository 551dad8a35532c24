"""SMTP client commands as bytes, EHLO capabilities, and the DATA payload.

Every builder refuses a value that would inject a line (CR or LF) or break
the command syntax, raising ``ValueError`` naming the field: the caller's
bug, not the server's.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable

    from mssante.proto.smtp._replies import Reply


def _check(field: str, value: str) -> None:
    if any(c in value for c in "\r\n\0") or any(c in value for c in "<> "):
        raise ValueError(f"{field}: {value!r} contains a forbidden character")


def xtext(value: str) -> str:
    """RFC 3461 §4: xtext, with ``+XX`` for ``+``, ``=`` and anything outside 33-126."""
    out = []
    for byte in value.encode("utf-8"):
        if 33 <= byte <= 126 and byte not in (ord("+"), ord("=")):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def ehlo(name: str) -> bytes:
    _check("name", name)
    return f"EHLO {name}\r\n".encode("ascii")


def mail_from(
    sender: str,
    *,
    size: int | None = None,
    body_8bit: bool = False,
    smtputf8: bool = False,
    ret: str | None = None,
    envid: str | None = None,
) -> bytes:
    """``MAIL FROM`` with SIZE (RFC 1870), BODY (6152), SMTPUTF8 (6531), DSN (3461)."""
    if sender:
        _check("sender", sender)
    params = []
    if size is not None:
        params.append(f"SIZE={size}")
    if body_8bit:
        params.append("BODY=8BITMIME")
    if smtputf8:
        params.append("SMTPUTF8")
    if ret is not None:
        if ret not in ("FULL", "HDRS"):
            raise ValueError(f"ret: {ret!r} must be FULL or HDRS")
        params.append(f"RET={ret}")
    if envid is not None:
        params.append(f"ENVID={xtext(envid)}")
    tail = "".join(" " + p for p in params)
    return f"MAIL FROM:<{sender}>{tail}\r\n".encode()


def rcpt_to(
    recipient: str, *, notify: Iterable[str] = (), orcpt: str | None = None
) -> bytes:
    """``RCPT TO`` with RFC 3461 NOTIFY and ORCPT."""
    _check("recipient", recipient)
    params = []
    wanted = tuple(notify)
    if wanted:
        if not (wanted == ("NEVER",) or set(wanted) <= {"SUCCESS", "FAILURE", "DELAY"}):
            raise ValueError(f"notify: {wanted!r}")
        params.append("NOTIFY=" + ",".join(wanted))
    if orcpt is not None:
        params.append(f"ORCPT=rfc822;{xtext(orcpt)}")
    tail = "".join(" " + p for p in params)
    return f"RCPT TO:<{recipient}>{tail}\r\n".encode()


def auth_plain(login: str, password: str) -> bytes:
    """``AUTH PLAIN`` with an initial response (RFC 4616, RFC 4954 §4)."""
    blob = base64.b64encode(f"\0{login}\0{password}".encode()).decode("ascii")
    return f"AUTH PLAIN {blob}\r\n".encode("ascii")


def auth_oauthbearer(token: str, authzid: str | None = None) -> bytes:
    """``AUTH OAUTHBEARER`` with its initial response (RFC 7628 §3.1)."""
    if any(c in token for c in "\x01\r\n "):
        raise ValueError("token: contains a separator")
    gs2 = (
        "n,a=" + authzid.replace("=", "=3D").replace(",", "=2C") + ","
        if authzid
        else "n,,"
    )
    blob = base64.b64encode(f"{gs2}\x01auth=Bearer {token}\x01\x01".encode()).decode()
    return f"AUTH OAUTHBEARER {blob}\r\n".encode("ascii")


def data_payload(message: bytes) -> bytes:
    """The message as sent after ``354``: CRLF line ends, dot-stuffed, terminated.

    RFC 5321 §4.5.2: a line starting with "." gets one more; §2.3.8: lines
    end with CRLF (bare CR or LF are turned into CRLF, never sent alone).
    """
    normalised = message.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    lines = normalised.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"\r\n".join(stuffed) + b"\r\n.\r\n"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an EHLO reply advertises (RFC 5321 §4.1.1.1)."""

    extensions: frozenset[str]
    size: int | None = None
    auth: frozenset[str] = frozenset()

    @classmethod
    def from_reply(cls, reply: Reply) -> Capabilities:
        extensions: set[str] = set()
        size: int | None = None
        auth: set[str] = set()
        for line in reply.lines[1:]:
            keyword, _, params = line.partition(" ")
            name = keyword.upper()
            extensions.add(name)
            if name == "SIZE" and params.strip().isdigit():
                # RFC 1870 §4: 0 means no fixed limit.
                size = int(params) or None
            elif name == "AUTH":
                auth.update(p.upper() for p in params.split())
        return cls(frozenset(extensions), size, frozenset(auth))

    def has(self, extension: str) -> bool:
        return extension.upper() in self.extensions
