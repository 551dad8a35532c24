"""``mssante account app-password``, ``tokens test``, ``show``, ``external-id``."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import pytest

from cli.main import EXIT_OK, EXIT_REFUSED
from relay.accounts import AccountStore
from relay.audit import records
from relay.config import load
from tests.cli.support import run
from tests.relay.test_auth_issuer import CLAIM, LocalIssuer, issuer

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["issuer"]

PASSWORD = "Cli-test-pw-42!"
RPPS_ID = "810003456789"


@pytest.fixture
def config(tmp_path: Path, issuer: LocalIssuer) -> Path:
    issuer.write_jwks(tmp_path / "jwks.json")
    path = tmp_path / "relay.toml"
    path.write_text(
        '[relay]\ndata_dir = "data"\ndomain = "mssante.example"\n'
        "[auth]\nargon2_time_cost = 1\nargon2_memory_kib = 1024\n"
        "argon2_parallelism = 1\n"
        "[auth.oauth]\n"
        f'issuer = "{issuer.issuer}"\naudience = "{issuer.audience}"\n'
        f'claim = "{CLAIM}"\njwks_file = "jwks.json"\n',
        encoding="utf-8",
    )
    (tmp_path / "pw").write_text(PASSWORD + "\n", encoding="utf-8")
    assert (
        run(
            path,
            "account",
            "create",
            "zoe",
            "--kind",
            "practitioner",
            "--external-id",
            RPPS_ID,
            "--password-file",
            str(tmp_path / "pw"),
        )[0]
        == EXIT_OK
    )
    return path


def test_app_password_is_printed_once_listed_and_revoked(config: Path) -> None:
    status, text = run(
        config, "--json", "account", "app-password", "add", "zoe", "--name", "laptop"
    )
    assert status == EXIT_OK
    secret = json.loads(text)["app_password"]
    store = AccountStore.for_config(load(config))
    try:
        verified = store.verify_password("zoe", secret)
        assert verified is not None
        assert verified.device == "laptop"
    finally:
        store.close()
    status, text = run(config, "--json", "account", "app-password", "list", "zoe")
    listed = json.loads(text)
    assert [d["name"] for d in listed] == ["laptop"]
    assert secret not in text
    assert run(config, "account", "app-password", "revoke", "zoe", "--name", "laptop")[
        0
    ] == (EXIT_OK)
    status, text = run(config, "account", "app-password", "list", "zoe")
    assert text == "no app passwords for zoe\n"
    trail = load(config).relay.data_dir / "audit.jsonl"
    actions = [r.get("action") for r in records(trail)]
    assert "app password added" in actions
    assert "app password revoked" in actions
    assert all(secret not in json.dumps(r) for r in records(trail))


def test_revoking_an_unknown_app_password_is_an_error(config: Path) -> None:
    status, _ = run(config, "account", "app-password", "revoke", "zoe", "--name", "x")
    assert status != EXIT_OK


def test_tokens_test_accepts_a_good_token_and_names_the_account(
    config: Path, issuer: LocalIssuer
) -> None:
    status, text = run(
        config, "account", "tokens", "test", issuer.token(RPPS_ID, now=time.time())
    )
    assert status == EXIT_OK
    assert text == f"accepted: {CLAIM} = {RPPS_ID} -> zoe\n"


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"lifetime": -400}, "refused: expired"),
        ({"aud": "other"}, "refused: meant for another audience"),
        ({"key": "rogue"}, "refused: signature does not verify"),
    ],
)
def test_tokens_test_explains_why_a_token_is_refused(
    config: Path, issuer: LocalIssuer, kwargs: dict[str, object], reason: str
) -> None:
    token = issuer.token(RPPS_ID, now=time.time(), **kwargs)  # type: ignore[arg-type]
    status, text = run(config, "account", "tokens", "test", token)
    assert status == EXIT_REFUSED
    assert text.startswith(reason)


def test_tokens_test_says_when_no_account_has_the_identity(
    config: Path, issuer: LocalIssuer
) -> None:
    token = issuer.token("899999999999", now=time.time())
    status, text = run(config, "account", "tokens", "test", token)
    assert status == EXIT_REFUSED
    assert "no account for the identity it names" in text
    assert "899999999999" in text


def test_show_lists_the_mechanisms_of_the_account_kind(config: Path) -> None:
    status, text = run(config, "--json", "account", "show", "zoe")
    assert status == EXIT_OK
    shown = json.loads(text)
    assert shown["external_id"] == RPPS_ID
    assert shown["mechanisms"] == ["app-password", "oauth", "password"]
    assert shown["sasl"] == ["LOGIN", "OAUTHBEARER", "PLAIN", "XOAUTH2"]
    assert shown["production"] is False
    status, human = run(config, "account", "show", "zoe")
    assert "mechanisms:    app-password oauth password (demo mode)" in human


def test_production_show_forbids_the_practitioner_main_password(
    config: Path,
) -> None:
    text = config.read_text(encoding="utf-8").replace(
        "[auth]\n", "[auth]\nproduction = true\n"
    )
    config.write_text(text, encoding="utf-8")
    shown = json.loads(run(config, "--json", "account", "show", "zoe")[1])
    assert shown["mechanisms"] == ["app-password", "oauth"]


def test_application_account_without_password_and_external_id_change(
    config: Path,
) -> None:
    status, _ = run(
        config,
        "account",
        "create",
        "lps",
        "--kind",
        "application",
        "--no-password",
        "--mailbox",
        "lps@ch-paris-1.mssante.fr",
    )
    assert status == EXIT_OK
    shown = json.loads(run(config, "--json", "account", "show", "lps")[1])
    assert shown["has_password"] is False
    assert "EXTERNAL" not in shown["sasl"]  # opt-in in demo mode
    assert run(config, "account", "external-id", "lps", "3-FINESS-1")[0] == EXIT_OK
    taken = run(config, "account", "external-id", "lps", RPPS_ID)
    assert taken[0] == EXIT_REFUSED
    assert run(config, "account", "external-id", "lps", "--clear")[0] == EXIT_OK
