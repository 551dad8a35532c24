"""Hostile and broken input on a raw TLS socket: BAD with the session
intact, oversized literals refused unread, commands out of state refused."""

from __future__ import annotations

import contextlib
import socket
import ssl

from tests.support.relay_fixtures import DOCTOR, PASSWORD, Harness


class Raw:
    """A line-oriented client on implicit TLS, for bytes imaplib never sends."""

    def __init__(self, h: Harness) -> None:
        host, port = h.address("imaps")
        sock = socket.create_connection((host, port), timeout=10)
        self.sock = h.client_context().wrap_socket(sock, server_hostname="localhost")
        self.file = self.sock.makefile("rb")
        self.greeting = self.line()

    def line(self) -> bytes:
        return self.file.readline()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def until(self, tag: bytes) -> list[bytes]:
        lines = []
        while True:
            line = self.line()
            assert line, "connection closed"
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def close(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            self.sock.unwrap()
        self.sock.close()


async def test_malformed_commands_get_bad_and_the_session_goes_on(
    imap_relay: Harness,
) -> None:
    def session() -> list[list[bytes]]:
        c = Raw(imap_relay)
        out = []
        for cmd in (
            b'a1 LOGIN "unterminated\r\n',
            b"a2 FROBNICATE\r\n",
            b"a3 SELECT INBOX\r\n",  # not authenticated yet
            b"a4 FETCH 1 FLAGS\r\n",
        ):
            c.send(cmd)
            out.append(c.until(cmd.split()[0]))
        c.send(
            b"a5 LOGIN " + DOCTOR.address.encode() + b" " + PASSWORD.encode() + b"\r\n"
        )
        out.append(c.until(b"a5"))
        c.send(b"a6 FETCH 1 FLAGS\r\n")  # authenticated, nothing selected
        out.append(c.until(b"a6"))
        c.send(b"a7 SELECT INBOX\r\na8 FETCH 1:* (BODY[NOPE])\r\n")
        out.append(c.until(b"a8"))
        c.send(b"a9 LOGOUT\r\n")
        out.append(c.until(b"a9"))
        c.close()
        return out

    out = await imap_relay.run(session)
    for replies in out[:4]:
        assert replies[-1].split()[1] == b"BAD"
    assert out[4][-1].startswith(b"a5 OK")
    assert out[5][-1].startswith(b"a6 BAD")
    assert out[6][-1].startswith(b"a8 BAD")
    assert out[7][0].startswith(b"* BYE")


async def test_oversized_literal_is_refused_before_it_is_read(
    imap_relay: Harness,
) -> None:
    limit = imap_relay.config.relay.max_message_size

    def session() -> tuple[list[bytes], list[bytes], list[bytes]]:
        c = Raw(imap_relay)
        # Before login, even a small literal is too big.
        c.send(b"p1 LOGIN {5000}\r\n")
        before_login = c.until(b"p1")
        c.send(
            b"p2 LOGIN " + DOCTOR.address.encode() + b" " + PASSWORD.encode() + b"\r\n"
        )
        c.until(b"p2")
        c.send(b"p3 APPEND INBOX {%d}\r\n" % (limit + 1))
        refused = c.until(b"p3")
        c.send(b"p4 NOOP\r\n")
        after = c.until(b"p4")
        c.close()
        return before_login, refused, after

    before_login, refused, after = await imap_relay.run(session)
    assert before_login == [b"p1 NO [TOOBIG] Literal too big\r\n"]
    assert refused == [b"p3 NO [TOOBIG] Literal too big\r\n"]
    assert after[-1].startswith(b"p4 OK")


async def test_literals_synchronizing_and_non_synchronizing_work_end_to_end(
    imap_relay: Harness,
) -> None:
    msg = b"Subject: literal\r\n\r\nbody\r\n"

    def session() -> list[bytes]:
        c = Raw(imap_relay)
        login = DOCTOR.address.encode()
        c.send(
            b"l1 LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n"
            % (len(login), login, len(PASSWORD), PASSWORD.encode())
        )
        c.until(b"l1")
        c.send(b"l2 APPEND INBOX (\\Seen) {%d}\r\n" % len(msg))
        cont = c.line()
        c.send(msg + b"\r\n")
        out = [cont, *c.until(b"l2")]
        c.close()
        return out

    out = await imap_relay.run(session)
    assert out[0].startswith(b"+ ")
    assert out[-1].startswith(b"l2 OK [APPENDUID ")
    assert imap_relay.messages(DOCTOR.address) == [msg]


async def test_starttls_injected_commands_are_discarded(imap_relay: Harness) -> None:
    h = imap_relay

    def session() -> list[bytes]:
        host, port = h.address("imap")
        sock = socket.create_connection((host, port), timeout=10)
        f = sock.makefile("rb")
        f.readline()
        # A man in the middle appends a command after STARTTLS, in clear.
        sock.sendall(b"s1 STARTTLS\r\ns2 CAPABILITY\r\n")
        reply = f.readline()
        tls = h.client_context().wrap_socket(sock, server_hostname="localhost")
        tf = tls.makefile("rb")
        tls.sendall(b"s3 NOOP\r\n")
        lines = [reply, tf.readline()]
        tf.close()
        f.close()
        tls.close()
        return lines

    lines = await h.run(session)
    assert lines[0].startswith(b"s1 OK")
    # s2 was never answered: the first reply over TLS is s3's.
    assert lines[1].startswith(b"s3 OK")
