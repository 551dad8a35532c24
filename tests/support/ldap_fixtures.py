"""LDAP fixtures: one real slapd per test session, an empty DIT per test.

- ``slapd`` (session): a private slapd (``directory.slapd.Slapd``) on a
  free loopback port, with a throwaway CA and server certificate, the
  production ACLs, and two bind identities: the relay (``relay_dn``, full
  access by the ACLs) and an ordinary authenticated reader (``reader_dn``).
  Skipped when slapd is missing, except in CI (``CI`` set), where that fails.
- ``ldap_config`` / ``ldap_directory`` (function): an ``LdapDirectory`` bound
  as the relay over StartTLS. After each test every trust-directory entry and
  meta value is deleted as the rootdn, so each test starts from an empty DIT
  while slapd itself starts once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from directory.config import LdapConfig
from directory.devpki import ServerPki, make_server_pki
from directory.ldap import LdapDirectory, bind
from directory.slapd import Slapd, slapd_available

# See directory/ldap.py: ldap3 2.9.1 trips a pyasn1 DeprecationWarning on import.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3


if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator
    from pathlib import Path

T = TypeVar("T")
READER_PASSWORD = "reader-password"  # throwaway identity of a throwaway server


@dataclass(frozen=True, slots=True)
class SlapdServer:
    """The session's slapd and the identities the tests bind as."""

    slapd: Slapd
    pki: ServerPki
    relay_dn: str
    relay_password_file: Path
    reader_dn: str
    reader_password_file: Path

    def config(self, **overrides: object) -> LdapConfig:
        """An LdapConfig for the relay identity; keyword overrides."""
        fields: dict[str, object] = {
            "uri": self.slapd.uri,
            "base_dn": self.slapd.base_dn,
            "bind_dn": self.relay_dn,
            "bind_password_file": self.relay_password_file,
            "ca_file": self.pki.ca_file,
            "timeout": 5.0,
        }
        fields.update(overrides)
        return LdapConfig(**fields)  # type: ignore[arg-type]

    def root_connection(self) -> ldap3.Connection:
        """An ldap3 connection bound as the rootdn over StartTLS."""
        return self.connection(self.slapd.root_dn, self.slapd.root_password_file)

    def connection(self, dn: str, password_file: Path) -> ldap3.Connection:
        """An ldap3 connection bound as ``dn``, with the backend's TLS rules."""
        return bind(self.config(bind_dn=dn, bind_password_file=password_file))


def _require_slapd() -> None:
    if slapd_available():
        return
    if os.environ.get("CI"):
        pytest.fail("slapd/slapadd/ldapadd not found; CI must install slapd ldap-utils")
    pytest.skip("slapd not installed (apt-get install slapd ldap-utils)")


@pytest.fixture(scope="session")
def slapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlapdServer]:
    _require_slapd()
    root = tmp_path_factory.mktemp("slapd")
    pki = make_server_pki(root / "pki")
    with Slapd.start(
        root / "server",
        tls_cert=pki.cert_file,
        tls_key=pki.key_file,
        ca_file=pki.ca_file,
    ) as server:
        relay_pw = server.add_bind_identity(server.relay_dn, "relay-password")
        reader_dn = f"cn=reader,ou=system,{server.base_dn}"
        reader_pw = server.add_bind_identity(reader_dn, READER_PASSWORD)
        yield SlapdServer(
            slapd=server,
            pki=pki,
            relay_dn=server.relay_dn,
            relay_password_file=relay_pw,
            reader_dn=reader_dn,
            reader_password_file=reader_pw,
        )


@pytest.fixture(scope="session")
def _ldap_root(slapd: SlapdServer) -> Iterator[ldap3.Connection]:
    conn = slapd.root_connection()
    yield conn
    conn.unbind()


def _wipe(conn: ldap3.Connection, base_dn: str) -> None:
    """Delete every trust-directory entry and meta value (as the rootdn)."""
    conn.search(base_dn, "(objectClass=mssEntry)", attributes=["1.1"])
    dns = [r["dn"] for r in conn.response or [] if r.get("type") == "searchResEntry"]
    for dn in dns:
        conn.delete(dn)  # type: ignore[no-untyped-call]  # untyped in types-ldap3
    conn.search(base_dn, "(mssMeta=*)", attributes=["1.1"])
    metas = [r["dn"] for r in conn.response or [] if r.get("type") == "searchResEntry"]
    for dn in metas:
        conn.modify(dn, {"mssMeta": [(ldap3.MODIFY_REPLACE, [])]})  # type: ignore[no-untyped-call]


@pytest.fixture
def ldap_config(slapd: SlapdServer) -> LdapConfig:
    return slapd.config()


def _in_own_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a fresh event loop in another thread.

    ``tests/conftest.py``'s async ``directory`` fixture asks for
    ``ldap_directory`` with ``request.getfixturevalue``, from inside its
    running loop, so this fixture must be synchronous. ``LdapDirectory`` does
    not bind itself to a loop (its work runs in its own threads), so it can be
    opened on one loop and used on another.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


@pytest.fixture
def ldap_directory(
    slapd: SlapdServer, _ldap_root: ldap3.Connection
) -> Iterator[LdapDirectory]:
    directory = _in_own_loop(LdapDirectory.open(slapd.config()))
    try:
        yield directory
    finally:
        _in_own_loop(directory.close())
        _wipe(_ldap_root, slapd.slapd.base_dn)
