"""All-local mail is stored in its mailboxes before its ``250``, without the
spool; anything else, or anything the store fails or refuses, is spooled.

Real parts throughout: a :class:`relay.queue.commit.SpoolCommitter` in front
of a real spool, a real :class:`relay.queue.deliver.LocalDelivery` and a real
encrypted store, and the relay itself over SMTP for the end-to-end case.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from relay.app import run_relay
from relay.audit import AuditEvent, AuditTrail, records
from relay.config import load
from relay.queue.commit import SpoolCommitter
from relay.queue.deliver import LocalDelivery
from relay.queue.notices import success_notices
from relay.queue.spool import Envelope, Recipient, Spool
from relay.store import MailStore, MasterKey
from tests.relay.test_smtp import message
from tests.support import serve
from tests.support.relay_fixtures import (
    DOCTOR,
    PASSWORD,
    URGENCES,
    TlsFiles,
    seed_data_dir,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

AT = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
LOCAL_DOMAINS = ("ch-paris-1.mssante.fr", "medecin.mssante.fr")
AUTHOR = "auteur@medecin.mssante.fr"
COLLEAGUE = "accueil@ch-paris-1.mssante.fr"
REMOTE = "confrere@autre-operateur.fr"
BODY = b"Subject: compte rendu\r\nMessage-ID: <m1@medecin.mssante.fr>\r\n\r\ntext\r\n"


def _is_local(address: str) -> bool:
    return address.rpartition("@")[2] in LOCAL_DOMAINS


def _envelope(*recipients: str, notify: tuple[str, ...] = ()) -> Envelope:
    return Envelope(
        sender=AUTHOR,
        recipients=tuple(Recipient(address=r, notify=notify) for r in recipients),
        received_at=AT,
        channel="submission",
        account=AUTHOR,
    )


class Parts:
    """A committer with its spool, delivery, store and audit trail."""

    def __init__(self, tmp_path: Path) -> None:
        master = MasterKey.generate(tmp_path / "master.key")
        self.store = MailStore.open(tmp_path / "mail", master, sanity_checks=True)
        self.audit_path = tmp_path / "audit.jsonl"
        self.audit = AuditTrail(self.audit_path, b"a" * 32)
        self.spool = Spool(tmp_path / "spool", b"s" * 32)
        self.delivered: list[tuple[str, list[str]]] = []
        self.delivery = LocalDelivery(
            spool=self.spool,
            store=self.store,
            audit=self.audit,
            is_local=_is_local,
            clock=lambda: AT,
            success_notice=success_notices("relay.mssante.fr", lambda: AT),
            retry_delays=(60.0,),
            on_delivered=self._on_delivered,
        )
        self.announced: list[str] = []
        self.committer = SpoolCommitter(
            self.spool, self.announced.append, direct=self.delivery
        )
        self.accepted: list[str] = []

    def _on_delivered(
        self, landed: Sequence[tuple[Envelope, bytes, Sequence[str]]]
    ) -> None:
        self.delivered += [(e.queue_id, list(to)) for e, _, to in landed]

    async def write(self, envelope: Envelope, body: bytes = BODY) -> Envelope:
        return await self.committer.write(
            envelope, body, accepted=lambda e: self.accepted.append(e.queue_id)
        )

    def events(self) -> list[tuple[str, str]]:
        self.audit.sync()
        return [(r["event"], r.get("queue_id", "")) for r in records(self.audit_path)]

    async def close(self) -> None:
        await self.committer.close()
        self.audit.close()
        self.store.close()


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    p = Parts(tmp_path)
    try:
        yield p
    finally:
        await p.close()


async def test_all_local_message_is_in_its_mailboxes_when_written_and_never_spooled(
    parts: Parts,
) -> None:
    written = await parts.write(_envelope(COLLEAGUE))
    # Durable in both mailboxes on return: the 250 may follow.
    assert parts.store.has_delivered(f"{written.queue_id}:{COLLEAGUE}")
    assert parts.store.has_delivered(f"{written.queue_id}:sent")
    [inbox] = parts.store.messages(COLLEAGUE, "INBOX")
    assert parts.store.fetch(COLLEAGUE, "INBOX", inbox.uid) == (
        f"Return-Path: <{AUTHOR}>\r\n".encode() + BODY
    )
    [sent] = parts.store.messages(AUTHOR, "Sent")
    assert parts.store.fetch(AUTHOR, "Sent", sent.uid) == BODY
    assert parts.spool.pending() == []
    assert parts.announced == []
    assert parts.accepted == [written.queue_id]
    assert parts.delivered == [(written.queue_id, [COLLEAGUE])]


async def test_accepted_record_precedes_the_delivered_records(parts: Parts) -> None:
    def accepted(e: Envelope) -> None:
        parts.audit.emit(AuditEvent.MESSAGE_ACCEPTED, queue_id=e.queue_id)

    written = await parts.committer.write(
        _envelope(COLLEAGUE, "secretariat@ch-paris-1.mssante.fr"),
        BODY,
        accepted=accepted,
    )
    mine = [event for event, q in parts.events() if q == written.queue_id]
    assert mine == [
        "message.accepted",
        "message.delivered",
        "message.delivered",
    ]


async def test_messages_ending_together_are_stored_in_one_batch(
    parts: Parts,
) -> None:
    written = await asyncio.gather(
        *(parts.write(_envelope(COLLEAGUE), BODY + b"%d\r\n" % n) for n in range(10))
    )
    assert len({e.queue_id for e in written}) == 10
    assert len(parts.store.messages(COLLEAGUE, "INBOX")) == 10
    assert len(parts.store.messages(AUTHOR, "Sent")) == 10
    assert parts.spool.pending() == []
    assert sorted(parts.accepted) == sorted(e.queue_id for e in written)


async def test_message_with_a_remote_recipient_goes_through_the_spool(
    parts: Parts,
) -> None:
    local = await parts.write(_envelope(COLLEAGUE))
    mixed = await parts.write(_envelope(COLLEAGUE, REMOTE))
    assert parts.spool.pending() == [mixed.queue_id]
    assert parts.announced == [mixed.queue_id]
    [(spooled, body)] = parts.spool.read(mixed.queue_id)
    assert spooled.queue_id == mixed.queue_id
    assert body == BODY
    # Nothing of the mixed message is stored before delivery takes the file.
    assert parts.store.has_delivered(f"{local.queue_id}:{COLLEAGUE}")
    assert not parts.store.has_delivered(f"{mixed.queue_id}:{COLLEAGUE}")
    assert parts.accepted == [local.queue_id, mixed.queue_id]


async def test_store_failure_falls_back_to_the_spool(parts: Parts) -> None:
    parts.store.close()  # every store call now fails, the sealing's first
    written = await parts.write(_envelope(COLLEAGUE))
    assert parts.spool.pending() == [written.queue_id]
    assert parts.announced == [written.queue_id]
    assert parts.accepted == [written.queue_id]
    assert parts.delivered == []
    assert [e for e, q in parts.events() if q == written.queue_id] == []


async def test_store_failure_after_sealing_falls_back_to_the_spool(
    parts: Parts,
) -> None:
    # The first message makes both mailboxes known: the second one's copies
    # are sealed on the event loop without the index, and the store fails
    # only in the writer thread (the other test fails at the sealing).
    first = await parts.write(_envelope(COLLEAGUE))
    parts.store.close()
    second = await parts.write(_envelope(COLLEAGUE))
    assert parts.spool.pending() == [second.queue_id]
    assert parts.announced == [second.queue_id]
    assert parts.accepted == [first.queue_id, second.queue_id]
    assert parts.delivered == [(first.queue_id, [COLLEAGUE])]


async def test_refused_copy_sends_the_message_to_the_spool_and_replay_stores_once(
    parts: Parts,
) -> None:
    parts.store.ensure_mailbox(AUTHOR)
    parts.store.delete_folder(AUTHOR, "Sent")  # the Sent copy is refused
    written = await parts.write(_envelope(COLLEAGUE))
    # Spooled under the same queue id: the INBOX copy already stored is
    # found again by its delivery key.
    assert parts.spool.pending() == [written.queue_id]
    assert parts.store.has_delivered(f"{written.queue_id}:{COLLEAGUE}")
    assert not parts.store.has_delivered(f"{written.queue_id}:sent")
    parts.store.create_folder(AUTHOR, "Sent")
    assert await asyncio.to_thread(parts.delivery.deliver, written.queue_id)
    assert len(parts.store.messages(COLLEAGUE, "INBOX")) == 1
    assert len(parts.store.messages(AUTHOR, "Sent")) == 1
    assert parts.spool.pending() == []
    assert parts.accepted == [written.queue_id]


async def test_success_notice_of_a_direct_message_reaches_the_author(
    parts: Parts,
) -> None:
    written = await parts.write(_envelope(COLLEAGUE, notify=("SUCCESS",)))
    assert parts.store.has_delivered(f"{written.queue_id}:dsn")
    inbox = parts.store.messages(AUTHOR, "INBOX")
    assert len(inbox) == 1
    assert b"multipart/report" in parts.store.fetch(AUTHOR, "INBOX", inbox[0].uid)
    events = [e for e, q in parts.events() if q == written.queue_id]
    assert events == ["message.delivered", "dsn.sent"]
    assert parts.spool.pending() == []


async def test_relay_answers_250_for_all_local_mail_with_the_copies_stored_and_spool_untouched(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    cfg = load(serve.write_config(tmp_path, tls_files.directory))
    await seed_data_dir(cfg, tls_files)
    async with run_relay(cfg) as running:
        spool_dir = running.spool.root
        before = (spool_dir.stat().st_mtime_ns, (spool_dir / "tmp").stat().st_mtime_ns)
        port = running.addresses["submission"][1]

        def send() -> str:
            ctx = ssl.create_default_context(cafile=str(tls_files.directory / "ca.pem"))
            with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
                c.starttls(context=ctx)
                c.login(DOCTOR.address, PASSWORD)
                c.mail(DOCTOR.address)
                c.rcpt(URGENCES.address)
                code, reply = c.data(message(DOCTOR.address, URGENCES.address))
                assert code == 250
                # Stored before the 250: look at once, no waiting.
                assert len(running.store.messages(URGENCES.address, "INBOX")) == 1
                assert len(running.store.messages(DOCTOR.address, "Sent")) == 1
                return reply.decode().rpartition(" ")[2]

        queue_id = await asyncio.to_thread(send)
        # No file was ever created, renamed or removed in the spool.
        after = (spool_dir.stat().st_mtime_ns, (spool_dir / "tmp").stat().st_mtime_ns)
        assert after == before
        assert running.spool.pending() == []
        assert running.store.has_delivered(f"{queue_id}:{URGENCES.address}")
        running.audit.sync()
        events = [
            r["event"]
            for r in records(running.audit.path)
            if r.get("queue_id") == queue_id
        ]
        assert events == ["message.accepted", "message.delivered"]
