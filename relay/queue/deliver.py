"""Local delivery: from the spool into the mailbox store, exactly once.

Owns: the in-memory queue of spool files and the worker tasks that drain it,
and the delivery of accepted messages that skip the spool.

Two ways in, one way through: :meth:`LocalDelivery.deliver_files` takes
spool files (read back, delivered, removed); :meth:`LocalDelivery.deliver_direct`
takes in-memory (envelope, message) items that the spool group commit
(:mod:`relay.queue.commit`) stores *before* their ``250`` when every
recipient is a local mailbox: no spool file at all, the ``250`` follows the
mailbox copies' sync. Both run the same steps after the copies are durable
(``message.delivered`` records, success notices, ``on_delivered``); an item
that cannot be delivered so goes to the spool and takes the first way.

Batches: a worker takes every spool file queued (up to
:data:`MAX_BATCH_FILES`), and stores every copy of every message in them
with one :meth:`relay.store.MailStore.deliver_batch`: one append to a
segment file, one ``fdatasync``, one index commit; the
``message.delivered`` audit records of the batch go in one locked write;
then the spool files are removed. The more the relay accepts at once, the
fewer syncs per message.

What must stay true:

- Every recipient copy is delivered with the delivery key
  ``<queue id>:<recipient>`` (and ``<queue id>:sent`` for the sender's Sent
  copy, ``<queue id>:dsn`` for a success notice); the store ignores a key it
  has already seen, so replaying a spool file after a crash delivers nothing
  twice.
- A spool file is removed only after all the copies of all its messages are
  durably stored; when one copy fails, the whole file stays and is retried
  (the copies already stored are then duplicates, a no-op).
- At start, every file left in the spool is queued again (a crash between
  ``250`` and delivery loses nothing).
- Recipients of other operators go to the outbound queue
  (:mod:`relay.queue.outbound`), keyed by the queue id, before the file is
  removed; :mod:`relay.queue.transfer` delivers them.
- A store failure leaves the file in the spool; it is retried with a backoff
  (``retry_delays``), never dropped.
- With end-to-end protection configured (``[smime]``, :mod:`relay.smime`),
  each copy is sealed and encrypted for its mailbox before it is stored. The
  directory entries that decides it are looked up on the event loop before
  the blocking work goes to a delivery thread; a lookup that fails retries
  the delivery later, so no copy is stored unencrypted for a mailbox that
  has a certificate.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from directory.errors import DirectoryError
from relay.audit import AuditEvent
from relay.contact import ContactError
from relay.queue.outbound import OutboundError
from relay.queue.spool import Envelope, Recipient, SpoolError
from relay.store import NewDelivery, SealedBatch, StoreError, parse_structure

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from datetime import datetime

    from directory.protocol import Directory
    from relay.audit import AuditTrail
    from relay.queue.outbound import OutboundQueue
    from relay.queue.spool import Spool
    from relay.smime import Copies, MailboxKeys, RelaySmime
    from relay.store import MailStore, ParsedStructure

log = logging.getLogger("mssante.relay.delivery")

# Retries of a local store failure: quick first, then every five minutes
# (Postfix's minimal_backoff_time is 300 s).
DEFAULT_RETRY_DELAYS: Final = (1.0, 10.0, 60.0, 300.0)
# Delivery workers, each delivering one batch at a time in a thread of its
# own pool (never behind the spool writes that SMTP replies wait for). Two:
# one batch syncs while the next is being written.
DEFAULT_WORKERS: Final = 2
# Spool files per batch: each file holds one group commit of the spool.
MAX_BATCH_FILES: Final = 32
SENT_FOLDER: Final = "Sent"
SEEN: Final = "\\Seen"


@dataclass(frozen=True, slots=True)
class _Message:
    """One accepted message and the store copies it makes."""

    unit: str  # its spool file, or its queue id when stored without the spool
    envelope: Envelope
    message: bytes
    copies: tuple[NewDelivery, ...]


@dataclass(frozen=True, slots=True)
class DirectBatch:
    """Messages made ready on the event loop for
    :meth:`LocalDelivery.deliver_direct` (:meth:`LocalDelivery.prepare_direct`)."""

    messages: tuple[_Message, ...]
    # Their copies, sealed; None: the sealing met a host fault, and every
    # message of the batch goes to the spool.
    sealed: SealedBatch | None


class NoticeError(Exception):
    """A DSN for a remote sender could not be queued (the delivery is retried)."""


class LocalDelivery:
    """Workers that move spooled messages into mailboxes."""

    def __init__(
        self,
        *,
        spool: Spool,
        store: MailStore,
        audit: AuditTrail,
        is_local: Callable[[str], bool],
        clock: Callable[[], datetime],
        success_notice: Callable[[Envelope, list[str], bytes], bytes | None]
        | None = None,
        workers: int = DEFAULT_WORKERS,
        retry_delays: tuple[float, ...] = DEFAULT_RETRY_DELAYS,
        protection: RelaySmime | None = None,
        directory: Directory | None = None,
        outbound: OutboundQueue | None = None,
        on_outbound: Callable[[], None] | None = None,
        on_delivered: Callable[[Sequence[tuple[Envelope, bytes, Sequence[str]]]], None]
        | None = None,
    ) -> None:
        if protection is not None and directory is None:
            raise ValueError("protection needs the directory")
        self._spool = spool
        self._store = store
        self._audit = audit
        self._is_local = is_local
        self._clock = clock
        self._success_notice = success_notice
        self._workers = workers
        self._retry_delays = retry_delays
        self._protection = protection
        self._directory = directory
        self._outbound = outbound
        self._on_outbound = on_outbound
        self._on_delivered = on_delivered
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()
        self._retries: dict[str, int] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="delivery"
        )

    def submit(self, name: str) -> None:
        """Queue a spool file for delivery (idempotent)."""
        if name not in self._queued:
            self._queued.add(name)
            self._queue.put_nowait(name)

    def start(self, *, poll_interval: float | None = None) -> None:
        """Queue what the spool holds, then start the workers.

        ``poll_interval``: also look at the spool that often, for messages
        other processes wrote (the SMTP acceptor processes).
        """
        self._queue_new_spool_files()
        self._tasks = [
            asyncio.create_task(self._work(), name=f"delivery-{n}")
            for n in range(self._workers)
        ]
        if poll_interval is not None:
            self._tasks.append(
                asyncio.create_task(self._poll(poll_interval), name="delivery-poll")
            )

    def _queue_new_spool_files(self) -> None:
        for name in self._spool.pending():
            if name not in self._retries:  # those wait for their backoff
                self.submit(name)

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self._queue_new_spool_files()

    async def drain(self, *, within: float) -> bool:
        """Wait until the queue is empty; True if it emptied ``within`` seconds."""
        try:
            async with asyncio.timeout(within):
                await self._queue.join()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._pool.shutdown(wait=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            names = [await self._queue.get()]
            while len(names) < MAX_BATCH_FILES and not self._queue.empty():
                names.append(self._queue.get_nowait())
            try:
                if self._protection is None:
                    done = await loop.run_in_executor(
                        self._pool, self.deliver_files, names
                    )
                else:
                    done = set()
                    for name in names:
                        if await self._deliver_protected(name, self._protection):
                            done.add(name)
            finally:
                for name in names:
                    self._queued.discard(name)
                    self._queue.task_done()
            for name in names:
                if name in done:
                    self._retries.pop(name, None)
                else:
                    self._retry_later(name)

    def _retry_later(self, name: str) -> None:
        attempt = self._retries.get(name, 0)
        self._retries[name] = attempt + 1
        delay = self._retry_delays[min(attempt, len(self._retry_delays) - 1)]
        asyncio.get_running_loop().call_later(delay, self.submit, name)

    async def _deliver_protected(self, name: str, protection: RelaySmime) -> bool:
        # Read in a thread, look the mailboxes up here (the directory is
        # async), then seal, encrypt and store in a thread.
        loop = asyncio.get_running_loop()
        read = await loop.run_in_executor(self._pool, self._read, name)
        if read is None:
            return False
        assert self._directory is not None  # noqa: S101 - checked in __init__
        messages: list[_Message] = []
        for envelope, message in read:
            local_author = self._local_author(envelope)
            addresses = [
                r.address for r in envelope.recipients if self._is_local(r.address)
            ]
            if local_author:
                addresses.append(envelope.sender)
            try:
                keys = await protection.keys_for(self._directory, addresses)
            except DirectoryError as exc:
                self._audit.emit(
                    AuditEvent.DIRECTORY_LOOKUP_FAILED,
                    cid=envelope.cid,
                    queue_id=envelope.queue_id,
                    reason=type(exc).__name__,
                )
                return False
            at = self._clock()

            def copies_of(
                envelope: Envelope = envelope,
                message: bytes = message,
                keys: dict[str, MailboxKeys] = keys,
                local_author: bool = local_author,
                at: datetime = at,
            ) -> _Message:
                # Copies inspects the message (CPU): in the thread, not on the loop.
                copies = protection.copies(
                    envelope, message, keys, local_author=local_author, at=at
                )
                return self._message(name, envelope, message, copies)

            messages.append(await loop.run_in_executor(self._pool, copies_of))
        done = await loop.run_in_executor(self._pool, self._deliver_messages, messages)
        return name in done

    def _read(self, name: str) -> list[tuple[Envelope, bytes]] | None:
        try:
            return self._spool.read(name)
        except SpoolError:
            log.exception("spool file %s unreadable; left in place", name)
            return None

    def _local_author(self, envelope: Envelope) -> bool:
        return envelope.channel == "submission" and self._is_local(envelope.sender)

    def deliver(self, name: str) -> bool:
        """Deliver one spool file (blocking), as it is. False: retry later."""
        return name in self.deliver_files([name])

    def deliver_files(self, names: Sequence[str]) -> set[str]:
        """Deliver spool files (blocking) in one batch; the names delivered."""
        messages: list[_Message] = []
        for name in names:
            read = self._read(name)
            if read is not None:
                messages += [self._message(name, *m, None) for m in read]
        return self._deliver_messages(messages)

    def _message(
        self, name: str, envelope: Envelope, message: bytes, copies: Copies | None
    ) -> _Message:
        """The store copies of one message: each recipient's INBOX, the
        author's Sent folder for a local submission."""
        out: list[NewDelivery] = []
        # Unprotected, every copy is the same message, the INBOX ones with a
        # Return-Path line on top: one parse of its structure serves them all.
        parsed = parse_structure(message) if copies is None else None
        return_path = _return_path(envelope.sender)
        inbox: ParsedStructure | None = None
        if parsed is not None:
            try:
                inbox = parsed.with_return_path(return_path)
            except ValueError:  # a sender no SMTP session gives: the store parses
                inbox = None
        for recipient in envelope.recipients:
            if not self._is_local(recipient.address):
                continue  # the outbound queue's (_queue_outbound)
            content = (
                message if copies is None else copies.for_mailbox(recipient.address)
            )
            out.append(
                NewDelivery(
                    address=recipient.address,
                    message=return_path + content,
                    delivery_key=f"{envelope.queue_id}:{recipient.address}",
                    internal_date=envelope.received_at,
                    structure=inbox,
                )
            )
        if self._local_author(envelope):
            out.append(
                NewDelivery(
                    address=envelope.sender,
                    message=message
                    if copies is None
                    else copies.for_mailbox(envelope.sender),
                    delivery_key=f"{envelope.queue_id}:sent",
                    internal_date=envelope.received_at,
                    folder=SENT_FOLDER,
                    flags=(SEEN,),
                    structure=parsed,
                )
            )
        return _Message(name, envelope, message, tuple(out))

    def accepts_direct(self, envelope: Envelope) -> bool:
        """Whether :meth:`deliver_direct` may store this message before its
        ``250``, without the spool: every recipient is a local mailbox, and no
        end-to-end protection (whose directory look-ups run on the event loop,
        :meth:`_deliver_protected`) is configured."""
        return (
            self._protection is None
            and bool(envelope.recipients)
            and all(self._is_local(r.address) for r in envelope.recipients)
        )

    def prepare_direct(self, items: Sequence[tuple[Envelope, bytes]]) -> DirectBatch:
        """The CPU half of :meth:`deliver_direct`, for the event loop: each
        message's copies, their structure parsed once, sealed under their
        mailboxes' keys.

        Done on the loop rather than in the writer thread: the loop needs the
        GIL between every TLS read and socket write, and a writer thread
        holding it for the parse and the seals kept the loop waiting (py-spy:
        the loop spent about a third of its time waiting for the GIL). Only
        the first message to a mailbox this process has not seen yet reads
        the index here.
        """
        messages = tuple(
            self._message(envelope.queue_id, envelope, message, None)
            for envelope, message in items
        )
        copies = [copy for m in messages for copy in m.copies]
        try:
            # Queue ids just made: no copy can have been stored before.
            sealed: SealedBatch | None = self._seal(copies, fresh=True)
        except (StoreError, OSError, sqlite3.Error):
            log.exception(
                "sealing %d messages failed; they go to the spool", len(items)
            )
            sealed = None
        return DirectBatch(messages, sealed)

    def deliver_direct(
        self,
        batch: DirectBatch,
        *,
        stored: Callable[[int], None] | None = None,
    ) -> set[int]:
        """Deliver messages made ready by :meth:`prepare_direct` (blocking),
        in one batch; the indexes of its messages fully delivered.

        Each envelope carries its queue id already (the delivery keys derive
        from it). Everything :meth:`deliver_files` does for a spool file is
        done here, in the same order: copies stored durably (one sync round,
        one index commit), then ``stored(index)`` for each message whose
        copies are all durable (the SMTP side writes its ``message.accepted``
        record), its ``message.delivered`` records, its success notices, then
        ``on_delivered``. A message not in the returned set must go to the
        spool: its copies already stored are then duplicates, a no-op on
        replay; ``stored`` may have been called for it.
        """
        messages = batch.messages
        if batch.sealed is None:
            return set()
        failed = self._store_copies(messages, sealed=batch.sealed)
        landed = [m for m in messages if m.unit not in failed]
        with self._audit.together():
            if stored is not None:
                at = {m.unit: n for n, m in enumerate(messages)}
                for m in landed:
                    stored(at[m.unit])
            self._record_delivered(landed)
        failed |= self._notify_all(landed)
        self._announce_delivered([m for m in landed if m.unit not in failed])
        return {n for n, m in enumerate(messages) if m.unit not in failed}

    def _deliver_messages(self, messages: Sequence[_Message]) -> set[str]:
        """Store every copy in one batch; remove the spool files whose copies
        are all durable; return their names (the others are retried)."""
        files = {m.unit for m in messages}
        failed = self._store_copies(messages)
        landed = [m for m in messages if m.unit not in failed]
        with self._audit.together():
            self._record_delivered(landed)
        failed |= self._notify_all(landed)
        done = files - failed
        for name in sorted(done):
            self._spool.remove(name)
        self._announce_delivered([m for m in messages if m.unit in done])
        return done

    def _store_copies(
        self, messages: Sequence[_Message], *, sealed: SealedBatch | None = None
    ) -> set[str]:
        """Queue the remote recipients, store every local copy in one batch;
        the units (spool files, or queue ids) not durably delivered.

        ``sealed``: the copies, already sealed (:meth:`prepare_direct`; its
        messages have no remote recipient)."""
        failed = self._queue_outbound(messages)
        copies = [copy for m in messages if m.unit not in failed for copy in m.copies]
        try:
            if sealed is None:
                sealed = self._seal(copies)
            elif failed:  # pragma: no cover (prepare_direct takes all-local messages)
                raise StoreError("a sealed batch with a remote recipient")
            results = self._store.store_sealed(sealed)
        except (StoreError, OSError, sqlite3.Error):
            units = {m.unit for m in messages}
            log.exception("delivery of %d units failed; will retry", len(units))
            return units
        at = 0
        for m in messages:
            if m.unit in failed:
                continue
            mine = results[at : at + len(m.copies)]
            at += len(m.copies)
            refused = [r for r in mine if isinstance(r, StoreError)]
            if refused:
                log.error(
                    "delivery of %s failed (%s); will retry",
                    m.envelope.queue_id,
                    type(refused[0]).__name__,
                )
                failed.add(m.unit)
        return failed

    def _seal(
        self, copies: Sequence[NewDelivery], *, fresh: bool = False
    ) -> SealedBatch:
        """``copies`` sealed for the store, their mailboxes made first."""
        for address in dict.fromkeys(c.address for c in copies):
            self._store.ensure_mailbox(address)
        return self._store.seal_batch(copies, fresh=fresh)

    def _record_delivered(self, messages: Sequence[_Message]) -> None:
        """The ``message.delivered`` records of messages whose copies are
        durable (the caller groups them in one write)."""
        for m in messages:
            for recipient in m.envelope.recipients:
                if not self._is_local(recipient.address):
                    continue
                self._audit.emit(
                    AuditEvent.MESSAGE_DELIVERED,
                    cid=m.envelope.cid,
                    sender=m.envelope.sender,
                    recipient=recipient.address,
                    queue_id=m.envelope.queue_id,
                    message_ref=m.envelope.message_ref,
                )

    def _notify_all(self, messages: Sequence[_Message]) -> set[str]:
        """Success notices of delivered messages; the units whose notice
        failed (to retry: their copies are duplicates then)."""
        failed: set[str] = set()
        for m in messages:
            try:
                self._notify_success(
                    m.envelope,
                    [
                        r.address
                        for r in m.envelope.recipients
                        if self._is_local(r.address)
                    ],
                    m.message,
                )
            except (StoreError, OSError, sqlite3.Error, NoticeError):
                log.exception("success notice of %s failed; will retry", m.unit)
                failed.add(m.unit)
        return failed

    def _announce_delivered(self, messages: Sequence[_Message]) -> None:
        """Tell ``on_delivered`` (the contact notices, issue 10) what landed
        in INBOXes; its failure never touches the mail, already durable."""
        if self._on_delivered is None or not messages:
            return
        landed = [
            (
                m.envelope,
                m.message,
                [c.address for c in m.copies if c.folder == "INBOX"],
            )
            for m in messages
        ]
        try:
            self._on_delivered(landed)
        except ContactError:
            log.exception("contact notices of %d messages not queued", len(landed))

    def _queue_outbound(self, messages: Sequence[_Message]) -> set[str]:
        """Hand the recipients of other operators to the outbound queue, in
        one commit for the batch; the spool files to retry.

        Idempotent (the queue id is the key), so a replayed spool file
        queues nothing twice.
        """
        items = [
            (m, [r for r in m.envelope.recipients if not self._is_local(r.address)])
            for m in messages
        ]
        items = [(m, remote) for m, remote in items if remote]
        if not items:
            return set()
        files = {m.unit for m, _ in items}
        if self._outbound is None:
            # The RCPT policy accepts remote recipients only with outbound
            # delivery configured; a file from an older configuration waits.
            log.error(
                "%d spool files have remote recipients and no outbound", len(files)
            )
            return files
        try:
            queued = self._outbound.enqueue_many(
                [(m.envelope, m.message, remote) for m, remote in items],
                now=self._clock(),
            )
        except OutboundError:
            log.exception(
                "outbound queue write of %d files failed; will retry", len(files)
            )
            return files
        with self._audit.together():
            for (m, remote), new in zip(items, queued, strict=True):
                if new:
                    self._audit.emit(
                        AuditEvent.MESSAGE_QUEUED,
                        cid=m.envelope.cid,
                        sender=m.envelope.sender,
                        recipients=[r.address for r in remote],
                        queue_id=m.envelope.queue_id,
                        message_ref=m.envelope.message_ref,
                    )
        if self._on_outbound is not None:
            self._on_outbound()
        return set()

    def _queue_notice(self, envelope: Envelope, dsn: bytes) -> None:
        """A DSN for a sender of another operator goes back over MX."""
        assert self._outbound is not None  # noqa: S101 - checked by the caller
        notice = _notice_envelope(envelope, self._clock())
        try:
            self._outbound.enqueue(
                notice, dsn, notice.recipients, now=notice.received_at
            )
        except OutboundError as exc:
            raise NoticeError(str(exc)) from exc
        if self._on_outbound is not None:
            self._on_outbound()

    def _store_copy(
        self,
        address: str,
        message: bytes,
        key: str,
        envelope: Envelope,
        *,
        folder: str = "INBOX",
        flags: tuple[str, ...] = (),
    ) -> None:
        self._store.ensure_mailbox(address)
        self._store.deliver(
            address,
            message,
            delivery_key=key,
            internal_date=envelope.received_at,
            folder=folder,
            flags=flags,
        )

    def _notify_success(
        self, envelope: Envelope, delivered: list[str], message: bytes
    ) -> None:
        # RFC 3461 §5.2.2: a "delivered" DSN for recipients that asked SUCCESS.
        wanted = [
            r.address
            for r in envelope.recipients
            if "SUCCESS" in r.notify and r.address in delivered
        ]
        local_sender = self._is_local(envelope.sender)
        if (
            not wanted
            or not envelope.sender
            or not (local_sender or self._outbound is not None)
            or self._success_notice is None
        ):
            return
        dsn = self._success_notice(envelope, wanted, message)
        if dsn is None:
            return
        if local_sender:
            self._store_copy(envelope.sender, dsn, f"{envelope.queue_id}:dsn", envelope)
        else:
            self._queue_notice(envelope, dsn)
        self._audit.emit(
            AuditEvent.DSN_SENT,
            cid=envelope.cid,
            recipient=envelope.sender,
            queue_id=envelope.queue_id,
            action="delivered",
        )


def _notice_envelope(envelope: Envelope, at: datetime) -> Envelope:
    # RFC 3461 §6.2: a DSN has the null reverse-path; its queue id derives
    # from the original's, so a replay queues it once.
    return Envelope(
        sender="",
        recipients=(Recipient(address=envelope.sender),),
        received_at=at,
        channel="local",
        cid=envelope.cid,
        message_ref=envelope.message_ref,
        queue_id=f"{envelope.queue_id}.dsn",
    )


def _return_path(sender: str) -> bytes:
    # RFC 5321 §4.4: the final delivery adds Return-Path with the reverse-path.
    return f"Return-Path: <{sender}>\r\n".encode()
