"""Two operators on loopback: relays A and B, their own domains, certificates,
directories and accounts, and a DNS server answering MX for both.

A's MX listens on 127.0.0.2 and B's on 127.0.0.3, on one port both relays
deliver to (an MX has no port in DNS). ``operators(...)`` takes knobs to
break one thing at a time: what A's directory whitelists for B, the
certificate B serves, where B's MX record points.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

from directory.config import open_directory
from directory.model import Operator, OperatorCertificate
from mssante.crypto.testpki import Issued, TestPKI
from relay.accounts import AccountKind, AccountStore
from relay.app import RunningRelay, load_master_key, run_relay
from relay.config import parse
from tests.directory import samples
from tests.support.dns_server import LoopbackDns

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from relay.config import Config

PASSWORD = "Outbound-test-pw-1!"
DOMAIN_A = "operateur-a.example"
DOMAIN_B = "operateur-b.example"
MX_A = "mx." + DOMAIN_A
MX_B = "mx." + DOMAIN_B
IP_A = "127.0.0.2"
IP_B = "127.0.0.3"
DOCTOR_A = "dr.martin@" + DOMAIN_A
DOCTOR_B = "dr.bernard@" + DOMAIN_B


@dataclass(frozen=True)
class Certificates:
    ca: Path
    a: tuple[Path, Path, str]  # chain, key, subject DN
    b: tuple[Path, Path, str]
    b_expired: tuple[Path, Path, str]
    b_revoked: tuple[Path, Path, str]
    crl: Path
    stranger: tuple[Path, Path, str]  # a valid operator nobody whitelists


def _files(directory: Path, name: str, issued: Issued) -> tuple[Path, Path, str]:
    chain = directory / f"{name}.pem"
    key = directory / f"{name}.key"
    chain.write_bytes(issued.fullchain_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    return chain, key, issued.cert.subject.rfc4514_string()


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    pki = TestPKI(datetime.now(UTC))
    out = tmp_path_factory.mktemp("operators")
    ca = out / "ca.pem"
    ca.write_bytes(pki.root_pem + pki.intermediates_pem)
    revoked = pki.operator(MX_B, organisation="OPERATEUR B", unit="REVOQUE")
    pki.revoke(revoked)
    crl = out / "servers.crl"
    # The TLS issuing CA's CRL (the last one the PKI publishes).
    crl.write_bytes(pki.crls()[-1])
    return Certificates(
        ca=ca,
        a=_files(out, "a", pki.operator(MX_A, organisation="OPERATEUR A")),
        b=_files(out, "b", pki.operator(MX_B, organisation="OPERATEUR B")),
        b_expired=_files(
            out,
            "b-expired",
            pki.operator(MX_B, organisation="OPERATEUR B", expired=True),
        ),
        b_revoked=_files(out, "b-revoked", revoked),
        crl=crl,
        stranger=_files(out, "stranger", pki.operator(MX_B, organisation="INCONNU")),
    )


def free_port() -> int:
    """A port free on both MX addresses."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind((IP_A, 0))
            port: int = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind((IP_B, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no common free port")


@pytest.fixture
def dns_server() -> Iterator[LoopbackDns]:
    with LoopbackDns() as server:
        server.add(DOMAIN_A, "MX", f"10 {MX_A}.")
        server.add(MX_A, "A", IP_A)
        server.add(DOMAIN_B, "MX", f"10 {MX_B}.")
        server.add(MX_B, "A", IP_B)
        yield server


@dataclass
class Side:
    """One operator's running relay."""

    name: str
    domain: str
    doctor: str
    running: RunningRelay
    config: Config
    ca: Path

    def submission(self, login: str | None = None) -> smtplib.SMTP:
        host, port = self.running.addresses["submission"]
        client = smtplib.SMTP(host, port, timeout=10)
        # The relay serves its MX certificate (named mx.<domain>) on submission
        # too; the chain is verified, the loopback address cannot match a name.
        ctx = ssl.create_default_context(cafile=str(self.ca))
        ctx.check_hostname = False
        client.starttls(context=ctx)
        client.ehlo()
        client.login(login or self.doctor, PASSWORD)
        return client

    def messages(self, address: str, folder: str = "INBOX") -> list[bytes]:
        store = self.running.store
        if not store.has_mailbox(address):
            return []
        return [
            store.fetch(address, folder, m.uid) for m in store.messages(address, folder)
        ]

    def events(self, name: str) -> list[dict[str, Any]]:
        from relay.audit import records

        return [r for r in records(self.running.audit.path) if r.get("event") == name]

    async def wait_for(
        self, check: Callable[[], bool], *, within: float = 15.0
    ) -> None:
        async with asyncio.timeout(within):
            while not check():  # noqa: ASYNC110 - polls the stores and the trail
                await asyncio.sleep(0.05)


@dataclass
class Pair:
    a: Side
    b: Side
    dns: LoopbackDns
    port: int
    extra: dict[str, Any] = field(default_factory=dict)

    async def send(
        self,
        side: Side,
        to: list[str],
        body: bytes,
        *,
        rcpt_options: list[str] | None = None,
    ) -> dict[str, tuple[int, bytes]]:
        """Submit ``body`` from ``side``'s doctor; the refused recipients."""

        def run() -> dict[str, tuple[int, bytes]]:
            with side.submission() as client:
                refused: dict[str, tuple[int, bytes]] = client.sendmail(
                    side.doctor,
                    to,
                    body,
                    mail_options=["RET=HDRS", "ENVID=env-1"],
                    rcpt_options=["NOTIFY=SUCCESS,FAILURE,DELAY"]
                    if rcpt_options is None
                    else rcpt_options,
                )
                return refused

        return await asyncio.to_thread(run)


def message(
    sender: str, to: str, subject: str = "Compte rendu", **headers: str
) -> bytes:
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        f"Message-ID: <{abs(hash((sender, to, subject)))}@{sender.rpartition('@')[2]}>",
        *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
        "",
        "Bonjour,",
        ".ligne qui commence par un point",
        "",
    ]
    return "\r\n".join(lines).encode()


def config_data(
    tmp: Path,
    *,
    domain: str,
    ip: str,
    port: int,
    cert: tuple[Path, Path, str],
    certs: Certificates,
    dns: LoopbackDns,
    delivery: dict[str, Any],
) -> dict[str, Any]:
    """One operator's relay config, as the TOML file would hold it."""
    listener = {"host": "127.0.0.1", "port": 0}
    return {
        "relay": {
            "data_dir": str(tmp / "data"),
            "domain": domain,
            "hostname": "mx." + domain,
        },
        "tls": {
            "cert_file": str(cert[0]),
            "key_file": str(cert[1]),
            "trust_anchors_file": str(certs.ca),
        },
        "smtp": {
            "submission": listener,
            "submissions": {"enabled": False},
            "mx": {"host": ip, "port": port},
            "timeout": 30.0,
        },
        "auth": {
            "failure_delay": 0.0,
            "argon2_time_cost": 1,
            "argon2_memory_kib": 1024,
            "argon2_parallelism": 1,
        },
        "delivery": {
            "port": port,
            "nameservers": [dns.host],
            "dns_port": dns.port,
            "minimal_backoff": 0.3,
            "maximal_backoff": 1.0,
            "connect_timeout": 5.0,
            "command_timeout": 10.0,
            **delivery,
        },
    }


def _config(tmp: Path, **kw: Any) -> Config:  # noqa: ANN401 - config_data's keywords
    return parse(config_data(tmp, **kw), tmp)


async def seed(
    cfg: Config, doctor: str, rpps: str, peer_domain: str, peer_dn: str
) -> None:
    directory = await open_directory(cfg.directory)
    try:
        await directory.add(samples.practitioner(rpps))
        await directory.add(
            samples.mailbox(doctor, owner_id="8" + rpps, structure_id="")
        )
        await directory.add(
            Operator(
                domain=peer_domain,
                certificates=(OperatorCertificate(subject_dn=peer_dn),),
            )
        )
    finally:
        await directory.close()
    load_master_key(cfg)
    accounts = AccountStore.for_config(cfg)
    try:
        accounts.create(doctor, AccountKind.PRACTITIONER, PASSWORD, [doctor])
    finally:
        accounts.close()


@pytest.fixture
def operators(
    tmp_path: Path, certificates: Certificates, dns_server: LoopbackDns
) -> Callable[..., contextlib.AbstractAsyncContextManager[Pair]]:
    """``async with operators(...) as pair``; the knobs break one thing each."""

    @contextlib.asynccontextmanager
    async def start(
        *,
        b_cert: tuple[Path, Path, str] | None = None,
        a_whitelists: str | None = None,
        a_delivery: dict[str, Any] | None = None,
    ) -> AsyncIterator[Pair]:
        port = free_port()
        served_b = b_cert or certificates.b
        cfg_a = _config(
            tmp_path / "a",
            domain=DOMAIN_A,
            ip=IP_A,
            port=port,
            cert=certificates.a,
            certs=certificates,
            dns=dns_server,
            delivery=a_delivery or {},
        )
        cfg_b = _config(
            tmp_path / "b",
            domain=DOMAIN_B,
            ip=IP_B,
            port=port,
            cert=served_b,
            certs=certificates,
            dns=dns_server,
            delivery={},
        )
        await seed(
            cfg_a, DOCTOR_A, samples.RPPS_1, DOMAIN_B, a_whitelists or certificates.b[2]
        )
        await seed(cfg_b, DOCTOR_B, samples.RPPS_2, DOMAIN_A, certificates.a[2])
        async with (
            run_relay(cfg_a, drain_timeout=5) as relay_a,
            run_relay(cfg_b, drain_timeout=5) as relay_b,
        ):
            yield Pair(
                a=Side("A", DOMAIN_A, DOCTOR_A, relay_a, cfg_a, certificates.ca),
                b=Side("B", DOMAIN_B, DOCTOR_B, relay_b, cfg_b, certificates.ca),
                dns=dns_server,
                port=port,
            )

    return start
