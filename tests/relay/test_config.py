"""Config loading: valid files load, every mistake names its key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from directory.config import Backend
from relay.config import (
    ConfigError,
    EncryptionProfile,
    PatientReadReceipts,
    RevocationMode,
    SmimePeer,
    load,
)
from relay.policy import SignatureAction

ROOT = Path(__file__).resolve().parent.parent.parent


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relay.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_configs_load() -> None:
    embedded = load(ROOT / "conf" / "relay.toml")
    assert embedded.directory.backend is Backend.SQLITE
    assert embedded.directory.sqlite_path.name == "directory.sqlite3"
    ldap = load(ROOT / "conf" / "relay.ldap.toml")
    assert ldap.directory.backend is Backend.LDAP
    assert ldap.directory.ldap is not None
    assert ldap.directory.production is True


def test_relative_paths_resolve_against_the_config_file(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, '[relay]\ndata_dir = "state"\ndomain = "x.example"\n'))
    assert cfg.relay.data_dir == tmp_path / "state"
    assert cfg.directory.sqlite_path == tmp_path / "state" / "directory.sqlite3"


def test_secret_path_is_not_shown_in_repr(tmp_path: Path) -> None:
    cfg = load(ROOT / "conf" / "relay.ldap.toml")
    assert "bind_password_file" not in repr(cfg)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[relay]\ndomain = "x.example"\n', "relay.data_dir: missing"),
        (
            '[relay]\ndata_dir = "d"\ndomain = "x.example"\ncolour = 1\n',
            "relay.colour: unknown key",
        ),
        (
            '[relay]\ndata_dir = 3\ndomain = "x.example"\n',
            "relay.data_dir: expected str",
        ),
        (
            '[relay]\ndata_dir = "d"\ndomain = "x.example"\n[directory]\nbackend = "mongo"\n',
            "directory.backend: 'mongo' is not one of sqlite, ldap",
        ),
        (
            '[relay]\ndata_dir = "d"\ndomain = "x.example"\n[smtp]\nprocesses = 0\n',
            "smtp.processes: must be at least 1",
        ),
        (
            '[relay]\ndata_dir = "d"\ndomain = "x.example"\n[smtp]\nprocesses = 65\n',
            "smtp.processes: at most 64",
        ),
        (
            '[relay]\ndata_dir = "d"\ndomain = "x.example"\n[directory]\nbackend = "ldap"\n',
            "directory.ldap: missing table",
        ),
        (
            '[relay]\ndata_dir = "d"\ndomain = "x.example"\n[directory]\nbackend = "ldap"\n'
            '[directory.ldap]\nuri = "http://x"\nbase_dn = "dc=x"\nbind_dn = "cn=r"\n'
            'bind_password_file = "p"\nca_file = "c"\n',
            "directory.ldap.uri: must start with ldap://",
        ),
        (
            '[relay]\ndata_dir = "d"\ndomain = "x.example"\n[directory]\nproduction = "yes"\n',
            "directory.production: expected bool",
        ),
        ("[relay\n", "not valid TOML"),
        ("", "relay: missing table"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(
        ConfigError, match=message.replace(".", "\\.").replace("(", "\\(")
    ):
        load(write(tmp_path, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load(tmp_path / "absent.toml")


# -- [smime] ---------------------------------------------------------------------

RELAY = '[relay]\ndata_dir = "d"\ndomain = "x.example"\n'
SMIME = '[smime]\ntrust_anchors_file = "ca.pem"\n'


def test_smime_is_off_without_its_table(tmp_path: Path) -> None:
    assert load(write(tmp_path, RELAY)).smime is None


def test_smime_defaults_verify_refuse_and_encrypt_without_sealing(
    tmp_path: Path,
) -> None:
    smime = load(write(tmp_path, RELAY + SMIME)).smime
    assert smime is not None
    assert smime.trust_anchors_file == tmp_path / "ca.pem"
    assert smime.defaults == SmimePeer(seal_unsigned=False)
    assert smime.defaults.invalid_signature is SignatureAction.REFUSE
    assert smime.defaults.encrypt
    assert smime.revocation is RevocationMode.HARD_FAIL


def test_smime_seals_by_default_once_the_operator_credential_is_set(
    tmp_path: Path,
) -> None:
    text = (
        RELAY + SMIME + 'seal_cert_file = "seal.pem"\nseal_key_file = "seal.key"\n'
        'crl_files = ["a.crl", "/etc/b.crl"]\n'
    )
    smime = load(write(tmp_path, text)).smime
    assert smime is not None
    assert smime.defaults.seal_unsigned
    assert smime.crl_files == (tmp_path / "a.crl", Path("/etc/b.crl"))
    assert "seal_key_file" not in repr(smime)


def test_smime_peer_overrides_apply_to_their_domain_and_subdomains(
    tmp_path: Path,
) -> None:
    text = (
        RELAY + SMIME + 'seal_cert_file = "s.pem"\nseal_key_file = "s.key"\n'
        'invalid_signature = "warn"\n'
        '[smime.peers."hopital-b.example"]\nseal_unsigned = false\nencrypt = false\n'
        '[smime.peers.".old.example"]\nprofile = "compat"\n'
        '[smime.peers."a.old.example"]\ninvalid_signature = "refuse"\n'
    )
    smime = load(write(tmp_path, text)).smime
    assert smime is not None
    b = smime.for_address("dr@Hopital-B.example")
    assert (b.seal_unsigned, b.encrypt) == (False, False)
    assert b.invalid_signature is SignatureAction.WARN  # inherited
    sub = smime.for_address("x@b.old.example")
    assert sub.profile is EncryptionProfile.COMPAT
    assert sub.seal_unsigned
    exact = smime.for_address("x@a.old.example")
    assert exact.invalid_signature is SignatureAction.REFUSE
    assert exact.profile is EncryptionProfile.MODERN  # exact match wins
    assert smime.for_address("x@elsewhere.example") == smime.defaults
    assert smime.describe()["peers"] == [
        ".old.example",
        "a.old.example",
        "hopital-b.example",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[smime]\n", "smime.trust_anchors_file: missing"),
        (
            SMIME + 'invalid_signature = "drop"\n',
            "smime.invalid_signature: 'drop' is not one of refuse, warn",
        ),
        (
            SMIME + 'profile = "legacy"\n',
            "smime.profile: 'legacy' is not one of modern, compat",
        ),
        (SMIME + 'revocation = "none"\n', "smime.revocation: 'none' is not one of"),
        (SMIME + "encrypt = 1\n", "smime.encrypt: expected bool"),
        (SMIME + 'crl_files = "a.crl"\n', "smime.crl_files: expected list"),
        (
            SMIME + "seal_unsigned = true\n",
            "smime.seal_unsigned: sealing needs seal_cert_file",
        ),
        (SMIME + 'seal_cert_file = "s.pem"\n', "smime.seal_key_file: missing"),
        (SMIME + 'verify = "no"\n', "smime.verify: unknown key"),
        (
            SMIME + '[smime.peers."b.example"]\nseal_unsigned = true\n',
            'smime.peers."b.example".seal_unsigned: sealing needs',
        ),
        (
            SMIME + '[smime.peers."b.example"]\nencrypt = "no"\n',
            "smime.peers.b.example.encrypt: expected bool",
        ),
        (
            SMIME + '[smime.peers."b.example"]\ncolour = 1\n',
            "smime.peers.b.example.colour: unknown key",
        ),
        (
            SMIME + '[smime.peers]\n"b.example" = 1\n',
            "smime.peers.b.example: expected a table",
        ),
        (
            SMIME + '[smime.peers."a@b.example"]\n',
            "smime.peers.a@b.example: not a mail domain",
        ),
    ],
)
def test_invalid_smime_config_names_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(write(tmp_path, RELAY + text))


# -- [delivery] ------------------------------------------------------------------


def test_delivery_defaults_are_postfix_like(tmp_path: Path) -> None:
    delivery = load(write(tmp_path, RELAY)).delivery
    assert delivery.enabled
    assert delivery.port == 25
    assert delivery.retry.minimal_backoff == 300
    assert delivery.retry.lifetime == 5 * 24 * 3600
    assert delivery.patient_read_receipts is PatientReadReceipts.ALWAYS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = 70000", "delivery.port: 70000 is not a port"),
        ("minimal_backoff = 10\nmaximal_backoff = 5", "delivery.maximal_backoff"),
        ('client_cert_file = "c.pem"', "delivery.client_key_file"),
        ('patient_read_receipts = "never"', "delivery.patient_read_receipts"),
        ("nameservers = [53]", "delivery.nameservers: expected a list of strings"),
        ("retry = 3", "delivery.retry: unknown key"),
    ],
)
def test_invalid_delivery_config_names_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", "\\.")):
        load(write(tmp_path, RELAY + "[delivery]\n" + text + "\n"))
