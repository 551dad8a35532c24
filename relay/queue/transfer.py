"""Outbound delivery: the workers that empty the outbound queue into other operators.

Owns: the scheduling of the outbound queue (which destination to try, how
many sessions per destination and in all), one task per destination
session (resolve, connect over mutual TLS, send every due message on the
same connection), the recording of each recipient's outcome with its retry
time, and the DSNs this relay writes to its own senders: failed, delayed
(when asked), and relayed (when the peer does not take DSN requests over).

What must stay true:

- A recipient is delivered, deferred (retry later, per
  :class:`relay.queue.schedule.RetryPolicy`) or bounced; a deferral past the
  queue lifetime bounces. Every outcome is an audit event, with the reason.
- No message goes to a peer that is not verified and whitelisted for the
  destination domain (:mod:`relay.queue.remote`); a destination that cannot
  be reached defers all its due recipients, it does not spin.
- A DSN is never written about a DSN (null sender, RFC 3461 §6.2); a DSN's
  delivery key is derived from the message and its recipients, so a replay
  after a crash stores it once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import logging
import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

from directory.errors import DirectoryError
from mssante import Timeouts
from mssante.message import Action, RecipientStatus
from relay import policy
from relay.audit import AuditEvent
from relay.queue.notices import compose_notice, orcpt_address
from relay.queue.outbound import OutboundError, Outcome, State
from relay.queue.remote import (
    DEFAULT_MX_PORT,
    RecipientReply,
    RemoteSession,
    SessionError,
)
from relay.queue.resolve import ResolveError
from relay.queue.schedule import (
    RetryPolicy,
    Verdict,
    verdict,
    wants_failure_notice,
    wants_success_notice,
)
from relay.store import StoreError

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from directory.protocol import Directory
    from relay.audit import AuditTrail
    from relay.queue.outbound import (
        Claimed,
        OutboundQueue,
        QueuedMessage,
        QueuedRecipient,
    )
    from relay.queue.resolve import MailHost, Resolver
    from relay.store import MailStore
    from relay.tls import PeerCertificate

log = logging.getLogger("mssante.relay.outbound")

# Postfix: default_process_limit 100, default_destination_concurrency_limit 20;
# an MSSanté relay talks to a few dozen operators, so half suffices.
DEFAULT_CONCURRENCY: Final = 50
DEFAULT_DESTINATION_CONCURRENCY: Final = 10
# Messages claimed at once by a session, and sent on one connection before
# it is closed (Postfix's smtp_connection_reuse_count_limit is unlimited;
# a bound spreads load over the peer's MX hosts).
DEFAULT_BATCH: Final = 20
DEFAULT_MESSAGES_PER_CONNECTION: Final = 500
# How often the queue is looked at when nothing wakes the scheduler (the
# admin CLI changes the queue from another process).
DEFAULT_POLL_INTERVAL: Final = 1.0
# Threads for the outbound queue and the DSNs written to the store.
QUEUE_THREADS: Final = 4
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class TransferSettings:
    port: int = DEFAULT_MX_PORT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = DEFAULT_CONCURRENCY
    destination_concurrency: int = DEFAULT_DESTINATION_CONCURRENCY
    batch: int = DEFAULT_BATCH
    messages_per_connection: int = DEFAULT_MESSAGES_PER_CONNECTION
    poll_interval: float = DEFAULT_POLL_INTERVAL
    timeouts: Timeouts = field(default_factory=Timeouts)


@dataclass(slots=True)
class _Notices:
    """The DSN statuses one message collects in one pass, by action."""

    by_action: dict[Action, list[RecipientStatus]] = field(default_factory=dict)

    def add(self, status: RecipientStatus) -> None:
        self.by_action.setdefault(status.action, []).append(status)


class OutboundDelivery:
    """The scheduler and its destination sessions (runs on the event loop)."""

    def __init__(
        self,
        *,
        queue: OutboundQueue,
        resolver: Resolver,
        directory: Directory,
        store: MailStore,
        audit: AuditTrail,
        tls: ssl.SSLContext,
        hostname: str,
        clock: Callable[[], datetime],
        settings: TransferSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._queue = queue
        self._resolver = resolver
        self._directory = directory
        self._store = store
        self._audit = audit
        self._tls = tls
        self._hostname = hostname
        self._clock = clock
        self._settings = settings or TransferSettings()
        self._rng = rng or random.Random()  # noqa: S311 - retry jitter, not secrecy
        self._wake = asyncio.Event()
        self._active: dict[str, int] = {}
        self._sessions: set[asyncio.Task[None]] = set()
        self._scheduler: asyncio.Task[None] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=QUEUE_THREADS, thread_name_prefix="outbound"
        )

    # -- lifecycle ------------------------------------------------------------

    async def _call(
        self,
        fn: Callable[..., _T],
        *args: object,
        **kwargs: object,
    ) -> _T:
        """Blocking queue and store work, in this delivery's own threads (never
        behind the SMTP side's spool writes in the default executor)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(fn, *args, **kwargs)
        )

    def start(self) -> None:
        self._scheduler = asyncio.create_task(self._run(), name="outbound")

    def wake(self) -> None:
        """Something was queued or changed: look at the queue now."""
        self._wake.set()

    async def stop(self) -> None:
        tasks = [t for t in (self._scheduler, *self._sessions) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._scheduler = None
        self._pool.shutdown(wait=True)

    # -- scheduling -----------------------------------------------------------

    async def _run(self) -> None:
        settings = self._settings
        while True:
            self._wake.clear()
            now = self._clock()
            try:
                due = await self._call(self._queue.due, now)
                next_due = await self._call(self._queue.next_due)
            except OutboundError:
                log.exception("outbound queue unreadable; retrying")
                due, next_due = {}, None
            for domain, count in sorted(due.items()):
                wanted = min(
                    settings.destination_concurrency, math.ceil(count / settings.batch)
                )
                while (
                    self._active.get(domain, 0) < wanted
                    and len(self._sessions) < settings.concurrency
                ):
                    self._start_session(domain)
            wait = settings.poll_interval
            if next_due is not None:
                wait = min(wait, max((next_due - now).total_seconds(), 0.01))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    def _start_session(self, domain: str) -> None:
        self._active[domain] = self._active.get(domain, 0) + 1
        task = asyncio.create_task(self._destination(domain), name=f"outbound-{domain}")
        self._sessions.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._sessions.discard(finished)
            left = self._active.get(domain, 1) - 1
            if left:
                self._active[domain] = left
            else:
                self._active.pop(domain, None)
            if not finished.cancelled() and (error := finished.exception()) is not None:
                # A bug or a queue failure: the leased recipients come back
                # when their lease ends; say what happened, without content.
                log.error(
                    "outbound session for %s failed: %s", domain, type(error).__name__
                )
            self.wake()

        task.add_done_callback(done)

    # -- one destination ------------------------------------------------------

    async def _claim(self, domain: str) -> list[Claimed]:
        return await self._call(
            self._queue.claim, domain, self._clock(), limit=self._settings.batch
        )

    async def _destination(self, domain: str) -> None:
        try:
            hosts = await self._resolver.mail_hosts(domain)
        except ResolveError as exc:
            code = 550 if exc.permanent else 451
            await self._fail_all(
                domain, RecipientReply("", code, f"{code} {exc.status} {exc}")
            )
            return
        session: RemoteSession | None = None
        sent_on_connection = 0
        try:
            while claimed := await self._claim(domain):
                if session is None:
                    session, failure = await self._connect(domain, hosts)
                    sent_on_connection = 0
                    if session is None:
                        await self._settle(_all_failed(claimed, failure), None)
                        await self._fail_all(domain, failure)
                        return
                # The batch's outcomes are recorded together (one commit).
                results: list[tuple[Claimed, Sequence[RecipientReply]]] = []
                for n, item in enumerate(claimed):
                    try:
                        replies = await session.send(
                            item.message, item.recipients, item.content
                        )
                    except SessionError as exc:
                        results += _all_failed(claimed[n:], _session_reply(exc))
                        await self._settle(results, session)
                        results = []
                        await session.close()
                        session = None
                        break
                    results.append((item, replies))
                    sent_on_connection += 1
                if results:
                    await self._settle(results, session)
                if (
                    session is not None
                    and sent_on_connection >= self._settings.messages_per_connection
                ):
                    await session.close()
                    session = None
        finally:
            if session is not None:
                await session.close()

    async def _fail_all(self, domain: str, failure: RecipientReply) -> None:
        """Apply one failure to every due recipient of ``domain`` (a dead destination)."""
        while claimed := await self._claim(domain):
            await self._settle(_all_failed(claimed, failure), None)

    async def _connect(
        self, domain: str, hosts: Sequence[MailHost]
    ) -> tuple[RemoteSession | None, RecipientReply]:
        last = RecipientReply("", 451, f"451 4.4.1 {domain}: no host to try")

        async def check_peer(cert: PeerCertificate | None) -> str | None:
            return await self._check_peer(domain, cert)

        for host in hosts:
            for address in host.addresses:
                try:
                    session = await RemoteSession.open(
                        host,
                        address,
                        port=self._settings.port,
                        tls=self._tls,
                        helo_name=self._hostname,
                        timeouts=self._settings.timeouts,
                        check_peer=check_peer,
                    )
                except SessionError as exc:
                    last = _session_reply(exc)
                    continue
                return session, last
        return None, last

    async def _check_peer(
        self, domain: str, cert: PeerCertificate | None
    ) -> str | None:
        """None when the peer may receive mail for ``domain``; the reason if not."""
        if cert is None:
            return "the peer presented no certificate"
        try:
            operators = await self._directory.operators_for_certificate(cert.subject_dn)
        except DirectoryError as exc:
            return f"directory unavailable ({type(exc).__name__})"
        if domain in policy.whitelisted_domains(
            operators, cert.issuer_dn, cert.fingerprint
        ):
            return None
        return f"certificate {cert.subject_dn} is not whitelisted for {domain}"

    # -- outcomes ---------------------------------------------------------------

    async def _settle(
        self,
        results: Sequence[tuple[Claimed, Sequence[RecipientReply]]],
        session: RemoteSession | None,
    ) -> None:
        """Record the outcomes of a batch in one commit, then audit and notify."""
        now = self._clock()
        remote_mta = session.host.name if session is not None else None
        tls = session.tls if session is not None else None
        outcomes: list[Outcome] = []
        events: list[tuple[AuditEvent, Claimed, QueuedRecipient, str, str]] = []
        notices: list[tuple[Claimed, _Notices]] = []
        for item, replies in results:
            mine = _Notices()
            for recipient, reply in zip(item.recipients, replies, strict=True):
                event, outcome, status = self._outcome(
                    item.message, recipient, reply, remote_mta, now
                )
                outcomes.append(outcome)
                if status is not None:
                    mine.add(status)
                events.append((event, item, recipient, reply.status, outcome.reply))
            notices.append((item, mine))
        await self._call(self._queue.record, outcomes)
        for event, item, recipient, code, reason in events:
            self._audit.emit(
                event,
                cid=item.message.cid,
                queue_id=item.message.id,
                sender=item.message.sender,
                recipient=recipient.address,
                remote_mta=remote_mta,
                tls=tls,
                code=code,
                reason=reason,
                attempts=recipient.attempts + 1,
                message_ref=item.message.message_ref,
            )
        for item, mine in notices:
            await self._send_notices(item, mine, now)

    def _outcome(
        self,
        message: QueuedMessage,
        recipient: QueuedRecipient,
        reply: RecipientReply,
        remote_mta: str | None,
        now: datetime,
    ) -> tuple[AuditEvent, Outcome, RecipientStatus | None]:
        """What one reply means for one recipient, and the DSN status it calls for."""
        retry = self._settings.retry
        verdict_ = verdict(reply.code)
        text = reply.reply
        if verdict_ is Verdict.DEFERRED and retry.expired(message.queued_at, now):
            verdict_ = Verdict.BOUNCED
            text = f"{text} (gave up after {retry.lifetime / 86400:g} days)"
        status = RecipientStatus(
            final_recipient=recipient.address,
            action=Action.RELAYED,
            status="2.0.0",
            original_recipient=orcpt_address(recipient.orcpt),
            remote_mta=remote_mta,
            diagnostic_code=text,
            last_attempt_date=now,
        )
        ids = recipient.message_id, recipient.address
        if verdict_ is Verdict.DELIVERED:
            # RFC 3461 §6.2.6: a peer that did not take NOTIFY over leaves the
            # "relayed" notice to this relay.
            wanted = (
                wants_success_notice(message.sender, recipient.notify)
                and not reply.remote_dsn
            )
            return (
                AuditEvent.MESSAGE_RELAYED,
                Outcome(
                    message_id=ids[0], address=ids[1], state=State.DELIVERED, reply=text
                ),
                status if wanted else None,
            )
        if verdict_ is Verdict.DEFERRED:
            delay = bool(message.sender) and retry.wants_delay_notice(
                message.queued_at,
                now,
                recipient.notify,
                already_sent=recipient.delay_notified,
            )
            attempt = retry.next_attempt(
                recipient.attempts + 1, now, self._rng.random()
            )
            return (
                AuditEvent.MESSAGE_DEFERRED,
                Outcome(
                    message_id=ids[0],
                    address=ids[1],
                    state=State.QUEUED,
                    reply=text,
                    next_attempt=attempt,
                    delay_notified=delay,
                ),
                dataclasses.replace(
                    status,
                    action=Action.DELAYED,
                    status=reply.status if reply.status[0] == "4" else "4.0.0",
                    will_retry_until=retry.give_up_at(message.queued_at),
                )
                if delay
                else None,
            )
        failure = None
        if wants_failure_notice(message.sender, recipient.notify):
            code = reply.status if reply.status[0] == "5" else "5.0.0"
            failure = dataclasses.replace(status, action=Action.FAILED, status=code)
        return (
            AuditEvent.MESSAGE_BOUNCED,
            Outcome(message_id=ids[0], address=ids[1], state=State.BOUNCED, reply=text),
            failure,
        )

    async def _send_notices(
        self, item: Claimed, notices: _Notices, now: datetime
    ) -> None:
        message = item.message
        for action, statuses in notices.by_action.items():
            dsn = compose_notice(
                hostname=self._hostname,
                sender=message.sender,
                envid=message.envid,
                ret=message.ret,
                received_at=message.received_at,
                statuses=statuses,
                original=item.content,
                now=now,
            )
            digest = hashlib.sha256(
                "\0".join(sorted(s.final_recipient for s in statuses)).encode()
            ).hexdigest()[:16]
            key = f"{message.id}:dsn-{action.value}:{digest}"
            try:
                await self._call(self._store_notice, message.sender, dsn, key, now)
            except StoreError:
                log.exception("DSN for %s could not be stored", message.id)
                continue
            self._audit.emit(
                AuditEvent.DSN_SENT,
                cid=message.cid,
                recipient=message.sender,
                queue_id=message.id,
                action=action.value,
            )

    def _store_notice(self, sender: str, dsn: bytes, key: str, now: datetime) -> None:
        self._store.ensure_mailbox(sender)
        self._store.deliver(
            sender,
            b"Return-Path: <>\r\n" + dsn,
            delivery_key=key,
            internal_date=now,
        )


def _all_failed(
    claimed: Sequence[Claimed], failure: RecipientReply
) -> list[tuple[Claimed, Sequence[RecipientReply]]]:
    return [(item, [failure] * len(item.recipients)) for item in claimed]


def _session_reply(exc: SessionError) -> RecipientReply:
    head = exc.reply[:3]
    code = int(head) if head.isdigit() else 451
    return RecipientReply("", code, exc.reply)
