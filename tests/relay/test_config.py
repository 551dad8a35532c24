"""Config loading: valid files load, every mistake names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from directory.config import Backend
from relay.config import ConfigError, load

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
