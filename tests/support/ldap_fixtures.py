"""LDAP fixtures: one real slapd per test session, an empty DIT per test.

- ``slapd`` (session): a private slapd (``directory.slapd.Slapd``) on a
  free loopback port, with a throwaway CA and server certificate, the
  production ACLs, and two bind identities: the relay (``relay_dn``, full
  access by the ACLs) and an ordinary authenticated reader (``reader_dn``).
  Skipped when slapd is missing, except in CI (``CI`` set), where that fails.
- ``ldap_config`` / ``ldap_directory`` (function): an ``LdapDirectory`` bound
  as the relay over StartTLS. After each test the containers are deleted as
  the rootdn (``Slapd.wipe``; the next ``open`` recreates them empty), so
  each test starts from an empty DIT while slapd itself starts once.

Raw LDAP checks use OpenLDAP's own tools (``SlapdServer.search``), not ldap3:
ldap3 stays inside ``directory.ldap`` (tests/test_architecture.py).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from directory.config import LdapConfig
from directory.devpki import ServerPki, make_server_pki
from directory.ldap import LdapDirectory
from directory.slapd import Slapd, slapd_available

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

    def search(
        self,
        bind_dn: str,
        password_file: Path | None,
        base: str,
        search_filter: str = "(objectClass=*)",
        *attributes: str,
    ) -> dict[str, dict[str, list[str]]]:
        """What ``bind_dn`` (``""``: anonymous) sees, with ``ldapsearch``.

        A foreign client: OpenLDAP's own tool over StartTLS. Returns
        {dn: {attribute: [values]}}; an invisible base gives {} (slapd answers
        noSuchObject rather than disclose it).
        """
        done = self.slapd.run_tool(
            "ldapsearch",
            "-LLL",
            "-o",
            "ldif-wrap=no",
            "-b",
            base,
            search_filter,
            *(attributes or ("1.1",)),
            bind_dn=bind_dn,
            password_file=password_file,
        )
        if done.returncode == 32:  # noSuchObject
            return {}
        assert done.returncode == 0, done.stderr
        return parse_ldif(done.stdout)


def parse_ldif(text: str) -> dict[str, dict[str, list[str]]]:
    """Entries of ldapsearch -LLL output (unwrapped, plain or base64 values)."""
    found: dict[str, dict[str, list[str]]] = {}
    for block in text.strip().split("\n\n"):
        attrs: dict[str, list[str]] = {}
        dn = ""
        for line in block.splitlines():
            name, sep, value = line.partition(":")
            if not sep:
                continue
            if value.startswith(":"):
                value = base64.b64decode(value[1:].strip()).decode("utf-8")
            else:
                value = value.strip()
            if name == "dn":
                dn = value
            else:
                attrs.setdefault(name, []).append(value)
        if dn:
            found[dn] = attrs
    return found


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
def ldap_directory(slapd: SlapdServer) -> Iterator[LdapDirectory]:
    directory = _in_own_loop(LdapDirectory.open(slapd.config()))
    try:
        yield directory
    finally:
        _in_own_loop(directory.close())
        slapd.slapd.wipe()
