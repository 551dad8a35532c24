"""``mssante patient``: consent changes, their ledger and audit records, and
break-glass with the patient's INBOX notice (relay stopped: the CLI writes to
the mail store itself)."""

from __future__ import annotations

import email
import email.message
import email.policy
import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from cli.main import EXIT_INVALID, EXIT_OK, EXIT_REFUSED
from relay.accounts import AccountKind, AccountStore
from relay.app import STORE_DIR_NAME, load_master_key
from relay.audit import AUDIT_FILE_NAME, records
from relay.config import load
from relay.store import MailStore
from tests.cli.support import run
from tests.directory import samples

if TYPE_CHECKING:
    from pathlib import Path

INS = samples.INS_1
ADDRESS = f"{INS}@patient.mssante.example"
DOCTOR = "zoe.moreau@medecin.mssante.fr"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        '[relay]\ndata_dir = "data"\ndomain = "mssante.example"\n'
        "[auth]\nargon2_time_cost = 1\nargon2_memory_kib = 1024\nargon2_parallelism = 1\n",
        encoding="utf-8",
    )
    for argv in (
        ["directory", "add-practitioner", "--rpps", samples.RPPS_1, "--last-name", "MOREAU"],
        ["directory", "add-mailbox", DOCTOR, "--type", "PER", "--owner", samples.RPPS_1],
        ["directory", "add-organisation", "--finess", samples.FINESS_1, "--name", "CH PARIS"],
        ["directory", "add-patient", "--ins", INS, "--oid", "1.2.250.1.213.1.4.10",
         "--birth-name", "DURAND", "--first-names", "MARIE", "--sex", "F",
         "--birth-date", "1980-01-17", "--birth-place", "75056", "--qualified",
         "--contact-email", "marie@example.org", "--contact-phone", "+33612345678"],
    ):  # fmt: skip
        assert run(path, *argv)[0] == EXIT_OK, argv
    accounts = AccountStore.for_config(load(path))
    try:
        accounts.create("aidant-1", AccountKind.PROXY, "Aidant-pw-1234!", [])
    finally:
        accounts.close()
    return path


def run_json(config: Path, *argv: str) -> Any:  # noqa: ANN401 - JSON
    status, text = run(config, "--json", *argv)
    assert status == EXIT_OK, text
    return json.loads(text)


def audit(config: Path) -> list[dict[str, Any]]:
    return list(records(load(config).relay.data_dir / AUDIT_FILE_NAME))


def test_add_patient_takes_the_ordinary_contact(config: Path) -> None:
    shown = run_json(config, "patient", "show", ADDRESS)
    assert (shown["contact_email"], shown["contact_phone"]) == (
        "marie@example.org",
        "+33612345678",
    )


def test_opt_out_is_recorded_once_with_its_actor_and_audited(config: Path) -> None:
    status, text = run(config, "patient", "opt-out", INS, "--actor", "guichet-3")
    assert status == EXIT_OK
    assert "opt-out" in text
    again = run_json(config, "patient", "opt-out", INS)
    assert again == {"ins": INS, "changed": False}
    assert run_json(config, "patient", "show", INS)["opted_out"] is True
    assert run(config, "patient", "opt-in", INS)[0] == EXIT_OK
    history = run_json(config, "patient", "history", INS)
    assert [(r["sequence"], r["action"], r["actor"]) for r in history] == [
        (1, "opt-out", "guichet-3"),
        (2, "opt-in", "cli"),
    ]
    changed = [e for e in audit(config) if e["event"] == "patient.consent.changed"]
    assert [(e["action"], e["actor"], e["patient"]) for e in changed] == [
        ("opt-out", "guichet-3", INS),
        ("opt-in", "cli", INS),
    ]


def test_block_checks_the_party_against_the_directory(config: Path) -> None:
    status, _ = run(config, "patient", "block", INS, "8" + samples.RPPS_2)
    assert status == EXIT_INVALID  # a valid id, but nobody in the directory
    status, _ = run(config, "patient", "block", INS, "nobody")
    assert status == EXIT_INVALID
    for party in ("1" + samples.FINESS_1, "8" + samples.RPPS_1, DOCTOR):
        assert run(config, "patient", "block", INS, party)[0] == EXIT_OK
    shown = run_json(config, "patient", "show", INS)
    assert shown["blocked_senders"] == sorted(
        ["1" + samples.FINESS_1, "8" + samples.RPPS_1, DOCTOR]
    )
    assert run(config, "patient", "unblock", INS, DOCTOR)[0] == EXIT_OK
    status, _ = run(config, "patient", "unblock", INS, DOCTOR)
    assert status == EXIT_REFUSED  # not blocked any more


def test_errors_name_the_field(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    past = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    cases = [
        (["grant-proxy", INS, "aidant-1", "--scope", "read", "--until", past], "until"),
        (["grant-proxy", INS, "aidant-1", "--scope", "read", "--until", "soon"], "until"),
        (["set-contact", INS, "--phone", "0612"], "contact_phone"),
        (["set-contact", INS], "contact"),
        (["set-treating-doctor", INS, "nobody@medecin.mssante.fr"], "address"),
        (["opt-out", "123"], "ins"),
    ]  # fmt: skip
    for argv, field in cases:
        status, _ = run(config, "patient", *argv)
        assert status == EXIT_INVALID, argv
        assert f"error: {field}:" in capsys.readouterr().err, argv
    status, _ = run(config, "patient", "revoke-proxy", INS, "aidant-9")
    assert status == EXIT_REFUSED
    assert run(config, "patient", "opt-out", samples.INS_2)[0] == EXIT_REFUSED
    assert run_json(config, "patient", "history", INS) == []


def test_proxy_contact_and_treating_doctor_changes(config: Path) -> None:
    until = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    done = run_json(
        config, "patient", "grant-proxy", INS, "aidant-1", "--scope", "read-reply",
        "--until", until.isoformat(),
    )  # fmt: skip
    assert done["record"]["detail"] == {
        "account": "aidant-1",
        "scope": "read-reply",
        "until": until.isoformat(),
    }
    assert run(config, "patient", "set-contact", INS, "--email", "")[0] == EXIT_OK
    assert run(config, "patient", "set-treating-doctor", INS, DOCTOR)[0] == EXIT_OK
    assert run(config, "patient", "revoke-proxy", INS, "aidant-1")[0] == EXIT_OK
    shown = run_json(config, "patient", "show", INS)
    assert shown["proxies"] == []
    assert shown["contact_email"] is None or shown["contact_email"] == ""
    assert [r["party"] for r in shown["care_relationships"]] == [DOCTOR]
    history = run_json(config, "patient", "history", INS)
    assert [r["action"] for r in history] == [
        "proxy-granted",
        "contact-changed",
        "treating-doctor-set",
        "proxy-revoked",
    ]
    assert history[1]["detail"] == {"email": "cleared"}


def test_break_glass_refuses_without_reason_or_beyond_a_day(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = AccountStore.for_config(load(config))
    accounts.create("admin-1", AccountKind.STAFF, "Admin-pw-1234!", [])
    accounts.close()
    for extra, field in (
        (["--reason", "  "], "reason"),
        (["--reason", "r", "--hours", "25"], "hours"),
        (["--reason", "r", "--hours", "0"], "hours"),
    ):
        status, _ = run(
            config, "patient", "break-glass", INS, "--account", "admin-1", *extra
        )
        assert status == EXIT_INVALID
        assert f"error: {field}:" in capsys.readouterr().err
    status, _ = run(
        config, "patient", "break-glass", INS, "--account", "nobody", "--reason", "r"
    )
    assert status == EXIT_INVALID
    assert "error: account:" in capsys.readouterr().err
    assert run_json(config, "patient", "history", INS) == []


def test_break_glass_tells_the_patient_in_their_inbox(config: Path) -> None:
    accounts = AccountStore.for_config(load(config))
    accounts.create("admin-1", AccountKind.STAFF, "Admin-pw-1234!", [])
    accounts.close()
    done = run_json(
        config, "patient", "break-glass", INS, "--account", "admin-1",
        "--reason", "demande du médecin traitant", "--hours", "2", "--actor", "dpo",
    )  # fmt: skip
    assert done["notice"]["via"] == "store"  # no relay running
    assert done["imap_folder"] == f"Shared/{ADDRESS}/INBOX"
    until = datetime.fromisoformat(done["until"])
    assert (
        timedelta(hours=1, minutes=59) < until - datetime.now(UTC) <= timedelta(hours=2)
    )
    shown = run_json(config, "patient", "show", INS)
    [grant] = shown["break_glass"]
    assert (grant["account"], grant["reason"], grant["opened_by"]) == (
        "admin-1",
        "demande du médecin traitant",
        "dpo",
    )
    [record] = run_json(config, "patient", "history", INS)
    # The reason is not in the ledger (free text), only who and until when.
    assert record["detail"] == {"account": "admin-1", "until": done["until"]}
    cfg = load(config)
    store = MailStore.open(cfg.relay.data_dir / STORE_DIR_NAME, load_master_key(cfg))
    try:
        [info] = store.messages(ADDRESS, "INBOX")
        raw = store.fetch(ADDRESS, "INBOX", info.uid)
    finally:
        store.close()
    notice = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(notice, email.message.EmailMessage)
    assert notice["Subject"] == "Accès exceptionnel à votre messagerie de santé"
    assert notice["Auto-Submitted"] == "auto-generated"
    text = notice.get_content()
    assert "un administrateur" in text
    assert "Motif indiqué : demande du médecin traitant" in text
    assert "admin-1" not in text
    [event] = [e for e in audit(config) if e["event"] == "patient.access.break_glass"]
    assert (event["actor"], event["account"], event["reason"]) == (
        "dpo",
        "admin-1",
        "demande du médecin traitant",
    )


def test_a_proxy_grant_goes_only_to_an_existing_caregiver_account(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    accounts = AccountStore.for_config(load(config))
    try:
        accounts.create("secretaire-1", AccountKind.STAFF, "Staff-pw-1234!", [])
    finally:
        accounts.close()
    # A login nobody holds yet would go to whoever gets it later.
    for login, problem in (
        ("personne", "no such account"),
        ("secretaire-1", "is not a proxy account"),
    ):
        status, _ = run(config, "patient", "grant-proxy", INS, login, "--scope", "read")
        assert status == EXIT_INVALID
        assert f"account: '{login}': {problem}" in capsys.readouterr().err
    assert run_json(config, "patient", "history", INS) == []
