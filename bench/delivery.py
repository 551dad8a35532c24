"""Benchmark of delivery between two operators over mutual TLS, against Postfix.

Owns area ``delivery`` of ``python -m bench`` (issue 9). In one invocation,
one generator (:func:`bench.smtp.send_all`, the SMTP bench's client) submits
the same messages, at 5 KB and 100 KB, over ``--sessions`` concurrent
sessions (20), to operator A, which must hand every one of them to operator
B over SMTP with mutual TLS; both pairs run on loopback:

- **ours**: two ``mssante serve`` subprocesses, each with its own data
  directory, sqlite directory and operator certificate (one test PKI).
  A takes the messages on its submission port (STARTTLS, AUTH PLAIN, full
  policy, spool ``fsync``), keeps a Sent copy, queues the recipients of B's
  domain and delivers them: MX lookup through :class:`LoopbackDns`, then
  STARTTLS to B's MX with A's operator certificate, B's certificate checked
  against the MX host name and A's whitelist. B checks A's certificate
  against its own whitelist, spools and stores into its encrypted INBOXes;
- **Postfix** (Debian ``postfix``): two private instances (own
  ``config_directory``, ``queue_directory``, ``data_directory``). A takes
  submission without AUTH (Postfix has no SASL without Dovecot or Cyrus) and
  relays B's domain through ``transport_maps`` to B's address, with
  ``smtp_tls_security_level = secure`` (chain and MX name, the same CA),
  A's operator certificate as client certificate, and TLS connections
  reused through ``tlsproxy`` (ours keeps its connections too). B requires TLS and a
  verified client certificate whose fingerprint it whitelists
  (``check_ccert_access``), then delivers through ``virtual`` into Maildirs.

What is measured, per pair and size: the wall time from the first connect to
the moment every message is in B's store (ours: A's spool, A's outbound
queue and B's spool are empty, looked at in that order, the order messages
move in; Postfix: every message is a file in one of B's Maildirs ``new/``),
hence messages per second. A warm-up of one message per session precedes
each pair's runs. After the runs the deliveries are counted in the stores
themselves (ours: B's INBOXes and A's Sent copies through
:class:`relay.store.MailStore`): a lost message fails the bench.

What must stay true: the generator and the bodies are those of ``bench
smtp``; every server runs in its own processes, never in the generator's
event loop (the DNS server is a thread of the generator's process: it
answers one query per outbound session); nothing listens beyond loopback
(127.0.0.1 to 127.0.0.5); every server is stopped at the end, even on error.
The output ends with one ``BENCH delivery <metric> ours=<n> ref=<n>
ratio=<ours/ref> unit=msg/s`` line per figure, the reference being Postfix
to Postfix.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from bench import generate
from bench.dns_server import LoopbackDns
from bench.figures import Figure
from bench.smtp import (
    CHEAP_AUTH,
    DEFAULT_MESSAGES,
    DEFAULT_SESSIONS,
    HOST,
    MASTER_CF,
    PASSWORD,
    QUICK_MESSAGES,
    QUICK_SESSIONS,
    RECIPIENT_DOMAIN,
    REPO,
    SENDER_DOMAIN,
    SIZES,
    START_TIMEOUT,
    BenchError,
    Party,
    Result,
    Running,
    Target,
    TlsFiles,
    _in_maildirs,
    _postfix,
    _stored_messages,
    _table,
    child_env,
    measure_server,
    parties,
    postfix_unavailable,
    relay_port,
    stop,
    tail,
)
from mssante.crypto.testpki import TestPKI
from relay.queue.outbound import OUTBOUND_FILE_NAME
from relay.queue.spool import SPOOL_DIR_NAME

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from mssante.crypto.testpki import Issued

# Operator A sends for the SMTP bench's senders, B receives for its recipients.
DOMAIN_A: Final = SENDER_DOMAIN
DOMAIN_B: Final = RECIPIENT_DOMAIN
MX_A: Final = "mx." + DOMAIN_A
MX_B: Final = "mx." + DOMAIN_B
OURS_A_IP: Final = "127.0.0.2"  # in DNS only: A's MX is not started (A only sends)
OURS_B_IP: Final = "127.0.0.3"
POSTFIX_A_IP: Final = "127.0.0.4"
POSTFIX_B_IP: Final = "127.0.0.5"
SERVERS: Final = ("postfix", "ours")
TLSPROXY: Final = "tlsproxy  unix  -       -       n       -       0       tlsproxy\n"


# --- certificates ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Credential:
    """One operator's certificate: chain and key files, subject DN, SHA-256 print."""

    cert: Path
    key: Path
    subject_dn: str
    fingerprint: str  # "AB:CD:...", as Postfix's check_ccert_access spells it


@dataclass(frozen=True, slots=True)
class Pki:
    submission: TlsFiles  # what A serves its users (localhost) and the CA file
    a: Credential
    b: Credential


def _operator(directory: Path, name: str, issued: Issued) -> Credential:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    cert.write_bytes(issued.fullchain_pem)
    key.write_bytes(issued.key_pem)
    key.chmod(0o600)
    leaf = x509.load_pem_x509_certificate(issued.fullchain_pem)
    digest = leaf.fingerprint(hashes.SHA256())
    return Credential(cert, key, leaf.subject.rfc4514_string(), digest.hex(":").upper())


def write_pki(directory: Path) -> Pki:
    """One test root for everything: A's submission certificate, both operators."""
    pki = TestPKI(datetime.now(UTC))
    directory.mkdir(parents=True, exist_ok=True)
    server = pki.server()
    submission = TlsFiles(
        directory / "submission.pem", directory / "submission.key", directory / "ca.pem"
    )
    submission.cert.write_bytes(server.fullchain_pem)
    submission.key.write_bytes(server.key_pem)
    submission.key.chmod(0o600)
    submission.ca.write_bytes(pki.root_pem + pki.intermediates_pem)
    return Pki(
        submission,
        _operator(directory, "a", pki.operator(MX_A, organisation="OPERATEUR A")),
        _operator(directory, "b", pki.operator(MX_B, organisation="OPERATEUR B")),
    )


# --- helpers ------------------------------------------------------------------------


def free_port_on(*hosts: str) -> int:
    """A TCP port free on every one of ``hosts`` (an MX has no port in DNS)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind((hosts[0], 0))
            port: int = first.getsockname()[1]
            taken = False
            for host in hosts[1:]:
                with socket.socket() as other:
                    try:
                        other.bind((host, port))
                    except OSError:
                        taken = True
            if not taken:
                return port
    raise BenchError(f"no port free on all of {', '.join(hosts)}")


def wait_listening(
    host: str, port: int, log: Path, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode}: {tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), 1):
            return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on {host}:{port}: {tail(log)}")


def _no_files(directory: Path) -> bool:
    with os.scandir(directory) as entries:
        return not any(e.is_file() for e in entries)


# --- ours ----------------------------------------------------------------------------


def _relay_toml_a(
    work: Path,
    pki: Pki,
    port: int,
    dns: LoopbackDns,
    *,
    cheap_logins: bool,
    destination_concurrency: int | None,
) -> Path:
    path = work / "relay.toml"
    path.write_text(
        f"""
[relay]
data_dir = "{work / "data"}"
domain = "{DOMAIN_A}"
hostname = "{MX_A}"
local_domains = ["{DOMAIN_A}"]

[tls]
cert_file = "{pki.submission.cert}"
key_file = "{pki.submission.key}"
trust_anchors_file = "{pki.submission.ca}"

[smtp.submission]
host = "{HOST}"
port = 0
[smtp.submissions]
enabled = false
[smtp.mx]
enabled = false

[delivery]
port = {port}
nameservers = ["{dns.host}"]
dns_port = {dns.port}
client_cert_file = "{pki.a.cert}"
client_key_file = "{pki.a.key}"
"""
        + (
            ""
            if destination_concurrency is None
            else f"destination_concurrency = {destination_concurrency}\n"
        )
        + (CHEAP_AUTH if cheap_logins else ""),
        encoding="utf-8",
    )
    return path


def _relay_toml_b(work: Path, pki: Pki, port: int, dns: LoopbackDns) -> Path:
    path = work / "relay.toml"
    path.write_text(
        f"""
[relay]
data_dir = "{work / "data"}"
domain = "{DOMAIN_B}"
hostname = "{MX_B}"
local_domains = ["{DOMAIN_B}"]

[tls]
cert_file = "{pki.b.cert}"
key_file = "{pki.b.key}"
trust_anchors_file = "{pki.submission.ca}"

[smtp.submission]
enabled = false
[smtp.submissions]
enabled = false
[smtp.mx]
host = "{OURS_B_IP}"
port = {port}

[delivery]
port = {port}
nameservers = ["{dns.host}"]
dns_port = {dns.port}
""",
        encoding="utf-8",
    )
    return path


async def _seed_side(
    config_path: Path,
    party_list: Sequence[Party],
    *,
    sending: bool,
    peer_domain: str,
    peer: Credential,
) -> None:
    """One operator's directory (its own mailboxes, the peer's whitelist entry)
    and, on the sending side, one account per sender."""
    from directory.config import open_directory
    from directory.model import (
        BalType,
        Mailbox,
        Operator,
        OperatorCertificate,
        Organisation,
        OwnerKind,
        Practitioner,
    )
    from relay.accounts import AccountKind, AccountStore
    from relay.app import load_master_key
    from relay.config import load

    cfg = load(config_path)
    structure = "1" + generate.finess_number(2 if sending else 3)
    entries: list[Organisation | Practitioner | Mailbox | Operator] = [
        Organisation(structure_id=structure, name=f"STRUCTURE {peer_domain.upper()}"),
        # The MSSanté whitelist: the peer's certificate, for the peer's domain.
        Operator(
            domain=peer_domain,
            certificates=(OperatorCertificate(subject_dn=peer.subject_dn),),
        ),
    ]
    for k, party in enumerate(party_list):
        if sending:
            national_id = "8" + generate.rpps_number(k + 1)
            entries.append(Practitioner(national_id=national_id, last_name=f"A{k}"))
            owner = (OwnerKind.PRACTITIONER, national_id, BalType.PER, party.sender)
        else:
            owner = (OwnerKind.ORGANISATION, structure, BalType.ORG, party.recipient)
        kind, owner_id, bal_type, address = owner
        entries.append(
            Mailbox(
                address=address,
                bal_type=bal_type,
                owner_kind=kind,
                owner_id=owner_id,
                structure_id=structure,
            )
        )
    directory = await open_directory(cfg.directory)
    try:
        for entry in entries:
            await directory.add(entry)
    finally:
        await directory.close()
    load_master_key(cfg)
    if not sending:
        return
    accounts = AccountStore.for_config(cfg)
    try:
        for party in party_list:
            accounts.create(
                party.sender, AccountKind.PRACTITIONER, PASSWORD, [party.sender]
            )
    finally:
        accounts.close()


@contextlib.contextmanager
def _relay(name: str, config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``mssante serve`` as a subprocess; its CPU time printed when it stops."""
    argv = [sys.executable, "-m", "bench.smtp", "--child", "relay", str(config)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO
        )
    started = time.monotonic()
    try:
        yield proc
        proc.send_signal(signal.SIGTERM)  # the relay drains and stops
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        print(
            f"  ours: relay {name} CPU {usage.ru_utime:.1f} s user"
            f" + {usage.ru_stime:.1f} s system over"
            f" {time.monotonic() - started:.1f} s from start to stop",
            flush=True,
        )
    finally:
        stop(proc)
    if proc.returncode != 0:
        raise BenchError(f"relay {name} exited with {proc.returncode}: {tail(log)}")


class _Drained:
    """True once nothing is left between A's submission and B's store.

    A message is in A's spool before its 250, leaves it once A's outbound
    queue holds it, leaves that queue once B answered 250 (B had spooled it)
    and leaves B's spool once stored: looking at the three places in that
    order cannot miss a message moving forward between two looks.
    """

    def __init__(self, data_a: Path, data_b: Path) -> None:
        self._spool_a = data_a / SPOOL_DIR_NAME
        self._spool_b = data_b / SPOOL_DIR_NAME
        queue = data_a / OUTBOUND_FILE_NAME
        # Read only: the relay owns the queue (opening it as a queue would
        # reset its leases).
        self._queue = sqlite3.connect(f"file:{queue}?mode=ro", uri=True)

    def __call__(self, expected: int) -> bool:
        if not _no_files(self._spool_a):
            return False
        (queued,) = self._queue.execute("SELECT count(*) FROM messages").fetchone()
        return queued == 0 and _no_files(self._spool_b)

    def close(self) -> None:
        self._queue.close()


@contextlib.contextmanager
def ours(
    work: Path,
    pki: Pki,
    party_list: Sequence[Party],
    expected: int,
    *,
    cheap_logins: bool,
    destination_concurrency: int | None = None,
) -> Iterator[Running]:
    """A and B started; once stopped, ``expected`` messages must be in B's
    INBOXes and in A's Sent folders."""
    work_a, work_b = work / "a", work / "b"
    for directory in (work_a, work_b):
        directory.mkdir(parents=True, exist_ok=True)
    port = free_port_on(OURS_A_IP, OURS_B_IP)
    with LoopbackDns() as dns:
        for domain, mx, ip in (
            (DOMAIN_A, MX_A, OURS_A_IP),
            (DOMAIN_B, MX_B, OURS_B_IP),
        ):
            dns.add(domain, "MX", f"10 {mx}.")
            dns.add(mx, "A", ip)
        config_a = _relay_toml_a(
            work_a,
            pki,
            port,
            dns,
            cheap_logins=cheap_logins,
            destination_concurrency=destination_concurrency,
        )
        config_b = _relay_toml_b(work_b, pki, port, dns)
        asyncio.run(
            _seed_side(
                config_a, party_list, sending=True, peer_domain=DOMAIN_B, peer=pki.b
            )
        )
        asyncio.run(
            _seed_side(
                config_b, party_list, sending=False, peer_domain=DOMAIN_A, peer=pki.a
            )
        )
        log_b = work_b / "relay.log"
        with _relay("B", config_b, log_b) as proc_b:
            wait_listening(OURS_B_IP, port, log_b, proc_b)
            with _relay("A", config_a, work_a / "relay.log") as proc_a:
                submission = relay_port(proc_a, work_a / "relay.log")
                drained = _Drained(work_a / "data", work_b / "data")
                try:
                    yield Running(Target("ours", HOST, submission, auth=True), drained)
                finally:
                    drained.close()
    sent = _stored_messages(config_a, party_list)[1]
    inbox = _stored_messages(config_b, party_list)[0]
    if (inbox, sent) != (expected, expected):
        raise BenchError(
            f"ours: {inbox} messages in B's INBOXes and {sent} Sent copies in A,"
            f" {expected} sent"
        )


# --- Postfix ----------------------------------------------------------------------


def _main_cf(work: Path, hostname: str, **params: str) -> str:
    """A private instance's main.cf: its own directories; its listener's address
    is in master.cf (inet_interfaces may only name configured addresses)."""
    base = {
        "compatibility_level": "3.6",
        "queue_directory": str(work / "queue"),
        "data_directory": str(work / "lib"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": hostname,
        "mydomain": hostname.partition(".")[2],
        "myorigin": "$myhostname",
        "mydestination": "",
        "inet_interfaces": "loopback-only",
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.0.0/8",
        "alias_maps": "",
        "alias_database": "",
        "smtpd_peername_lookup": "no",
        "smtpd_banner": "$myhostname ESMTP",
        "smtpd_tls_loglevel": "0",
        "smtp_tls_loglevel": "0",
        "maillog_file_prefixes": str(work),
        "maillog_file": str(work / "maillog"),
    }
    return "".join(f"{k} = {v}\n" for k, v in (base | params).items())


def _instance_dirs(work: Path) -> Path:
    """Create the instance's directories; its config directory."""
    owner = pwd.getpwnam("postfix")
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # Postfix's daemons, not root, walk to their directories
    for name in ("etc", "queue", "lib"):
        (work / name).mkdir(exist_ok=True)
    os.chown(work / "lib", owner.pw_uid, owner.pw_gid)  # master.lock, tls caches
    return work / "etc"


def _private_copy(source: Path, etc: Path) -> Path:
    """Postfix reads keys as root at start; a copy beside its config."""
    target = etc / source.name
    shutil.copy(source, target)
    return target


@contextlib.contextmanager
def postfix_pair(
    work: Path, pki: Pki, party_list: Sequence[Party], *, tls_reuse: bool = True
) -> Iterator[Running]:
    """Postfix B then A started; A's submission is where to send."""
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    nobody = pwd.getpwnam("nobody")
    work_a, work_b = work / "a", work / "b"
    etc_a, etc_b = _instance_dirs(work_a), _instance_dirs(work_b)
    maildirs = work_b / "maildirs"
    maildirs.mkdir(exist_ok=True)
    os.chown(maildirs, nobody.pw_uid, nobody.pw_gid)
    port_a, port_b = free_port_on(POSTFIX_A_IP), free_port_on(POSTFIX_B_IP)
    ca = str(pki.submission.ca)

    # B: TLS required, a verified client certificate, whitelisted by its
    # SHA-256 fingerprint (the counterpart of our subject-DN whitelist).
    (etc_b / "vmailbox").write_text(
        "".join(f"{p.recipient} {p.recipient}/\n" for p in party_list), encoding="utf-8"
    )
    (etc_b / "ccerts").write_text(f"{pki.a.fingerprint} OK\n", encoding="utf-8")
    (etc_b / "main.cf").write_text(
        _main_cf(
            work_b,
            MX_B,
            smtpd_tls_security_level="encrypt",
            smtpd_tls_cert_file=str(pki.b.cert),
            smtpd_tls_key_file=str(_private_copy(pki.b.key, etc_b)),
            smtpd_tls_CAfile=ca,
            smtpd_tls_ask_ccert="yes",
            smtpd_tls_req_ccert="yes",
            smtpd_tls_fingerprint_digest="sha256",
            # The Received header says which client certificate was verified.
            smtpd_tls_received_header="yes",
            smtpd_client_restrictions=f"check_ccert_access texthash:{etc_b / 'ccerts'}, reject",
            smtpd_relay_restrictions="reject_unauth_destination",
            virtual_mailbox_domains=DOMAIN_B,
            virtual_mailbox_base=str(maildirs),
            virtual_mailbox_maps=f"texthash:{etc_b / 'vmailbox'}",
            virtual_uid_maps=f"static:{nobody.pw_uid}",
            virtual_gid_maps=f"static:{nobody.pw_gid}",
        ),
        encoding="utf-8",
    )
    # A: submission without AUTH (no SASL without Dovecot/Cyrus); B's domain
    # relayed to B's address, B's certificate checked for B's MX name.
    nexthop = f"[{POSTFIX_B_IP}]:{port_b}"
    (etc_a / "transport").write_text(f"{DOMAIN_B} smtp:{nexthop}\n", encoding="utf-8")
    (etc_a / "tls_policy").write_text(
        f"{nexthop} secure match={MX_B}\n", encoding="utf-8"
    )
    (etc_a / "main.cf").write_text(
        _main_cf(
            work_a,
            MX_A,
            smtpd_tls_security_level="encrypt",
            smtpd_tls_cert_file=str(pki.submission.cert),
            smtpd_tls_key_file=str(_private_copy(pki.submission.key, etc_a)),
            smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination",
            transport_maps=f"texthash:{etc_a / 'transport'}",
            smtp_tls_security_level="secure",
            smtp_tls_policy_maps=f"texthash:{etc_a / 'tls_policy'}",
            smtp_tls_CAfile=ca,
            smtp_tls_cert_file=str(pki.a.cert),
            smtp_tls_key_file=str(_private_copy(pki.a.key, etc_a)),
            # Reuse of TLS connections goes through tlsproxy(8); without it
            # (Postfix's default) every delivery makes a new TLS handshake,
            # while ours sends up to 500 messages per connection.
            smtp_tls_connection_reuse="yes" if tls_reuse else "no",
        ),
        encoding="utf-8",
    )
    for etc, ip, port in ((etc_a, POSTFIX_A_IP, port_a), (etc_b, POSTFIX_B_IP, port_b)):
        (etc / "master.cf").write_text(
            MASTER_CF.format(host=ip, port=port) + TLSPROXY, encoding="utf-8"
        )
    started: list[Path] = []
    try:
        for etc, ip, port in (
            (etc_b, POSTFIX_B_IP, port_b),
            (etc_a, POSTFIX_A_IP, port_a),
        ):
            _postfix(etc, etc.parent / "maillog", "start")
            started.append(etc)
            wait_listening(ip, port, etc.parent / "maillog")
        yield Running(
            Target("postfix", POSTFIX_A_IP, port_a, auth=False),
            lambda expected: _in_maildirs(maildirs, party_list) >= expected,
        )
    finally:
        for etc in reversed(started):
            with contextlib.suppress(BenchError):
                _postfix(etc, etc.parent / "maillog", "stop")


# --- report ---------------------------------------------------------------------


def _figure(metric: str, ours: float, ref: float, unit: str = "msg/s") -> Figure:
    return Figure("delivery", metric, ours, ref, unit)


def report(results: Sequence[Result], notes: Sequence[str]) -> list[Figure]:
    by = {(r.server, r.size): r for r in results}
    rows: list[tuple[str, ...]] = [
        ("pair", "size", "messages", "seconds", "msg/s", "last 250 at", "vs postfix")
    ]
    for r in results:
        ref = by.get(("postfix", r.size))
        rows.append(
            (
                "postfix -> postfix" if r.server == "postfix" else "ours -> ours",
                r.size,
                str(r.messages),
                f"{r.seconds:.2f}",
                f"{r.rate:.1f}",
                f"{r.acked_seconds:.2f} s",
                f"{r.rate / ref.rate:.2f}x" if ref else "-",
            )
        )
    print(_table(rows))
    for note in notes:
        print(f"note: {note}")
    figures = [
        _figure(f"transfer_{size}", mine.rate, ref.rate)
        for size in SIZES
        if (mine := by.get(("ours", size))) is not None
        and (ref := by.get(("postfix", size))) is not None
    ]
    for f in figures:
        print(f.line())
    return figures


# --- driver ------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    messages = args.messages or (QUICK_MESSAGES if args.quick else DEFAULT_MESSAGES)
    sessions = args.sessions or (QUICK_SESSIONS if args.quick else DEFAULT_SESSIONS)
    counts = dict.fromkeys(SIZES, messages)
    party_list = parties(sessions)
    expected = sessions + sum(counts.values())  # the warm-up sends one per session
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-delivery-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    cheap = not args.production_logins
    notes = [
        f"{sessions} concurrent submission sessions to A, {messages} messages per"
        " size, one generator (bench smtp's: STARTTLS, MAIL/RCPT/DATA pipelined);"
        " the clock stops when the last message is in B's store",
        "ours: A = submission, AUTH PLAIN, full policy, spool fsync, Sent copy,"
        " outbound queue, MX lookup (loopback DNS), STARTTLS to B with A's operator"
        " certificate, B's chain + MX name + whitelist checked; B = MX, A's"
        " certificate checked against its whitelist, spool fsync, encrypted INBOX;"
        f" [delivery] destination_concurrency = {args.destination_concurrency or '10 (default)'};"
        " argon2id "
        + (
            "t=1 m=1MiB p=1 (cheap logins: 20 logins must not dominate)"
            if cheap
            else "t=3 m=64MiB p=4 (production costs)"
        ),
    ]
    servers = [s for s in SERVERS if s in args.servers]
    if args.quick and "postfix" in servers:
        servers.remove("postfix")
        notes.append("Postfix: skipped: --quick")
    run_tag = f"r{int(time.time())}"
    results: list[Result] = []
    try:
        pki = write_pki(work / "tls")
        if "postfix" in servers:
            why = postfix_unavailable(install=not args.no_install)
            if why is not None:
                servers.remove("postfix")
                notes.append(f"Postfix: skipped: {why}")
        print(
            f"bench delivery: {', '.join(servers) or 'nothing'};"
            f" sizes {', '.join(SIZES)}; work in {work}",
            flush=True,
        )
        for name in servers:
            where = work / name
            if name == "postfix":
                with postfix_pair(
                    where, pki, party_list, tls_reuse=not args.postfix_no_tls_reuse
                ) as running:
                    results += measure_server(
                        running,
                        pki.submission,
                        party_list,
                        counts,
                        run_tag,
                        args.timeout,
                    )
                stored = _in_maildirs(where / "b" / "maildirs", party_list)
                if stored != expected:
                    raise BenchError(
                        f"postfix: {stored} messages in B's Maildirs, {expected} sent"
                    )
            else:
                with ours(
                    where,
                    pki,
                    party_list,
                    expected,
                    cheap_logins=cheap,
                    destination_concurrency=args.destination_concurrency,
                ) as running:
                    results += measure_server(
                        running,
                        pki.submission,
                        party_list,
                        counts,
                        run_tag,
                        args.timeout,
                    )
        if "postfix" in servers:
            notes.append(
                "postfix: A = smtpd STARTTLS (encrypt), no AUTH (no SASL without"
                " Dovecot/Cyrus), transport_maps to B, smtp_tls_security_level ="
                " secure (chain + MX name), A's operator certificate, "
                + (
                    "smtp_tls_connection_reuse = no (Postfix's default)"
                    if args.postfix_no_tls_reuse
                    else "smtp_tls_connection_reuse = yes (tlsproxy)"
                )
                + "; B = smtpd"
                " encrypt + smtpd_tls_req_ccert, client certificate fingerprint"
                " whitelisted (check_ccert_access), virtual(8) into Maildirs"
            )
        report(results, notes)
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench delivery", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--messages",
        type=int,
        default=0,
        help=f"messages per size (default {DEFAULT_MESSAGES}; --quick {QUICK_MESSAGES})",
    )
    p.add_argument(
        "--sessions",
        type=int,
        default=0,
        help=f"concurrent submission sessions (default {DEFAULT_SESSIONS};"
        f" --quick {QUICK_SESSIONS})",
    )
    p.add_argument(
        "--servers",
        default=",".join(SERVERS),
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help="which pairs, comma-separated (default postfix,ours)",
    )
    p.add_argument(
        "--no-install", action="store_true", help="never apt-get install postfix"
    )
    p.add_argument(
        "--destination-concurrency",
        type=int,
        default=None,
        help="ours: A's [delivery] destination_concurrency (default: the relay's, 4)",
    )
    p.add_argument(
        "--postfix-no-tls-reuse",
        action="store_true",
        help="Postfix A with its default smtp_tls_connection_reuse = no:"
        " one TLS handshake per delivery",
    )
    p.add_argument(
        "--production-logins",
        action="store_true",
        help="ours: argon2id with the production costs (t=3, m=64 MiB, p=4)"
        " instead of t=1, m=1 MiB, p=1",
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds allowed per run"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"{QUICK_MESSAGES} messages, {QUICK_SESSIONS} sessions, ours only",
    )
    p.add_argument("--workdir", type=Path, default=None, help="keep files here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    unknown = set(args.servers) - set(SERVERS)
    if unknown:
        print(f"bench delivery: unknown servers {sorted(unknown)}", file=sys.stderr)
        return 2
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench delivery: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
