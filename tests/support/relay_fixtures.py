"""A real relay on loopback for the SMTP tests.

``relay`` starts :func:`relay.app.run_relay` on ephemeral ports with TLS from
a test PKI (``mssante.crypto.testpki``), a directory seeded with the parties
below, and two accounts. Tests drive it with stdlib ``smtplib`` (in a thread,
since it blocks) and ``swaks``; they read what was stored through the running
relay's own store. ``relay_ldap`` is the same with the directory in a real
slapd.
"""

from __future__ import annotations

import asyncio
import contextlib
import imaplib
import smtplib
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from directory.config import Backend, DirectoryConfig, open_directory
from directory.model import (
    Certificate,
    CertificateUsage,
    Mailbox,
    Operator,
    OperatorCertificate,
    Status,
)
from mssante.crypto.testpki import Issued, TestPKI
from relay.accounts import AccountKind, AccountStore
from relay.app import RunningRelay, load_master_key, run_relay
from relay.config import parse
from tests.directory import samples

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

    from directory.protocol import Directory
    from relay.config import Config
    from tests.support.ldap_fixtures import SlapdServer

DOCTOR = samples.mailbox()  # zoe.moreau@medecin.mssante.fr, owner 8 + RPPS_1
URGENCES = samples.org_mailbox()  # urgences@ch-paris-1.mssante.fr
# A colleague with no link to the doctor's organisation.
COLLEAGUE = samples.mailbox(
    "paul.durand@medecin.mssante.fr", owner_id="8" + samples.RPPS_2, structure_id=""
)
SUSPENDED = samples.mailbox(
    "ancien.medecin@medecin.mssante.fr",
    owner_id="8" + samples.RPPS_2,
    status=Status.SUSPENDED,
)
PATIENT = samples.patient(blocked_senders=(), care_relationships=(), proxies=())
PATIENT_2 = samples.patient(
    samples.INS_2, blocked_senders=(), care_relationships=(), proxies=()
)
OPTED_OUT = samples.patient(
    samples.ins_of("1750275123457"), opted_out=True, care_relationships=(), proxies=()
)
REMOTE_DOMAIN = "hopital-b.example"
PASSWORD = "Relay-test-pw-1!"
LOCAL_DOMAINS = [
    "mssante.example",
    "patient.mssante.example",
    "medecin.mssante.fr",
    "ch-paris-1.mssante.fr",
]


def patient_address(entry: object) -> str:
    address = getattr(entry, "address", None)
    assert isinstance(address, str)
    return address


@pytest.fixture(scope="session")
def pki() -> TestPKI:
    return TestPKI(datetime.now(UTC))


@dataclass(frozen=True)
class TlsFiles:
    """The session's certificates and keys, written once (RSA keys are slow)."""

    directory: Path
    operator_dn: str


@pytest.fixture(scope="session")
def tls_files(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    tls = tmp_path_factory.mktemp("tls")
    server = pki.server()
    _write(tls / "server.pem", server.fullchain_pem)
    _write(tls / "server.key", server.key_pem)
    # The anchors hold the IGC-Santé-like root and its intermediates, as an
    # operator's CA file does: some clients (swaks) send only their leaf.
    _write(tls / "ca.pem", pki.root_pem + pki.intermediates_pem)
    operator = pki.operator("mx.hopital-b.example", organisation="HOPITAL B")
    other = pki.operator("mx.hopital-c.example", organisation="HOPITAL C")
    untrusted = TestPKI(pki.at, organisation="UNTRUSTED").operator("mx.evil.example")
    for name, issued in (("op", operator), ("other", other), ("untrusted", untrusted)):
        _write(tls / f"{name}.pem", issued.fullchain_pem)
        _write(tls / f"{name}.key", issued.key_pem)
    return TlsFiles(tls, operator.cert.subject.rfc4514_string())


@dataclass
class Harness:
    """A running relay and what tests need to talk to it."""

    running: RunningRelay
    config: Config
    ca_file: Path
    operator_cert: Path  # whitelisted for hopital-b.example
    operator_key: Path
    other_operator_cert: Path  # a valid operator certificate nobody whitelisted
    other_operator_key: Path
    untrusted_cert: Path
    untrusted_key: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def address(self, name: str) -> tuple[str, int]:
        return self.running.addresses[name]

    def client_context(
        self, cert: Path | None = None, key: Path | None = None
    ) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        if cert is not None:
            ctx.load_cert_chain(cert, key)
        return ctx

    def submission(self, *, login: str | None = DOCTOR.address) -> smtplib.SMTP:
        """An SMTP session on 587-style submission, after STARTTLS and AUTH."""
        host, port = self.address("submission")
        client = smtplib.SMTP(host, port, timeout=10)
        client.starttls(context=self.client_context())
        client.ehlo()
        if login is not None:
            client.login(login, PASSWORD)
        return client

    def imap_login(self, login: str, password: str) -> bool:
        """Whether ``login`` / ``password`` opens an IMAP session (implicit TLS)."""
        host, port = self.address("imaps")
        with imaplib.IMAP4_SSL(
            host, port, ssl_context=self.client_context(), timeout=10
        ) as client:
            try:
                client.login(login, password)
            except imaplib.IMAP4.error:
                return False
            client.logout()
            return True

    def mx(self, cert: Path | None = None, key: Path | None = None) -> smtplib.SMTP:
        host, port = self.address("mx")
        client = smtplib.SMTP(host, port, timeout=10)
        client.starttls(context=self.client_context(cert, key))
        client.ehlo()
        return client

    def mx_operator(self) -> smtplib.SMTP:
        return self.mx(self.operator_cert, self.operator_key)

    async def run(self, fn: Callable[[], Any]) -> Any:  # noqa: ANN401 - test helper
        """Run blocking client code while the relay keeps serving."""
        return await asyncio.to_thread(fn)

    async def delivered(self) -> None:
        assert await self.running.delivery.drain(within=10)

    def messages(self, address: str, folder: str = "INBOX") -> list[bytes]:
        store = self.running.store
        if not store.has_mailbox(address):
            return []
        return [
            store.fetch(address, folder, m.uid) for m in store.messages(address, folder)
        ]

    def audit_events(self) -> list[dict[str, Any]]:
        from relay.audit import records

        return list(records(self.running.audit.path))


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def relay_config(
    tmp_path: Path,
    tls: Path,
    directory: DirectoryConfig | None,
    *,
    extra: dict[str, Any] | None = None,
) -> Config:
    """The test relay's config; ``extra`` adds top-level tables (``smime``)."""
    listener = {"host": "127.0.0.1", "port": 0}
    cfg = parse(
        {
            **(extra or {}),
            "relay": {
                "data_dir": str(tmp_path / "data"),
                "domain": "mssante.example",
                "local_domains": LOCAL_DOMAINS,
                "max_message_size": 200_000,
            },
            "tls": {
                "cert_file": str(tls / "server.pem"),
                "key_file": str(tls / "server.key"),
                "trust_anchors_file": str(tls / "ca.pem"),
            },
            "smtp": {
                "submission": listener,
                "submissions": listener,
                "mx": listener,
                "timeout": 30.0,
            },
            "imap": {"plain": listener, "implicit": listener, "timeout": 30.0},
            "auth": {
                "failure_delay": 0.0,
                "max_failures": 3,
                # Cheap hashes: tests are not about argon2's cost.
                "argon2_time_cost": 1,
                "argon2_memory_kib": 1024,
                "argon2_parallelism": 1,
            },
        },
        tmp_path,
    )
    if directory is not None:
        cfg = _with_directory(cfg, directory)
    return cfg


def _with_directory(cfg: Config, directory: DirectoryConfig) -> Config:
    import dataclasses

    return dataclasses.replace(cfg, directory=directory)


async def seed(directory: Directory, operator_dn: str) -> None:
    entries: list[Any] = [
        samples.practitioner(),
        DOCTOR,
        URGENCES,
        COLLEAGUE,
        SUSPENDED,
        PATIENT,
        PATIENT_2,
        OPTED_OUT,
        Operator(
            domain=REMOTE_DOMAIN,
            certificates=(OperatorCertificate(subject_dn=operator_dn),),
        ),
        samples.mailbox("revoque@hopital-b.example", status=Status.REVOKED),
        samples.delegation("secretaire-1"),
    ]
    for entry in entries:
        await directory.add(entry)


async def seed_data_dir(cfg: Config, files: TlsFiles) -> None:
    """The test directory entries, the master key and the test accounts."""
    directory = await open_directory(cfg.directory)
    try:
        await seed(directory, files.operator_dn)
    finally:
        await directory.close()
    load_master_key(cfg)
    accounts = AccountStore.for_config(cfg)
    accounts.create(
        DOCTOR.address, AccountKind.PRACTITIONER, PASSWORD, [DOCTOR.address]
    )
    accounts.create(
        URGENCES.address, AccountKind.PRACTITIONER, PASSWORD, [URGENCES.address]
    )
    accounts.create("secretaire-1", AccountKind.STAFF, PASSWORD, [])
    accounts.create(
        patient_address(PATIENT),
        AccountKind.PATIENT,
        PASSWORD,
        [patient_address(PATIENT)],
    )
    accounts.close()


@contextlib.asynccontextmanager
async def started(files: TlsFiles, cfg: Config) -> AsyncIterator[Harness]:
    tls = files.directory
    await seed_data_dir(cfg, files)
    async with run_relay(cfg, drain_timeout=5) as running:
        yield Harness(
            running=running,
            config=cfg,
            ca_file=tls / "ca.pem",
            operator_cert=tls / "op.pem",
            operator_key=tls / "op.key",
            other_operator_cert=tls / "other.pem",
            other_operator_key=tls / "other.key",
            untrusted_cert=tls / "untrusted.pem",
            untrusted_key=tls / "untrusted.key",
        )


@pytest.fixture
async def relay(tmp_path: Path, tls_files: TlsFiles) -> AsyncIterator[Harness]:
    cfg = relay_config(tmp_path, tls_files.directory, None)
    async with started(tls_files, cfg) as harness:
        yield harness


@pytest.fixture
async def relay_ldap(
    tmp_path: Path, tls_files: TlsFiles, slapd: SlapdServer
) -> AsyncIterator[Harness]:
    directory = DirectoryConfig(backend=Backend.LDAP, ldap=slapd.config())
    cfg = relay_config(tmp_path, tls_files.directory, directory)
    try:
        async with started(tls_files, cfg) as harness:
            yield harness
    finally:
        slapd.slapd.wipe()


# -- S/MIME (the relay's [smime] table) ----------------------------------------------

SEAL_ADDRESS = "relais@mssante.example"


@dataclass(frozen=True)
class SmimeFiles:
    """Trust material and credentials for a relay with ``[smime]``, made once.

    ``doctor_signer`` is an EC signature-only certificate (fast to make);
    ``doctor`` and ``urgences`` are RSA with both usages (encryption needs
    RSA key transport); ``seal`` is the operator's EC sealing credential.
    """

    directory: Path
    seal: Issued
    doctor_signer: Issued
    doctor: Issued
    urgences: Issued

    def table(self, *, crls: bool = True, **settings: Any) -> dict[str, Any]:  # noqa: ANN401
        """An ``[smime]`` table: anchors, CRLs, seal credential, then ``settings``."""
        d = self.directory
        return {
            "trust_anchors_file": str(d / "anchors.pem"),
            "crl_files": [str(p) for p in sorted(d.glob("*.crl"))] if crls else [],
            "seal_cert_file": str(d / "seal.pem"),
            "seal_key_file": str(d / "seal.key"),
            **settings,
        }


@pytest.fixture(scope="session")
def smime_files(pki: TestPKI, tmp_path_factory: pytest.TempPathFactory) -> SmimeFiles:
    d = tmp_path_factory.mktemp("smime")
    _write(d / "anchors.pem", pki.root_pem + pki.intermediates_pem)
    for n, crl in enumerate(pki.crls()):
        _write(d / f"ca-{n}.crl", crl)
    seal = pki.organisation(SEAL_ADDRESS, name="MSSANTE EXAMPLE", key="ec")
    _write(d / "seal.pem", seal.fullchain_pem)
    _write(d / "seal.key", seal.key_pem)
    return SmimeFiles(
        directory=d,
        seal=seal,
        doctor_signer=pki.practitioner(DOCTOR.address, key="ec"),
        doctor=pki.practitioner(DOCTOR.address),
        urgences=pki.organisation(URGENCES.address),
    )


def with_certificates(
    mailbox: Mailbox, *certs: tuple[CertificateUsage, Issued]
) -> Mailbox:
    """The directory entry ``mailbox`` listing ``certs`` (usage, certificate)."""
    import dataclasses

    return dataclasses.replace(
        mailbox,
        certificates=tuple(
            Certificate(usage=usage, der=issued.cert_der) for usage, issued in certs
        ),
    )
