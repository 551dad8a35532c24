"""A real smarthost on loopback for the notice tests: aiosmtpd with STARTTLS.

:func:`smarthost` starts aiosmtpd's SMTP on the test's event loop, with the
test PKI's server certificate (``server.pem``: localhost, 127.0.0.1),
STARTTLS required, and optional AUTH PLAIN/LOGIN with one login. It records
what it received (envelope and bytes) and whether the session was TLS and
authenticated; ``refuse_rcpt`` makes it answer RCPT with a given reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

SMARTHOST_LOGIN = "relais-notices"
SMARTHOST_PASSWORD = "smarthost-test-pw"


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    tls: bool
    login: str | None


@dataclass
class Smarthost:
    """The running smarthost and what it received."""

    host: str
    port: int
    received: list[Received] = field(default_factory=list)
    refuse_rcpt: str | None = None  # e.g. "550 5.1.1 unknown user"

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if self.refuse_rcpt is not None:
            return self.refuse_rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: SMTP, session: Session, envelope: Envelope
    ) -> str:
        content = envelope.original_content or b""
        login: object = getattr(session, "auth_data", None)
        login = getattr(login, "login", None)
        self.received.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=tuple(envelope.rcpt_tos),
                content=content,
                tls=session.ssl is not None,
                login=login.decode() if isinstance(login, bytes) else None,
            )
        )
        return "250 2.0.0 queued"


def _authenticate(
    server: SMTP,
    session: Session,
    envelope: Envelope,
    mechanism: str,
    data: Any,  # noqa: ANN401
) -> AuthResult:
    ok = (
        isinstance(data, LoginPassword)
        and data.login == SMARTHOST_LOGIN.encode()
        and data.password == SMARTHOST_PASSWORD.encode()
    )
    return AuthResult(success=ok, auth_data=data if ok else None)


@contextlib.asynccontextmanager
async def smarthost(
    tls_dir: Path, *, port: int = 0, auth: bool = False
) -> AsyncIterator[Smarthost]:
    """A smarthost on 127.0.0.1 (``port`` 0: an ephemeral one)."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_dir / "server.pem", tls_dir / "server.key")
    recorder = Smarthost(host="127.0.0.1", port=port)

    def factory() -> SMTP:
        return SMTP(
            recorder,
            hostname="smarthost.test",
            tls_context=ctx,
            require_starttls=True,
            auth_require_tls=True,
            auth_required=auth,
            authenticator=_authenticate if auth else None,
            timeout=10,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", port, reuse_address=True)
    recorder.port = server.sockets[0].getsockname()[1]
    try:
        yield recorder
    finally:
        server.close()
        await server.wait_closed()


def free_port() -> int:
    """A loopback port nobody listens on (for a smarthost that is down)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
