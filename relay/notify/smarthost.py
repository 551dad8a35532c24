"""The e-mail channel: a notice submitted to the operator's smarthost.

Owns: the notice as an e-mail (:func:`compose`) and one SMTP submission
session per notice to the configured smarthost. The SMTP wire is the client
library's (:class:`mssante.SmtpConnection`, :mod:`mssante.proto.smtp`).

What must stay true:

- STARTTLS is required unless the operator turned it off (RFC 3207): a
  smarthost that does not offer it gets nothing, never a fallback to clear
  text. The certificate is always verified (chain and host name), against
  ``ca_file`` or the system's anchors. AUTH is sent only inside TLS.
- The message is plain UTF-8 text (quoted-printable, so any smarthost
  takes it), ``Auto-Submitted: auto-generated`` (RFC 3834 §5) so that
  nobody auto-replies to it, with its own ``Message-ID``; it holds the
  notice's fixed text and nothing else.
- A failure is a :class:`relay.notify.errors.ChannelError` whose ``reason``
  never quotes the smarthost's reply text (it may name the contact address).
"""

from __future__ import annotations

import contextlib
import email.policy
import email.utils
import ssl
from email.headerregistry import Address
from email.message import EmailMessage
from typing import TYPE_CHECKING, Final

from mssante import SmtpConnection, Timeouts, TLSVerificationError, TransportError
from mssante.proto.smtp import (
    Capabilities,
    auth_plain,
    data_payload,
    ehlo,
    mail_from,
    rcpt_to,
)
from relay.notify.errors import ChannelError

if TYPE_CHECKING:
    from datetime import datetime
    from pathlib import Path

    from mssante.proto.smtp import Reply
    from relay.contact import ContactNotice
    from relay.notify.settings import SmarthostSettings

CHANNEL: Final = "email"
FROM_NAME: Final = "Messagerie de santé"
# RFC 3834 §5: a message sent by a process, not in reply to another.
AUTO_SUBMITTED: Final = "auto-generated"


def compose(
    notice: ContactNotice,
    *,
    to: str,
    from_address: str,
    hostname: str,
    now: datetime,
) -> bytes:
    """The notice as an RFC 5322 message (CRLF line ends, 7-bit)."""
    msg = EmailMessage(policy=email.policy.SMTP)
    local, _, domain = from_address.rpartition("@")
    msg["From"] = Address(FROM_NAME, local, domain)
    msg["To"] = to
    msg["Subject"] = notice.subject
    msg["Date"] = email.utils.format_datetime(now)
    msg["Message-ID"] = email.utils.make_msgid("notice", domain=hostname)
    msg["Auto-Submitted"] = AUTO_SUBMITTED
    # Microsoft's equivalent of RFC 3834 for Exchange out-of-office replies.
    msg["X-Auto-Response-Suppress"] = "All"
    msg.set_content(notice.text, charset="utf-8", cte="quoted-printable")
    return msg.as_bytes()


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """A verifying client context: ``ca_file``'s anchors, else the system's."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class SmarthostChannel:
    """Submits e-mail notices to one smarthost."""

    name: Final = CHANNEL

    def __init__(
        self, settings: SmarthostSettings, *, hostname: str, password: str = ""
    ) -> None:
        """``password``: the content of ``settings.password_file`` (read by the caller)."""
        self._settings = settings
        self._hostname = hostname
        self._password = password
        self._tls = tls_context(settings.ca_file)
        timeout = settings.timeout
        self._timeouts = Timeouts(connect=timeout, command=timeout, data=timeout)

    async def send(self, to: str, notice: ContactNotice, *, now: datetime) -> None:
        """Submit one notice to ``to``; :class:`ChannelError` if not taken."""
        s = self._settings
        message = compose(
            notice,
            to=to,
            from_address=s.from_address,
            hostname=self._hostname,
            now=now,
        )
        try:
            conn, greeting = await SmtpConnection.open(
                s.host, s.port, tls=None, timeouts=self._timeouts
            )
        except TransportError as exc:
            raise ChannelError("unreachable") from exc
        try:
            _expect(greeting, 220, "greeting")
            await self._hello(conn)
            await self._transaction(conn, to, message)
        except TransportError as exc:
            raise ChannelError(
                "tls" if isinstance(exc, TLSVerificationError) else "connection"
            ) from exc
        finally:
            await _quit(conn)

    async def _hello(self, conn: SmtpConnection) -> None:
        s = self._settings
        reply = await conn.command(ehlo(self._hostname))
        _expect(reply, 250, "ehlo")
        if s.starttls:
            # RFC 3207 §4: STARTTLS, then everything again from EHLO.
            if not Capabilities.from_reply(reply).has("STARTTLS"):
                raise ChannelError("no-starttls")
            _expect(await conn.command(b"STARTTLS\r\n"), 220, "starttls")
            await conn.starttls(self._tls)
            _expect(await conn.command(ehlo(self._hostname)), 250, "ehlo")
        if s.username:
            # RFC 4954 §4 with RFC 4616 PLAIN; config refuses AUTH without TLS.
            reply = await conn.command(auth_plain(s.username, self._password))
            _expect(reply, 235, "auth")

    async def _transaction(self, conn: SmtpConnection, to: str, message: bytes) -> None:
        _expect(await conn.command(mail_from(self._settings.mail_from)), 250, "mail")
        _expect(await conn.command(rcpt_to(to)), 250, "rcpt")
        _expect(await conn.command(b"DATA\r\n"), 354, "data")
        await conn.send(data_payload(message))
        _expect(await conn.read_final_reply(), 250, "data")


def _expect(reply: Reply, code: int, step: str) -> None:
    if reply.code // 100 == code // 100 and (code != 354 or reply.code == 354):
        return
    # The reply text is not kept: it may quote the contact address. Only a
    # refusal of the address or of the message itself is final; the others
    # (AUTH, MAIL) are the operator's to fix, and the notice waits.
    permanent = reply.code >= 500 and step in ("rcpt", "data")
    raise ChannelError(f"smtp-{step}-{reply.code}", permanent=permanent)


async def _quit(conn: SmtpConnection) -> None:
    with contextlib.suppress(TransportError):
        await conn.command(b"QUIT\r\n", within=5)
    await conn.close()
