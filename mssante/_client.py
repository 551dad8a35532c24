"""The async client: submit MSSanté messages to a relay and keep traces.

Usage::

    async with Client.connect("relay.example", 587, login=..., password=...,
                              tls=TLSConfig(ca_file=...)) as client:
        sent = await client.send(report)

What must stay true:

- TLS is mandatory: implicit TLS (port 465 style) or STARTTLS before
  anything else; AUTH is never sent in clear. Verification is never off.
- A message larger than the server's announced SIZE is refused locally,
  before MAIL FROM (RFC 1870), with :class:`MessageTooLargeError`.
- Every submission asks for DSNs: ``NOTIFY=SUCCESS,FAILURE,DELAY`` and
  ``RET=HDRS`` (the content never comes back in a notice), with an ``ENVID``
  equal to the message's id, so :meth:`Client.receipts` can correlate.
- Every submission (accepted or refused) is written to the trace log, if one
  is configured: who, when, to whom, the Message-ID and the replies; never
  the content.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import email.policy
import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING, Final

from mssante._errors import (
    AuthenticationError,
    MessageRefusedError,
    MessageTooLargeError,
    RecipientsRefusedError,
    SenderRefusedError,
    SubmissionError,
    TLSVerificationError,
)
from mssante._mailbox import (
    DEFAULT_MDN_OVERDUE_AFTER,
    InboxItem,
    MailboxSession,
    Receipts,
    SentRecord,
)
from mssante._transport import SmtpConnection, tls_context
from mssante.message import Report, Software, compose_message, make_message_id
from mssante.proto.smtp import (
    Capabilities,
    Reply,
    auth_oauthbearer,
    auth_plain,
    data_payload,
    ehlo,
    mail_from,
    rcpt_to,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from mssante._config import Timeouts, TLSConfig
    from mssante._traces import TraceLog
    from mssante.crypto.certs import SignerCredential, TrustStore
    from mssante.crypto.cms import Verification

DEFAULT_SOFTWARE: Final = Software(product="mssante-client 0.1", source_oid="2.25.1")
DSN_NOTIFY: Final = ("SUCCESS", "FAILURE", "DELAY")
# RFC 3461 §4.4: ENVID is at most 100 characters.
MAX_ENVID: Final = 100


def _now() -> datetime:
    return datetime.now(UTC)


def _oauth_error(reply: Reply) -> str:
    """The ``status`` of an RFC 7628 §3.2.2 error challenge, if readable."""
    try:
        data = json.loads(base64.b64decode(reply.text.strip(), validate=True))
    except (ValueError, binascii.Error):
        return ""
    return str(data.get("status", "")) if isinstance(data, dict) else ""


@dataclass(frozen=True, slots=True)
class SentMessage:
    """What the relay accepted: per recipient, and the final reply."""

    message_id: str
    sender: str
    accepted: tuple[str, ...]
    refused: dict[str, Reply]
    reply: Reply  # the reply to the end of DATA ("250 ... queued as ...")
    size: int
    at: datetime
    read_receipt: bool = False


@dataclass(slots=True)
class _Session:
    conn: SmtpConnection
    capabilities: Capabilities
    login: str | None
    host: str
    password: str | None = field(default=None, repr=False)
    tls: TLSConfig | None = None
    imap_port: int | None = None


@dataclass(frozen=True, slots=True)
class OpenedMessage:
    """A message read from the mailbox, with its S/MIME layers peeled.

    ``message`` is the innermost content (the plain MIME message);
    ``verification`` is the result of the innermost signature (None when
    unsigned); ``encrypted`` says whether it was encrypted.
    """

    uid: int
    raw: bytes
    message: bytes
    encrypted: bool
    verification: Verification | None


@dataclass(slots=True, kw_only=True)
class Client:
    """An authenticated submission session with a relay.

    Build it with :meth:`connect`; it is an async context manager that says
    ``QUIT`` and closes the connection when the block exits.
    """

    _session: _Session
    software: Software = DEFAULT_SOFTWARE
    signer: SignerCredential | None = None
    traces: TraceLog | None = None
    clock: Callable[[], datetime] = field(default=_now)

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        host: str,
        port: int = 587,
        *,
        login: str | None = None,
        password: str | None = None,
        tls: TLSConfig,
        implicit_tls: bool = False,
        timeouts: Timeouts | None = None,
        software: Software = DEFAULT_SOFTWARE,
        signer: SignerCredential | None = None,
        traces: TraceLog | None = None,
        client_name: str = "mssante-client",
        clock: Callable[[], datetime] = _now,
        imap_port: int | None = 993,
        token: str | None = None,
    ) -> AsyncIterator[Client]:
        """Connect, secure, authenticate; yield the client; quit.

        Authentication: ``token`` (an OpenID Connect access token, sent with
        OAUTHBEARER; ``login`` is then the authorization identity, optional),
        else ``login`` and ``password`` (PLAIN), else, with a client
        certificate in ``tls``, EXTERNAL (APP mailboxes).

        Raises:
            ConnectError, TLSVerificationError, ResponseTimeoutError: transport.
            AuthenticationError: credentials refused, or no TLS offered.
        """
        from mssante._config import Timeouts as _Timeouts

        ctx = tls_context(tls)
        limits = timeouts or _Timeouts()
        conn, greeting = await SmtpConnection.open(
            host, port, tls=ctx if implicit_tls else None, timeouts=limits
        )
        try:
            if greeting.code != 220:
                raise SubmissionError(f"{host}: greeting refused: {greeting}", greeting)
            caps = await cls._ehlo(conn, client_name, host)
            if not implicit_tls:
                if not caps.has("STARTTLS"):
                    raise TLSVerificationError(
                        f"{host}: the server does not offer STARTTLS"
                    )
                reply = await conn.command(b"STARTTLS\r\n")
                if reply.code != 220:
                    raise TLSVerificationError(f"{host}: STARTTLS refused: {reply}")
                await conn.starttls(ctx)
                caps = await cls._ehlo(conn, client_name, host)
            await cls._authenticate(conn, caps, host, login, password, token, tls)
            client = cls(
                _session=_Session(conn, caps, login, host, password, tls, imap_port),
                software=software,
                signer=signer,
                traces=traces,
                clock=clock,
            )
            yield client
            with contextlib.suppress(SubmissionError, OSError):
                await conn.command(b"QUIT\r\n", within=10)
        finally:
            await conn.close()

    @staticmethod
    async def _authenticate(
        conn: SmtpConnection,
        caps: Capabilities,
        host: str,
        login: str | None,
        password: str | None,
        token: str | None,
        tls: TLSConfig,
    ) -> None:
        """AUTH with the credential given (RFC 4954): a bearer token
        (OAUTHBEARER, RFC 7628), a password (PLAIN, RFC 4616), or the TLS
        client certificate alone (EXTERNAL, RFC 4422 App. A)."""
        if token is not None:
            mechanism, line = "OAUTHBEARER", auth_oauthbearer(token, login)
        elif login is not None:
            if password is None:
                raise ValueError("password: required with login")
            mechanism, line = "PLAIN", auth_plain(login, password)
        elif tls.client_cert is not None:
            # "=" is the empty initial response: the identity is the certificate's.
            mechanism, line = "EXTERNAL", b"AUTH EXTERNAL =\r\n"
        else:
            return
        if mechanism not in caps.auth:
            raise AuthenticationError(f"{host}: AUTH {mechanism} not offered", None)
        reply = await conn.command(line)
        if reply.code == 334 and mechanism == "OAUTHBEARER":
            # RFC 7628 §3.2.3: the server sent its error JSON; answer with a
            # single ^A to receive the final failure reply.
            detail = _oauth_error(reply)
            reply = await conn.command(b"AQ==\r\n")
            raise AuthenticationError(
                f"{host}: token refused: {detail or reply}", reply
            )
        if reply.code != 235:
            raise AuthenticationError(f"{host}: authentication refused: {reply}", reply)

    @staticmethod
    async def _ehlo(conn: SmtpConnection, name: str, host: str) -> Capabilities:
        reply = await conn.command(ehlo(name))
        if reply.code != 250:
            raise SubmissionError(f"{host}: EHLO refused: {reply}", reply)
        return Capabilities.from_reply(reply)

    @property
    def capabilities(self) -> Capabilities:
        return self._session.capabilities

    @property
    def tls_version(self) -> str | None:
        return self._session.conn.tls_version

    def compose(self, report: Report) -> tuple[str, bytes]:
        """The MSSanté message for ``report``, signed when a signer is set."""
        uid = uuid.uuid4()
        domain = report.sender.rpartition("@")[2]
        message_id = make_message_id(uid, domain)
        now = self.clock()
        data = compose_message(
            report, software=self.software, now=now, message_id=message_id, uid=uid
        )
        if self.signer is not None:
            from mssante.crypto import smime

            data = smime.sign(data, self.signer, at=now)
        return message_id, data

    @contextlib.asynccontextmanager
    async def mailbox(self) -> AsyncIterator[MailboxSession]:
        """An IMAP session (implicit TLS) on the same host, with the same login."""
        session = self._session
        if session.login is None or session.password is None or session.tls is None:
            raise AuthenticationError(
                "IMAP needs the login and password of connect()", None
            )
        if session.imap_port is None:
            raise ValueError("imap_port: not configured")
        async with MailboxSession.open(
            session.host,
            session.imap_port,
            login=session.login,
            password=session.password,
            tls=session.tls,
        ) as mailbox:
            yield mailbox

    async def receipts(
        self,
        sent: Sequence[SentRecord],
        *,
        mdn_overdue_after: timedelta = DEFAULT_MDN_OVERDUE_AFTER,
    ) -> list[Receipts]:
        """The DSNs and MDNs that came back for ``sent``, correlated by Message-ID."""
        async with self.mailbox() as mailbox:
            found = await mailbox.receipts(
                sent, now=self.clock(), mdn_overdue_after=mdn_overdue_after
            )
        if self.traces is not None:
            for r in found:
                if r.delivery or r.dispositions or r.mdn_overdue:
                    self.traces.record(
                        "receipt.received",
                        at=self.clock(),
                        author=self._session.login,
                        message_id=r.message_id,
                        delivery={k: list(v) for k, v in r.delivery.items()},
                        read={k: v.field_value() for k, v in r.dispositions.items()},
                        mdn_overdue=r.mdn_overdue,
                    )
        return found

    async def delete(self, uid: int, *, folder: str = "INBOX") -> None:
        """Delete a message from the mailbox (traced)."""
        async with self.mailbox() as mailbox:
            await mailbox.delete(uid, folder)
        if self.traces is not None:
            self.traces.record(
                "message.deleted",
                at=self.clock(),
                author=self._session.login,
                folder=folder,
                uid=uid,
            )

    async def inbox(self, folder: str = "INBOX") -> list[InboxItem]:
        """The messages of ``folder`` (headers only; nothing is marked seen)."""
        async with self.mailbox() as mailbox:
            return await mailbox.messages(folder)

    async def open(
        self,
        uid: int,
        *,
        folder: str = "INBOX",
        trust: TrustStore | None = None,
        recipient: SignerCredential | None = None,
    ) -> OpenedMessage:
        """Fetch one message, decrypt it with ``recipient``, verify its signature.

        Without ``trust`` the message is returned as stored (no S/MIME
        processing). A bad signature is a result, not an exception.
        """
        async with self.mailbox() as mailbox:
            raw = await mailbox.fetch(uid, folder)
        if trust is None:
            return OpenedMessage(uid, raw, raw, encrypted=False, verification=None)
        from mssante.crypto import smime

        unwrapped = smime.unwrap(raw, trust, at=self.clock(), recipient=recipient)
        return OpenedMessage(
            uid, raw, unwrapped.message, unwrapped.encrypted, unwrapped.verification
        )

    async def send(self, report: Report) -> SentMessage:
        """Compose (and sign) ``report`` and submit it to every recipient."""
        message_id, data = self.compose(report)
        return await self.submit(
            data,
            sender=report.sender,
            recipients=(*report.to, *report.cc),
            message_id=message_id,
            read_receipt=report.read_receipt,
        )

    async def submit(
        self,
        message: bytes,
        *,
        sender: str,
        recipients: Sequence[str],
        message_id: str | None = None,
        read_receipt: bool = False,
    ) -> SentMessage:
        """Submit ready-made message bytes (any message, not only reports).

        Raises:
            MessageTooLargeError: bigger than the server's SIZE; nothing sent.
            SenderRefusedError, RecipientsRefusedError, MessageRefusedError.
        """
        if not recipients:
            raise ValueError("recipients: at least one")
        if message_id is None:
            parsed = BytesHeaderParser(policy=email.policy.default).parsebytes(message)
            message_id = str(parsed.get("Message-ID", "")).strip()
        payload = data_payload(message)
        size = len(payload) - 3
        caps = self._session.capabilities
        at = self.clock()
        if caps.size is not None and size > caps.size:
            self._trace(
                "send.refused",
                sender,
                recipients,
                message_id,
                size,
                at,
                "local: over SIZE",
            )
            raise MessageTooLargeError(
                f"message: {size} octets, the server accepts at most {caps.size}"
            )
        try:
            sent = await self._transaction(
                payload, sender, recipients, message_id, size, caps, at, read_receipt
            )
        except SubmissionError as exc:
            self._trace(
                "send.refused", sender, recipients, message_id, size, at, str(exc)
            )
            raise
        self._trace(
            "send.accepted",
            sender,
            recipients,
            message_id,
            size,
            at,
            str(sent.reply),
            refused={k: str(v) for k, v in sent.refused.items()},
            read_receipt=read_receipt,
        )
        return sent

    async def _transaction(
        self,
        payload: bytes,
        sender: str,
        recipients: Sequence[str],
        message_id: str,
        size: int,
        caps: Capabilities,
        at: datetime,
        read_receipt: bool,
    ) -> SentMessage:
        conn = self._session.conn
        eight_bit = any(b > 127 for b in payload)
        dsn = caps.has("DSN")
        commands = [
            mail_from(
                sender,
                size=size if caps.size is not None or caps.has("SIZE") else None,
                body_8bit=eight_bit and caps.has("8BITMIME"),
                ret="HDRS" if dsn else None,
                envid=message_id if dsn and 0 < len(message_id) <= MAX_ENVID else None,
            ),
            *(
                rcpt_to(r, notify=DSN_NOTIFY if dsn else (), orcpt=r if dsn else None)
                for r in recipients
            ),
        ]
        if caps.has("PIPELINING"):
            replies = await conn.pipeline(commands)
        else:
            replies = []
            for line in commands:
                replies.append(await conn.command(line))
                if not replies[0].positive:
                    break
        if not replies[0].positive:
            await self._reset()
            raise SenderRefusedError(f"sender {sender}: {replies[0]}", replies[0])
        accepted = tuple(
            r
            for r, reply in zip(recipients, replies[1:], strict=True)
            if reply.positive
        )
        refused = {
            r: reply
            for r, reply in zip(recipients, replies[1:], strict=True)
            if not reply.positive
        }
        if not accepted:
            await self._reset()
            raise RecipientsRefusedError(
                "every recipient refused: "
                + "; ".join(f"{r}: {reply}" for r, reply in refused.items()),
                dict(refused),
            )
        go = await conn.command(b"DATA\r\n")
        if go.code != 354:
            await self._reset()
            raise MessageRefusedError(f"DATA refused: {go}", go)
        await conn.send(payload)
        final = await conn.read_final_reply()
        if not final.positive:
            raise MessageRefusedError(f"message refused: {final}", final)
        return SentMessage(
            message_id=message_id,
            sender=sender,
            accepted=accepted,
            refused=refused,
            reply=final,
            size=size,
            at=at,
            read_receipt=read_receipt,
        )

    async def _reset(self) -> None:
        with contextlib.suppress(SubmissionError):
            await self._session.conn.command(b"RSET\r\n")

    def _trace(
        self,
        event: str,
        sender: str,
        recipients: Sequence[str],
        message_id: str,
        size: int,
        at: datetime,
        response: str,
        **extra: object,
    ) -> None:
        if self.traces is None:
            return
        self.traces.record(
            event,
            at=at,
            author=self._session.login or sender,
            sender=sender,
            recipients=list(recipients),
            message_id=message_id,
            size=size,
            response=response,
            **extra,
        )
