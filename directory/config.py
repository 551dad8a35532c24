"""Settings of the trust directory, and opening the configured backend.

The relay's TOML loader (``relay.config``) builds these from the
``[directory]`` table; the CLI and the benchmarks build them directly.
Secrets are paths (``bind_password_file``), never inline values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from directory.protocol import Directory

DEFAULT_LDAP_TIMEOUT: Final = 5.0  # seconds; a directory slower than this fails closed


class Backend(enum.StrEnum):
    SQLITE = "sqlite"
    LDAP = "ldap"


@dataclass(frozen=True, slots=True, kw_only=True)
class LdapConfig:
    """Connection to the production LDAP directory (OpenLDAP slapd)."""

    uri: str  # ldap://host:port (StartTLS is then required) or ldaps://host:port
    base_dn: str  # e.g. dc=mssante,dc=example
    bind_dn: str  # the relay's own bind identity
    bind_password_file: Path = field(repr=False)
    ca_file: Path  # trust anchor for the server certificate; TLS is never optional
    timeout: float = DEFAULT_LDAP_TIMEOUT


@dataclass(frozen=True, slots=True, kw_only=True)
class DirectoryConfig:
    backend: Backend = Backend.SQLITE
    sqlite_path: Path = Path("data/directory.sqlite3")
    ldap: LdapConfig | None = None
    # Production mode refuses the INS test and demonstration OIDs.
    production: bool = False


async def open_directory(config: DirectoryConfig) -> Directory:
    """Open the configured backend. The caller closes it."""
    if config.backend is Backend.LDAP:
        if config.ldap is None:
            msg = "directory.ldap: the ldap backend needs an [directory.ldap] table"
            raise ValueError(msg)
        from directory.ldap import LdapDirectory  # ldap3 only when used

        return await LdapDirectory.open(config.ldap)
    from directory.sqlite import SqliteDirectory

    return await SqliteDirectory.open(config.sqlite_path)
