"""The relay's configuration: ``conf/relay.toml`` into frozen dataclasses.

Rules:

- Every key is known: an unknown key, a missing required key or a value of the
  wrong type stops the start with :class:`ConfigError` naming the dotted key
  (``directory.ldap.bind_password_file``) and what was expected.
- Relative paths are resolved against the directory of the config file, so the
  relay behaves the same whatever the working directory.
- Secrets (key files, the LDAP bind password, the master key) are file paths,
  never inline values.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from directory.config import Backend, DirectoryConfig, LdapConfig

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_CONFIG_PATH: Final = Path("conf/relay.toml")


class ConfigError(Exception):
    """The configuration is invalid; the message names the key."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RelaySettings:
    """The ``[relay]`` table."""

    data_dir: Path  # all state: directory file, spool, mailboxes, audit trail
    domain: str  # the operator's own mail domain (patients: patient.<domain>)


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    relay: RelaySettings
    directory: DirectoryConfig = field(default_factory=DirectoryConfig)
    source: Path | None = None  # the file it was read from


class _Table:
    """Typed, key-checked access to one TOML table."""

    def __init__(self, name: str, data: Mapping[str, Any], base: Path) -> None:
        self.name = name
        self._data = data
        self._base = base
        self._used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def _get(self, key: str, kind: type[Any], default: Any) -> Any:  # noqa: ANN401
        self._used.add(key)
        if key not in self._data:
            if default is _REQUIRED:
                raise ConfigError(f"{self._key(key)}: missing (required)")
            return default
        value = self._data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                f"{self._key(key)}: expected {kind.__name__}, got {type(value).__name__} {value!r}"
            )
        return value

    def text(self, key: str, default: Any = None) -> str:  # noqa: ANN401
        value: str = self._get(key, str, _REQUIRED if default is None else default)
        return value

    def flag(self, key: str, default: bool) -> bool:
        value: bool = self._get(key, bool, default)
        return value

    def number(self, key: str, default: float) -> float:
        value: float = self._get(key, float, default)
        return value

    def path(self, key: str, default: Path | None = None) -> Path:
        raw: str = self._get(key, str, _REQUIRED if default is None else str(default))
        p = Path(raw).expanduser()
        return p if p.is_absolute() else (self._base / p).resolve()

    def choice(self, key: str, choices: type[Backend], default: Backend) -> Backend:
        raw = self.text(key, default.value)
        try:
            return choices(raw)
        except ValueError:
            allowed = ", ".join(c.value for c in choices)
            raise ConfigError(
                f"{self._key(key)}: {raw!r} is not one of {allowed}"
            ) from None

    def table(self, key: str, *, required: bool = False) -> _Table | None:
        self._used.add(key)
        if key not in self._data:
            if required:
                raise ConfigError(f"{self._key(key)}: missing table (required)")
            return None
        value = self._data[key]
        if not isinstance(value, dict):
            raise ConfigError(f"{self._key(key)}: expected a table")
        return _Table(self._key(key), value, self._base)

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            raise ConfigError(f"{self._key(unknown[0])}: unknown key")


_REQUIRED: Final[Any] = object()


def _ldap(t: _Table) -> LdapConfig:
    uri = t.text("uri")
    if not uri.startswith(("ldap://", "ldaps://")):
        raise ConfigError(
            f"{t.name}.uri: must start with ldap:// (StartTLS) or ldaps://"
        )
    cfg = LdapConfig(
        uri=uri,
        base_dn=t.text("base_dn"),
        bind_dn=t.text("bind_dn"),
        bind_password_file=t.path("bind_password_file"),
        ca_file=t.path("ca_file"),
        timeout=t.number("timeout", 5.0),
    )
    t.done()
    return cfg


def _directory(t: _Table | None, data_dir: Path) -> DirectoryConfig:
    if t is None:
        return DirectoryConfig(sqlite_path=data_dir / "directory.sqlite3")
    backend = t.choice("backend", Backend, Backend.SQLITE)
    sqlite_path = t.path("sqlite_path", data_dir / "directory.sqlite3")
    production = t.flag("production", False)
    ldap_table = t.table("ldap", required=backend is Backend.LDAP)
    ldap = _ldap(ldap_table) if ldap_table is not None else None
    t.done()
    return DirectoryConfig(
        backend=backend, sqlite_path=sqlite_path, ldap=ldap, production=production
    )


def parse(data: Mapping[str, Any], base: Path, source: Path | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML; paths relative to ``base``."""
    root = _Table("", data, base)
    relay_table = root.table("relay", required=True)
    assert relay_table is not None  # noqa: S101 - required=True
    relay = RelaySettings(
        data_dir=relay_table.path("data_dir"), domain=relay_table.text("domain")
    )
    relay_table.done()
    directory = _directory(root.table("directory"), relay.data_dir)
    root.done()
    return Config(relay=relay, directory=directory, source=source)


def load(path: Path) -> Config:
    """Read and validate a config file."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse(data, path.resolve().parent, source=path)
