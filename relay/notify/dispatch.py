"""New-message notices: from delivered mail to the patient's ordinary contact.

Owns: deciding which deliveries call for a notice (:meth:`NoticeDispatcher.
delivered`, called by local delivery once a batch is durable), and the
asyncio task that sends what the outbox holds, retries with a doubling
backoff, gives up after ``expiry``, and audits each outcome.

What must stay true:

- **Never in the way of mail.** The hook only queues (one small SQLite
  write, no fsync) and never raises anything but
  :class:`relay.notify.errors.OutboxError`, which delivery logs and
  ignores; sending happens later, in this module's task. The ``250`` and
  the delivery never wait for a notice.
- **Who is told.** A patient mailbox (``patient.<domain>``) that received a
  message in its INBOX, unless the message has the null reverse-path (DSNs,
  MDNs, automatic answers: RFC 3461 §6.2, RFC 8098 §2.1), is a report
  (``multipart/report``, RFC 6522: an MDN a mail client sent with the
  user's address), or was sent by that patient. A patient who declared no
  contact, or only one no configured channel reaches, is told nothing.
- **The audit trail** gets ``patient.contact.notified`` (mailbox, kind,
  channels) or ``patient.contact.failed`` (mailbox, kind, channel, a short
  reason, whether it will be retried): never the contact address or phone
  number (personal data, not needed to answer "was the patient told").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import TYPE_CHECKING, Final

from directory.errors import DirectoryError
from directory.model import Patient
from relay.audit import AuditEvent
from relay.contact import NoticeKind
from relay.notify.errors import OutboxError
from relay.notify.notifier import Notifier, fixed_notices
from relay.notify.outbox import NoticeOutbox

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from directory.protocol import Directory
    from relay.audit import AuditTrail
    from relay.config import Config
    from relay.notify.outbox import Pending
    from relay.notify.settings import NoticeSettings
    from relay.queue.spool import Envelope

log = logging.getLogger("mssante.relay.notices")

# The task looks at the outbox at least this often (seconds), even unwoken.
MAX_IDLE: Final = 60.0
# Notices sent at the same time (each is one SMTP or HTTPS session).
DEFAULT_CONCURRENCY: Final = 8
# Enough of the header to find Content-Type (a spooled message's header is
# far smaller; a longer one is simply not taken for a report).
_HEADER_LIMIT: Final = 64 * 1024


def is_report(message: bytes) -> bool:
    """Whether the message is a ``multipart/report`` (RFC 6522: DSN, MDN)."""
    head = message[:_HEADER_LIMIT]
    end = head.find(b"\r\n\r\n")
    if end < 0:
        end = head.find(b"\n\n")
    headers = BytesHeaderParser(policy=compat32).parsebytes(
        head if end < 0 else head[:end]
    )
    return headers.get_content_type() == "multipart/report"


class NoticeDispatcher:
    """Queues new-message notices as mail lands and sends them in a task."""

    def __init__(
        self,
        *,
        outbox: NoticeOutbox,
        notifier: Notifier,
        directory: Directory,
        audit: AuditTrail,
        settings: NoticeSettings,
        is_patient_address: Callable[[str], bool],
        clock: Callable[[], datetime],
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self._outbox = outbox
        self._notifier = notifier
        self._directory = directory
        self._audit = audit
        self._settings = settings
        self._is_patient = is_patient_address
        self._clock = clock
        self._notices = fixed_notices(settings)
        self._limit = asyncio.Semaphore(concurrency)
        self._wakeup = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    # -- the delivery hook (delivery threads) ----------------------------------

    def delivered(
        self, messages: Sequence[tuple[Envelope, bytes, Sequence[str]]]
    ) -> None:
        """Queue a notice for each patient who just received one of ``messages``
        (envelope, message, local recipients stored). Raises only
        :class:`OutboxError`."""
        mailboxes: list[str] = []
        for envelope, message, recipients in messages:
            sender = envelope.sender.lower()
            if not sender:
                continue  # RFC 3461 §6.2, RFC 8098 §2.1: DSN, MDN, auto-answer
            patients = [
                r for r in recipients if self._is_patient(r) and r.lower() != sender
            ]
            if patients and not is_report(message):
                mailboxes += patients
        if not mailboxes:
            return
        added = self._outbox.enqueue(
            mailboxes,
            NoticeKind.NEW_MESSAGE,
            now=self._clock().timestamp(),
            min_interval=self._settings.min_interval,
        )
        if added and self._loop is not None:
            self._loop.call_soon_threadsafe(self._wakeup.set)

    # -- the task -----------------------------------------------------------------

    @property
    def outbox(self) -> NoticeOutbox:
        return self._outbox

    def close(self) -> None:
        """Close the outbox (after :meth:`stop` and after delivery stopped)."""
        self._outbox.close()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="contact-notices")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def wake(self) -> None:
        self._wakeup.set()

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            try:
                await self.run_once()
                at = self._outbox.next_due()
            except OutboxError:
                log.exception("notice outbox unreadable; trying again later")
                at = None
            wait = MAX_IDLE
            if at is not None:
                wait = min(MAX_IDLE, max(0.0, at - self._clock().timestamp()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wakeup.wait()

    async def run_once(self) -> int:
        """Send every notice due now; how many were tried."""
        due = self._outbox.due(self._clock().timestamp())
        async with asyncio.TaskGroup() as group:
            for notice in due:
                group.create_task(self._guarded(notice))
        return len(due)

    async def _guarded(self, notice: Pending) -> None:
        async with self._limit:
            try:
                await self._process(notice)
            except OutboxError:
                log.exception("notice outbox write failed")

    async def _process(self, notice: Pending) -> None:
        now = self._clock().timestamp()
        if now - notice.created_at > self._settings.expiry:
            self._outbox.drop(notice)
            self._failed(notice, "-", "expired", retry=False)
            return
        try:
            entry = await self._directory.resolve(notice.mailbox)
        except DirectoryError:
            self._failed(notice, "-", "directory", retry=True)
            self._retry(notice, notice.done, now)
            return
        if not isinstance(entry, Patient):
            self._outbox.drop(notice)
            return
        if not self._notifier.channels_for(entry):
            # No declared contact (or none a configured channel reaches).
            self._outbox.drop(notice)
            return
        outcome = await self._notifier.send(
            entry, self._notices[notice.kind], skip=notice.done
        )
        if outcome.sent:
            self._audit.emit(
                AuditEvent.PATIENT_CONTACT_NOTIFIED,
                mailbox=notice.mailbox,
                kind=notice.kind.value,
                channels=list(outcome.sent),
                attempt=notice.attempts + 1,
            )
        retry = [channel for channel, exc in outcome.failed if not exc.permanent]
        for channel, exc in outcome.failed:
            self._failed(notice, channel, exc.reason, retry=channel in retry)
        if retry:
            self._retry(notice, notice.done | set(outcome.sent), now)
        elif outcome.sent or notice.done:
            self._outbox.sent(notice, now=now)
        else:
            self._outbox.drop(notice)

    def _retry(self, notice: Pending, done: frozenset[str], now: float) -> None:
        s = self._settings
        delay = min(
            s.maximal_backoff, s.minimal_backoff * 2 ** min(notice.attempts, 30)
        )
        self._outbox.retry(notice, due_at=now + delay, done=done)

    def _failed(
        self, notice: Pending, channel: str, reason: str, *, retry: bool
    ) -> None:
        self._audit.emit(
            AuditEvent.PATIENT_CONTACT_FAILED,
            mailbox=notice.mailbox,
            kind=notice.kind.value,
            channel=channel,
            reason=reason,
            attempt=notice.attempts + 1,
            will_retry=retry,
        )


def open_dispatcher(
    cfg: Config,
    *,
    directory: Directory,
    audit: AuditTrail,
    is_patient_address: Callable[[str], bool],
    clock: Callable[[], datetime],
) -> NoticeDispatcher | None:
    """The relay's dispatcher from ``[notices]`` (None when no notice is sent).

    Raises :class:`relay.notify.notifier.NoticeSetupError` (a secret file) or
    :class:`OutboxError` (the outbox database); close it with
    :meth:`NoticeDispatcher.close`.
    """
    settings = cfg.notices
    if not settings.active:
        return None
    notifier = Notifier.for_config(cfg)
    if settings.smarthost is not None and not settings.smarthost.starttls:
        log.warning(
            "notices.smarthost.starttls = false: notices to %s travel in clear;"
            " only for a smarthost on this machine",
            settings.smarthost.host,
        )
    return NoticeDispatcher(
        outbox=NoticeOutbox.open(cfg.relay.data_dir),
        notifier=notifier,
        directory=directory,
        audit=audit,
        settings=settings,
        is_patient_address=is_patient_address,
        clock=clock,
    )
