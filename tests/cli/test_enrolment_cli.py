"""``mssante patient enrol | recover | inactive``, in process (issue 10)."""

from __future__ import annotations

import asyncio
import dataclasses
import imaplib
import io
import json
import re
import ssl
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from cli.enrolment import enrol
from cli.main import EXIT_INVALID, EXIT_OK, EXIT_REFUSED, Context, build_parser
from directory.config import open_directory
from directory.model import ProxyGrant, ProxyScope
from relay.accounts import AccountStore, CodePurpose, CodeResult
from relay.app import run_relay
from relay.audit import records
from relay.config import load
from tests.cli.support import run
from tests.relay.test_enrolment import NEW_PASSWORD, RecordingNotifier
from tests.support.relay_fixtures import (
    LOCAL_DOMAINS,
    PASSWORD,
    PATIENT,
    PATIENT_2,
    TlsFiles,
    patient_address,
    seed_data_dir,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from relay.config import Config

CODE = re.compile(r"[0-9A-Z]{4}(?:-[0-9A-Z]{4}){3}")
LOGIN = patient_address(PATIENT_2)
CAREGIVER = patient_address(PATIENT)


@pytest.fixture
def config(tmp_path: Path, tls_files: TlsFiles) -> Path:
    """A relay config file on ephemeral ports, its data directory seeded."""
    tls = tls_files.directory
    listener = 'host = "127.0.0.1"\nport = 0\n'
    path = tmp_path / "relay.toml"
    domains = ", ".join(f'"{d}"' for d in LOCAL_DOMAINS)
    path.write_text(
        f'[relay]\ndata_dir = "data"\ndomain = "mssante.example"\n'
        f"local_domains = [{domains}]\n"
        f'[tls]\ncert_file = "{tls / "server.pem"}"\n'
        f'key_file = "{tls / "server.key"}"\n'
        f'trust_anchors_file = "{tls / "ca.pem"}"\n'
        f"[smtp.submission]\n{listener}[smtp.submissions]\n{listener}"
        f"[smtp.mx]\n{listener}[imap.plain]\n{listener}[imap.implicit]\n{listener}"
        "[auth]\nfailure_delay = 0.0\nargon2_time_cost = 1\n"
        "argon2_memory_kib = 1024\nargon2_parallelism = 1\n"
        "[enrolment]\ninactive_days = 30\n",
        encoding="utf-8",
    )
    cfg = load(path)
    asyncio.run(_seed(cfg, tls_files))
    return path


async def _seed(cfg: Config, files: TlsFiles) -> None:
    await seed_data_dir(cfg, files)
    directory = await open_directory(cfg.directory)
    try:
        grant = ProxyGrant(
            account=CAREGIVER,
            scope=ProxyScope.READ_REPLY,
            granted_at=datetime.now(UTC) - timedelta(days=1),
        )
        await directory.replace(
            dataclasses.replace(
                PATIENT_2, proxies=(grant,), contact_email="marie@example.org"
            )
        )
    finally:
        await directory.close()


@pytest.fixture
def store(config: Path) -> Iterator[AccountStore]:
    accounts = AccountStore.for_config(load(config))
    try:
        yield accounts
    finally:
        accounts.close()


def audit_text(config: Path) -> str:
    return (load(config).relay.data_dir / "audit.jsonl").read_text(encoding="utf-8")


def test_enrol_print_shows_the_code_once_and_audits_without_it(
    config: Path, store: AccountStore
) -> None:
    status, text = run(
        config, "--json", "patient", "enrol", PATIENT_2.ins, "--deliver", "print"
    )
    assert status == EXIT_OK
    shown = json.loads(text)
    assert shown["login"] == LOGIN
    assert CODE.fullmatch(shown["code"])
    assert store.code_expiry(LOGIN, CodePurpose.ACTIVATION) is not None
    assert shown["code"] not in audit_text(config)
    [enrolled] = [
        r
        for r in records(load(config).relay.data_dir / "audit.jsonl")
        if r["event"] == "patient.enrolled"
    ]
    assert enrolled["delivery"] == "print"
    assert enrolled["actor"] == "cli"
    redeemed = store.redeem_code(
        LOGIN, CodePurpose.ACTIVATION, shown["code"], NEW_PASSWORD, now=1e9
    )
    assert redeemed is CodeResult.REDEEMED


def test_enrol_human_output_is_a_letter(config: Path) -> None:
    status, text = run(config, "patient", "enrol", PATIENT_2.ins, "--deliver", "print")
    assert status == EXIT_OK
    assert "activation code:" in text
    assert LOGIN in text


def test_enrol_by_contact_without_a_channel_fails_temporarily(
    config: Path, store: AccountStore, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = run(config, "patient", "enrol", PATIENT_2.ins)
    assert status == 75
    assert "contact:" in capsys.readouterr().err
    assert store.code_expiry(LOGIN, CodePurpose.ACTIVATION) is None


async def test_enrol_by_contact_hands_the_code_to_the_notifier_only(
    config: Path,
) -> None:
    cfg = load(config)
    notifier = RecordingNotifier()
    args = build_parser().parse_args(["patient", "enrol", PATIENT_2.ins])
    out = io.StringIO()
    ctx = Context(config=cfg, directory_config=cfg.directory, as_json=True, out=out)
    directory = await open_directory(cfg.directory)
    try:
        assert await enrol(ctx, directory, args, notifier=notifier) == EXIT_OK
    finally:
        await directory.close()
    notice = await notifier.wait(1)
    code = CODE.search(notice.text)
    assert code is not None
    assert code.group() not in out.getvalue()
    assert json.loads(out.getvalue())["channels"] == ["email"]


def test_enrol_errors_name_the_field(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "patient", "enrol", "275029901234599")[0] == EXIT_INVALID
    assert "ins" in capsys.readouterr().err
    status, _ = run(config, "patient", "enrol", "175027512345708", "--deliver", "print")
    assert status in (EXIT_INVALID, EXIT_REFUSED)
    status, _ = run(config, "patient", "enrol", PATIENT.ins, "--deliver", "print")
    assert status == EXIT_REFUSED
    assert "already activated" in capsys.readouterr().err


def test_inactive_lists_accounts_with_their_state(config: Path) -> None:
    assert run(config, "patient", "enrol", PATIENT_2.ins, "--deliver", "print")[0] == 0
    status, text = run(config, "patient", "inactive", "--days", "0", "--json")
    assert status == EXIT_OK
    rows = {r["login"]: r for r in json.loads(text)}
    assert rows[LOGIN]["state"] == "never-activated"
    assert rows[CAREGIVER]["state"] == "never-used"
    assert rows[CAREGIVER]["activated"] is not None
    status, text = run(config, "patient", "inactive")
    assert status == EXIT_OK
    assert text == "no inactive patient account\n"


def test_recover_via_needs_a_known_channel(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = run(config, "patient", "recover", PATIENT.ins, "--via", "pigeon")
    assert status == EXIT_INVALID
    assert "--via" in capsys.readouterr().err
    status, _ = run(config, "patient", "recover", PATIENT.ins, "--via", "caregiver")
    assert status == EXIT_INVALID


async def test_recover_via_caregiver_delivers_into_the_caregiver_inbox(
    config: Path, tls_files: TlsFiles
) -> None:
    cfg = load(config)
    async with run_relay(cfg, drain_timeout=5, notifier=RecordingNotifier()) as relay:
        accounts = relay.accounts
        status, _ = await asyncio.to_thread(
            run, config, "patient", "enrol", PATIENT_2.ins, "--deliver", "print"
        )
        assert status == EXIT_OK
        # The patient activates (the printed code is not read here: a new one).
        code = accounts.issue_code(LOGIN, CodePurpose.ACTIVATION, expires=2e9)
        assert (
            await asyncio.to_thread(
                accounts.redeem_code,
                LOGIN,
                CodePurpose.ACTIVATION,
                code.code,
                NEW_PASSWORD,
                now=1e9,
            )
            is CodeResult.REDEEMED
        )
        status, text = await asyncio.to_thread(
            run,
            config,
            "--json",
            "patient",
            "recover",
            PATIENT_2.ins,
            "--via",
            "caregiver",
            CAREGIVER,
        )
        assert status == EXIT_OK
        assert json.loads(text)["mailbox"] == CAREGIVER
        assert not CODE.search(text)

        def inbox() -> list[bytes]:
            host, port = relay.addresses["imaps"]
            ctx = tls_files_context(tls_files)
            with imaplib.IMAP4_SSL(host, port, ssl_context=ctx, timeout=10) as c:
                c.login(CAREGIVER, PASSWORD)
                c.select("INBOX", readonly=True)
                _, found = c.search(None, "ALL")
                bodies = []
                for uid in found[0].split():
                    _, parts = c.fetch(uid, "(BODY.PEEK[])")
                    item = parts[0]
                    assert isinstance(item, tuple)
                    bodies.append(item[1])
                c.logout()
                return bodies

        bodies: list[bytes] = []
        for _ in range(50):
            bodies = await asyncio.to_thread(inbox)
            if bodies:
                break
            await asyncio.sleep(0.2)
        assert len(bodies) == 1
        code_text = CODE.search(bodies[0].decode())
        assert code_text is not None
        assert code_text.group() not in audit_text(config)


def tls_files_context(files: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(files.directory / "ca.pem"))
