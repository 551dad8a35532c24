"""One SMTP session to another operator's MX: mutual TLS, whitelist, transactions.

Owns: the client side of inter-operator SMTP. It connects to a resolved
address, requires STARTTLS, presents the operator certificate, verifies the
peer's chain and host name, checks that the peer's certificate is
whitelisted for the destination domain, then sends messages one
transaction after another on the same connection (RFC 2920 pipelining when
offered), and reports one reply per recipient. The SMTP wire is the client
library's (:mod:`mssante.proto.smtp`, :class:`mssante.SmtpConnection`).

What must stay true:

- No message byte is sent before TLS is up and the peer is verified and
  whitelisted: a server that does not offer STARTTLS, or whose certificate
  does not fit, ends the session (a temporary failure: the recipients are
  deferred, never delivered in clear).
- DSN parameters travel on when the peer offers DSN (RFC 3461 §5.2); SIZE
  (RFC 1870) is honoured before MAIL; a message needing SMTPUTF8 or
  8BITMIME that the peer lacks is bounced, never mangled.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from mssante import SmtpConnection, Timeouts, TransportError
from mssante.proto.smtp import Capabilities, data_payload, ehlo, mail_from
from mssante.proto.smtp import rcpt_to as rcpt_command
from relay.queue.notices import orcpt_address
from relay.tls import PeerCertificate, describe, peer_certificate

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable, Sequence

    from relay.queue.outbound import QueuedMessage, QueuedRecipient
    from relay.queue.resolve import MailHost

DEFAULT_MX_PORT: Final = 25


class SessionError(Exception):
    """The session failed as a whole; every recipient of it gets ``reply``."""

    def __init__(self, reply: str, *, permanent: bool = False) -> None:
        super().__init__(reply)
        self.reply = reply
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class RecipientReply:
    """What the destination said about one recipient."""

    address: str
    code: int
    reply: str  # "550 5.1.1 unknown user", for the DSN and the audit trail
    remote_dsn: bool = False  # the peer took the DSN request over

    @property
    def status(self) -> str:
        parts = self.reply.split(" ", 2)
        if len(parts) > 1 and parts[1][:1] in "245" and parts[1].count(".") == 2:
            return parts[1]
        return {2: "2.0.0", 4: "4.0.0"}.get(self.code // 100, "5.0.0")


class RemoteSession:
    """An open, verified session with one MX host of one destination."""

    def __init__(
        self, conn: SmtpConnection, host: MailHost, capabilities: Capabilities
    ) -> None:
        self._conn = conn
        self.host = host
        self.capabilities = capabilities

    @classmethod
    async def open(
        cls,
        host: MailHost,
        address: str,
        *,
        port: int,
        tls: ssl.SSLContext,
        helo_name: str,
        timeouts: Timeouts,
        check_peer: Callable[[PeerCertificate | None], Awaitable[str | None]],
    ) -> RemoteSession:
        """Connect, STARTTLS, verify; raise :class:`SessionError` on any failure."""
        try:
            conn, greeting = await SmtpConnection.open(
                address, port, tls=None, timeouts=timeouts, server_name=host.name
            )
        except TransportError as exc:
            raise SessionError(f"451 4.4.1 {host.name}[{address}]: {exc}") from exc
        try:
            if greeting.code != 220:
                raise SessionError(
                    f"{greeting.code} {'4.4.1' if greeting.code < 500 else '5.4.1'}"
                    f" {host.name} greeting: {greeting.text}"
                )
            capabilities = await cls._ehlo(conn, helo_name, host)
            # DESIGN §4: TLS required, never a fallback to plaintext.
            if not capabilities.has("STARTTLS"):
                raise SessionError(
                    f"451 4.7.4 {host.name} does not offer STARTTLS; not sent in clear"
                )
            reply = await conn.command(b"STARTTLS\r\n")
            if reply.code != 220:
                raise SessionError(f"451 4.7.4 {host.name} refused STARTTLS: {reply!s}")
            await conn.starttls(tls)
            refusal = await check_peer(peer_certificate(conn.ssl_object))
            if refusal is not None:
                raise SessionError(f"451 4.7.5 {host.name}: {refusal}")
            # RFC 3207 §4.2: forget what was learnt before TLS.
            capabilities = await cls._ehlo(conn, helo_name, host)
        except TransportError as exc:
            await conn.close()
            raise SessionError(f"451 4.4.2 {host.name}[{address}]: {exc}") from exc
        except SessionError:
            await _quit(conn)
            raise
        return cls(conn, host, capabilities)

    @staticmethod
    async def _ehlo(
        conn: SmtpConnection, helo_name: str, host: MailHost
    ) -> Capabilities:
        reply = await conn.command(ehlo(helo_name))
        if reply.code != 250:
            raise SessionError(f"451 4.4.2 {host.name} refused EHLO: {reply!s}")
        return Capabilities.from_reply(reply)

    @property
    def tls(self) -> str:
        return describe(self._conn.ssl_object)

    async def close(self) -> None:
        await _quit(self._conn)

    async def send(
        self,
        message: QueuedMessage,
        recipients: Sequence[QueuedRecipient],
        content: bytes,
    ) -> list[RecipientReply]:
        """One transaction; a reply per recipient. :class:`SessionError` if the
        connection is lost (the recipients' fate is then unknown: deferred)."""
        caps = self.capabilities
        payload = data_payload(content)
        refused = self._refuse_locally(message, recipients, len(payload))
        if refused is not None:
            return refused
        dsn = caps.has("DSN")
        mail = mail_from(
            message.sender,
            size=len(payload) if caps.has("SIZE") else None,
            body_8bit=message.body == "8BITMIME",
            smtputf8=message.smtputf8,
            ret=message.ret if dsn else None,
            envid=message.envid if dsn else None,
        )
        rcpts = [
            rcpt_command(
                r.address,
                notify=r.notify if dsn else (),
                orcpt=orcpt_address(r.orcpt) if dsn else None,
            )
            for r in recipients
        ]
        try:
            return await self._transact(mail, rcpts, recipients, payload, dsn=dsn)
        except TransportError as exc:
            raise SessionError(f"451 4.4.2 {self.host.name}: {exc}") from exc

    async def _transact(
        self,
        mail: bytes,
        rcpts: list[bytes],
        recipients: Sequence[QueuedRecipient],
        payload: bytes,
        *,
        dsn: bool,
    ) -> list[RecipientReply]:
        conn = self._conn
        if self.capabilities.has("PIPELINING"):
            # RFC 2920 §3.1: MAIL, the RCPTs and DATA in one group.
            replies = await conn.pipeline([mail, *rcpts, b"DATA\r\n"])
            mail_reply, rcpt_replies, data_reply = (
                replies[0],
                replies[1:-1],
                replies[-1],
            )
        else:
            mail_reply = await conn.command(mail)
            rcpt_replies = []
            data_reply = None
            if mail_reply.positive:
                for line in rcpts:
                    rcpt_replies.append(await conn.command(line))
        if not mail_reply.positive:
            if data_reply is not None and data_reply.code == 354:
                await conn.send(b".\r\n")
                await conn.read_final_reply()
            await conn.command(b"RSET\r\n")
            text = str(mail_reply)
            return [
                RecipientReply(r.address, mail_reply.code, text) for r in recipients
            ]
        accepted = [
            (r, reply)
            for r, reply in zip(recipients, rcpt_replies, strict=True)
            if reply.positive
        ]
        results = {
            r.address: RecipientReply(r.address, reply.code, str(reply))
            for r, reply in zip(recipients, rcpt_replies, strict=True)
            if not reply.positive
        }
        if data_reply is None and accepted:
            data_reply = await conn.command(b"DATA\r\n")
        if not accepted:
            if data_reply is not None and data_reply.code == 354:
                # RFC 2920 §3.1: DATA was accepted although no RCPT was; an
                # empty message ends it, and RSET drops it.
                await conn.send(b".\r\n")
                await conn.read_final_reply()
            await conn.command(b"RSET\r\n")
            return [results[r.address] for r in recipients]
        assert data_reply is not None  # noqa: S101 - set above when accepted
        if data_reply.code != 354:
            await conn.command(b"RSET\r\n")
            final = data_reply
        else:
            await conn.send(payload)
            final = await conn.read_final_reply()
        text = str(final)
        for r, _ in accepted:
            results[r.address] = RecipientReply(
                r.address, final.code, text, remote_dsn=dsn and final.positive
            )
        return [results[r.address] for r in recipients]

    def _refuse_locally(
        self,
        message: QueuedMessage,
        recipients: Sequence[QueuedRecipient],
        size: int,
    ) -> list[RecipientReply] | None:
        caps = self.capabilities
        reply = None
        # RFC 1870 §6.1: do not send what the server already said it refuses.
        if caps.size is not None and size > caps.size:
            reply = f"552 5.3.4 Message size exceeds the limit of {self.host.name}"
        elif message.smtputf8 and not caps.has("SMTPUTF8"):
            # RFC 6531 §3.4: no downgrade here; the sender is told.
            reply = f"553 5.6.7 {self.host.name} does not support SMTPUTF8"
        elif message.body == "8BITMIME" and not caps.has("8BITMIME"):
            reply = f"554 5.6.3 {self.host.name} does not accept 8-bit content"
        if reply is None:
            return None
        code = int(reply[:3])
        return [RecipientReply(r.address, code, reply) for r in recipients]


async def _quit(conn: SmtpConnection) -> None:
    with contextlib.suppress(TransportError):
        await conn.command(b"QUIT\r\n", within=5)
    await conn.close()
