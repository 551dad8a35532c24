"""aiosmtpd hooks: gather facts, ask :mod:`relay.policy`, record the decision.

Each hook looks up what the policy needs (the account, the directory entry,
the operator whitelist, the thread state), calls one policy function, writes
one audit event when the decision is a refusal or a security fact, and
returns the reply. No rule lives here.

Failure handling (fail closed): a directory that cannot answer gives
``451 4.4.3``, a spool or thread store that cannot write gives
``451 4.3.0``, an S/MIME signature that cannot be checked gives
``451 4.7.5``; never an accept.

With ``[smime]`` configured, DATA verifies a signed message
(:mod:`relay.smime`, in a thread) and writes the result in the
``X-MSSante-Signature`` trace field; that field is always removed from what
a client sends, so only the relay's own reaches a mailbox.
"""

from __future__ import annotations

import asyncio
import binascii
import email.message
import email.policy
import email.utils
import io
import logging
import re
import traceback
from base64 import b64decode
from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from aiosmtpd.smtp import MISSING, AuthResult

from directory.errors import DirectoryError, InvalidFieldError
from directory.model import BalType, Mailbox, Patient, Status
from mssante.crypto import CryptoError
from relay import policy
from relay.accounts import Account, Attempt, Refusal
from relay.audit import AuditEvent
from relay.oauth import (
    SaslSyntaxError,
    error_challenge,
    parse_oauthbearer,
    parse_xoauth2,
)
from relay.patients import (
    PatientSettings,
    compose_emergency_notice,
    patient_initiated,
)
from relay.queue.spool import Envelope, Recipient, SpoolError
from relay.smime import SIGNATURE_HEADER, may_be_smime_signed, strip_field
from relay.smtp.server import RcptDsn, RelayEnvelope, RelaySMTP
from relay.tls import describe, peer_certificate

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from datetime import datetime
    from email.message import Message

    from aiosmtpd.smtp import Session

    from directory.model import Delegation
    from directory.protocol import Directory
    from relay.accounts import Authenticator, Outcome
    from relay.audit import AuditTrail
    from relay.oauth import BearerResponse
    from relay.smime import RelaySmime
    from relay.threads import ThreadStore

log = logging.getLogger("mssante.relay.smtp")
_T = TypeVar("_T")

R421_LOCKED: Final = "454 4.7.0 Too many authentication failures, try again later"
R535_INVALID: Final = "535 5.7.8 Authentication credentials invalid"
# RFC 4954 §6: a temporary failure (the token issuer's keys, the directory).
R454_TEMPORARY: Final = "454 4.7.0 Temporary authentication failure"
R554_BARE_LINE_ENDING: Final = policy.Reply(
    554, "5.5.2", "Bare CR or LF in message data is not allowed (RFC 5321 §2.3.8)"
)
R553_BAD_ADDRESS: Final = policy.Reply(553, "5.1.3", "Address syntax rejected")
R554_NO_FROM: Final = policy.Reply(554, "5.6.0", "Message has no valid From header")
# How long a connection reuses a directory answer (sender and recipient
# entries, delegations) for its next transactions: a client sending many
# messages over one session asks the directory once per address, not once per
# message. A change (suspension, revocation) applies to a session at most
# this late; new sessions always see it at once.
DIRECTORY_CACHE_SECONDS: Final = 30.0
# RFC 5322 §2.2: a header field line, "name:" then the body (ftext is
# printable US-ASCII but ":"); §2.2.3: a folded continuation line.
_FIELD_LINE: Final = re.compile(r"[\x21-\x39\x3b-\x7e]+:[^\r\n]*")
_FOLDED_LINE: Final = re.compile(r"[ \t][^\r\n]*")
# What io.IncrementalNewlineDecoder.newlines says of data with no line ending
# at all, or with CRLF only.
_CRLF_ONLY: Final = (None, "\r\n")


class SpoolWriter(Protocol):
    """Where an accepted message goes before its ``250``
    (:class:`relay.queue.commit.SpoolCommitter`): durable on return (stored
    in its mailboxes when all are local, or spooled and announced to
    delivery); ``accepted`` is called once it is durable, before its
    delivery is recorded."""

    async def write(
        self,
        envelope: Envelope,
        message: bytes,
        *,
        accepted: Callable[[Envelope], None] | None = None,
    ) -> Envelope: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class HandlerContext:
    """Everything the hooks need; built by :mod:`relay.app`."""

    directory: Directory
    audit: AuditTrail
    spool: SpoolWriter
    threads: ThreadStore
    local: policy.LocalDomains
    hostname: str
    clock: Callable[[], datetime]
    smime: RelaySmime | None = None  # None: no [smime] table
    authenticator: Authenticator
    # Recipients of other operators' domains are accepted on submission
    # (and queued for outbound delivery); False: relaying is refused.
    remote_delivery: bool = False
    patients: PatientSettings = field(default_factory=PatientSettings)


@dataclass(frozen=True, slots=True)
class Authenticated:
    """What a successful AUTH leaves in ``session.auth_data``.

    A wrapper, not the account itself: aiosmtpd copies an attribute named
    ``login`` into its deprecated ``login_data``.
    """

    account: Account


def _session_account(session: Session) -> Account | None:
    data: object = session.auth_data
    if session.authenticated and isinstance(data, Authenticated):
        return data.account
    return None


def _peer_ip(session: Session) -> str:
    peer: object = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer or "")


def _account_facts(account: Account) -> policy.AccountFacts:
    return policy.AccountFacts(
        login=account.login,
        owned=frozenset(account.mailboxes),
    )


def _has_bare_line_ending(data: bytes) -> bool:
    # RFC 5321 §2.3.8: CR and LF only as CRLF. A bare LF or CR is how SMTP
    # smuggling hides a second message (Postfix: smtpd_forbid_bare_newline).
    # The newline decoder of io records which line endings it met ("\r",
    # "\n", "\r\n") in one C pass (memchr when there is no CR at all);
    # latin-1 maps each byte to one character, so CR and LF stay themselves.
    # 100 KB in 41 us, against 190 us for three counts.
    seen = io.IncrementalNewlineDecoder(None, translate=False)
    seen.decode(data.decode("latin-1"), final=True)  # final: a trailing CR counts
    return seen.newlines not in _CRLF_ONLY


def _header_fields(head: bytes) -> list[tuple[str, str]] | None:
    """The fields of a plain header section, as the ``email`` parser stores
    them; None when the section is anything but plain (then the parser
    itself must read it).

    Plain: ASCII, CRLF line endings only, every line a field
    (RFC 5322 §2.2: printable name, no space, a colon) or the continuation of
    one (§2.2.3 folding), ending with the empty line. Each field goes through
    the very function the parser calls (``compat32.header_source_parse``), so
    the values are the parser's, folding included.
    """
    if not head.endswith(b"\r\n\r\n") or not head.isascii():
        return None
    fields: list[tuple[str, str]] = []
    source: list[str] = []
    header_source_parse = email.policy.compat32.header_source_parse
    for line in head[:-4].decode("ascii").split("\r\n"):
        if _FIELD_LINE.fullmatch(line):
            if source:
                fields.append(header_source_parse(source))
            source = [line + "\r\n"]
        elif source and _FOLDED_LINE.fullmatch(line):
            source.append(line + "\r\n")
        else:
            return None
    if source:
        fields.append(header_source_parse(source))
    return fields


def parse_head(head: bytes) -> Message:
    """The header section, exactly as ``BytesHeaderParser`` with ``compat32``
    parses it (headers, empty payload, no defects), without the parser's
    line-by-line machinery when the section is plain (:func:`_header_fields`);
    anything else goes to the parser."""
    fields = _header_fields(head)
    if fields is None:
        return BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)
    headers = email.message.Message(policy=email.policy.compat32)
    for name, value in fields:
        headers.set_raw(name, value)  # what the parser does with each field
    headers.set_payload("")  # headers only: the parser's empty body
    return headers


def _addresses(headers: Message, name: str) -> list[str]:
    values = headers.get_all(name) or []
    return [addr for _, addr in email.utils.getaddresses([str(v) for v in values])]


def _message_ids(headers: Message, name: str) -> list[str]:
    out: list[str] = []
    for value in headers.get_all(name) or []:
        out.extend(part for part in str(value).split() if part.startswith("<"))
    return out


class RelayHandler:
    """The hooks of one listener (``channel`` says which)."""

    def __init__(self, ctx: HandlerContext) -> None:
        self._ctx = ctx
        self._in_data = 0
        self._settled = asyncio.Event()
        self._settled.set()

    # -- any command ---------------------------------------------------------

    async def handle_exception(self, error: Exception) -> str:
        """The one boundary for what no hook expected: fail closed.

        aiosmtpd would answer ``500`` with the exception's text, a permanent
        refusal that may quote message data. We answer ``451 4.3.0`` (the
        client tries again later) and log the exception's type and where it
        was raised, never its text (it could hold health data).
        """
        frame = (
            traceback.extract_tb(error.__traceback__)[-1:]
            if error.__traceback__
            else []
        )
        where = f"{frame[0].filename}:{frame[0].lineno}" if frame else "?"
        log.error("SMTP command failed: %s at %s", type(error).__name__, where)
        return str(policy.R451_LOCAL_ERROR)

    # -- EHLO ----------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: RelayEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        kept = [r for r in responses[:-1] if r.strip() != "250-AUTH"]
        extra = ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN"]
        return [*kept, *extra, responses[-1]]

    # -- AUTH (RFC 4954; PLAIN RFC 4616, LOGIN, OAUTHBEARER RFC 7628, XOAUTH2,
    #    EXTERNAL RFC 4422 Appendix A). The decision is the Authenticator's.

    def _attempt(self, server: RelaySMTP, sasl: str) -> Attempt:
        assert server.session is not None  # noqa: S101
        return Attempt(
            protocol="smtp",
            sasl=sasl,
            cid=server.cid,
            peer=_peer_ip(server.session),
            tls=describe(server.ssl_object),
        )

    async def _initial(self, server: RelaySMTP, args: list[str]) -> bytes | None:
        """The initial response (RFC 4954 §4: ``=`` is an empty one) or a 334."""
        if len(args) == 1:
            blob = await server.challenge_auth("")
            return blob if isinstance(blob, bytes) else None
        if args[1] == "=":
            return b""
        try:
            return b64decode(args[1], validate=True)
        except binascii.Error:
            await server.push("501 5.5.2 Cannot decode base64")
            return None

    @staticmethod
    def _result(outcome: Outcome) -> AuthResult:
        if outcome.account is not None:
            return AuthResult(success=True, auth_data=Authenticated(outcome.account))
        if outcome.refusal is Refusal.LOCKED:
            return AuthResult(success=False, handled=False, message=R421_LOCKED)
        if outcome.refusal is Refusal.UNAVAILABLE:
            return AuthResult(success=False, handled=False, message=R454_TEMPORARY)
        return AuthResult(success=False, handled=False, message=R535_INVALID)

    async def _password(
        self, server: RelaySMTP, login: bytes, password: bytes, sasl: str
    ) -> AuthResult:
        auth = self._ctx.authenticator
        attempt = self._attempt(server, sasl)
        try:
            name = login.decode("utf-8")
            secret = password.decode("utf-8")
        except UnicodeDecodeError:
            name = login.decode("utf-8", "replace")
            return self._result(
                await auth.refuse(attempt, name, "credentials not UTF-8")
            )
        return self._result(await auth.password(attempt, name, secret))

    async def auth_PLAIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        blob = await self._initial(server, args)
        if blob is None:
            return AuthResult(success=False, handled=True)
        # RFC 4616 §2: [authzid] NUL authcid NUL passwd.
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 Cannot split the PLAIN response")
            return AuthResult(success=False, handled=True)
        authzid, login, password = parts
        if authzid and authzid != login:
            # Acting as another identity is what delegations are for.
            outcome = await self._ctx.authenticator.refuse(
                self._attempt(server, "PLAIN"),
                login.decode("utf-8", "replace"),
                "authorization identity differs",
            )
            return self._result(outcome)
        return await self._password(server, login, password, "PLAIN")

    async def auth_LOGIN(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await server.challenge_auth(server.AuthLoginUsernameChallenge)
        else:
            try:
                login = b64decode(args[1], validate=True)
            except binascii.Error:
                await server.push("501 5.5.2 Cannot decode base64")
                return AuthResult(success=False, handled=True)
        if login is MISSING:
            return AuthResult(success=False, handled=True)
        password = await server.challenge_auth(server.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False, handled=True)
        assert isinstance(login, bytes)  # noqa: S101
        assert isinstance(password, bytes)  # noqa: S101
        return await self._password(server, login, password, "LOGIN")

    async def _bearer(
        self,
        server: RelaySMTP,
        args: list[str],
        sasl: str,
        parse: Callable[[bytes], BearerResponse],
    ) -> AuthResult:
        blob = await self._initial(server, args)
        if blob is None:
            return AuthResult(success=False, handled=True)
        try:
            response = parse(blob)
        except SaslSyntaxError:
            await server.push(f"501 5.5.2 Malformed {sasl} response")
            return AuthResult(success=False, handled=True)
        auth = self._ctx.authenticator
        outcome = await auth.bearer(self._attempt(server, sasl), response)
        if outcome.refusal is Refusal.INVALID:
            # RFC 7628 §3.2.2: the error JSON in a 334 challenge; the client
            # answers with a dummy ^A (§3.2.3) and the server then fails.
            rules = auth.tokens.rules if auth.tokens is not None else None
            reply = await server.challenge_auth(error_challenge(sasl, rules))
            if reply is MISSING:  # the client cancelled with "*": 501 is sent
                return AuthResult(success=False, handled=True)
        return self._result(outcome)

    async def auth_OAUTHBEARER(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        return await self._bearer(server, args, "OAUTHBEARER", parse_oauthbearer)

    async def auth_XOAUTH2(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        return await self._bearer(server, args, "XOAUTH2", parse_xoauth2)

    async def auth_EXTERNAL(self, server: RelaySMTP, args: list[str]) -> AuthResult:
        # RFC 4422 Appendix A: the response is the authorization identity,
        # empty to act as the identity the certificate establishes.
        blob = await self._initial(server, args)
        if blob is None:
            return AuthResult(success=False, handled=True)
        try:
            authzid = blob.decode("utf-8") or None
        except UnicodeDecodeError:
            await server.push("501 5.5.2 Authorization identity is not UTF-8")
            return AuthResult(success=False, handled=True)
        outcome = await self._ctx.authenticator.certificate(
            self._attempt(server, "EXTERNAL"),
            peer_certificate(server.ssl_object),
            authzid,
        )
        return self._result(outcome)

    # -- MAIL FROM -----------------------------------------------------------

    async def _cached(
        self,
        server: RelaySMTP,
        key: tuple[str, ...],
        ask: Callable[[], Awaitable[_T]],
    ) -> _T:
        """The directory's answer to ``ask``, reused by this connection for
        :data:`DIRECTORY_CACHE_SECONDS` (failures are never kept)."""
        now = asyncio.get_running_loop().time()
        kept = server.directory_answers.get(key)
        if kept is not None and now - kept[0] < DIRECTORY_CACHE_SECONDS:
            answer: _T = kept[1]
            return answer
        answer = await ask()
        server.directory_answers[key] = (now, answer)
        return answer

    async def _lookup(
        self, server: RelaySMTP, address: str
    ) -> tuple[Mailbox | Patient | None, policy.Reply | None]:
        if not address:
            return None, None
        try:
            entry = await self._cached(
                server,
                ("resolve", address),
                lambda: self._ctx.directory.resolve(address),
            )
            return entry, None
        except InvalidFieldError:
            return None, R553_BAD_ADDRESS
        except DirectoryError as exc:
            self._ctx.audit.emit(
                AuditEvent.DIRECTORY_LOOKUP_FAILED,
                cid=server.cid,
                target=address,
                reason=type(exc).__name__,
            )
            return None, policy.R451_DIRECTORY_UNAVAILABLE

    async def _session_facts(
        self, server: RelaySMTP, session: Session
    ) -> policy.SessionFacts:
        if server.channel is policy.Channel.SUBMISSION:
            account = _session_account(session)
            return policy.SessionFacts(
                channel=server.channel,
                account=_account_facts(account) if account is not None else None,
            )
        cert = peer_certificate(server.ssl_object)
        domains: frozenset[str] = frozenset()
        if cert is not None:
            operators = await self._ctx.directory.operators_for_certificate(
                cert.subject_dn
            )
            domains = policy.whitelisted_domains(
                operators, cert.issuer_dn, cert.fingerprint
            )
        return policy.SessionFacts(
            channel=server.channel,
            operator_domains=domains,
            has_client_certificate=cert is not None,
        )

    async def handle_MAIL(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: RelayEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if address == "<>":  # RFC 5321 §4.5.5: the null reverse-path
            address = ""
        entry, failure = await self._lookup(server, address)
        if failure is not None:
            return str(failure)
        try:
            facts = await self._session_facts(server, session)
            delegations: list[Delegation] = []
            if facts.account is not None and address:
                login = facts.account.login
                delegations = await self._cached(
                    server,
                    ("delegations", login, address),
                    lambda: self._ctx.directory.delegations(
                        account=login, mailbox=address
                    ),
                )
        except DirectoryError as exc:
            self._ctx.audit.emit(
                AuditEvent.DIRECTORY_LOOKUP_FAILED,
                cid=server.cid,
                target=address,
                reason=type(exc).__name__,
            )
            return str(policy.R451_DIRECTORY_UNAVAILABLE)
        now = self._ctx.clock()
        if facts.channel is policy.Channel.SUBMISSION:
            decision = policy.check_submission_sender(
                facts, address, entry, delegations, self._ctx.local, now
            )
        else:
            decision = policy.check_mx_sender(facts, address, entry, self._ctx.local)
        if not decision.accepted:
            self._ctx.audit.emit(
                AuditEvent.SMTP_SENDER_REJECTED,
                cid=server.cid,
                channel=facts.channel,
                actor=facts.account.login if facts.account else None,
                peer=_peer_ip(session),
                sender=address,
                code=decision.reply.status,
                reason=decision.reason,
            )
            return str(decision.reply)
        # aiosmtpd needs a true value to accept RCPT; "<>" stands for null.
        envelope.mail_from = address or "<>"
        envelope.mail_options.extend(mail_options)
        envelope.dsn = server.pending_mail
        envelope.usable_from = {address}
        envelope.sender_facts = policy.SenderFacts(
            address=address,
            role=policy.role_of(address, entry, self._ctx.local),
            entry=entry,
            identities=policy.sender_identities(address, entry),
            via=decision.via,
        )
        return str(decision.reply)

    # -- RCPT TO -------------------------------------------------------------

    async def handle_RCPT(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: RelayEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        sender = envelope.sender_facts
        assert sender is not None  # noqa: S101 - aiosmtpd checks MAIL came first
        entry, failure = await self._lookup(server, address)
        remote: policy.RemoteDomain | None = None
        if failure is None:
            remote, failure = await self._remote_domain(server, address)
        if failure is not None:
            return str(failure)
        decision = self._judge_recipient(
            server, envelope, sender, address, entry, remote
        )
        if not decision.accepted:
            return str(decision.reply)
        if isinstance(entry, Patient):
            envelope.patient_recipients += 1
            envelope.patients.append(entry)
        if decision.needs_thread:
            envelope.thread_checks[address] = entry
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.rcpt_dsn[address] = server.pending_rcpt
        return str(decision.reply)

    def _judge_recipient(
        self,
        server: RelaySMTP,
        envelope: RelayEnvelope,
        sender: policy.SenderFacts,
        address: str,
        entry: Mailbox | Patient | None,
        remote: policy.RemoteDomain | None,
        **extra: str,
    ) -> policy.Decision:
        """The recipient rules for ``address``, recorded in the audit trail."""
        decision = policy.check_recipient(
            sender,
            address,
            entry,
            self._ctx.local,
            envelope.patient_recipients,
            self._ctx.clock(),
            remote,
        )
        self._audit_recipient(server, sender, address, decision, **extra)
        return decision

    def _audit_recipient(
        self,
        server: RelaySMTP,
        sender: policy.SenderFacts,
        address: str,
        decision: policy.Decision,
        **extra: str,
    ) -> None:
        self._ctx.audit.emit(
            AuditEvent.SMTP_RECIPIENT_ACCEPTED
            if decision.accepted
            else AuditEvent.SMTP_RECIPIENT_REJECTED,
            cid=server.cid,
            channel=server.channel,
            sender=sender.address,
            recipient=address,
            code=decision.reply.status,
            reason=decision.reason,
            **extra,
        )

    async def _remote_domain(
        self, server: RelaySMTP, address: str
    ) -> tuple[policy.RemoteDomain | None, policy.Reply | None]:
        """The operator of a non-local recipient's domain, on submission only."""
        ctx = self._ctx
        if (
            not ctx.remote_delivery
            or server.channel is not policy.Channel.SUBMISSION
            or ctx.local.is_local(address)
        ):
            return None, None
        domain = address.rpartition("@")[2].lower()
        try:
            operator = await ctx.directory.operator(domain)
        except InvalidFieldError:
            return None, R553_BAD_ADDRESS
        except DirectoryError as exc:
            ctx.audit.emit(
                AuditEvent.DIRECTORY_LOOKUP_FAILED,
                cid=server.cid,
                target=domain,
                reason=type(exc).__name__,
            )
            return None, policy.R451_DIRECTORY_UNAVAILABLE
        return policy.RemoteDomain(domain=domain, operator=operator), None

    # -- DATA ----------------------------------------------------------------

    def _refuse_message(
        self, server: RelaySMTP, envelope: RelayEnvelope, decision: policy.Decision
    ) -> str:
        self._ctx.audit.emit(
            AuditEvent.MESSAGE_REJECTED,
            cid=server.cid,
            channel=server.channel,
            sender=envelope.mail_from,
            recipients=list(envelope.rcpt_tos),
            code=decision.reply.status,
            reason=decision.reason,
        )
        return str(decision.reply)

    async def handle_DATA(
        self, server: RelaySMTP, session: Session, envelope: RelayEnvelope
    ) -> str:
        # Counted, so that a shutdown lets a message being spooled get its
        # reply before the spool and the audit trail close.
        self._in_data += 1
        self._settled.clear()
        try:
            return await self._handle_data(server, session, envelope)
        finally:
            self._in_data -= 1
            if not self._in_data:
                self._settled.set()

    async def settled(self, *, within: float) -> bool:
        """Wait until no message is between its DATA and its reply."""
        try:
            async with asyncio.timeout(within):
                await self._settled.wait()
        except TimeoutError:
            return False
        return True

    async def _handle_data(
        self, server: RelaySMTP, session: Session, envelope: RelayEnvelope
    ) -> str:
        data = envelope.original_content or b""
        if _has_bare_line_ending(data):
            return self._refuse_message(
                server,
                envelope,
                policy.Decision(R554_BARE_LINE_ENDING, "bare CR or LF"),
            )
        # Only the header section: the body can be megabytes (RFC 5322 §2.1).
        head_end = data.find(b"\r\n\r\n")
        head = data if head_end < 0 else data[: head_end + 4]
        # Only the relay writes its signature trace field.
        stripped = strip_field(head, SIGNATURE_HEADER)
        if stripped is not head:
            data = stripped + data[len(head) :]
            head = stripped
        headers = parse_head(head)
        sender = envelope.sender_facts
        assert sender is not None  # noqa: S101
        added: list[str] = []
        now = self._ctx.clock()
        message_id = str(headers.get("Message-ID", "")).strip()
        if server.channel is policy.Channel.SUBMISSION:
            account = _session_account(session)
            assert account is not None  # noqa: S101 - MAIL FROM required it
            froms = _addresses(headers, "From")
            if not froms:
                return self._refuse_message(
                    server, envelope, policy.Decision(R554_NO_FROM, "no From header")
                )
            checked = policy.check_from_header(
                _account_facts(account),
                sender.address,
                froms,
                headers.get("Sender"),
                frozenset(envelope.usable_from),
            )
            if not checked.decision.accepted:
                return self._refuse_message(server, envelope, checked.decision)
            if checked.add_sender:
                added.append(f"Sender: {checked.add_sender}")
            # RFC 6409 §8: a submission server may add Message-ID and Date.
            if not message_id:
                message_id = email.utils.make_msgid(domain=self._ctx.hostname)
                added.append(f"Message-ID: {message_id}")
            if headers.get("Date") is None:
                added.append(f"Date: {email.utils.format_datetime(now)}")
        references = _message_ids(headers, "In-Reply-To") + _message_ids(
            headers, "References"
        )
        if sender.role is policy.Role.PATIENT and envelope.thread_checks:
            refused = await self._check_patient_threads(
                sender, references, envelope, now
            )
            if refused is not None:
                return self._refuse_message(server, envelope, refused)
        if (
            sender.role is policy.Role.PROFESSIONAL
            and envelope.patients
            and policy.asks_treating_copy(headers.get(policy.COPY_TREATING_HEADER))
        ):
            refused = await self._copy_to_treating(server, envelope, sender)
            if refused is not None:
                return self._refuse_message(server, envelope, refused)
        trace: list[str] = []
        if self._ctx.smime is not None and may_be_smime_signed(headers):
            signature = await self._check_signature(
                server, envelope, self._ctx.smime, headers, data, message_id, now
            )
            if isinstance(signature, policy.Decision):
                return self._refuse_message(server, envelope, signature)
            trace = [signature] if signature else []
        received = self._received_header(server, session, now)
        stored = (
            "\r\n".join([*trace, received, *added]).encode("utf-8") + b"\r\n" + data
        )
        spooled = Envelope(
            sender=sender.address,
            recipients=tuple(
                Recipient(
                    address=r,
                    notify=envelope.rcpt_dsn.get(r, RcptDsn()).notify,
                    orcpt=envelope.rcpt_dsn.get(r, RcptDsn()).orcpt,
                )
                for r in envelope.rcpt_tos
            ),
            received_at=now,
            channel=server.channel.value,
            cid=server.cid,
            account=account.login if (account := _session_account(session)) else None,
            envid=envelope.dsn.envid,
            ret=envelope.dsn.ret,
            body="8BITMIME" if "BODY=8BITMIME" in envelope.mail_options else "7BIT",
            smtputf8=envelope.smtp_utf8,
            message_ref=self._ctx.audit.message_ref(message_id) if message_id else "",
        )
        peer = _peer_ip(session)

        def accepted(durable: Envelope) -> None:
            # Once the message is durable, before its delivery is recorded.
            self._ctx.audit.emit(
                AuditEvent.MESSAGE_ACCEPTED,
                cid=server.cid,
                channel=server.channel,
                actor=durable.account,
                peer=peer,
                sender=durable.sender,
                # owner, or delegation / proxy: the account sent on the
                # sender's behalf (None on MX).
                via=sender.via or None,
                recipients=[r.address for r in durable.recipients],
                queue_id=durable.queue_id,
                message_ref=durable.message_ref,
                size=len(stored),
            )

        try:
            if self._concerns_threads(sender, envelope, message_id):
                await asyncio.to_thread(
                    self._record_threads,
                    sender,
                    envelope,
                    headers,
                    message_id,
                    references,
                )
            # Durable on return (in its mailboxes, or in the spool), shared
            # with the messages ending meanwhile; ``accepted`` ran by then.
            spooled = await self._ctx.spool.write(spooled, stored, accepted=accepted)
        except (OSError, SpoolError) as exc:
            self._ctx.audit.emit(
                AuditEvent.MESSAGE_REJECTED,
                cid=server.cid,
                sender=envelope.mail_from,
                code="4.3.0",
                reason=f"spool write failed: {type(exc).__name__}",
            )
            return str(policy.R451_LOCAL_ERROR)
        if sender.role is policy.Role.PATIENT and patient_initiated(references):
            await self._answer_patient(server, envelope, sender, message_id, now)
        return f"250 2.0.0 Ok: queued as {spooled.queue_id}"

    async def _copy_to_treating(
        self, server: RelaySMTP, envelope: RelayEnvelope, sender: policy.SenderFacts
    ) -> policy.Decision | None:
        """Add the patient's treating doctor as a recipient, when allowed.

        Returns a decision only when the directory cannot answer (fail
        closed: the copy was asked for, so the message waits). A doctor the
        rules refuse, or none declared, leaves the message to the patient
        alone; the audit trail says why.
        """
        patient: Patient = envelope.patients[0]  # one patient per message
        party = policy.treating_doctor(patient)
        doctor: Mailbox | Patient | None = None
        address = ""
        failure: policy.Reply | None = None
        if "@" in party:
            address = party
            doctor, failure = await self._lookup(server, address)
        elif party:
            try:
                owned = await self._ctx.directory.mailboxes_of(party)
            except DirectoryError:
                failure = policy.R451_DIRECTORY_UNAVAILABLE
            else:
                personal = [m for m in owned if m.bal_type is BalType.PER] or owned
                active = [m for m in personal if m.status is Status.ACTIVE]
                chosen = active or personal
                if chosen:
                    doctor = chosen[0]
                    address = chosen[0].address
        remote: policy.RemoteDomain | None = None
        if failure is None and address:
            remote, failure = await self._remote_domain(server, address)
        if failure is not None:
            return policy.Decision(failure, "directory unavailable (treating doctor)")
        copy = {"patient": patient.address or "", "copy": "treating-doctor"}
        if address and address not in envelope.rcpt_tos:
            decision = self._judge_recipient(
                server, envelope, sender, address, doctor, remote, **copy
            )
            if decision.accepted:
                envelope.rcpt_tos.append(address)
            return None
        if address:
            decision = policy.Decision(
                policy.R250_RECIPIENT_OK, "treating doctor already a recipient"
            )
        else:
            reason = "treating doctor has no mailbox" if party else "no treating doctor"
            decision = policy.Decision(policy.R550_MAILBOX_UNKNOWN, reason)
        self._audit_recipient(server, sender, address, decision, **copy)
        return None

    async def _answer_patient(
        self,
        server: RelaySMTP,
        envelope: RelayEnvelope,
        sender: policy.SenderFacts,
        message_id: str,
        now: datetime,
    ) -> None:
        """Issue 10: "not an emergency channel", once per professional recipient.

        After the message is spooled: a notice that cannot be written is
        logged, it never turns an accepted message into a refusal.
        """
        ctx = self._ctx
        for entry in envelope.thread_checks.values():
            if not isinstance(entry, Mailbox):
                continue
            notice = ctx.patients.emergency_for(entry)
            if not notice.enabled:
                continue
            data = compose_emergency_notice(
                professional=entry,
                patient=sender.address,
                original_id=message_id,
                notice=notice,
                hostname=ctx.hostname,
                now=now,
            )
            # RFC 3834 §3.3: an automatic answer goes with the null sender.
            answer = Envelope(
                sender="",
                recipients=(Recipient(address=sender.address),),
                received_at=now,
                channel="local",
                cid=server.cid,
            )
            try:
                spooled = await ctx.spool.write(answer, data)  # announced on write
            except (OSError, SpoolError) as exc:
                log.error("emergency notice not spooled: %s", type(exc).__name__)
                continue
            ctx.audit.emit(
                AuditEvent.PATIENT_NOTICE_SENT,
                cid=server.cid,
                kind="not-an-emergency-channel",
                actor=entry.address,
                recipient=sender.address,
                queue_id=spooled.queue_id,
            )

    async def _check_signature(
        self,
        server: RelaySMTP,
        envelope: RelayEnvelope,
        smime: RelaySmime,
        headers: Message,
        data: bytes,
        message_id: str,
        now: datetime,
    ) -> policy.Decision | str:
        """Verify the S/MIME signature; a refusal, or the trace field to add."""
        sender = envelope.sender_facts
        assert sender is not None  # noqa: S101
        froms = _addresses(headers, "From")
        # RFC 8550 §3: the signer speaks for the From or Sender address.
        addresses = [sender.address, *froms, *_addresses(headers, "Sender")]
        try:
            verification = await asyncio.to_thread(
                smime.verify,
                data,
                addresses=addresses,
                sender_entry=sender.entry,
                at=now,
            )
        except CryptoError as exc:
            verification = None
            log_reason = f"check failed: {type(exc).__name__}"
            decision = policy.check_signature(None, policy.SignatureAction.REFUSE)
        else:
            if verification is None:
                return ""  # an S/MIME envelope: nothing the relay can verify
            log_reason = verification.reason.value
            peer = smime.settings.for_address(sender.address or next(iter(froms), ""))
            decision = policy.check_signature(
                verification.reason, peer.invalid_signature
            )
        signer = smime.signer_address(verification, addresses)
        self._ctx.audit.emit(
            AuditEvent.SMIME_VERIFICATION_SUCCEEDED
            if log_reason == "valid"
            else AuditEvent.SMIME_VERIFICATION_FAILED,
            cid=server.cid,
            channel=server.channel,
            sender=sender.address,
            signer=signer,
            reason=log_reason,
            code=decision.reply.status,
            message_ref=self._ctx.audit.message_ref(message_id) if message_id else "",
        )
        if not decision.accepted:
            return decision
        return smime.trace_header(verification, signer, now)

    async def _check_patient_threads(
        self,
        sender: policy.SenderFacts,
        references: list[str],
        envelope: RelayEnvelope,
        now: datetime,
    ) -> policy.Decision | None:
        facts = await asyncio.to_thread(
            self._ctx.threads.facts, sender.address, references
        )
        patient = sender.entry if isinstance(sender.entry, Patient) else None
        for entry in envelope.thread_checks.values():
            if not isinstance(entry, Mailbox):
                continue
            decision = policy.check_patient_message(patient, entry, facts, now)
            if not decision.accepted:
                return decision
        return None

    def _concerns_threads(
        self, sender: policy.SenderFacts, envelope: RelayEnvelope, message_id: str
    ) -> bool:
        """Whether :meth:`_record_threads` has anything to record (no thread
        hop for the common professional-to-professional message)."""
        return bool(message_id) and (
            sender.role is policy.Role.PATIENT
            or any(self._ctx.local.is_patient_address(r) for r in envelope.rcpt_tos)
        )

    def _record_threads(
        self,
        sender: policy.SenderFacts,
        envelope: RelayEnvelope,
        headers: Message,
        message_id: str,
        references: list[str],
    ) -> None:
        if not message_id:
            return
        if sender.role is policy.Role.PATIENT:
            self._ctx.threads.record(
                patient=sender.address,
                message_id=message_id,
                references=references,
                reply_addresses=None,
            )
            return
        patients = [
            r for r in envelope.rcpt_tos if self._ctx.local.is_patient_address(r)
        ]
        if not patients:
            return
        reply_to = _addresses(headers, "Reply-To") or _addresses(headers, "From")
        closes = policy.closes_thread(headers.get("Subject"), headers.get("X-MSS-MES"))
        for patient in patients:
            self._ctx.threads.record(
                patient=patient,
                message_id=message_id,
                references=references,
                reply_addresses=reply_to or [sender.address],
                author_identities=sender.identities,
                closes=closes,
            )

    def _received_header(
        self, server: RelaySMTP, session: Session, now: datetime
    ) -> str:
        # RFC 5321 §4.4 trace information; RFC 3848 protocol names.
        tls = describe(server.ssl_object)
        authenticated = session.authenticated
        protocol = "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")
        helo = session.host_name or "unknown"
        peer = _peer_ip(session)
        tls_note = f" ({tls})" if tls else ""
        return (
            f"Received: from {helo} ([{peer}])\r\n"
            f"\tby {self._ctx.hostname} (mssante) with {protocol} id {server.cid}{tls_note};\r\n"
            f"\t{email.utils.format_datetime(now)}"
        )
