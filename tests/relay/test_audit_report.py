"""The patient's activity report: end to end over SMTP and IMAP, and the
monthly run's schedule and idempotence with a controlled clock."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import imaplib
import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from directory.config import DirectoryConfig, open_directory
from directory.model import ProxyGrant, ProxyScope
from relay.accounts import AccountKind
from relay.audit import AuditEvent, AuditTrail, records
from relay.audit_query import Kind, Period, by_address, query
from relay.audit_report import (
    Month,
    MonthlyReports,
    ReportContext,
    delivery_key,
    due_month,
    gather,
    render_text,
    request_report,
)
from relay.config import AuditSettings
from relay.store import MailStore, MasterKey
from tests.directory import samples
from tests.support.relay_fixtures import (
    DOCTOR,
    PASSWORD,
    PATIENT,
    PATIENT_2,
    Harness,
    patient_address,
    relay_config,
    started,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from directory.protocol import Directory
    from tests.support.relay_fixtures import TlsFiles

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
SUBJECT_MARKER = "SUBJECT-MARKER-7Q2"
BODY_MARKER = "BODY-MARKER-K9X"


@pytest.fixture
async def report_relay(tmp_path: Path, tls_files: TlsFiles) -> AsyncIterator[Harness]:
    cfg = relay_config(
        tmp_path,
        tls_files.directory,
        None,
        extra={"audit": {"monthly_reports": False, "check_interval": 3600.0}},
    )
    async with started(tls_files, cfg) as harness:
        yield harness


def lab_report(to: str) -> bytes:
    return (
        f"From: {DOCTOR.display_name} <{DOCTOR.address}>\r\n"
        f"To: {to}\r\n"
        f"Subject: {SUBJECT_MARKER} resultats\r\n"
        "Message-ID: <lab-1@medecin.mssante.fr>\r\n"
        "X-MSS-NIL: test\r\n"
        "X-MSS-CODECDA: 11502-2\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"{BODY_MARKER}: vos resultats sont normaux.\r\n"
    ).encode()


def report_text(raw: bytes) -> tuple[email.message.EmailMessage, str]:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(parsed, email.message.EmailMessage)
    body = parsed.get_body(("plain",))
    assert body is not None
    return parsed, body.get_content()


async def test_report_in_the_patients_inbox_names_sender_type_and_proxy_read(
    report_relay: Harness,
) -> None:
    h = report_relay
    patient = patient_address(PATIENT)
    directory = h.running.directory
    await directory.add(samples.organisation())
    grant = ProxyGrant(
        account="aidant-1", scope=ProxyScope.READ, granted_at=datetime.now(UTC)
    )
    await directory.replace(dataclasses.replace(PATIENT, proxies=(grant,)))
    h.running.accounts.create("aidant-1", AccountKind.PROXY, PASSWORD)

    def send() -> None:
        with h.submission() as client:
            client.sendmail(DOCTOR.address, [patient], lab_report(patient))

    await h.run(send)
    await h.delivered()

    def proxy_reads() -> None:
        host, port = h.address("imaps")
        c = imaplib.IMAP4_SSL(host, port, ssl_context=h.client_context(), timeout=10)
        c.login("aidant-1", PASSWORD)
        c.select(f"Shared/{patient}/INBOX", readonly=True)
        # BODY[] opens the message (BODY.PEEK[] is not audited as a read).
        assert c.fetch("1", "(BODY[])")[0] == "OK"
        c.logout()

    await h.run(proxy_reads)
    # mssante audit report --deliver with the relay running: a request the
    # relay's task picks up.
    this_month = Month.of(datetime.now(UTC), PARIS)
    request_report(h.config.relay.data_dir, PATIENT.ins, this_month)
    assert h.running.reports is not None
    assert await h.running.reports.run_once() == 1

    def patient_fetches() -> list[bytes]:
        host, port = h.address("imaps")
        c = imaplib.IMAP4_SSL(host, port, ssl_context=h.client_context(), timeout=10)
        c.login(patient, PASSWORD)
        c.select("INBOX", readonly=True)
        _, found = c.search(None, "FROM", "no-reply@patient.mssante.example")
        out = []
        for number in found[0].split():
            _, data = c.fetch(number, "(BODY.PEEK[])")
            item = data[0]
            assert isinstance(item, tuple)
            out.append(item[1])
        c.logout()
        return out

    [raw] = await h.run(patient_fetches)
    parsed, text = report_text(raw)
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed["From"] == (
        "Messagerie sécurisée de santé <no-reply@patient.mssante.example>"
    )
    dash = "\N{EN DASH}"
    assert parsed["Subject"] == f"Votre relevé d'activité {dash} {this_month.label}"
    assert parsed.get_content_charset() == "utf-8"
    today = datetime.now(UTC).astimezone(PARIS).strftime("%d/%m/%Y")
    assert f"le {today}" in text
    assert "DR MOREAU Zoé (CENTRE HOSPITALIER PARIS 1)" in text
    assert "Compte rendu d'examens biologiques (11502-2)" in text
    assert "Ouvert par aidant-1 (aidant ou représentant légal)" in text
    assert "aidant-1 (aidant ou représentant légal) a ouvert un message" in text
    assert SUBJECT_MARKER not in raw.decode("utf-8", "replace")
    assert BODY_MARKER not in raw.decode("utf-8", "replace")
    [sent] = [e for e in h.audit_events() if e["event"] == "patient.report.sent"]
    assert sent["mailbox"] == patient
    assert sent["trigger"] == "on-demand"
    assert SUBJECT_MARKER not in str(sent)


async def test_audit_show_and_the_report_share_one_query(
    report_relay: Harness,
) -> None:
    h = report_relay
    patient = patient_address(PATIENT)

    def send() -> None:
        with h.submission() as client:
            client.sendmail(DOCTOR.address, [patient], lab_report(patient))

    await h.run(send)
    await h.delivered()
    path = h.running.audit.path
    shown = query(path, {patient, PATIENT.ins})
    reported = by_address(path, [patient])[patient]
    received = [a for a in reported if a.kind is Kind.RECEIVED]
    assert [a.record for a in received] == [
        a.record for a in shown if a.kind is Kind.RECEIVED
    ]
    assert received[0].sender == DOCTOR.address


# --- the monthly run, with real parts and a controlled clock -------------------

OCT_10 = datetime(2026, 10, 10, 9, 30, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@dataclasses.dataclass
class Parts:
    ctx: ReportContext
    store: MailStore
    trail: AuditTrail
    directory: Directory


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    master = MasterKey.generate(tmp_path / "master.key")
    directory = await open_directory(
        DirectoryConfig(sqlite_path=tmp_path / "dir.sqlite3")
    )
    for entry in (samples.practitioner(), DOCTOR, samples.organisation()):
        await directory.add(entry)
    store = MailStore.open(tmp_path / "mail", master)
    trail = AuditTrail(tmp_path / "audit.jsonl", master.derive("audit"))
    ctx = ReportContext(
        store=store,
        directory=directory,
        audit=trail,
        patient_domain="patient.mssante.example",
        hostname="relay.test",
        zone=PARIS,
    )
    try:
        yield Parts(ctx, store, trail, directory)
    finally:
        await directory.close()
        trail.close()
        store.close()


def october_activity(p: Parts, patient: str, kept: bool) -> None:
    """A delivery (kept in the mailbox, or deleted since) and the patient's read."""
    message_id = f"<oct-{kept}@medecin.mssante.fr>"
    ref = p.trail.message_ref(message_id)
    p.store.ensure_mailbox(patient)
    if kept:
        p.store.deliver(
            patient,
            lab_report(patient).replace(
                b"<lab-1@medecin.mssante.fr>", message_id.encode()
            ),
            delivery_key=f"k-{patient}",
            internal_date=OCT_10,
        )
    p.trail.emit(
        AuditEvent.MESSAGE_DELIVERED,
        time=OCT_10.isoformat(),
        sender=DOCTOR.address,
        recipient=patient,
        message_ref=ref,
    )
    p.trail.emit(
        AuditEvent.MESSAGE_READ,
        time=(OCT_10 + timedelta(hours=2)).isoformat(),
        actor=patient,
        mailbox=patient,
        via="owner",
        message_ref=ref,
    )


def settings(**kw: object) -> AuditSettings:
    return AuditSettings(monthly_reports=True, **kw)  # type: ignore[arg-type]


def inbox_reports(store: MailStore, address: str) -> list[str]:
    out = []
    for m in store.messages(address, "INBOX"):
        raw = store.fetch(address, "INBOX", m.uid)
        if b"no-reply@patient" in raw:
            out.append(report_text(raw)[1])
    return out


@pytest.fixture
def two_patients() -> tuple[str, str]:
    return patient_address(PATIENT), patient_address(PATIENT_2)


async def test_monthly_run_sends_once_per_patient_and_month_across_restarts(
    parts: Parts, tmp_path: Path, two_patients: tuple[str, str]
) -> None:
    first, second = two_patients
    october_activity(parts, first, kept=True)
    october_activity(parts, second, kept=False)
    parts.store.ensure_mailbox(DOCTOR.address)  # not a patient: no report
    clock = Clock(datetime(2026, 11, 1, 4, 59, tzinfo=UTC))  # 05:59 in Paris
    run = MonthlyReports(parts.ctx, settings(), data_dir=tmp_path, clock=clock)
    assert await run.run_once() == 0  # not yet 06:00 on the 1st
    clock.now = datetime(2026, 11, 1, 5, 0, tzinfo=UTC)
    assert await run.run_once() == 2
    assert await run.run_once() == 0
    # A restart: a new task, the same store, later the same month.
    clock.now = datetime(2026, 11, 20, tzinfo=UTC)
    again = MonthlyReports(parts.ctx, settings(), data_dir=tmp_path, clock=clock)
    assert await again.run_once() == 0
    assert parts.store.has_delivered(delivery_key(first, Month(2026, 10)))
    [kept] = inbox_reports(parts.store, first)
    assert "octobre 2026" in kept
    assert (
        "le 10/10/2026 à 11:30 : de DR MOREAU Zoé (CENTRE HOSPITALIER PARIS 1)" in kept
    )
    assert "Compte rendu d'examens biologiques (11502-2)" in kept
    assert "Ouvert par vous le 10/10/2026 à 13:30" in kept
    [deleted] = inbox_reports(parts.store, second)
    assert "message supprimé de votre messagerie" in deleted
    assert "11502-2" not in deleted  # deleted: listed without a type
    assert inbox_reports(parts.store, DOCTOR.address) == []
    sent = [r for r in records(parts.trail.path) if r["event"] == "patient.report.sent"]
    assert sorted(r["mailbox"] for r in sent) == sorted([first, second])
    assert {r["month"] for r in sent} == {"2026-10"}
    # Next month: November's reports.
    clock.now = datetime(2026, 12, 1, 7, tzinfo=UTC)
    assert await again.run_once() == 2


async def test_no_report_for_a_month_before_the_trail_began(
    parts: Parts, tmp_path: Path
) -> None:
    # A relay installed in November: its first record is of November.
    parts.trail.emit(AuditEvent.RELAY_STARTED, time="2026-11-20T08:00:00+00:00")
    parts.store.ensure_mailbox(patient_address(PATIENT))
    clock = Clock(datetime(2026, 11, 23, tzinfo=UTC))
    run = MonthlyReports(parts.ctx, settings(), data_dir=tmp_path, clock=clock)
    assert await run.run_once() == 0  # October: the relay did not exist
    clock.now = datetime(2026, 12, 1, 7, tzinfo=UTC)
    assert await run.run_once() == 1  # November's


async def test_monthly_reports_off_sends_nothing(parts: Parts, tmp_path: Path) -> None:
    october_activity(parts, patient_address(PATIENT), kept=True)
    clock = Clock(datetime(2026, 11, 2, tzinfo=UTC))
    run = MonthlyReports(
        parts.ctx, AuditSettings(monthly_reports=False), data_dir=tmp_path, clock=clock
    )
    assert await run.run_once() == 0


async def test_break_glass_and_proxy_deletion_appear_with_their_reason(
    parts: Parts,
) -> None:
    patient = patient_address(PATIENT)
    october_activity(parts, patient, kept=True)
    parts.trail.emit(
        AuditEvent.PATIENT_BREAK_GLASS,
        time=(OCT_10 + timedelta(days=1)).isoformat(),
        actor="admin-garde",
        mailbox=patient,
        reason="patient inconscient aux urgences",
    )
    parts.trail.emit(
        AuditEvent.MESSAGE_DELETED,
        time=(OCT_10 + timedelta(days=2)).isoformat(),
        actor="aidant-1",
        mailbox=patient,
        folder="INBOX",
        uids=[1, 2],
        via="proxy",
    )
    report = await gather(parts.ctx, patient, Month(2026, 10))
    text = render_text(report, PARIS)
    assert (
        "l'administrateur admin-garde a ouvert votre messagerie en accès"
        " exceptionnel (bris de glace). Motif indiqué : patient inconscient"
        " aux urgences." in text
    )
    assert "aidant-1 (aidant ou représentant légal) a supprimé 2 messages." in text


async def test_consent_changes_are_told_in_plain_french_with_who_made_them(
    parts: Parts,
) -> None:
    patient = patient_address(PATIENT)
    october_activity(parts, patient, kept=True)
    for day, actor, action, detail in (
        (11, patient, "block", {"party": "810000000009"}),
        (
            12,
            "cli",
            "proxy-granted",
            {
                "account": "aidant-1",
                "scope": "read",
                "until": "2027-06-30T00:00:00+00:00",
            },
        ),
        (13, patient, "contact-changed", {"email": "set"}),
    ):
        parts.trail.emit(
            AuditEvent.PATIENT_CONSENT_CHANGED,
            time=(OCT_10 + timedelta(days=day - 10)).isoformat(),
            actor=actor,
            patient=PATIENT.ins,
            action=action,
            **detail,
        )
    text = render_text(await gather(parts.ctx, patient, Month(2026, 10)), PARIS)
    assert "blocage de 810000000009 (par vous)." in text
    assert (
        "accès accordé à aidant-1 (lecture) jusqu'au 2027-06-30"
        " (par l'administration, à votre demande)." in text
    )
    assert "changement de vos coordonnées de contact (par vous)." in text


async def test_a_month_outside_the_activity_reports_nothing_received(
    parts: Parts,
) -> None:
    patient = patient_address(PATIENT)
    october_activity(parts, patient, kept=True)
    report = await gather(parts.ctx, patient, Month(2026, 9))
    assert report.received == ()
    assert "Aucun message reçu ce mois-ci." in render_text(report, PARIS)


def test_due_month_follows_the_configured_day_hour_and_zone() -> None:
    s = settings(report_day=3, report_hour=8)
    assert due_month(datetime(2026, 1, 3, 6, 59, tzinfo=UTC), s) is None
    assert due_month(datetime(2026, 1, 3, 7, 0, tzinfo=UTC), s) == Month(2025, 12)
    # 01:30 on 1 April in Paris: April's day 3 has not come yet.
    assert due_month(datetime(2026, 3, 31, 23, 30, tzinfo=UTC), s) is None
    assert due_month(datetime(2026, 4, 3, 6, 0, tzinfo=UTC), s) == Month(2026, 3)


def test_month_period_is_local() -> None:
    period = Month(2026, 11).period(PARIS)
    assert period == Period(
        datetime(2026, 11, 1, tzinfo=PARIS), datetime(2026, 12, 1, tzinfo=PARIS)
    )
    assert datetime(2026, 10, 31, 23, 30, tzinfo=UTC) in period  # 00:30 in Paris
