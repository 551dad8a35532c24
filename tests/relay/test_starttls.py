"""SMTP STARTTLS through the running loop (``loop.start_tls``), on asyncio's
loop (in-process relay) and on uvloop (``mssante serve``):

- plaintext pipelined after ``STARTTLS`` is thrown away (RFC 3207 §4.2,
  the STARTTLS command injection, CVE-2011-0411);
- a command that arrives together with the end of the handshake is answered
  (it is not lost with the plaintext).

The client drives TLS over memory BIOs, so that what it sends and when is
exact: the handshake's last flight and the first command can go in one
``send``.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
from typing import TYPE_CHECKING

import pytest

from relay.config import load
from tests.support import serve
from tests.support.relay_fixtures import seed_data_dir

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from tests.support.relay_fixtures import Harness, TlsFiles


class _Client:
    """A blocking SMTP client whose TLS runs over memory BIOs."""

    def __init__(self, port: int, ca: Path) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.plain = b""
        ctx = ssl.create_default_context(cafile=str(ca))
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(
            self.incoming, self.outgoing, server_hostname="127.0.0.1"
        )
        self.clear = b""

    def plain_reply(self) -> bytes:
        while b"\r\n" not in self.plain or not _complete(self.plain):
            data = self.sock.recv(4096)
            assert data, "connection closed"
            self.plain += data
        reply, self.plain = self.plain, b""
        return reply

    def handshake(self, then: bytes = b"") -> None:
        """Complete the handshake; ``then`` goes in the same ``send`` as the
        client's last handshake flight."""
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                out = self.outgoing.read()
                if out:
                    self.sock.sendall(out)
                data = self.sock.recv(65536)
                assert data, "connection closed during the handshake"
                self.incoming.write(data)
        if then:
            self.tls.write(then)
        self.sock.sendall(self.outgoing.read())

    def send(self, data: bytes) -> None:
        self.tls.write(data)
        self.sock.sendall(self.outgoing.read())

    def reply(self) -> bytes:
        while not _complete(self.clear):
            try:
                self.clear += self.tls.read(65536)
                continue
            except ssl.SSLWantReadError:
                pass
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.incoming.write(data)
        reply, self.clear = self.clear, b""
        return reply

    def close(self) -> None:
        self.sock.close()


def _complete(data: bytes) -> bool:
    """Whether ``data`` ends with the last line of a reply."""
    lines = data.split(b"\r\n")
    return len(lines) > 1 and len(lines[-2]) >= 4 and lines[-2][3:4] == b" "


def _converse(port: int, ca: Path) -> tuple[bytes, bytes, bytes]:
    """The client's side of both checks; the replies it read over TLS."""
    c = _Client(port, ca)
    try:
        assert c.plain_reply().startswith(b"220")
        c.sock.sendall(b"EHLO client.example\r\n")
        assert b"STARTTLS" in c.plain_reply()
        # Injected: a command pipelined in plaintext after STARTTLS.
        c.sock.sendall(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n")
        assert c.plain_reply().startswith(b"220")
        # The first command rides with the handshake's last flight.
        c.handshake(then=b"EHLO client.example\r\n")
        ehlo = c.reply()
        c.send(b"NOOP\r\n")
        noop = c.reply()
        c.send(b"QUIT\r\n")
        quit_reply = c.reply()
        return ehlo, noop, quit_reply
    finally:
        c.close()


def _check(replies: tuple[bytes, bytes, bytes]) -> None:
    ehlo, noop, quit_reply = replies
    assert ehlo.startswith(b"250-")
    assert b"AUTH" in ehlo  # now over TLS: AUTH is offered
    # Had the injected MAIL counted, its reply would come before the NOOP's.
    assert noop.startswith(b"250"), noop
    assert quit_reply.startswith(b"221"), quit_reply


async def test_on_asyncio_loop(relay: Harness) -> None:
    _, port = relay.address("submission")
    _check(await asyncio.to_thread(_converse, port, relay.ca_file))


@pytest.fixture
async def served(tmp_path: Path, tls_files: TlsFiles) -> AsyncIterator[int]:
    path = serve.write_config(tmp_path, tls_files.directory)
    await seed_data_dir(load(path), tls_files)
    proc, port = await asyncio.to_thread(serve.start, path)
    try:
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 60)
        if proc.stdout is not None:
            proc.stdout.close()


async def test_on_uvloop(served: int, tls_files: TlsFiles) -> None:
    ca = tls_files.directory / "ca.pem"
    _check(await asyncio.to_thread(_converse, served, ca))
