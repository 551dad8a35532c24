"""An SMTP session over raw bytes, for tests of the wire itself (DATA framing,
smuggling): log in on the implicit-TLS submission port, open a transaction
from the doctor to the colleague, then send ``payload`` as is after DATA.
"""

from __future__ import annotations

import base64
import socket
from typing import TYPE_CHECKING

from tests.support.relay_fixtures import DOCTOR, PASSWORD, URGENCES

if TYPE_CHECKING:
    from tests.support.relay_fixtures import Harness


def transaction(h: Harness, payload: bytes, *, chunks: int = 1) -> list[bytes]:
    """The replies that follow DATA's 354, up to ``221`` or the end of the stream."""
    host, port = h.address("submissions")
    raw = socket.create_connection((host, port), timeout=10)
    with h.client_context().wrap_socket(raw, server_hostname=host) as tls:
        reader = tls.makefile("rb")

        def reply() -> bytes:
            lines = []
            while True:
                line = reader.readline()
                lines.append(line)
                if len(line) < 4 or line[3:4] != b"-":
                    return b"".join(lines)

        reply()  # greeting
        auth = base64.b64encode(f"\0{DOCTOR.address}\0{PASSWORD}".encode())
        for command in (
            b"EHLO c",
            b"AUTH PLAIN " + auth,
            f"MAIL FROM:<{DOCTOR.address}>".encode(),
            f"RCPT TO:<{URGENCES.address}>".encode(),
            b"DATA",
        ):
            tls.sendall(command + b"\r\n")
            assert reply()[:1] in b"23", command
        step = max(1, len(payload) // chunks)
        for i in range(0, len(payload), step):
            tls.sendall(payload[i : i + step])
        replies = []
        while True:
            got = reply()
            replies.append(got)
            if got.startswith(b"221") or not got:
                return replies
