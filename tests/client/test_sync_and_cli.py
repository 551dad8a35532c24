"""The synchronous facade and ``mssante send``, against a real relay."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING

from mssante import SyncClient, TLSConfig, parse_message
from tests.client.test_client import PATIENT_ADDRESS, _add_report_patient
from tests.message import samples
from tests.support.relay_fixtures import DOCTOR, PASSWORD, URGENCES

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.relay_fixtures import Harness


async def test_sync_client_sends_a_report(relay: Harness) -> None:
    host, port = relay.address("submission")
    report = samples.report(sender=DOCTOR.address, to=(URGENCES.address,))

    def use() -> str:
        with SyncClient(
            host,
            port,
            login=DOCTOR.address,
            password=PASSWORD,
            tls=TLSConfig(ca_file=relay.ca_file),
        ) as client:
            return client.send(report).message_id

    message_id = await asyncio.to_thread(use)
    await relay.delivered()
    [stored] = relay.messages(URGENCES.address)
    assert parse_message(stored).message_id == message_id


async def _cli(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "from cli.main import entry_point; entry_point()",
        *argv,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_cli_send_with_cda_and_pdf(relay: Harness, tmp_path: Path) -> None:
    await _add_report_patient(relay)
    host, port = relay.address("submission")
    pdf = tmp_path / "cr.pdf"
    pdf.write_bytes(samples.tiny_pdf("compte rendu"))
    password = tmp_path / "pw"
    password.write_text(PASSWORD)
    common = [
        "--json",
        "send",
        "--server",
        f"{host}:{port}",
        "--from",
        DOCTOR.address,
        "--password-file",
        str(password),
        "--ca-file",
        str(relay.ca_file),
        "--cda",
        str(samples.DISCHARGE_LETTER),
        "--pdf",
        str(pdf),
    ]
    status, out, err = await _cli(
        *common,
        "--to",
        PATIENT_ADDRESS,
        "--patient-ins",
        samples.PATIENT.ins,
        "--read-receipt",
        "--end-thread",
        "--traces",
        str(tmp_path / "traces.jsonl"),
    )
    assert status == 0, err
    result = json.loads(out)
    assert result["accepted"] == [PATIENT_ADDRESS]
    await relay.delivered()
    [stored] = relay.messages(PATIENT_ADDRESS)
    assert b"X-MSS-MES: FIN" in stored
    assert b"Disposition-Notification-To: " + DOCTOR.address.encode() in stored
    assert (tmp_path / "traces.jsonl").exists()
    # The sender reads the relay's DSN back: inbox, then receipts from the traces.
    imap_host, imap_port = relay.address("imaps")
    reading = [
        "--server",
        f"{imap_host}:{imap_port}",
        "--login",
        DOCTOR.address,
        "--password-file",
        str(password),
        "--ca-file",
        str(relay.ca_file),
    ]
    status, out, err = await _cli("--json", "inbox", *reading)
    assert status == 0, err
    [item] = json.loads(out)
    assert item["report"] is True
    status, out, err = await _cli(
        "--json", "receipts", *reading, "--traces", str(tmp_path / "traces.jsonl")
    )
    assert status == 0, err
    [receipt] = json.loads(out)
    assert receipt["message_id"] == result["message_id"]
    assert receipt["delivery"] == {PATIENT_ADDRESS: ["delivered", "2.0.0"]}
    assert receipt["mdn_overdue"] is False
    # Wrong patient: refused locally, exit 2, nothing sent.
    status, _, err = await _cli(
        *common, "--to", PATIENT_ADDRESS, "--patient-ins", "155069912300108"
    )
    assert status == 2
    assert "patient_ins" in err
    # Refused by the relay: exit 1 with the reply.
    status, _, err = await _cli(
        *common,
        "--to",
        "inconnu@medecin.mssante.fr",
        "--patient-ins",
        samples.PATIENT.ins,
    )
    assert status == 1
    assert "550 5.1.1" in err
    # Unreachable relay: exit 75 (try later).
    status, _, err = await _cli(
        "send",
        "--server",
        "127.0.0.1:1",
        "--from",
        DOCTOR.address,
        "--to",
        URGENCES.address,
        "--password-file",
        str(password),
        "--cda",
        str(samples.DISCHARGE_LETTER),
        "--patient-ins",
        samples.PATIENT.ins,
    )
    assert status == 75, err
