"""Benchmark of the relay's SMTP path: accept-and-store throughput against Postfix.

Owns area ``smtp`` of ``python -m bench``. In one invocation, one generator
(this module's asyncio client) sends the same messages, at 5 KB and 100 KB,
over ``--sessions`` concurrent sessions (20), to three servers on loopback:

- **ours**: ``mssante serve`` as a subprocess, with TLS and the full policy:
  the submission port, STARTTLS then AUTH PLAIN with an account created
  beforehand, sender and recipient listed in a seeded sqlite directory, each
  message spooled (fsync), then delivered into the encrypted mailbox store
  (the recipient's INBOX and the sender's Sent folder);
- **Postfix** (Debian ``postfix``, installed with apt when missing and
  allowed): a private instance (its own ``config_directory``,
  ``queue_directory`` and ``data_directory``) listening on a loopback port
  with ``smtpd_tls_security_level = encrypt`` and the same certificate,
  delivering through ``virtual`` into one Maildir per recipient. Postfix has
  no SASL without Dovecot or Cyrus, so its sessions do STARTTLS without AUTH;
- **sink**: ``python -m aiosmtpd`` with its ``Sink`` handler and STARTTLS
  with the same certificate (the floor: TLS and SMTP parsing only, nothing
  stored).

What is measured, per server and size: the wall time from the first connect
to the moment every message got its ``250`` *and* is delivered (ours: the
spool directory is empty, all-local mail being stored before its ``250``
and never spooled; Postfix: every message is a file in a Maildir
``new/``; the sink stores nothing), hence messages per second. A warm-up of
one message per session precedes each server's runs. Deliveries are then
counted in the stores themselves: a run that lost a message fails.

What must stay true: the generator is the same for all three (same bodies,
same pipelining of ``MAIL``/``RCPT``/``DATA``, RFC 2920 §3.1, same number of
messages per session); every server runs in its own processes, never in the
generator's event loop; nothing listens beyond 127.0.0.1; every server is
stopped at the end, even on error. The output ends with one ``BENCH smtp
<metric> ours=<n> ref=<n> ratio=<ours/ref> unit=msg/s`` line per figure, the
reference being Postfix (``accept_store_<size>``) or the sink
(``accept_store_<size>_vs_sink``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import os
import pstats
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bench import generate
from bench.figures import Figure
from mssante.crypto.testpki import TestPKI

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

REPO: Final = Path(__file__).resolve().parent.parent
SIZES: Final = {"5KB": 5 * 1024, "100KB": 100 * 1024}
DEFAULT_MESSAGES: Final = 1000  # per size
DEFAULT_SESSIONS: Final = 20
QUICK_MESSAGES: Final = 40
QUICK_SESSIONS: Final = 4
GOAL_RATIO: Final = 1.0  # issue 4: at least Postfix's throughput
SENDER_DOMAIN: Final = "medecin.mssante.fr"
RECIPIENT_DOMAIN: Final = "ch-paris-1.mssante.fr"
PASSWORD: Final = "Bench-smtp-pw-1!"  # noqa: S105 - a throwaway test account
HOST: Final = "127.0.0.1"
EHLO: Final = b"EHLO bench.localhost\r\n"
START_TIMEOUT: Final = 60.0
POLL_INTERVAL: Final = 0.005


class BenchError(Exception):
    """A server misbehaved or could not be started; the message says how."""


# --- messages ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Party:
    """One session's sender (and its login) and recipient."""

    sender: str
    recipient: str


def parties(sessions: int) -> list[Party]:
    return [
        Party(f"emetteur{k:02d}@{SENDER_DOMAIN}", f"service{k:02d}@{RECIPIENT_DOMAIN}")
        for k in range(sessions)
    ]


@dataclass(frozen=True, slots=True)
class Template:
    """A message of about ``size`` bytes, dot-stuffed, split around its Message-ID."""

    head: bytes
    tail: bytes  # ends with the end-of-data line "." (RFC 5321 §4.1.1.4)

    def parts(self, message_id: str) -> tuple[bytes, bytes, bytes]:
        return self.head, f"Message-ID: <{message_id}>\r\n".encode(), self.tail


def template(party: Party, size: int) -> Template:
    """A practice-software-like message: a short text part and a base64 attachment."""
    head = (
        f"From: {party.sender}\r\n"
        f"To: {party.recipient}\r\n"
        "Subject: Compte rendu de consultation\r\n"
        "Date: Mon, 02 Nov 2026 09:30:00 +0100\r\n"
    ).encode()
    boundary = "=_bench_boundary"
    text = (
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        "Bonjour,\r\nveuillez trouver le compte rendu ci-joint.\r\n\r\n"
        f"--{boundary}\r\n"
        'Content-Type: application/octet-stream; name="IHE_XDM.ZIP"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="IHE_XDM.ZIP"\r\n\r\n'
    ).encode()
    closing = f"\r\n--{boundary}--\r\n".encode()
    message_id_line = 60  # about: "Message-ID: <...>\r\n"
    room = max(0, size - len(head) - len(text) - len(closing) - message_id_line)
    raw = random.Random(size).randbytes(room * 57 // 78)
    attachment = base64.encodebytes(raw).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    body = text + attachment + closing
    # RFC 5321 §4.5.2: a line starting with "." gets one more.
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    return Template(head, stuffed + b".\r\n")


# --- the generator -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Target:
    """Where the generator sends, and whether its sessions log in."""

    name: str
    host: str
    port: int
    auth: bool


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    text = b""
    while True:
        line = await reader.readline()
        if not line:
            raise BenchError(f"connection closed after {text!r}")
        text += line
        # RFC 5321 §4.2.1: "250-" continues a reply, "250 " ends it.
        if line[3:4] != b"-":
            return int(line[:3]), text


async def _expect(reader: asyncio.StreamReader, code: int, what: str) -> bytes:
    got, text = await _reply(reader)
    if got != code:
        raise BenchError(f"{what}: expected {code}, got {text!r}")
    return text


async def _session(
    target: Target,
    ctx: ssl.SSLContext,
    party: Party,
    messages: Sequence[tuple[bytes, bytes, bytes]],
    acked: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        await _expect(reader, 220, "greeting")
        writer.write(EHLO)
        await _expect(reader, 250, "EHLO")
        writer.write(b"STARTTLS\r\n")
        await _expect(reader, 220, "STARTTLS")
        await writer.start_tls(ctx, server_hostname="localhost")
        writer.write(EHLO)  # RFC 3207 §4.2: forget what was learnt before TLS
        await _expect(reader, 250, "EHLO after STARTTLS")
        if target.auth:
            token = base64.b64encode(f"\0{party.sender}\0{PASSWORD}".encode())
            writer.write(b"AUTH PLAIN " + token + b"\r\n")  # RFC 4616
            await _expect(reader, 235, "AUTH PLAIN")
        # RFC 2920 §3.1: MAIL, RCPT and DATA go in one group; the content
        # follows the 354.
        envelope = (
            f"MAIL FROM:<{party.sender}>\r\nRCPT TO:<{party.recipient}>\r\nDATA\r\n"
        ).encode()
        for parts in messages:
            writer.write(envelope)
            await _expect(reader, 250, "MAIL FROM")
            await _expect(reader, 250, "RCPT TO")
            await _expect(reader, 354, "DATA")
            writer.writelines(parts)
            await writer.drain()
            await _expect(reader, 250, "end of data")
            acked[0] += 1
        writer.write(b"QUIT\r\n")
        await _expect(reader, 221, "QUIT")
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def send_all(
    target: Target,
    ctx: ssl.SSLContext,
    plans: Sequence[tuple[Party, Sequence[tuple[bytes, bytes, bytes]]]],
) -> int:
    """Run every session at once; the number of messages that got their 250."""
    acked = [0]
    async with asyncio.TaskGroup() as group:
        for party, messages in plans:
            group.create_task(_session(target, ctx, party, messages, acked))
    return acked[0]


def plans_for(
    party_list: Sequence[Party], size: int, count: int, tag: str
) -> list[tuple[Party, list[tuple[bytes, bytes, bytes]]]]:
    """``count`` messages spread over the sessions, each with its own Message-ID."""
    out = []
    for k, party in enumerate(party_list):
        t = template(party, size)
        n = count // len(party_list) + (1 if k < count % len(party_list) else 0)
        ids = (f"{tag}.{k}.{i}@{SENDER_DOMAIN}" for i in range(n))
        out.append((party, [t.parts(m) for m in ids]))
    return out


# --- servers -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsFiles:
    cert: Path  # leaf then intermediates
    key: Path
    ca: Path  # what the generator trusts


def write_tls(directory: Path) -> TlsFiles:
    pki = TestPKI(datetime.now(UTC))
    server = pki.server()
    directory.mkdir(parents=True, exist_ok=True)
    files = TlsFiles(
        directory / "server.pem", directory / "server.key", directory / "ca.pem"
    )
    files.cert.write_bytes(server.fullchain_pem)
    files.key.write_bytes(server.key_pem)
    files.key.chmod(0o600)
    files.ca.write_bytes(pki.root_pem + pki.intermediates_pem)
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"server exited with {proc.returncode}: {tail(log)}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1):
            return
        time.sleep(0.05)
    raise BenchError(f"nothing listens on {HOST}:{port}: {tail(log)}")


def tail(path: Path, size: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except FileNotFoundError:
        return "(no log)"


def stop(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def child_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH", "")
    return dict(
        os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{path}" if path else str(REPO)
    )


@dataclass(slots=True)
class Running:
    """A started server: where to send, how to know its deliveries are done."""

    target: Target
    # True once ``expected`` messages (all runs so far) are delivered.
    done: Callable[[int], bool]


# ours


# argon2id costs of a test relay (diagnostic: a login then costs ~1 ms, not
# the ~130 ms of the production defaults t=3, m=64 MiB, p=4).
CHEAP_AUTH: Final = """
[auth]
argon2_time_cost = 1
argon2_memory_kib = 1024
argon2_parallelism = 1
"""


def _relay_toml(
    work: Path, tls: TlsFiles, *, cheap_logins: bool, processes: int = 1
) -> Path:
    path = work / "relay.toml"
    path.write_text(
        f"""
[relay]
data_dir = "{work / "data"}"
domain = "mssante.example"
local_domains = ["{SENDER_DOMAIN}", "{RECIPIENT_DOMAIN}"]

[tls]
cert_file = "{tls.cert}"
key_file = "{tls.key}"
trust_anchors_file = "{tls.ca}"

[smtp]
processes = {processes}

[smtp.submission]
host = "{HOST}"
port = 0
[smtp.submissions]
enabled = false
[smtp.mx]
enabled = false
"""
        + (CHEAP_AUTH if cheap_logins else ""),
        encoding="utf-8",
    )
    return path


async def _seed(config_path: Path, party_list: Sequence[Party]) -> None:
    """Directory entries, master key and one account per sender (before the clock)."""
    from directory.config import open_directory
    from directory.model import BalType, Mailbox, Organisation, OwnerKind, Practitioner
    from relay.accounts import AccountKind, AccountStore
    from relay.app import load_master_key
    from relay.config import load

    cfg = load(config_path)
    structure = "1" + generate.finess_number(1)
    entries: list[Organisation | Practitioner | Mailbox] = [
        Organisation(structure_id=structure, name="CENTRE HOSPITALIER BENCH")
    ]
    for k, party in enumerate(party_list):
        national_id = "8" + generate.rpps_number(k + 1)
        entries += [
            Practitioner(national_id=national_id, last_name=f"EMETTEUR{k}"),
            Mailbox(
                address=party.sender,
                bal_type=BalType.PER,
                owner_kind=OwnerKind.PRACTITIONER,
                owner_id=national_id,
                structure_id=structure,
            ),
            Mailbox(
                address=party.recipient,
                bal_type=BalType.ORG,
                owner_kind=OwnerKind.ORGANISATION,
                owner_id=structure,
                service=f"Service {k}",
            ),
        ]
    directory = await open_directory(cfg.directory)
    try:
        for entry in entries:
            await directory.add(entry)
    finally:
        await directory.close()
    load_master_key(cfg)
    accounts = AccountStore.for_config(cfg)
    try:
        for party in party_list:
            accounts.create(
                party.sender, AccountKind.PRACTITIONER, PASSWORD, [party.sender]
            )
    finally:
        accounts.close()


def _stored_messages(config_path: Path, party_list: Sequence[Party]) -> tuple[int, int]:
    """(INBOX copies, Sent copies) in ours's store; the relay must be stopped."""
    from relay.app import STORE_DIR_NAME, load_master_key
    from relay.config import load
    from relay.store import MailStore

    cfg = load(config_path)
    store = MailStore.open(cfg.relay.data_dir / STORE_DIR_NAME, load_master_key(cfg))
    try:
        inbox = sum(
            len(store.messages(p.recipient, "INBOX"))
            for p in party_list
            if store.has_mailbox(p.recipient)
        )
        sent = sum(
            len(store.messages(p.sender, "Sent"))
            for p in party_list
            if store.has_mailbox(p.sender)
        )
    finally:
        store.close()
    return inbox, sent


@contextlib.contextmanager
def ours(
    work: Path,
    tls: TlsFiles,
    party_list: Sequence[Party],
    profile: Path | None,
    *,
    cheap_logins: bool = False,
    processes: int = 1,
) -> Iterator[Running]:
    work.mkdir(parents=True, exist_ok=True)
    config = _relay_toml(work, tls, cheap_logins=cheap_logins, processes=processes)
    asyncio.run(_seed(config, party_list))
    log = work / "relay.log"
    argv = [sys.executable, "-m", "bench.smtp", "--child", "relay", str(config)]
    if profile is not None:
        argv.append(str(profile))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO
        )
    spool = work / "data" / "spool"
    try:
        port = relay_port(proc, log)

        def spool_empty(expected: int) -> bool:
            # Every acknowledged message was in the spool before its 250.
            with os.scandir(spool) as entries:
                return not any(e.is_file() for e in entries)

        started = time.monotonic()
        yield Running(Target("ours", HOST, port, auth=True), spool_empty)
        proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        # One process, one GIL: CPU time near the wall time means the relay is
        # CPU-bound on one core (its threads release the GIL only in C code).
        print(
            f"  ours: relay CPU {usage.ru_utime:.1f} s user + {usage.ru_stime:.1f} s"
            f" system over {time.monotonic() - started:.1f} s from warm-up to stop",
            flush=True,
        )
    finally:
        stop(proc)
    if proc.returncode != 0:
        raise BenchError(f"relay exited with {proc.returncode}: {tail(log)}")


def relay_port(
    proc: subprocess.Popen[bytes],
    log: Path,
    listener: str = "SMTP submission (STARTTLS)",
) -> int:
    """The port ``mssante serve`` printed for ``listener`` in its log."""
    import re

    deadline = time.monotonic() + START_TIMEOUT
    pattern = re.compile(re.escape(listener) + r"\s+127\.0\.0\.1:(\d+)")
    while time.monotonic() < deadline:
        found = pattern.search(tail(log, 10_000))
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise BenchError(f"the relay did not start: {tail(log)}")


def child_relay(config: str, profile: str | None) -> int:
    """``mssante serve --config CONFIG``, under cProfile when asked."""
    from cli.main import main as cli_main

    argv = ["--config", config, "serve"]
    if profile is None:
        return cli_main(argv)
    profiler = cProfile.Profile()
    try:
        result: int = profiler.runcall(cli_main, argv)
    finally:
        profiler.dump_stats(profile)
    return result


# the sink


@contextlib.contextmanager
def sink(work: Path, tls: TlsFiles) -> Iterator[Running]:
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = work / "sink.log"
    argv = [
        sys.executable,
        "-m",
        "aiosmtpd",
        "-n",
        "-c",
        "aiosmtpd.handlers.Sink",
        "-l",
        f"{HOST}:{port}",
        "-s",
        str(max(SIZES.values()) * 4),
        "--tlscert",
        str(tls.cert),
        "--tlskey",
        str(tls.key),
    ]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=work)
    try:
        _wait_listening(port, proc, log)
        yield Running(Target("sink", HOST, port, auth=False), lambda _: True)
    finally:
        stop(proc, 10)


# Postfix

POSTFIX_BIN: Final = Path("/usr/sbin/postfix")

MASTER_CF: Final = """\
{host}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def package_unavailable(binary: Path, package: str, *, install: bool) -> str | None:
    """Why ``binary`` cannot run here, or None; installs ``package`` with apt
    when allowed (root, apt-get present)."""
    if binary.exists():
        return None
    name = binary.name
    if not install:
        return f"{name} not installed (install: apt-get install -y {package})"
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{name} not installed and apt-get not usable (needs root)"
    print(f"{name} not installed: apt-get install -y {package}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    done = subprocess.run(
        ["apt-get", "install", "-y", "-q", package],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not binary.exists():
        return f"apt-get install {package} failed: {done.stderr.strip()[-300:]}"
    return None


def postfix_unavailable(*, install: bool) -> str | None:
    """Why Postfix cannot run here, or None; installs it with apt when allowed."""
    return package_unavailable(POSTFIX_BIN, "postfix", install=install)


def _postfix(config_dir: Path, log: Path, *args: str) -> None:
    # postfix(1) writes its errors to the maillog, not to a non-tty stderr.
    done = subprocess.run(
        [str(POSTFIX_BIN), "-c", str(config_dir), *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(
            f"postfix {' '.join(args)} failed ({done.returncode}): {tail(log)}"
        )


@contextlib.contextmanager
def postfix(
    work: Path, tls: TlsFiles, party_list: Sequence[Party]
) -> Iterator[Running]:
    import pwd

    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # virtual(8) runs as nobody and walks to the Maildirs
    nobody = pwd.getpwnam("nobody")
    owner = pwd.getpwnam("postfix")
    config_dir, maildirs = work / "etc", work / "maildirs"
    queue, data = work / "queue", work / "lib"
    for directory in (config_dir, maildirs, queue, data):
        directory.mkdir(exist_ok=True)
    os.chown(maildirs, nobody.pw_uid, nobody.pw_gid)
    os.chown(data, owner.pw_uid, owner.pw_gid)  # master.lock, tls caches
    key = config_dir / "server.key"
    shutil.copy(tls.key, key)  # smtpd reads its key as root at start
    port = free_port()
    (config_dir / "vmailbox").write_text(
        "".join(f"{p.recipient} {p.recipient}/\n" for p in party_list), encoding="utf-8"
    )
    (config_dir / "main.cf").write_text(
        f"""\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.localhost
mydomain = localhost
myorigin = localhost
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
smtpd_peername_lookup = no
smtpd_banner = $myhostname ESMTP
smtpd_tls_security_level = encrypt
smtpd_tls_cert_file = {tls.cert}
smtpd_tls_key_file = {key}
smtpd_tls_loglevel = 0
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
virtual_mailbox_domains = {RECIPIENT_DOMAIN}
virtual_mailbox_base = {maildirs}
virtual_mailbox_maps = texthash:{config_dir / "vmailbox"}
virtual_uid_maps = static:{nobody.pw_uid}
virtual_gid_maps = static:{nobody.pw_gid}
maillog_file_prefixes = {work}
maillog_file = {work / "maillog"}
""",
        encoding="utf-8",
    )
    (config_dir / "master.cf").write_text(
        MASTER_CF.format(host=HOST, port=port), encoding="utf-8"
    )
    _postfix(config_dir, work / "maillog", "start")
    try:
        _wait_listening_any(port, work / "maillog")

        yield Running(
            Target("postfix", HOST, port, auth=False),
            lambda expected: _in_maildirs(maildirs, party_list) >= expected,
        )
    finally:
        with contextlib.suppress(BenchError):
            _postfix(config_dir, work / "maillog", "stop")


def _in_maildirs(maildirs: Path, party_list: Sequence[Party]) -> int:
    total = 0
    for p in party_list:
        with (
            contextlib.suppress(FileNotFoundError),
            os.scandir(maildirs / p.recipient / "new") as entries,
        ):
            total += sum(1 for _ in entries)
    return total


def _wait_listening_any(port: int, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1):
            return
        time.sleep(0.05)
    raise BenchError(f"postfix does not listen on {HOST}:{port}: {tail(log)}")


# --- measurement ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Result:
    server: str
    size: str
    messages: int
    seconds: float
    acked_seconds: float  # until the last 250, before waiting for deliveries

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0


async def _until_delivered(running: Running, expected: int, within: float) -> None:
    deadline = time.monotonic() + within
    while not running.done(expected):
        if time.monotonic() > deadline:
            raise BenchError(
                f"{running.target.name}: {expected} messages not all delivered"
                f" after {within:g} s"
            )
        await asyncio.sleep(POLL_INTERVAL)


async def _measure(
    running: Running,
    ctx: ssl.SSLContext,
    plans: Sequence[tuple[Party, Sequence[tuple[bytes, bytes, bytes]]]],
    expected_total: int,
    within: float,
) -> tuple[int, float, float, float]:
    """Messages acknowledged, seconds to the last 250, to delivery, generator CPU."""
    cpu = time.process_time()
    started = time.perf_counter()
    acked = await send_all(running.target, ctx, plans)
    acked_at = time.perf_counter()
    generator_cpu = time.process_time() - cpu
    await _until_delivered(running, expected_total, within)
    return acked, acked_at - started, time.perf_counter() - started, generator_cpu


def measure_server(
    running: Running,
    tls: TlsFiles,
    party_list: Sequence[Party],
    counts: dict[str, int],
    run_tag: str,
    timeout: float,
) -> list[Result]:
    """The warm-up, then one run per size, on one started server."""
    ctx = ssl.create_default_context(cafile=str(tls.ca))
    name = running.target.name
    warm = plans_for(party_list, SIZES["5KB"], len(party_list), f"{run_tag}.warm")
    total = len(party_list)
    asyncio.run(_measure(running, ctx, warm, total, timeout))  # warm-up
    results = []
    for label, size in SIZES.items():
        count = counts[label]
        plans = plans_for(party_list, size, count, f"{run_tag}.{label}")
        total += count
        acked, until_acked, seconds, generator_cpu = asyncio.run(
            _measure(running, ctx, plans, total, timeout)
        )
        if acked != count:
            raise BenchError(f"{name} {label}: {acked} of {count} acknowledged")
        result = Result(name, label, count, seconds, until_acked)
        # A generator busy close to 100% of the time to the last 250 is
        # what limits that figure, not the server.
        print(
            f"  {name:8} {label:6} {count} messages in {seconds:.2f} s"
            f" ({result.rate:.1f} msg/s; last 250 at {until_acked:.2f} s;"
            f" generator CPU {generator_cpu / until_acked:.0%} of that)",
            flush=True,
        )
        results.append(result)
    return results


# --- report --------------------------------------------------------------------


def _figure(metric: str, ours: float, ref: float, unit: str = "msg/s") -> Figure:
    return Figure("smtp", metric, ours, ref, unit)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    )


def report(results: list[Result], notes: list[str]) -> list[Figure]:
    by = {(r.server, r.size): r for r in results}
    rows: list[tuple[str, ...]] = [
        ("server", "size", "messages", "seconds", "msg/s", "vs postfix")
    ]
    for r in results:
        ref = by.get(("postfix", r.size))
        ratio = f"{r.rate / ref.rate:.2f}x" if ref else "-"
        rows.append(
            (
                r.server,
                r.size,
                str(r.messages),
                f"{r.seconds:.2f}",
                f"{r.rate:.1f}",
                ratio,
            )
        )
    print(_table(rows))
    for note in notes:
        print(f"note: {note}")
    figures = []
    for size in SIZES:
        mine = by.get(("ours", size))
        if mine is None:
            continue
        if (ref := by.get(("postfix", size))) is not None:
            figures.append(_figure(f"accept_store_{size}", mine.rate, ref.rate))
        if (floor := by.get(("sink", size))) is not None:
            figures.append(
                _figure(f"accept_store_{size}_vs_sink", mine.rate, floor.rate)
            )
    goal = [f for f in figures if not f.metric.endswith("_vs_sink")]
    if goal:
        worst = min(f.ratio for f in goal)
        print(
            f"goal: >= {GOAL_RATIO:g}x Postfix's accept-and-store throughput:"
            f" {worst:.2f}x at worst -> {'met' if worst >= GOAL_RATIO else 'NOT met'}"
        )
    for f in figures:
        print(f.line())
    return figures


def _print_profile(path: Path, top: int = 30) -> None:
    print(f"\nprofile of the relay's event-loop thread ({path}), by own time:")
    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(top)


# --- driver --------------------------------------------------------------------


def eventloop_name() -> str:
    """The loop ``mssante serve`` runs on here (``relay.eventloop``)."""
    from relay import eventloop

    return "asyncio" if eventloop.loop_factory() is None else "uvloop"


def run(args: argparse.Namespace) -> int:
    messages = args.messages or (QUICK_MESSAGES if args.quick else DEFAULT_MESSAGES)
    sessions = args.sessions or (QUICK_SESSIONS if args.quick else DEFAULT_SESSIONS)
    counts = dict.fromkeys(SIZES, messages)
    party_list = parties(sessions)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-smtp-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # Postfix's daemons, not root, walk to their directories
    notes: list[str] = [
        f"{sessions} concurrent sessions, {messages} messages per size, one"
        " generator (asyncio, STARTTLS, MAIL/RCPT/DATA pipelined), loopback",
        "ours: submission, STARTTLS + AUTH PLAIN, full policy, stored before its"
        " 250 in the encrypted store (recipient INBOX + sender Sent copy, one"
        " segment append and fdatasync per group commit); "
        + eventloop_name()
        + " event loop; argon2id "
        + (
            "t=1 m=1MiB p=1 (--cheap-logins)"
            if args.cheap_logins
            else "t=3 m=64MiB p=4 (production defaults), one login per session"
        ),
    ]
    results: list[Result] = []
    servers = [s for s in ("sink", "postfix", "ours") if s in args.servers]
    run_tag = f"r{int(time.time())}"
    try:
        tls = write_tls(work / "tls")
        if "postfix" in servers:
            why = postfix_unavailable(install=not args.quick and not args.no_install)
            if why is not None:
                servers.remove("postfix")
                notes.append(f"Postfix: skipped: {why}")
        print(
            f"bench smtp: {', '.join(servers)}; sizes {', '.join(SIZES)};"
            f" work in {work}",
            flush=True,
        )
        for name in servers:
            results += _run_one(name, work, tls, party_list, counts, run_tag, args)
        running_notes = {
            "sink": "sink: aiosmtpd Sink, STARTTLS, no AUTH, stores nothing (the floor);"
            " it does not advertise PIPELINING but reads the group in order",
            "postfix": "postfix: STARTTLS (encrypt), no AUTH (no SASL without"
            " Dovecot/Cyrus), virtual(8) into one Maildir per recipient",
        }
        notes += [running_notes[s] for s in servers if s in running_notes]
        report(results, notes)
        if args.profile:
            _print_profile(work / "ours" / "relay.prof")
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _run_one(
    name: str,
    work: Path,
    tls: TlsFiles,
    party_list: Sequence[Party],
    counts: dict[str, int],
    run_tag: str,
    args: argparse.Namespace,
) -> list[Result]:
    where = work / name
    expected = len(party_list) + sum(counts.values())
    if name == "sink":
        with sink(where, tls) as running:
            return measure_server(
                running, tls, party_list, counts, run_tag, args.timeout
            )
    if name == "postfix":
        with postfix(where, tls, party_list) as running:
            results = measure_server(
                running, tls, party_list, counts, run_tag, args.timeout
            )
        stored = _in_maildirs(where / "maildirs", party_list)
        if stored != expected:
            raise BenchError(f"postfix: {stored} messages in Maildirs, {expected} sent")
        return results
    profile = where / "relay.prof" if args.profile else None
    with ours(
        where,
        tls,
        party_list,
        profile,
        cheap_logins=args.cheap_logins,
        processes=args.processes,
    ) as running:
        results = measure_server(
            running, tls, party_list, counts, run_tag, args.timeout
        )
    inbox, sent = _stored_messages(where / "relay.toml", party_list)
    if (inbox, sent) != (expected, expected):
        raise BenchError(
            f"ours: {inbox} INBOX and {sent} Sent copies stored, {expected} sent"
        )
    return results


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench smtp", description=__doc__.split("\n")[0]
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
        help=f"concurrent sessions (default {DEFAULT_SESSIONS}; --quick {QUICK_SESSIONS})",
    )
    p.add_argument(
        "--servers",
        default="sink,postfix,ours",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help="which servers, comma-separated (default sink,postfix,ours)",
    )
    p.add_argument("--no-postfix", action="store_true", help="skip Postfix")
    p.add_argument(
        "--no-install", action="store_true", help="never apt-get install postfix"
    )
    p.add_argument(
        "--profile", action="store_true", help="run ours under cProfile; print the top"
    )
    p.add_argument(
        "--processes",
        type=int,
        default=1,
        help="ours: [smtp] processes (SMTP acceptor processes on the same port)",
    )
    p.add_argument(
        "--cheap-logins",
        action="store_true",
        help="ours: argon2id t=1, m=1 MiB, p=1 instead of the production costs"
        " (diagnostic: shows what the logins cost)",
    )
    p.add_argument(
        "--timeout", type=float, default=600.0, help="seconds allowed per run"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny run for a smoke test; never installs Postfix",
    )
    p.add_argument("--workdir", type=Path, default=None, help="keep files here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["--child", "relay"]:
        rest = argv[2:]
        return child_relay(rest[0], rest[1] if len(rest) > 1 else None)
    args = parser().parse_args(argv)
    if args.no_postfix:
        args.servers = [s for s in args.servers if s != "postfix"]
    unknown = set(args.servers) - {"sink", "postfix", "ours"}
    if unknown:
        print(f"bench smtp: unknown servers {sorted(unknown)}", file=sys.stderr)
        return 2
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench smtp: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
