"""A private OpenLDAP ``slapd`` for tests, benchmarks and development.

Modelled on python-ldap's ``slapdtest.SlapdObject``: pick a free loopback
port, write a ``cn=config`` with ``slapadd -n0``, seed the database with
``slapadd -n1``, start ``slapd -d 0`` in the foreground, poll until it accepts
connections, and stop it cleanly (SIGTERM, wait, SIGKILL on timeout).

What it sets up, and what must stay true:

- Schemas core, cosine, inetorgperson (from ``/etc/ldap/schema``) and ours
  (``directory/schema/mssante.ldif``).
- One ``mdb`` database for ``base_dn`` with a rootdn and a random root
  password (written to a 0600 file; never on a command line).
- TLS from the given certificate and key files, TLS 1.2 at least, and
  ``olcSecurity: tls=1``: nothing but StartTLS works on a plain connection.
- The production ACLs, limits and indexes: the ``olcAccess``, ``olcLimits``
  and ``olcDbIndex`` values are read from ``conf/slapd/acl.ldif`` and
  ``conf/slapd/indexes.ldif`` (the example base DN replaced by ``base_dn``), so
  tests run with exactly the access rules production uses.
- The seed: the base entry, ``ou=system`` for bind identities, and the
  containers the LDAP backend uses (it also creates missing ones itself).

This module shells out to ``slapadd``, ``slapd`` and ``ldapadd``/``ldapmodify``
only; it never imports ldap3 (that is :mod:`directory.ldap`'s job alone).

Typical use::

    pki = make_server_pki(tmp / "pki")
    with Slapd.start(tmp / "slapd", tls_cert=pki.cert_file,
                     tls_key=pki.key_file, ca_file=pki.ca_file) as s:
        password_file = s.add_bind_identity(s.relay_dn, "secret")
        config = LdapConfig(uri=s.uri, base_dn=s.base_dn, bind_dn=s.relay_dn,
                            bind_password_file=password_file, ca_file=s.ca_file)
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final

from directory.config import LdapConfig

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from types import TracebackType

SCHEMA_DIR: Final = Path(__file__).resolve().parent / "schema"
MSSANTE_SCHEMA: Final = SCHEMA_DIR / "mssante.ldif"
SLAPD_CONF_DIR: Final = Path(__file__).resolve().parent.parent / "conf" / "slapd"
SYSTEM_SCHEMA_DIR: Final = Path("/etc/ldap/schema")
SYSTEM_SCHEMAS: Final = ("core", "cosine", "inetorgperson")
MODULE_DIRS: Final = (Path("/usr/lib/ldap"), Path("/usr/lib64/openldap"))
# The base DN that conf/slapd/*.ldif is written for; replaced by the real one.
EXAMPLE_BASE_DN: Final = "dc=mssante,dc=example"
DEFAULT_BASE_DN: Final = EXAMPLE_BASE_DN
# Containers under the base (the LDAP backend's DIT, see docs/directory-ldap.md).
CONTAINERS: Final = (
    "practitioners",
    "organisations",
    "mailboxes",
    "patients",
    "operators",
    "delegations",
)
# mdb reserves its map as virtual memory (sparse file); 8 GiB holds the
# national volumes (536k mailboxes, 2M RPPS rows) with room to spare.
DEFAULT_MAX_SIZE: Final = 8 * 1024**3
# How long start() waits for slapd to accept connections before giving up.
DEFAULT_START_TIMEOUT: Final = 15.0
# How long stop() waits after SIGTERM before SIGKILL.
DEFAULT_STOP_TIMEOUT: Final = 10.0
_START_ATTEMPTS: Final = 3  # a free port may be taken between probe and bind


class SlapdError(RuntimeError):
    """slapd or one of its tools failed; the message carries their output."""


def slapd_available() -> bool:
    """True when slapd, slapadd and ldapadd can be found."""
    return all(_which(tool) is not None for tool in ("slapd", "slapadd", "ldapadd"))


def _which(tool: str) -> str | None:
    path = os.environ.get("PATH", "") + os.pathsep + "/usr/sbin" + os.pathsep + "/sbin"
    return shutil.which(tool, path=path)


def _tool(tool: str) -> str:
    found = _which(tool)
    if found is None:
        msg = f"{tool} not found (apt-get install slapd ldap-utils)"
        raise SlapdError(msg)
    return found


def ssha(password: str) -> str:
    """An RFC 2307 ``{SSHA}`` userPassword value (what slappasswd makes)."""
    salt = secrets.token_bytes(8)
    digest = hashlib.sha1(password.encode() + salt, usedforsecurity=False).digest()
    return "{SSHA}" + base64.b64encode(digest + salt).decode("ascii")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _write_secret(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value)  # no newline: ldap tools read -y files whole


def ldif_values(
    path: Path, attribute: str, base_dn: str = EXAMPLE_BASE_DN
) -> list[str]:
    """Values of ``attribute`` in an LDIF file, unfolded, base DN substituted.

    Reads LDIF as ``ldapmodify`` would (RFC 2849 continuation lines, ``#``
    comments); values must be plain (no ``::`` base64). Used to take the ACLs,
    limits and indexes from ``conf/slapd`` into the test configuration.
    """
    lines: list[str] = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        if raw.startswith("#"):
            continue
        if raw.startswith(" ") and lines:
            lines[-1] += raw[1:]
        else:
            lines.append(raw)
    prefix = attribute.lower() + ":"
    values = [
        line[len(prefix) :].strip() for line in lines if line.lower().startswith(prefix)
    ]
    return [v.replace(EXAMPLE_BASE_DN, base_dn) for v in values]


def _attr_lines(name: str, values: Sequence[str]) -> str:
    return "".join(f"{name}: {v}\n" for v in values)


def _base_rdn_value(base_dn: str) -> tuple[str, str]:
    first = base_dn.split(",", 1)[0]
    attr, _, value = first.partition("=")
    return attr.strip().lower(), value.strip()


@dataclass(slots=True)
class Slapd:
    """A running private slapd. Use :meth:`start` as a context manager."""

    workdir: Path
    port: int
    base_dn: str
    root_dn: str
    root_password_file: Path = field(repr=False)
    ca_file: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def uri(self) -> str:
        """``ldap://127.0.0.1:<port>``: StartTLS is required on it."""
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def relay_dn(self) -> str:
        """The relay's bind identity, the one the ACLs give write access to."""
        return f"cn=relay,ou=system,{self.base_dn}"

    @property
    def log_file(self) -> Path:
        return self.workdir / "slapd.log"

    # --- lifecycle -------------------------------------------------------

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        tls_cert: Path,
        tls_key: Path,
        ca_file: Path,
        base_dn: str = DEFAULT_BASE_DN,
        ldif: Sequence[Path] = (),
        acl_ldif: Path = SLAPD_CONF_DIR / "acl.ldif",
        indexes_ldif: Path = SLAPD_CONF_DIR / "indexes.ldif",
        no_sync: bool = True,
        max_size: int = DEFAULT_MAX_SIZE,
        timeout: float = DEFAULT_START_TIMEOUT,
    ) -> Slapd:
        """Configure and start slapd in ``workdir`` (created; must be empty).

        Args:
            workdir: holds slapd.d, the database, the log and the root password.
            tls_cert, tls_key, ca_file: PEM files (see :mod:`directory.devpki`).
            base_dn: suffix of the database; ``root_dn`` is ``cn=admin,<base>``.
            ldif: extra LDIF files (plain entries) loaded with the seed.
            acl_ldif, indexes_ldif: where the production rules are read from.
            no_sync: ``olcDbNoSync`` -- no fsync per write. Right for tests and
                benchmarks of throughput; production keeps it off.
            max_size: mdb map size in bytes.
            timeout: seconds to wait for slapd to accept connections.

        Returns:
            The running server; stop it with :meth:`stop` or a ``with`` block.

        Raises:
            SlapdError: a tool is missing, the config is refused, or slapd does
                not come up (the message carries slapd's log).
        """
        workdir.mkdir(parents=True, exist_ok=True)
        root_dn = f"cn=admin,{base_dn}"
        root_password = secrets.token_urlsafe(24)
        root_password_file = workdir / "root.password"
        _write_secret(root_password_file, root_password)
        conf_dir = workdir / "slapd.d"
        db_dir = workdir / "db"
        for d in (conf_dir, db_dir):
            if d.exists():
                shutil.rmtree(d)
            d.mkdir(mode=0o700)
        config = _config_ldif(
            workdir=workdir,
            db_dir=db_dir,
            base_dn=base_dn,
            root_dn=root_dn,
            root_password=root_password,
            tls_cert=tls_cert,
            tls_key=tls_key,
            ca_file=ca_file,
            acls=ldif_values(acl_ldif, "olcAccess", base_dn),
            limits=ldif_values(acl_ldif, "olcLimits", base_dn),
            indexes=ldif_values(indexes_ldif, "olcDbIndex", base_dn),
            no_sync=no_sync,
            max_size=max_size,
        )
        config_file = workdir / "config.ldif"
        config_file.write_text(config, encoding="utf-8")
        _check_run(
            [_tool("slapadd"), "-n0", "-F", str(conf_dir), "-l", str(config_file)]
        )
        seed = workdir / "seed.ldif"
        seed.write_text(_seed_ldif(base_dn), encoding="utf-8")
        for f in (seed, *ldif):
            _check_run([_tool("slapadd"), "-n1", "-F", str(conf_dir), "-l", str(f)])
        server = cls(
            workdir=workdir,
            port=0,
            base_dn=base_dn,
            root_dn=root_dn,
            root_password_file=root_password_file,
            ca_file=ca_file,
        )
        server._launch(conf_dir, timeout)
        return server

    def _launch(self, conf_dir: Path, timeout: float) -> None:
        last = ""
        for _ in range(_START_ATTEMPTS):
            self.port = _free_port()
            self._log = self.log_file.open("ab")
            self.process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [
                    _tool("slapd"),
                    "-F",
                    str(conf_dir),
                    "-h",
                    self.uri + "/",
                    "-d",
                    "0",
                ],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            if self._wait_ready(timeout):
                return
            self.stop()
            last = self.log_file.read_text(errors="replace")[-4000:]
        msg = f"slapd did not start on 127.0.0.1 (log {self.log_file}):\n{last}"
        raise SlapdError(msg)

    def _wait_ready(self, timeout: float) -> bool:
        assert self.process is not None  # noqa: S101 - set by _launch
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5),
            ):
                return True
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = DEFAULT_STOP_TIMEOUT) -> None:
        """Stop slapd: SIGTERM, then SIGKILL after ``timeout`` seconds."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> Slapd:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- administration (as the rootdn, over StartTLS) ---------------------

    def client_env(self) -> dict[str, str]:
        """Environment for the OpenLDAP command-line tools against this server."""
        env = dict(os.environ)
        env.update(
            LDAPTLS_CACERT=str(self.ca_file),
            LDAPTLS_REQCERT="demand",
            LDAPCONF=os.devnull,  # ignore /etc/ldap/ldap.conf
        )
        return env

    def run_tool(
        self,
        tool: str,
        *args: str,
        stdin: str = "",
        bind_dn: str | None = None,
        password_file: Path | None = None,
        starttls: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        """Run an OpenLDAP client tool (``ldapsearch``, ``ldapmodify``...).

        Binds as the rootdn unless ``bind_dn`` is given (``""``: anonymous);
        ``starttls=False`` leaves the connection in clear text (to check that
        the server refuses it). Does not raise on failure: look at
        ``returncode`` (LDAP result code, e.g. 32 noSuchObject, 50
        insufficientAccessRights) and ``stderr``.
        """
        argv = [_tool(tool), "-x", "-H", self.uri]
        if starttls:
            argv.append("-ZZ")
        if bind_dn is None:
            bind_dn, password_file = self.root_dn, self.root_password_file
        if bind_dn:
            argv += ["-D", bind_dn, "-y", str(password_file)]
        return subprocess.run(  # noqa: S603 - fixed argv, no shell
            [*argv, *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.client_env(),
            check=False,
        )

    def ldap_tool(self, tool: str, *args: str, stdin: str = "") -> str:
        """Run ``ldapadd``/``ldapmodify``/``ldapsearch``... as the rootdn.

        Returns stdout; raises :class:`SlapdError` with stderr on failure.
        """
        done = self.run_tool(tool, *args, stdin=stdin)
        if done.returncode != 0:
            msg = f"{tool} failed ({done.returncode}): {(done.stdout + done.stderr)[-4000:]}"
            raise SlapdError(msg)
        return done.stdout

    def wipe(self) -> None:
        """Delete the trust directory's containers and everything in them.

        ``LdapDirectory.open`` recreates the empty containers. For tests that
        share one server.
        """
        dns = [f"ou={name},{self.base_dn}" for name in CONTAINERS]
        self.run_tool("ldapdelete", "-r", "-c", *dns, f"cn=meta,{self.base_dn}")

    def add_ldif(self, text: str) -> None:
        """Add the entries of an LDIF text (as the rootdn)."""
        self.ldap_tool("ldapadd", stdin=text)

    def add_bind_identity(self, dn: str, password: str) -> Path:
        """Create a simple-bind identity (``applicationProcess``) under the base.

        Returns the path of a 0600 file holding the password, ready for
        ``LdapConfig.bind_password_file``.
        """
        attr, _, value = dn.split(",", 1)[0].partition("=")
        if attr.strip().lower() != "cn":
            msg = f"bind identity {dn!r}: the RDN must be cn=..."
            raise SlapdError(msg)
        self.add_ldif(
            f"dn: {dn}\n"
            "objectClass: applicationProcess\n"
            "objectClass: simpleSecurityObject\n"
            f"cn: {value.strip()}\n"
            f"userPassword: {ssha(password)}\n"
        )
        safe = "".join(c if c.isalnum() else "_" for c in dn)[:80]
        path = self.workdir / f"{safe}.password"
        _write_secret(path, password)
        return path

    def relay_config(
        self, ca_file: Path, password: str, *, timeout: float = 5.0
    ) -> LdapConfig:
        """Create the relay's bind identity and the LdapConfig that uses it."""
        password_file = self.add_bind_identity(self.relay_dn, password)
        return LdapConfig(
            uri=self.uri,
            base_dn=self.base_dn,
            bind_dn=self.relay_dn,
            bind_password_file=password_file,
            ca_file=ca_file,
            timeout=timeout,
        )


def _check_run(
    argv: Sequence[str], *, stdin: str = "", env: Mapping[str, str] | None = None
) -> str:
    done = subprocess.run(  # noqa: S603 - fixed argv, no shell
        list(argv),
        input=stdin.encode(),
        capture_output=True,
        env=dict(env) if env is not None else None,
        check=False,
    )
    if done.returncode != 0:
        out = (done.stdout + done.stderr).decode(errors="replace")
        msg = f"{Path(argv[0]).name} failed ({done.returncode}): {out[-4000:]}"
        raise SlapdError(msg)
    return done.stdout.decode(errors="replace")


def _config_ldif(
    *,
    workdir: Path,
    db_dir: Path,
    base_dn: str,
    root_dn: str,
    root_password: str,
    tls_cert: Path,
    tls_key: Path,
    ca_file: Path,
    acls: Sequence[str],
    limits: Sequence[str],
    indexes: Sequence[str],
    no_sync: bool,
    max_size: int,
) -> str:
    module_dir = next((d for d in MODULE_DIRS if (d / "back_mdb.la").exists()), None)
    modules = (
        "dn: cn=module{0},cn=config\n"
        "objectClass: olcModuleList\n"
        "cn: module{0}\n"
        f"olcModulePath: {module_dir}\n"
        "olcModuleLoad: back_mdb\n\n"
        if module_dir is not None
        else ""  # mdb built in
    )
    schemas = "".join(
        f"include: file://{SYSTEM_SCHEMA_DIR / name}.ldif\n\n"
        for name in SYSTEM_SCHEMAS
    )
    return (
        "dn: cn=config\n"
        "objectClass: olcGlobal\n"
        "cn: config\n"
        f"olcPidFile: {workdir / 'slapd.pid'}\n"
        f"olcArgsFile: {workdir / 'slapd.args'}\n"
        f"olcTLSCACertificateFile: {ca_file}\n"
        f"olcTLSCertificateFile: {tls_cert}\n"
        f"olcTLSCertificateKeyFile: {tls_key}\n"
        "olcTLSProtocolMin: 3.3\n"  # TLS 1.2
        "olcSecurity: tls=1\n"
        "olcLogLevel: none\n"
        "\n"
        f"{modules}"
        "dn: cn=schema,cn=config\n"
        "objectClass: olcSchemaConfig\n"
        "cn: schema\n\n"
        f"{schemas}"
        f"include: file://{MSSANTE_SCHEMA}\n\n"
        "dn: olcDatabase={-1}frontend,cn=config\n"
        "objectClass: olcDatabaseConfig\n"
        "objectClass: olcFrontendConfig\n"
        "olcDatabase: {-1}frontend\n\n"
        "dn: olcDatabase={0}config,cn=config\n"
        "objectClass: olcDatabaseConfig\n"
        "olcDatabase: {0}config\n"
        "olcAccess: {0}to * by * none\n\n"
        "dn: olcDatabase={1}mdb,cn=config\n"
        "objectClass: olcDatabaseConfig\n"
        "objectClass: olcMdbConfig\n"
        "olcDatabase: {1}mdb\n"
        f"olcSuffix: {base_dn}\n"
        f"olcRootDN: {root_dn}\n"
        f"olcRootPW: {ssha(root_password)}\n"
        f"olcDbDirectory: {db_dir}\n"
        f"olcDbMaxSize: {max_size}\n"
        f"olcDbNoSync: {'TRUE' if no_sync else 'FALSE'}\n"
        + _attr_lines("olcDbIndex", indexes)
        + _attr_lines("olcAccess", acls)
        + _attr_lines("olcLimits", limits)
        + "\n"
    )


def _seed_ldif(base_dn: str) -> str:
    attr, value = _base_rdn_value(base_dn)
    if attr == "dc":
        base = (
            f"dn: {base_dn}\nobjectClass: dcObject\nobjectClass: organization\n"
            f"dc: {value}\no: {value}\n\n"
        )
    elif attr == "o":
        base = f"dn: {base_dn}\nobjectClass: organization\no: {value}\n\n"
    else:
        base = f"dn: {base_dn}\nobjectClass: organizationalUnit\nou: {value}\n\n"
    ous = "".join(
        f"dn: ou={name},{base_dn}\nobjectClass: organizationalUnit\nou: {name}\n\n"
        for name in ("system", *CONTAINERS)
    )
    return base + ous
