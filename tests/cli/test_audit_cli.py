"""``mssante audit purge`` and ``mssante audit report``, in process."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from cli.main import EXIT_INVALID, EXIT_OK
from relay import audit
from relay.app import STORE_DIR_NAME, load_master_key
from relay.audit import AuditEvent, AuditTrail
from relay.audit_report import REQUESTS_DIR
from relay.config import load
from relay.store import MailStore
from tests.cli.support import run
from tests.directory import samples

if TYPE_CHECKING:
    from pathlib import Path

INS = samples.INS_1
PATIENT = f"{INS}@patient.mssante.example"
DOCTOR = "zoe.moreau@medecin.mssante.fr"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        '[relay]\ndata_dir = "data"\ndomain = "mssante.example"\n'
        "[audit]\nretention_days = 30\n",
        encoding="utf-8",
    )
    return path


def trail_of(config: Path) -> AuditTrail:
    cfg = load(config)
    return AuditTrail(
        cfg.relay.data_dir / "audit.jsonl", load_master_key(cfg).derive("audit")
    )


def test_purge_by_retention_keeps_recent_records_and_verifies(config: Path) -> None:
    now = datetime.now(UTC)
    trail = trail_of(config)
    for days in (90, 60, 10, 1):
        trail.emit(
            AuditEvent.MESSAGE_DELIVERED,
            time=(now - timedelta(days=days)).isoformat(),
            recipient=PATIENT,
        )
    trail.close()
    status, text = run(config, "--json", "audit", "purge")
    assert status == EXIT_OK
    result = json.loads(text)
    assert (result["purged"], result["kept"], result["anchor_seq"]) == (2, 2, 2)
    status, text = run(config, "audit", "verify")
    assert status == EXIT_OK
    assert "intact, 3 records, after 2 purged" in text
    events = [r["event"] for r in audit.records(trail.path)]
    assert events[-1] == "audit.purged"


def test_purge_before_a_date_and_verify_names_a_forged_anchor(config: Path) -> None:
    trail = trail_of(config)
    for day in (1, 2, 3):
        trail.emit(
            AuditEvent.MESSAGE_READ,
            time=datetime(2026, 1, day, tzinfo=UTC).isoformat(),
            mailbox=PATIENT,
        )
    path = trail.path
    trail.close()
    status, _ = run(config, "audit", "purge", "--before", "2026-01-03")
    assert status == EXIT_OK
    anchor = audit.anchor_path(path)
    anchor.write_text(anchor.read_text().replace('"count":2', '"count":1'))
    status, text = run(config, "audit", "verify")
    assert status == 1
    assert text.startswith(f"{anchor}: ")
    assert "forged" in text


def test_purge_options_are_checked(config: Path) -> None:
    assert run(config, "audit", "purge", "--before", "hier")[0] == EXIT_INVALID
    assert run(config, "audit", "purge", "--older-than", "0")[0] == EXIT_INVALID


def test_show_types_each_record(config: Path) -> None:
    trail = trail_of(config)
    trail.emit(AuditEvent.MESSAGE_DELIVERED, sender=DOCTOR, recipient=PATIENT)
    trail.emit(AuditEvent.MESSAGE_READ, actor="aidant-1", mailbox=PATIENT, via="proxy")
    trail.close()
    status, text = run(config, "--json", "audit", "show", "--patient", INS)
    assert status == EXIT_OK
    assert [(r["event"], r["kind"]) for r in json.loads(text)] == [
        ("message.delivered", "received"),
        ("message.read", "read"),
    ]


def test_report_prints_with_the_relay_stopped_and_delivers_on_demand(
    config: Path,
) -> None:
    trail = trail_of(config)
    trail.emit(
        AuditEvent.MESSAGE_DELIVERED,
        time="2026-10-05T08:00:00+00:00",
        sender=DOCTOR,
        recipient=PATIENT,
        message_ref="0" * 32,
    )
    trail.close()
    status, text = run(
        config, "audit", "report", "--patient", INS, "--month", "2026-10"
    )
    assert status == EXIT_OK
    assert "octobre 2026" in text
    assert f"le 05/10/2026 à 10:00 : de {DOCTOR}" in text
    status, _ = run(
        config, "audit", "report", "--patient", INS, "--month", "2026-10", "--deliver"
    )
    assert status == EXIT_OK
    cfg = load(config)
    store = MailStore.open(cfg.relay.data_dir / STORE_DIR_NAME, load_master_key(cfg))
    try:
        [message] = store.messages(PATIENT, "INBOX")
        raw = store.fetch(PATIENT, "INBOX", message.uid)
    finally:
        store.close()
    assert b"Auto-Submitted: auto-generated" in raw
    sent = [r for r in audit.records(trail.path) if r["event"] == "patient.report.sent"]
    assert [(r["mailbox"], r["trigger"], r["actor"]) for r in sent] == [
        (PATIENT, "on-demand", "cli")
    ]
    assert run(config, "audit", "report", "--patient", INS, "--month", "10-2026")[
        0
    ] == (EXIT_INVALID)


def test_report_with_the_store_held_asks_the_running_relay(config: Path) -> None:
    cfg = load(config)
    store = MailStore.open(cfg.relay.data_dir / STORE_DIR_NAME, load_master_key(cfg))
    try:
        status, _ = run(config, "audit", "report", "--patient", INS)
        assert status == EXIT_INVALID  # printing needs the store
        status, text = run(config, "audit", "report", "--patient", INS, "--deliver")
        assert status == EXIT_OK
        assert "requested" in text
    finally:
        store.close()
    [request] = (cfg.relay.data_dir / REQUESTS_DIR).glob("*.request")
    assert json.loads(request.read_text())["ins"] == INS
