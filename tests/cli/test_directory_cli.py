"""``mssante directory ...`` in-process, against a real sqlite directory."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cli.main import EXIT_INVALID, EXIT_OK, EXIT_REFUSED
from tests.cli.support import run
from tests.directory import samples

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(
        '[relay]\ndata_dir = "data"\ndomain = "mssante.example"\n', encoding="utf-8"
    )
    return path


def run_json(config: Path, *argv: str) -> object:
    status, text = run(config, "--json", *argv)
    assert status == EXIT_OK, text
    return json.loads(text)


def make_cert(
    tmp_path: Path, email: str, *, days: int = 365, expired: bool = False
) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    start = now - timedelta(days=400) if expired else now - timedelta(days=1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, email)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / f"{email}-{expired}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def add_practitioner_and_mailbox(config: Path) -> None:
    assert (
        run(
            config,
            "directory",
            "add-practitioner",
            "--rpps",
            samples.RPPS_1,
            "--last-name",
            "MOREAU",
            "--first-name",
            "Zoé",
        )[0]
        == EXIT_OK
    )
    assert (
        run(
            config,
            "directory",
            "add-mailbox",
            "zoe.moreau@medecin.mssante.fr",
            "--type",
            "PER",
            "--owner",
            samples.RPPS_1,
        )[0]
        == EXIT_OK
    )


def test_add_and_show_practitioner_by_rpps(config: Path) -> None:
    add_practitioner_and_mailbox(config)
    record = run_json(config, "directory", "show", samples.RPPS_1)
    assert isinstance(record, dict)
    assert record["national_id"] == "8" + samples.RPPS_1
    status, text = run(config, "directory", "show", "zoe.moreau@medecin.mssante.fr")
    assert status == EXIT_OK
    assert "PER" in text
    assert "810285900311" in text


def test_invalid_rpps_names_field_and_value(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = run(
        config,
        "directory",
        "add-practitioner",
        "--rpps",
        "10285900312",
        "--last-name",
        "X",
    )
    assert status == EXIT_INVALID
    err = capsys.readouterr().err
    assert "national_id" in err
    assert "10285900312" in err
    assert "Luhn" in err


def test_mailbox_needs_known_owner(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = run(
        config,
        "directory",
        "add-mailbox",
        "a@medecin.mssante.fr",
        "--type",
        "PER",
        "--owner",
        samples.RPPS_2,
    )
    assert status == EXIT_INVALID
    assert "owner" in capsys.readouterr().err
    # nothing was written
    assert run(config, "directory", "show", "a@medecin.mssante.fr")[0] == EXIT_REFUSED


def test_adding_twice_is_refused(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_practitioner_and_mailbox(config)
    status, _ = run(
        config,
        "directory",
        "add-practitioner",
        "--rpps",
        samples.RPPS_1,
        "--last-name",
        "Y",
    )
    assert status == EXIT_REFUSED
    assert "already exists" in capsys.readouterr().err


def test_patient_gets_mailbox_only_when_qualified(config: Path) -> None:
    common = [
        "--oid",
        "1.2.250.1.213.1.4.10",
        "--birth-name",
        "DUPONT",
        "--first-names",
        "Marie",
        "--sex",
        "F",
        "--birth-date",
        "1980-01-17",
        "--birth-place",
        "75056",
    ]
    run_json(
        config,
        "directory",
        "add-patient",
        "--ins",
        samples.INS_1,
        "--qualified",
        *common,
    )
    run_json(config, "directory", "add-patient", "--ins", samples.INS_2, *common)
    qualified = run_json(
        config, "directory", "show", f"{samples.INS_1}@patient.mssante.example"
    )
    assert isinstance(qualified, dict)
    assert qualified["ins"] == samples.INS_1
    plain = run_json(config, "directory", "show", samples.INS_2)
    assert isinstance(plain, dict)
    assert plain["address"] is None


def patient_args(
    *, oid: str = "1.2.250.1.213.1.4.10", birth_date: str = "1980-01-17"
) -> list[str]:
    return [
        "directory", "add-patient", "--ins", samples.INS_1, "--oid", oid,
        "--birth-name", "D", "--first-names", "M", "--sex", "F",
        "--birth-date", birth_date, "--birth-place", "75056",
    ]  # fmt: skip


def test_test_ins_oid_refused_in_production(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "prod.toml"
    path.write_text(
        '[relay]\ndata_dir = "d"\ndomain = "m.example"\n[directory]\nproduction = true\n'
    )
    assert run(path, *patient_args())[0] == EXIT_INVALID
    assert "production" in capsys.readouterr().err


def test_bad_date_names_the_field(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, *patient_args(birth_date="17/01/1980"))[0] == EXIT_INVALID
    assert "birth_date" in capsys.readouterr().err


def test_suspend_reactivate_revoke(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_practitioner_and_mailbox(config)
    box = "zoe.moreau@medecin.mssante.fr"
    assert run_json(config, "directory", "suspend", box)["status"] == "suspended"  # type: ignore[index]
    assert run_json(config, "directory", "reactivate", box)["status"] == "active"  # type: ignore[index]
    assert run_json(config, "directory", "revoke", box)["status"] == "revoked"  # type: ignore[index]
    status, _ = run(config, "directory", "reactivate", box)
    assert status == EXIT_REFUSED
    assert "revoked is final" in capsys.readouterr().err


def test_operator_delegation_and_search(config: Path) -> None:
    add_practitioner_and_mailbox(config)
    run_json(
        config,
        "directory",
        "add-operator",
        "hopital-b.example",
        "--dn",
        "CN=mx.hopital-b.example,C=FR",
        "--dn",
        "CN=mx2.hopital-b.example,C=FR",
    )
    run_json(
        config,
        "directory",
        "add-delegation",
        "--account",
        "secretaire",
        "--mailbox",
        "zoe.moreau@medecin.mssante.fr",
        "--scope",
        "read-send",
        "--expires",
        "2027-06-30",
    )
    op = run_json(config, "directory", "show", "hopital-b.example")
    assert isinstance(op, dict)
    assert len(op["certificates"]) == 2
    found = run_json(config, "directory", "search", "moreau")
    assert isinstance(found, list)
    assert {r["kind"] for r in found} == {"practitioner", "mailbox", "delegation"}
    status, table = run(config, "directory", "search", "moreau")
    assert status == EXIT_OK
    assert table.splitlines()[0].split() == ["KIND", "KEY", "STATUS", "DESCRIPTION"]


def test_attach_certificate_checks_address_and_validity(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    add_practitioner_and_mailbox(config)
    box = "zoe.moreau@medecin.mssante.fr"
    status, text = run(
        config, "directory", "attach-certificate", box, str(make_cert(tmp_path, box))
    )
    assert status == EXIT_OK, text
    shown = run_json(config, "directory", "show", box)
    assert isinstance(shown, dict)
    assert len(shown["certificates"]) == 1
    wrong = make_cert(tmp_path, "other@medecin.mssante.fr")
    assert (
        run(config, "directory", "attach-certificate", box, str(wrong))[0]
        == EXIT_INVALID
    )
    assert "no e-mail address matches" in capsys.readouterr().err
    expired = make_cert(tmp_path, box, days=30, expired=True)
    assert (
        run(config, "directory", "attach-certificate", box, str(expired))[0]
        == EXIT_INVALID
    )
    assert "expired" in capsys.readouterr().err
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a certificate")
    assert (
        run(config, "directory", "attach-certificate", box, str(garbage))[0]
        == EXIT_INVALID
    )
    assert "not a PEM or DER" in capsys.readouterr().err


def test_export_json_round_trips(config: Path, tmp_path: Path) -> None:
    add_practitioner_and_mailbox(config)
    target = tmp_path / "dump.json"
    assert (
        run(config, "directory", "export", "--format", "json", "-o", str(target))[0]
        == EXIT_OK
    )
    records = json.loads(target.read_text(encoding="utf-8"))
    assert sorted(r["kind"] for r in records) == ["mailbox", "practitioner"]


def test_unknown_key_form_asks_for_kind(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(config, "directory", "show", "nonsense")[0] == EXIT_INVALID
    assert "--kind" in capsys.readouterr().err


def test_console_script_runs_as_a_subprocess(config: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cli.main import entry_point; entry_point()",
            "--config",
            str(config),
            "directory",
            "show",
            samples.RPPS_1,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
        timeout=60,
    )
    assert proc.returncode == EXIT_REFUSED
    assert "no practitioner" in proc.stderr


def test_import_bad_extraction_reports_lines_and_keeps_good_rows(config: Path) -> None:
    bad = (
        ROOT
        / "tests"
        / "data"
        / "annuaire"
        / "bad"
        / "Extraction_Correspondance_MSSante_202611220300.txt"
    )
    report = run_json(config, "directory", "import-mssante", str(bad))
    assert isinstance(report, dict)
    assert report["rejected"] == 3
    assert [r["line"] for r in report["rejects"]] == [13, 17, 21]
    assert report["kinds"]["mailbox"]["added"] == 31
    status, text = run(config, "directory", "import-mssante", str(bad))
    assert status == EXIT_OK
    assert "unchanged 31" in text
    assert "line 13:" in text


def test_import_with_wrong_header_is_invalid_input(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = tmp_path / "wrong.txt"
    wrong.write_text("a|b|c\n1|2|3\n", encoding="utf-8")
    assert run(config, "directory", "import-rpps", str(wrong))[0] == EXIT_INVALID
    assert "header" in capsys.readouterr().err.lower()


def test_demo_loads_and_is_idempotent(config: Path) -> None:
    with config.open("a", encoding="utf-8") as f:
        f.write(
            '[tls]\ncert_file = "data/tls/server.pem"\nkey_file = "data/tls/server.key"\n'
            'trust_anchors_file = "data/tls/ca.pem"\n'
            "[auth]\nargon2_time_cost = 1\nargon2_memory_kib = 1024\nargon2_parallelism = 1\n"
        )
    status, text = run(config, "demo", "--no-serve")
    assert status == EXIT_OK, text
    assert "mailboxes added: 1" in text
    assert "swaks --server" in text
    accounts = (config.parent / "data" / "demo-accounts.txt").read_text()
    status, again = run(config, "demo", "--no-serve")
    assert status == EXIT_OK
    assert "mailboxes added: 0" in again
    assert "demo entries added: 0" in again
    # Same accounts, same passwords, same certificates on a second run.
    assert (config.parent / "data" / "demo-accounts.txt").read_text() == accounts
    assert (config.parent / "data" / "tls" / "server.key").stat().st_mode & 0o077 == 0
    found = run_json(config, "directory", "search", "dupont", "--kind", "patient")
    assert isinstance(found, list)
    assert len(found) == 1
