"""``mssante account``, ``mssante audit`` and ``mssante serve``."""

from __future__ import annotations

import asyncio
import json
import signal
import smtplib
import ssl
from typing import TYPE_CHECKING

import pytest

from cli.main import EXIT_INVALID, EXIT_OK, EXIT_REFUSED
from relay.accounts import AccountStore
from relay.config import load
from tests.cli.support import run
from tests.directory import samples
from tests.support import serve

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.relay_fixtures import TlsFiles

PASSWORD = "Cli-test-pw-42!"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        '[relay]\ndata_dir = "data"\ndomain = "mssante.example"\n'
        "[auth]\nargon2_time_cost = 1\nargon2_memory_kib = 1024\nargon2_parallelism = 1\n",
        encoding="utf-8",
    )
    return path


def password_file(tmp_path: Path, secret: str = PASSWORD) -> str:
    path = tmp_path / "pw"
    path.write_text(secret + "\n", encoding="utf-8")
    return str(path)


def test_account_lifecycle(config: Path, tmp_path: Path) -> None:
    pw = password_file(tmp_path)
    status, text = run(
        config,
        "account",
        "create",
        "zoe",
        "--kind",
        "practitioner",
        "--mailbox",
        "zoe.moreau@medecin.mssante.fr",
        "--password-file",
        pw,
    )
    assert (status, text) == (EXIT_OK, "created account zoe\n")
    status, text = run(config, "--json", "account", "list")
    assert json.loads(text) == [
        {
            "login": "zoe",
            "kind": "practitioner",
            "mailboxes": ["zoe.moreau@medecin.mssante.fr"],
            "locked": False,
        }
    ]
    assert run(config, "account", "lock", "zoe")[0] == EXIT_OK
    store = AccountStore.for_config(load(config))
    assert store.authenticate("zoe", PASSWORD) is None  # locked
    store.close()
    assert run(config, "account", "unlock", "zoe")[0] == EXIT_OK
    new = password_file(tmp_path, "Another-pw-43!")
    assert run(config, "account", "passwd", "zoe", "--password-file", new)[0] == EXIT_OK
    store = AccountStore.for_config(load(config))
    assert store.authenticate("zoe", "Another-pw-43!") is not None
    store.close()
    assert run(config, "account", "delete", "zoe")[0] == EXIT_OK
    assert run(config, "account", "list")[1] == "no accounts\n"


def test_account_errors_name_the_field(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weak = password_file(tmp_path, "short")
    status, _ = run(
        config, "account", "create", "x", "--kind", "patient", "--password-file", weak
    )
    assert status == EXIT_INVALID
    assert "password: needs at least 12 characters" in capsys.readouterr().err
    assert run(config, "account", "lock", "ghost")[0] == EXIT_REFUSED
    assert "login: no account 'ghost'" in capsys.readouterr().err
    pw = password_file(tmp_path)
    run(config, "account", "create", "x", "--kind", "patient", "--password-file", pw)
    assert (
        run(
            config, "account", "create", "x", "--kind", "patient", "--password-file", pw
        )[0]
        == EXIT_REFUSED
    )


def test_admin_actions_are_audited_and_the_trail_verifies(
    config: Path, tmp_path: Path
) -> None:
    run(
        config,
        "account",
        "create",
        "zoe",
        "--kind",
        "practitioner",
        "--password-file",
        password_file(tmp_path),
    )
    run(
        config,
        "directory",
        "add-practitioner",
        "--rpps",
        "10285900311",
        "--last-name",
        "MOREAU",
    )
    status, text = run(config, "--json", "audit", "verify")
    assert status == EXIT_OK
    assert json.loads(text)["records"] == 2
    trail = tmp_path / "data" / "audit.jsonl"
    assert PASSWORD not in trail.read_text()
    lines = trail.read_text().splitlines()
    trail.write_text("\n".join([lines[0].replace("zoe", "eve"), lines[1]]) + "\n")
    status, text = run(config, "audit", "verify")
    assert status == 1
    assert ":1: record modified" in text


def test_audit_show_by_mailbox_and_patient(config: Path, tmp_path: Path) -> None:
    from relay.app import load_master_key
    from relay.audit import AuditEvent, AuditTrail

    cfg = load(config)
    ins = samples.INS_1
    trail = AuditTrail(
        cfg.relay.data_dir / "audit.jsonl", load_master_key(cfg).derive("audit")
    )
    trail.emit(
        AuditEvent.MESSAGE_ACCEPTED,
        sender="zoe@medecin.mssante.fr",
        recipients=[f"{ins}@patient.mssante.example"],
        queue_id="q1",
    )
    trail.emit(
        AuditEvent.MESSAGE_DELIVERED,
        sender="zoe@medecin.mssante.fr",
        recipient="other@medecin.mssante.fr",
        queue_id="q2",
    )
    trail.close()
    status, text = run(config, "audit", "show", "--patient", ins)
    assert status == EXIT_OK
    assert "message.accepted" in text
    assert "q2" not in text
    status, text = run(
        config, "--json", "audit", "show", "--mailbox", "zoe@medecin.mssante.fr"
    )
    assert [r["queue_id"] for r in json.loads(text)] == ["q1", "q2"]
    assert run(config, "audit", "show", "--patient", "123")[0] == EXIT_INVALID


async def test_serve_stops_gracefully_on_sigterm_after_delivering(
    tmp_path: Path, tls_files: TlsFiles
) -> None:
    from tests.relay.test_smtp import message
    from tests.support.relay_fixtures import (
        DOCTOR,
        URGENCES,
        seed_data_dir,
    )
    from tests.support.relay_fixtures import (
        PASSWORD as RELAY_PASSWORD,
    )

    path = serve.write_config(tmp_path, tls_files.directory)
    cfg = load(path)
    await seed_data_dir(cfg, tls_files)
    proc, port = await asyncio.to_thread(serve.start, path)
    assert proc.stdout is not None
    ctx = ssl.create_default_context(cafile=str(tls_files.directory / "ca.pem"))
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.starttls(context=ctx)
        c.login(DOCTOR.address, RELAY_PASSWORD)
        c.sendmail(
            DOCTOR.address,
            [URGENCES.address],
            message(DOCTOR.address, URGENCES.address),
        )
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "stopped" in output
    from relay.app import load_master_key, run_relay

    async with run_relay(cfg) as running:
        assert running.spool.pending() == []
        assert len(running.store.messages(URGENCES.address, "INBOX")) == 1
    from relay import audit

    assert audit.verify(
        cfg.relay.data_dir / "audit.jsonl", load_master_key(cfg).derive("audit")
    ).intact
