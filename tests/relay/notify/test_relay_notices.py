"""Issue 10, notices: a patient who receives a secure message is told, at their
ordinary contact, that one waits and how to read it, and nothing else.

A real relay, real SMTP submission by a professional, a real smarthost
(aiosmtpd with STARTTLS) on loopback.
"""

from __future__ import annotations

import email.policy
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from typing import TYPE_CHECKING

from mssante.message import Action, RecipientStatus, compose_dsn
from tests.relay.notify.conftest import (
    CONTACT_EMAIL,
    NOTICE_FROM,
    eventually,
    notices_table,
    with_contact,
)
from tests.support.relay_fixtures import (
    DOCTOR,
    PATIENT,
    PATIENT_2,
    Harness,
    TlsFiles,
    patient_address,
    relay_config,
    started,
)
from tests.support.smarthost import free_port, smarthost

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.smarthost import Smarthost

PATIENT_ADDR = patient_address(PATIENT)
# Words a professional's message carries that must never reach a notice.
MARKERS = ("MARQUEURNOM", "MARQUEUROBJET", "MARQUEURCORPS", "MARQUEURPJ")


def marked_message(to: str, *, n: int = 1) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Dr MARQUEURNOM Zoé <{DOCTOR.address}>"
    msg["To"] = to
    msg["Subject"] = "Résultats MARQUEUROBJET de biopsie"
    msg["Message-ID"] = f"<marked-{n}@medecin.mssante.fr>"
    msg.set_content("Bonjour,\nle résultat MARQUEURCORPS est joint.\n")
    msg.add_attachment(
        b"%PDF-1.4 test\n",
        maintype="application",
        subtype="pdf",
        filename="MARQUEURPJ-compte-rendu.pdf",
    )
    return msg.as_bytes(policy=email.policy.SMTP)


async def send(h: Harness, to: list[str], message: bytes) -> None:
    def run() -> None:
        with h.submission() as c:
            c.sendmail(DOCTOR.address, to, message)

    await h.run(run)
    await h.delivered()


def parsed(raw: bytes) -> EmailMessage:
    msg = BytesParser(_class=EmailMessage, policy=email.policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    return msg


def notified(h: Harness) -> int:
    """How many notices the trail says were sent (recorded after the
    smarthost's reply, so a test waits for this, not for the smarthost)."""
    return sum(1 for e in contact_events(h) if e["event"] == "patient.contact.notified")


def contact_events(h: Harness) -> list[dict[str, object]]:
    return [
        r
        for r in h.audit_events()
        if str(r.get("event", "")).startswith("patient.contact.")
    ]


async def test_patient_contact_gets_a_notice_without_sender_subject_or_content(
    notice_relay: Harness, notice_smarthost: Smarthost
) -> None:
    await send(notice_relay, [PATIENT_ADDR], marked_message(PATIENT_ADDR))
    await eventually(lambda: notified(notice_relay) == 1)

    [got] = notice_smarthost.received
    assert got.tls
    assert got.mail_from == NOTICE_FROM
    assert got.rcpt_tos == (CONTACT_EMAIL,)
    notice = parsed(got.content)
    assert notice["Auto-Submitted"] == "auto-generated"
    assert notice["To"] == CONTACT_EMAIL
    assert notice["Message-ID"]
    assert notice.get_content_type() == "text/plain"
    assert notice.get_content_charset() == "utf-8"
    text = notice.get_content()
    assert "nouveau message sécurisé vous attend" in text
    assert "https://patient.mssante.example/lire" in text
    # Nothing of the professional's message: not the name, subject, body,
    # attachment name, nor even the sender's address.
    whole = str(notice) + text + got.content.decode("ascii")
    for word in (*MARKERS, "zoe", "moreau", "medecin", "biopsie", "Résultats"):
        assert word.lower() not in whole.lower()
    # The mail itself was delivered, whole.
    [stored] = notice_relay.messages(PATIENT_ADDR)
    assert b"MARQUEURCORPS" in stored
    # The trail says the patient was told, by which channel; never the
    # contact address, never the markers.
    [event] = [
        e
        for e in contact_events(notice_relay)
        if e["event"] == "patient.contact.notified"
    ]
    assert event["mailbox"] == PATIENT_ADDR
    assert event["channels"] == ["email"]
    trail = notice_relay.running.audit.path.read_text(encoding="utf-8")
    assert CONTACT_EMAIL not in trail
    for word in MARKERS:
        assert word not in trail


async def test_a_second_message_within_the_interval_gets_no_second_notice(
    notice_relay: Harness, notice_smarthost: Smarthost
) -> None:
    await send(notice_relay, [PATIENT_ADDR], marked_message(PATIENT_ADDR, n=1))
    await eventually(lambda: notified(notice_relay) == 1)
    await send(notice_relay, [PATIENT_ADDR], marked_message(PATIENT_ADDR, n=2))
    await send(notice_relay, [PATIENT_ADDR], marked_message(PATIENT_ADDR, n=3))
    assert notice_relay.running.notices is not None
    await notice_relay.running.notices.run_once()

    assert len(notice_smarthost.received) == 1
    assert len(notice_relay.messages(PATIENT_ADDR)) == 3
    # One notice waits, due an interval after the first one.
    [waiting] = notice_relay.running.notices.outbox.pending(PATIENT_ADDR)
    assert len(contact_events(notice_relay)) == 1
    assert waiting.due_at > waiting.created_at + 3000


async def test_a_patient_without_contact_gets_no_notice(
    notice_relay: Harness, notice_smarthost: Smarthost
) -> None:
    other = patient_address(PATIENT_2)
    await send(notice_relay, [other], marked_message(other))
    assert notice_relay.running.notices is not None
    await notice_relay.running.notices.run_once()

    assert notice_smarthost.received == []
    assert notice_relay.running.notices.outbox.pending(other) == []
    assert contact_events(notice_relay) == []
    assert len(notice_relay.messages(other)) == 1


async def test_a_professional_recipient_gets_no_notice(
    notice_relay: Harness, notice_smarthost: Smarthost
) -> None:
    colleague = "urgences@ch-paris-1.mssante.fr"
    await send(notice_relay, [colleague], marked_message(colleague))
    assert notice_relay.running.notices is not None
    await notice_relay.running.notices.run_once()
    assert notice_smarthost.received == []


async def test_a_delivery_report_to_the_patient_gets_no_notice(
    notice_relay: Harness, notice_smarthost: Smarthost
) -> None:
    # An MDN or DSN a professional's mail client submits with its own address
    # (RFC 6522 multipart/report) is no new message for the patient.
    report = compose_dsn(
        reporting_mta="medecin.mssante.fr",
        original_envelope_id=None,
        arrival_date=datetime.now(UTC),
        recipients=[
            RecipientStatus(
                final_recipient=DOCTOR.address, action=Action.DELIVERED, status="2.0.0"
            )
        ],
        original=b"Subject: x\r\n\r\nx\r\n",
        return_full=False,
        notify_to=PATIENT_ADDR,
        message_id="<report-1@medecin.mssante.fr>",
        now=datetime.now(UTC),
        from_address=DOCTOR.address,
    )
    await send(notice_relay, [PATIENT_ADDR], report)
    assert notice_relay.running.notices is not None
    await notice_relay.running.notices.run_once()
    assert len(notice_relay.messages(PATIENT_ADDR)) == 1
    assert notice_smarthost.received == []


async def test_smarthost_down_the_mail_is_delivered_and_the_notice_retried(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    tls = tls_files.directory
    port = free_port()
    cfg = relay_config(tmp_path, tls, None, extra={"notices": notices_table(tls, port)})
    async with started(tls_files, cfg) as h:
        await with_contact(h)
        await send(h, [PATIENT_ADDR], marked_message(PATIENT_ADDR))
        # Delivered at once, whatever the smarthost.
        assert len(h.messages(PATIENT_ADDR)) == 1
        await eventually(
            lambda: any(
                e["event"] == "patient.contact.failed" for e in contact_events(h)
            )
        )
        [failed, *_] = contact_events(h)
        assert failed["reason"] == "unreachable"
        assert failed["channel"] == "email"
        assert failed["will_retry"] is True
        async with smarthost(tls, port=port) as host:
            await eventually(lambda: notified(h) == 1)
            assert len(host.received) == 1
        assert contact_events(h)[-1]["event"] == "patient.contact.notified"
        assert h.running.notices is not None
        assert h.running.notices.outbox.pending(PATIENT_ADDR) == []
