"""Read receipts sent by the relay on a patient's behalf (RFC 8098, RFC 3503).

Owns: watching the store for patients' INBOX messages that become
``\\Seen`` (opened in any IMAP client), and sending the ``displayed`` MDN
the message asked for, as the national patient space does: patients use any
mail client, many of which never answer an MDN request. Practitioners'
clients send their own; nothing here touches their mailboxes.

What must stay true:

- Only when the operator setting says so (``[delivery]
  patient_read_receipts = "always"``), only for a patient mailbox's INBOX,
  only when ``Disposition-Notification-To`` names the message's return
  path (RFC 8098 §2.1: otherwise a user must decide), never for a report
  (a DSN or an MDN) and never twice: the message gets the ``$MDNSent``
  keyword (RFC 3503) once its MDN is durably in the spool, and a message
  carrying it is skipped, whoever set it.
- The MDN leaves like any message: spooled (fsync), then delivered locally
  or queued for the sender's operator, with a null return path.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import TYPE_CHECKING, Final

from mssante.message import (
    ActionMode,
    Disposition,
    DispositionType,
    MessageError,
    SendingMode,
    compose_mdn,
)
from relay.audit import AuditEvent
from relay.queue.spool import Envelope, Recipient, SpoolError
from relay.store import ChangeKind, FlagMode, StoreError

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from relay.audit import AuditTrail
    from relay.queue.spool import Spool
    from relay.store import Change, MailStore

log = logging.getLogger("mssante.relay.receipts")

MDN_SENT: Final = "$MDNSent"  # RFC 3503 §2
SEEN: Final = "\\Seen"


class ReadReceipts:
    """Turns a patient's first reading of a message into its MDN."""

    def __init__(
        self,
        *,
        store: MailStore,
        spool: Spool,
        announce: Callable[[str], None],
        audit: AuditTrail,
        is_patient_address: Callable[[str], bool],
        hostname: str,
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._spool = spool
        self._announce = announce  # hands a spool file to local delivery
        self._audit = audit
        self._is_patient = is_patient_address
        self._hostname = hostname
        self._clock = clock
        self._loop = asyncio.get_running_loop()
        self._pending: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._handle = 0

    def start(self) -> None:
        self._handle = self._store.subscribe_changes(self._on_change)
        self._task = asyncio.create_task(self._work(), name="read-receipts")

    async def stop(self) -> None:
        self._store.unsubscribe(self._handle)
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def _on_change(self, change: Change) -> None:
        # In the thread that changed the store, its lock held: only hand over.
        if change.kind is not ChangeKind.FLAGS or change.folder != "INBOX":
            return
        if not self._is_patient(change.address):
            return
        for info in change.messages:
            if SEEN in info.flags and MDN_SENT not in info.flags:
                self._loop.call_soon_threadsafe(
                    self._pending.put_nowait, (change.address, info.uid)
                )

    async def _work(self) -> None:
        while True:
            address, uid = await self._pending.get()
            try:
                await asyncio.to_thread(self.answer, address, uid)
            except (StoreError, SpoolError, OSError):
                log.exception("read receipt not sent; the message keeps no $MDNSent")

    def answer(self, address: str, uid: int) -> bool:
        """Send the MDN of one INBOX message if it wants one (blocking)."""
        info = self._store.message(address, "INBOX", uid)
        if MDN_SENT in info.flags or SEEN not in info.flags:
            return False
        # The sealed header is enough (RFC 8098 §3.2: an MDN returns headers
        # at most): no message file is read or decrypted.
        message = self._store.headers(address, "INBOX", [uid]).get(uid)
        if message is None:
            return False  # expunged meanwhile
        to = _receipt_address(message)
        if to is None:
            return False
        now = self._clock()
        try:
            mdn = compose_mdn(
                original=message,
                final_recipient=address,
                disposition=Disposition(
                    type=DispositionType.DISPLAYED,
                    action_mode=ActionMode.MANUAL,  # the patient opened it
                    sending_mode=SendingMode.AUTOMATIC,  # the relay answered
                ),
                reporting_ua=f"{self._hostname}; mssante relay",
                from_address=address,
                message_id=email.utils.make_msgid("mdn", domain=self._hostname),
                now=now,
            )
        except MessageError:
            return False
        # One queue id per read message: a replay overwrites, never doubles.
        digest = hashlib.sha256(f"{address}\0{info.uid}\0{info.internal_date}".encode())
        envelope = Envelope(
            sender="",  # RFC 8098 §2.1: an MDN has a null return path
            recipients=(Recipient(address=to),),
            received_at=now,
            channel="local",
            queue_id=f"{now.strftime('%Y%m%dT%H%M%S%f')}-mdn-{digest.hexdigest()[:12]}",
        )
        spooled = self._spool.write(envelope, mdn)
        self._store.store_flags(address, "INBOX", [uid], [MDN_SENT], FlagMode.ADD)
        # A one-message spool file is named by its queue id.
        self._loop.call_soon_threadsafe(self._announce, spooled.queue_id)
        self._audit.emit(
            AuditEvent.MDN_SENT,
            actor="relay",
            on_behalf_of=address,
            recipient=to,
            queue_id=spooled.queue_id,
            disposition="displayed",
        )
        return True


def _receipt_address(header: bytes) -> str | None:
    """Where the MDN goes, when the relay may send it without asking."""
    headers = BytesHeaderParser(policy=compat32).parsebytes(header)
    content_type = str(headers.get("Content-Type", "")).lower()
    if content_type.startswith("multipart/report"):
        return None  # RFC 8098 §2.1, RFC 3461 §6.2: never a report about a report
    wanted = email.utils.getaddresses(
        [str(headers.get("Disposition-Notification-To", ""))]
    )
    return_path = email.utils.parseaddr(str(headers.get("Return-Path", "")))[1]
    targets = [a for _, a in wanted if a]
    # RFC 8098 §2.1: an automatic MDN only to the return path's address.
    if len(targets) != 1 or not return_path:
        return None
    if targets[0].lower() != return_path.lower():
        return None
    return targets[0]
