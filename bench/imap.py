"""Benchmark of the relay's IMAP server against Dovecot.

Owns area ``imap`` of ``python -m bench``. In one invocation, one generator
(this module's asyncio IMAP client) drives two servers on loopback that hold
the same accounts, passwords and messages:

- **ours**: ``mssante serve`` as a subprocess with only the implicit-TLS IMAP
  listener (``[imap.implicit]``, port 0), a seeded sqlite directory, one
  account per user (argon2id with the production costs, or cheap ones with
  ``--cheap-logins``) and the messages delivered into the encrypted store
  with :meth:`relay.store.MailStore.deliver` before the relay starts;
- **Dovecot** (Debian ``dovecot-imapd``, installed with apt when missing and
  allowed): a private instance (``dovecot -F -c <work>/dovecot.conf``, its
  own ``base_dir`` and ``state_dir``) listening with implicit TLS on a
  loopback port with the same certificate, a ``passwd-file`` passdb holding
  the very argon2id hashes of our account store, an auth cache of the same
  lifetime as ours (15 minutes), and one Maildir per user written as files.

What is measured, each against both servers in turn, after a warm-up:

- logins/s: ``--clients`` concurrent clients, each looping connect, TLS
  handshake, ``LOGIN``, ``LOGOUT``;
- FETCH: one session, ``SELECT INBOX`` of 1,000 messages, ``UID FETCH 1:*
  (BODY.PEEK[HEADER])`` and ``UID FETCH 1:* (BODY.PEEK[])``, in messages/s
  (median of ``--rounds``);
- SEARCH: ``SEARCH SUBJECT``, ``SEARCH TEXT`` and ``SEARCH UNSEEN`` on that
  folder, in searches/s (median of ``--rounds``); both servers must find the
  same number of messages;
- memory per idle connection: ``--idle`` connections (2,000) logged in with
  INBOX selected, the server's resident memory before and after (ours: the
  relay process; Dovecot: its ``imap`` processes, and all its processes),
  divided by the count; then whether ``--hold`` connections (10,000) stay
  open and answer ``NOOP`` (ours always; Dovecot with ``--hold-ref``, since
  it forks one ``imap`` process per connection).

What must stay true: the generator is the same for both servers; every
server runs in its own processes, never in the generator's event loop;
nothing listens beyond 127.0.0.1; every server is stopped at the end, even on
error; the run is bounded (``--timeout`` per step). The output ends with one
``BENCH imap <metric> ours=<n> ref=<n> ratio=<ours/ref> unit=<unit>`` line per
figure, the reference being Dovecot.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import pwd
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar

from bench import generate
from bench.figures import Figure
from bench.smtp import (
    REPO,
    BenchError,
    TlsFiles,
    child_env,
    child_relay,
    free_port,
    package_unavailable,
    relay_port,
    stop,
    tail,
    write_tls,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator, Sequence

_T = TypeVar("_T")
HOST: Final = "127.0.0.1"
DOMAIN: Final = "medecin.mssante.fr"
PASSWORD: Final = "Bench-imap-pw-1!"  # noqa: S105 - a throwaway test account
WHEN: Final = datetime(2026, 11, 2, 8, 30, tzinfo=UTC)
DEFAULT_USERS: Final = 20
DEFAULT_MESSAGES: Final = 1000  # in the reader's INBOX
SMALL_INBOX: Final = 10  # every other user's INBOX
DEFAULT_SIZE: Final = 5 * 1024
DEFAULT_LOGINS: Final = 1000
DEFAULT_CLIENTS: Final = 20
DEFAULT_ROUNDS: Final = 3
DEFAULT_IDLE: Final = 2000
DEFAULT_HOLD: Final = 10_000
QUICK: Final = {
    "users": 3,
    "messages": 30,
    "logins": 12,
    "clients": 3,
    "rounds": 1,
    "idle": 20,
    "hold": 0,
}
LOGINS_PER_CLIENT_HASHED: Final = 10  # Dovecot with the production hashes
OPEN_CONCURRENCY: Final = 50  # connections opened at once (below the backlog of 100)
GOAL_RATIO: Final = 1.0  # issue 5: at least Dovecot's throughput
GOAL_IDLE_BYTES: Final = 80 * 1024  # issue 5: at most 80 KB per idle connection
START_TIMEOUT: Final = 60.0
SUBJECT_WORD: Final = "urgent"  # in one subject in 10
TEXT_WORD: Final = "glyquee"  # in one text part in 7
# argon2id costs of a cheap account (diagnostic), the same on both servers.
CHEAP_AUTH: Final = """
[auth]
argon2_time_cost = 1
argon2_memory_kib = 1024
argon2_parallelism = 1
"""


# --- users and messages -----------------------------------------------------------


def users(count: int) -> list[str]:
    """User 0 reads the big INBOX; the others log in and idle."""
    return [f"lecteur{k:02d}@{DOMAIN}" for k in range(count)]


def message(k: int, recipient: str, size: int) -> bytes:
    """Message ``k``: a practice-software-like report of about ``size`` bytes.

    One subject in 10 holds ``SUBJECT_WORD`` and one text part in 7 holds
    ``TEXT_WORD``, so that the SEARCH figures find something.
    """
    subject = f"Compte rendu {SUBJECT_WORD} {k}" if k % 10 == 0 else f"Compte rendu {k}"
    text = "Bonjour,\r\nveuillez trouver le compte rendu ci-joint.\r\n"
    if k % 7 == 0:
        text += f"Hemoglobine {TEXT_WORD} : 6,1 %.\r\n"
    boundary = "=_bench_boundary"
    head = (
        f"From: Cabinet Bench <cabinet@{DOMAIN}>\r\n"
        f"To: {recipient}\r\n"
        f"Subject: {subject}\r\n"
        "Date: Mon, 02 Nov 2026 09:30:00 +0100\r\n"
        f"Message-ID: <bench.{k}.{recipient}>\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"{text}\r\n"
        f"--{boundary}\r\n"
        'Content-Type: application/octet-stream; name="IHE_XDM.ZIP"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        'Content-Disposition: attachment; filename="IHE_XDM.ZIP"\r\n\r\n'
    ).encode()
    closing = f"\r\n--{boundary}--\r\n".encode()
    room = max(0, size - len(head) - len(closing))
    raw = random.Random(k).randbytes(room * 57 // 78)
    attachment = base64.encodebytes(raw).replace(b"\n", b"\r\n").rstrip(b"\r\n")
    return head + attachment + closing


def seen(k: int) -> bool:
    """Three messages in four are read (``\\Seen``): SEARCH UNSEEN finds a quarter."""
    return k % 4 != 0


@dataclass(frozen=True, slots=True)
class Corpus:
    """Who logs in and what each INBOX holds, identical for both servers."""

    users: tuple[str, ...]
    big: int  # messages in users[0]'s INBOX
    size: int

    def inbox(self, user_index: int) -> range:
        return range(self.big if user_index == 0 else SMALL_INBOX)


# --- the generator --------------------------------------------------------------


_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


@dataclass(slots=True)
class Response:
    """The responses to one command: untagged lines (literals inlined) and the tag's."""

    untagged: list[bytes] = field(default_factory=list)
    tagged: bytes = b""
    size: int = 0  # bytes read, literals included


class Client:
    """A minimal IMAP client on asyncio streams: one command at a time."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.reader = reader
        self.writer = writer
        self._tags = 0

    @classmethod
    async def connect(cls, port: int, ctx: ssl.SSLContext) -> Client:
        reader, writer = await asyncio.open_connection(
            HOST, port, ssl=ctx, server_hostname="localhost", limit=1 << 20
        )
        client = cls(reader, writer)
        greeting = await reader.readline()
        if not greeting.startswith(b"* OK"):
            writer.close()
            raise BenchError(f"greeting: {greeting!r}")
        return client

    async def command(self, text: str, *, keep: bool = True) -> Response:
        """Send ``text`` with a new tag; every response up to the tagged one.

        Raises BenchError unless the tagged response is OK.
        """
        self._tags += 1
        tag = b"b%d" % self._tags
        self.writer.write(tag + b" " + text.encode() + b"\r\n")
        out = Response()
        line = b""
        while True:
            part = await self.reader.readline()
            if not part:
                raise BenchError(f"{text}: connection closed")
            out.size += len(part)
            line += part
            # RFC 9051 §4.3: a literal {n} is followed by n bytes, then the
            # rest of the same response line.
            literal = _LITERAL.search(part)
            if literal is not None:
                n = int(literal.group(1))
                data = await self.reader.readexactly(n)
                out.size += n
                if keep:
                    line += data
                continue
            if line.startswith(tag + b" "):
                out.tagged = line
                break
            out.untagged.append(line if keep else line[:64])
            line = b""
        if not out.tagged.startswith(tag + b" OK"):
            raise BenchError(f"{text.split()[0]}: {out.tagged!r}")
        return out

    async def login(self, user: str) -> None:
        await self.command(f'LOGIN "{user}" "{PASSWORD}"')

    async def logout(self) -> None:
        await self.command("LOGOUT")
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()

    def tls(self) -> str:
        obj = self.writer.get_extra_info("ssl_object")
        if obj is None:
            return "no TLS"
        cipher = obj.cipher()
        return f"{obj.version()} {cipher[0] if cipher else '?'}"


def client_context(tls: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls.ca))


async def _login_loop(
    port: int, ctx: ssl.SSLContext, user: str, count: int, done: list[int]
) -> None:
    for _ in range(count):
        client = await Client.connect(port, ctx)
        try:
            await client.login(user)
            await client.logout()
        finally:
            await client.close()
        done[0] += 1


async def logins(
    port: int, ctx: ssl.SSLContext, corpus: Corpus, total: int, clients: int
) -> tuple[int, float, float]:
    """(logins done, seconds, generator CPU seconds) over ``clients`` at once."""
    done = [0]
    cpu, started = time.process_time(), time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for k in range(clients):
            share = total // clients + (1 if k < total % clients else 0)
            user = corpus.users[k % len(corpus.users)]
            group.create_task(_login_loop(port, ctx, user, share, done))
    return done[0], time.perf_counter() - started, time.process_time() - cpu


def _fetched(response: Response) -> int:
    return sum(1 for line in response.untagged if b" FETCH " in line[:20])


def _found(response: Response) -> int:
    for line in response.untagged:
        if line.startswith(b"* SEARCH"):
            return len(line.split()) - 2
    raise BenchError("SEARCH: no untagged SEARCH response")


@dataclass(frozen=True, slots=True)
class Timed:
    """One request timed over rounds: its median and what it returned."""

    name: str
    seconds: float  # median round
    count: int  # messages fetched or found
    size: int  # bytes read in one round
    first: float  # the warm-up round: the session's first read of the folder


async def _timed(
    name: str,
    rounds: int,
    run: Callable[[], Awaitable[Response]],
    count: Callable[[Response], int],
) -> Timed:
    # Warm-up: Dovecot builds its cache, ours its session's read cache.
    started = time.perf_counter()
    await run()
    first = time.perf_counter() - started
    times, counts, size = [], set(), 0
    for _ in range(rounds):
        started = time.perf_counter()
        response = await run()
        times.append(time.perf_counter() - started)
        counts.add(count(response))
        size = response.size
    if len(counts) != 1:
        raise BenchError(f"{name}: the rounds returned {sorted(counts)}")
    return Timed(name, statistics.median(times), counts.pop(), size, first)


FETCHES: Final = {
    "fetch_headers": "UID FETCH 1:* (BODY.PEEK[HEADER])",
    "fetch_bodies": "UID FETCH 1:* (BODY.PEEK[])",
}
SEARCHES: Final = {
    "search_subject": f"SEARCH SUBJECT {SUBJECT_WORD}",
    "search_text": f"SEARCH TEXT {TEXT_WORD}",
    "search_unseen": "SEARCH UNSEEN",
}


async def reads(
    port: int, ctx: ssl.SSLContext, corpus: Corpus, rounds: int
) -> tuple[list[Timed], str]:
    """FETCH and SEARCH timings on the big INBOX; the TLS in use."""
    client = await Client.connect(port, ctx)
    try:
        await client.login(corpus.users[0])
        selected = await client.command("SELECT INBOX")
        exists = [line for line in selected.untagged if line.endswith(b" EXISTS\r\n")]
        if exists != [b"* %d EXISTS\r\n" % corpus.big]:
            raise BenchError(f"SELECT INBOX: {exists!r}, expected {corpus.big}")
        results = []
        for name, text in FETCHES.items():

            def fetch(text: str = text) -> Awaitable[Response]:
                return client.command(text, keep=False)

            results.append(await _timed(name, rounds, fetch, _fetched))
        for name, text in SEARCHES.items():

            def search(text: str = text) -> Awaitable[Response]:
                return client.command(text)

            results.append(await _timed(name, rounds, search, _found))
        tls = client.tls()
        await client.logout()
    finally:
        await client.close()
    return results, tls


async def _open_idle(
    port: int, ctx: ssl.SSLContext, user: str, gate: asyncio.Semaphore
) -> Client:
    async with gate:
        client = await Client.connect(port, ctx)
        try:
            await client.login(user)
            await client.command("SELECT INBOX")
        except BaseException:
            await client.close()
            raise
        return client


async def open_idle(
    port: int, ctx: ssl.SSLContext, corpus: Corpus, count: int, into: list[Client]
) -> list[BaseException]:
    """``count`` more logged-in sessions with INBOX selected, appended to ``into``.

    Returns the errors of the sessions that could not be opened.
    """
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    idle_users = corpus.users[1:] or corpus.users
    start = len(into)
    opened = await asyncio.gather(
        *(
            _open_idle(port, ctx, idle_users[(start + k) % len(idle_users)], gate)
            for k in range(count)
        ),
        return_exceptions=True,
    )
    into.extend(c for c in opened if isinstance(c, Client))
    return [e for e in opened if isinstance(e, BaseException)]


async def noop_all(clients: Sequence[Client]) -> int:
    """How many sessions answer NOOP with OK."""
    gate = asyncio.Semaphore(500)

    async def one(client: Client) -> bool:
        async with gate:
            try:
                await client.command("NOOP")
            except (BenchError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
                return False
            return True

    return sum(await asyncio.gather(*(one(c) for c in clients)))


async def close_all(clients: Sequence[Client]) -> None:
    for client in clients:
        client.writer.close()
    await asyncio.sleep(0.5)
    clients_closing = [c.close() for c in clients]
    await asyncio.gather(*clients_closing, return_exceptions=True)


# --- memory -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Memory:
    """Resident memory of a server's processes, in bytes."""

    rss: int
    pss: int  # proportional share: shared pages divided among their users
    imap_rss: int  # Dovecot's imap processes only (ours: the relay)
    imap_pss: int
    processes: int


def _rollup(pid: int) -> tuple[int, int]:
    rss = pss = 0
    with contextlib.suppress(FileNotFoundError, ProcessLookupError, PermissionError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            stat = Path(f"/proc/{entry.name}/stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def memory(root: int) -> Memory:
    """``root`` and every process under it."""
    tree, todo, pids = _children(), [root], []
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += tree.get(pid, [])
    rss = pss = imap_rss = imap_pss = 0
    for pid in pids:
        r, p = _rollup(pid)
        rss, pss = rss + r, pss + p
        if len(pids) == 1 or _comm(pid) == "imap":
            imap_rss, imap_pss = imap_rss + r, imap_pss + p
    return Memory(rss, pss, imap_rss, imap_pss, len(pids))


# --- servers ----------------------------------------------------------------------


@dataclass(slots=True)
class Running:
    name: str
    port: int
    pid: int  # the process whose tree holds the server
    # Dovecot: switch its passdb to cheap argon2id hashes (None: not offered).
    cheapen_logins: Callable[[], None] | None = None


def _relay_toml(work: Path, tls: TlsFiles, *, cheap_logins: bool) -> Path:
    path = work / "relay.toml"
    path.write_text(
        f"""
[relay]
data_dir = "{work / "data"}"
domain = "mssante.example"
local_domains = ["{DOMAIN}"]

[tls]
cert_file = "{tls.cert}"
key_file = "{tls.key}"
trust_anchors_file = "{tls.ca}"

[smtp.submission]
enabled = false
[smtp.submissions]
enabled = false
[smtp.mx]
enabled = false

[imap]
timeout = 1800.0
[imap.plain]
enabled = false
[imap.implicit]
host = "{HOST}"
port = 0
"""
        + (CHEAP_AUTH if cheap_logins else ""),
        encoding="utf-8",
    )
    return path


async def _seed_directory(config_path: Path, corpus: Corpus) -> None:
    from directory.config import open_directory
    from directory.model import BalType, Mailbox, OwnerKind, Practitioner
    from relay.config import load

    cfg = load(config_path)
    directory = await open_directory(cfg.directory)
    try:
        for k, user in enumerate(corpus.users):
            national_id = "8" + generate.rpps_number(k + 1)
            await directory.add(
                Practitioner(national_id=national_id, last_name=f"LECTEUR{k}")
            )
            await directory.add(
                Mailbox(
                    address=user,
                    bal_type=BalType.PER,
                    owner_kind=OwnerKind.PRACTITIONER,
                    owner_id=national_id,
                )
            )
    finally:
        await directory.close()


def seed_ours(config_path: Path, corpus: Corpus) -> dict[str, str]:
    """Directory, accounts and stored messages; the argon2id hash of each user."""
    from relay.accounts import AccountKind, AccountStore
    from relay.app import STORE_DIR_NAME, load_master_key
    from relay.config import load
    from relay.store import MailStore

    asyncio.run(_seed_directory(config_path, corpus))
    cfg = load(config_path)
    master = load_master_key(cfg)
    hashes = {}
    accounts = AccountStore.for_config(cfg)
    try:
        for user in corpus.users:
            account = accounts.create(user, AccountKind.PRACTITIONER, PASSWORD, [user])
            hashes[user] = account.password_hash
    finally:
        accounts.close()
    store = MailStore.open(cfg.relay.data_dir / STORE_DIR_NAME, master)
    try:
        for u, user in enumerate(corpus.users):
            store.ensure_mailbox(user)
            for k in corpus.inbox(u):
                store.deliver(
                    user,
                    message(k, user, corpus.size),
                    delivery_key=f"bench.{u}.{k}",
                    internal_date=WHEN,
                    flags=("\\Seen",) if seen(k) else (),
                )
    finally:
        store.close()
    return hashes


@contextlib.contextmanager
def ours(work: Path, config: Path, profile: Path | None) -> Iterator[Running]:
    log = work / "relay.log"
    argv = [sys.executable, "-m", "bench.imap", "--child", "relay", str(config)]
    if profile is not None:
        argv.append(str(profile))
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO
        )
    try:
        port = relay_port(proc, log, "IMAP (implicit TLS)")
        started = time.monotonic()
        yield Running("ours", port, proc.pid)
        proc.send_signal(signal.SIGTERM)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        print(
            f"  ours: relay CPU {usage.ru_utime:.1f} s user + {usage.ru_stime:.1f} s"
            f" system over {time.monotonic() - started:.1f} s",
            flush=True,
        )
    finally:
        stop(proc)
    if proc.returncode != 0:
        raise BenchError(f"relay exited with {proc.returncode}: {tail(log)}")


DOVECOT_BIN: Final = Path("/usr/sbin/dovecot")


def dovecot_unavailable(*, install: bool) -> str | None:
    """Why Dovecot cannot run here, or None; installs it with apt when allowed."""
    return package_unavailable(DOVECOT_BIN, "dovecot-imapd", install=install)


DOVECOT_CONF: Final = """\
# A private Dovecot for python -m bench imap; nothing here is shared with
# the system's instance.
base_dir = {run}
state_dir = {state}
instance_name = bench-imap-{port}
protocols = imap
listen = {host}
log_path = {log}
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain
disable_plaintext_auth = yes
# The same lifetime as the relay's verified-login cache.
auth_cache_size = 10M
auth_cache_ttl = 15 mins
auth_cache_negative_ttl = 0
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={mail}/%u
}}
first_valid_uid = 1
mail_location = maildir:~/Maildir
default_process_limit = {processes}
default_client_limit = {clients}
default_vsz_limit = 1G
# Dovecot's "high-performance" login mode: a few login processes proxy the
# TLS of many connections (the default forks one per connection).
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = {host}
    port = {port}
    ssl = yes
  }}
  service_count = 0
  process_min_avail = 2
  client_limit = {clients}
}}
service imap {{
  process_limit = {processes}
}}
service auth {{
  client_limit = {clients}
}}
service anvil {{
  client_limit = {clients}
}}
service stats {{
  client_limit = {clients}
}}
protocol imap {{
  mail_max_userip_connections = {clients}
}}
"""


def _maildir_name(k: int) -> str:
    # Dovecot gives UIDs in the order of the names' leading timestamps.
    flags = "S" if seen(k) else ""
    return f"{1_700_000_000 + k}.M{k}P1.bench:2,{flags}"


def seed_dovecot(mail: Path, corpus: Corpus, owner: pwd.struct_passwd) -> None:
    """One Maildir per user, the same messages as ours, files in ``cur/``."""
    stamp = WHEN.timestamp()
    for u, user in enumerate(corpus.users):
        maildir = mail / user / "Maildir"
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)
        for k in corpus.inbox(u):
            path = maildir / "cur" / _maildir_name(k)
            path.write_bytes(message(k, user, corpus.size))
            os.utime(path, (stamp, stamp))  # the INTERNALDATE
    for directory, _, files in os.walk(mail):
        os.chown(directory, owner.pw_uid, owner.pw_gid)
        for name in files:
            os.chown(Path(directory) / name, owner.pw_uid, owner.pw_gid)


@contextlib.contextmanager
def dovecot(
    work: Path, tls: TlsFiles, corpus: Corpus, hashes: dict[str, str], connections: int
) -> Iterator[Running]:
    owner = pwd.getpwnam("nobody")
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    run, state, mail = work / "run", work / "state", work / "mail"
    for directory in (run, state, mail):
        directory.mkdir(exist_ok=True)
    mail.chmod(0o755)
    seed_dovecot(mail, corpus, owner)
    passwd = work / "passwd"
    auth_user = pwd.getpwnam("dovecot")  # the auth process reads the passdb

    def write_passwd(by_user: dict[str, str]) -> None:
        staged = passwd.with_suffix(".new")
        staged.write_text(
            "".join(f"{u}:{{ARGON2ID}}{by_user[u]}\n" for u in corpus.users),
            encoding="utf-8",
        )
        staged.chmod(0o600)
        os.chown(staged, auth_user.pw_uid, auth_user.pw_gid)
        staged.replace(passwd)  # Dovecot rereads a passwd-file that changed

    write_passwd(hashes)
    port = free_port()
    conf = work / "dovecot.conf"
    log = work / "dovecot.log"
    conf.write_text(
        DOVECOT_CONF.format(
            run=run,
            state=state,
            port=port,
            host=HOST,
            log=log,
            cert=tls.cert,
            key=tls.key,
            passwd=passwd,
            uid=owner.pw_uid,
            gid=owner.pw_gid,
            mail=mail,
            processes=connections + 100,
            clients=2 * connections + 1000,
        ),
        encoding="utf-8",
    )
    out = (work / "dovecot.out").open("wb")
    proc = subprocess.Popen(
        [str(DOVECOT_BIN), "-F", "-c", str(conf)],
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=work,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                raise BenchError(
                    f"dovecot exited with {proc.returncode}:"
                    f" {tail(work / 'dovecot.out')} {tail(log)}"
                )
            with contextlib.suppress(OSError):
                socket.create_connection((HOST, port), 1).close()
                break
            if time.monotonic() > deadline:
                raise BenchError(f"dovecot does not listen: {tail(log)}")
            time.sleep(0.05)

        def cheapen_logins() -> None:
            from argon2 import PasswordHasher

            cheap = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
            write_passwd({user: cheap.hash(PASSWORD) for user in corpus.users})
            # The auth cache holds the old hashes for 15 minutes.
            done = subprocess.run(
                ["doveadm", "-c", str(conf), "auth", "cache", "flush"],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                raise BenchError(f"doveadm auth cache flush: {done.stderr.strip()}")

        yield Running("dovecot", port, proc.pid, cheapen_logins)
    finally:
        stop(proc, 30)
        out.close()


# --- measurement ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Idle:
    count: int
    before: Memory
    after: Memory
    hold_tried: int  # 0: not tried
    hold_open: int  # sessions opened
    hold_answered: int  # sessions that answered NOOP
    hold_note: str = ""

    def per_connection(self, *, imap_only: bool = False, pss: bool = False) -> float:
        if imap_only:
            a, b = (
                (self.after.imap_pss, self.before.imap_pss)
                if pss
                else (self.after.imap_rss, self.before.imap_rss)
            )
        else:
            a, b = (
                (self.after.pss, self.before.pss)
                if pss
                else (self.after.rss, self.before.rss)
            )
        return (a - b) / self.count if self.count else 0.0


@dataclass(frozen=True, slots=True)
class Measured:
    server: str
    logins: int
    login_seconds: float
    login_generator_cpu: float
    cheap_login_rate: float | None  # Dovecot with cheap hashes
    reads: list[Timed]
    tls: str
    idle: Idle

    @property
    def login_rate(self) -> float:
        return self.logins / self.login_seconds if self.login_seconds else 0.0


async def _idle(
    running: Running,
    ctx: ssl.SSLContext,
    corpus: Corpus,
    count: int,
    hold: int,
    settle: float,
) -> Idle:
    clients: list[Client] = []
    try:
        before = memory(running.pid)
        failed = await open_idle(running.port, ctx, corpus, count, clients)
        if failed:
            raise BenchError(
                f"{running.name}: {len(failed)} of {count} idle sessions failed:"
                f" {failed[0]!r}"
            )
        await asyncio.sleep(settle)
        after = memory(running.pid)
        hold_open = hold_answered = 0
        note = ""
        if hold > count:
            failed = await open_idle(running.port, ctx, corpus, hold - count, clients)
            if failed:
                note = f"({len(failed)} failed to open, first: {failed[0]!r})"
            hold_open = len(clients)
            await asyncio.sleep(settle)
            hold_answered = await noop_all(clients)
        return Idle(count, before, after, hold, hold_open, hold_answered, note)
    finally:
        await close_all(clients)


def measure(
    running: Running, tls: TlsFiles, corpus: Corpus, args: argparse.Namespace
) -> Measured:
    ctx = client_context(tls)
    name = running.name

    async def bounded(what: str, awaitable: Awaitable[_T]) -> _T:
        try:
            return await asyncio.wait_for(awaitable, args.timeout)
        except TimeoutError as exc:
            raise BenchError(f"{name}: {what} took over {args.timeout:g} s") from exc

    async def all_steps() -> Measured:
        # Warm-up: one login per user (both servers then hold it in their cache).
        for user in corpus.users:
            client = await Client.connect(running.port, ctx)
            await client.login(user)
            await client.logout()
        # Dovecot verifies the argon2id hash at every login (its auth cache
        # keeps the hash, not the verdict): fewer logins keep the run short.
        count = args.logins
        if running.cheapen_logins is not None and not args.cheap_logins:
            count = min(count, LOGINS_PER_CLIENT_HASHED * args.clients)
        done, seconds, cpu = await bounded(
            "logins", logins(running.port, ctx, corpus, count, args.clients)
        )
        print(
            f"  {name:8} logins  {done} in {seconds:.2f} s ({done / seconds:.1f}/s;"
            f" generator CPU {cpu / seconds:.0%} of that)",
            flush=True,
        )
        cheap_rate = None
        if running.cheapen_logins is not None and not args.cheap_logins:
            running.cheapen_logins()
            cheap_done, cheap_seconds, cheap_cpu = await bounded(
                "logins (cheap hashes)",
                logins(running.port, ctx, corpus, args.logins, args.clients),
            )
            cheap_rate = cheap_done / cheap_seconds
            print(
                f"  {name:8} logins  {cheap_done} in {cheap_seconds:.2f} s"
                f" ({cheap_rate:.1f}/s) with argon2id t=1 m=1MiB p=1 hashes;"
                f" generator CPU {cheap_cpu / cheap_seconds:.0%} of that",
                flush=True,
            )
        timed, tls_used = await bounded(
            "reads", reads(running.port, ctx, corpus, args.rounds)
        )
        for t in timed:
            print(
                f"  {name:8} {t.name:15} {t.count} in {t.seconds * 1000:.1f} ms"
                f" (median of {args.rounds}; {t.size} bytes;"
                f" first round {t.first * 1000:.1f} ms)",
                flush=True,
            )
        hold = args.hold if (name == "ours" or args.hold_ref) else 0
        idle = await bounded(
            "idle connections",
            _idle(running, ctx, corpus, args.idle, hold, 0.1 if args.quick else 1.0),
        )
        per = idle.per_connection(imap_only=True)
        print(
            f"  {name:8} idle    {idle.count} sessions: {per / 1024:.1f} KB RSS each"
            f" ({idle.per_connection(imap_only=True, pss=True) / 1024:.1f} KB PSS;"
            f" all processes {idle.per_connection() / 1024:.1f} KB RSS,"
            f" {idle.after.processes} processes)",
            flush=True,
        )
        if idle.hold_tried:
            print(
                f"  {name:8} hold    {idle.hold_open} of {idle.hold_tried} open,"
                f" {idle.hold_answered} answered NOOP {idle.hold_note}",
                flush=True,
            )
        return Measured(name, done, seconds, cpu, cheap_rate, timed, tls_used, idle)

    return asyncio.run(all_steps())


# --- report --------------------------------------------------------------------------


def _figure(metric: str, ours: float, ref: float, unit: str) -> Figure:
    return Figure("imap", metric, ours, ref, unit)


def _rates(m: Measured) -> dict[str, tuple[float, str]]:
    out: dict[str, tuple[float, str]] = {"logins": (m.login_rate, "logins/s")}
    for t in m.reads:
        if t.name.startswith("fetch"):
            out[t.name] = (t.count / t.seconds, "msg/s")
        else:
            out[t.name] = (1 / t.seconds, "searches/s")
    # Proportional share: Dovecot's imap processes share their code pages.
    out["idle_memory_per_connection"] = (
        m.idle.per_connection(imap_only=True, pss=True) / 1024,
        "KB",
    )
    return out


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
        for r in rows
    )


def report(measured: list[Measured], notes: list[str]) -> list[Figure]:
    by = {m.server: m for m in measured}
    rates = {m.server: _rates(m) for m in measured}
    servers = [s for s in ("ours", "dovecot") if s in by]
    rows: list[tuple[str, ...]] = [
        ("metric", "unit", *servers, *(["ours/dovecot"] if len(servers) == 2 else []))
    ]
    metrics = list(rates[servers[0]])
    figures = []
    for metric in metrics:
        unit = rates[servers[0]][metric][1]
        values = [rates[s][metric][0] for s in servers]
        row = (metric, unit, *(f"{v:.1f}" for v in values))
        if len(servers) == 2:
            figure = _figure(metric, values[0], values[1], unit)
            figures.append(figure)
            row = (*row, f"{figure.ratio:.2f}x")
        rows.append(row)
    if len(servers) == 2 and (cheap := by["dovecot"].cheap_login_rate) is not None:
        figure = _figure(
            "logins_vs_cheap_ref", by["ours"].login_rate, cheap, "logins/s"
        )
        figures.insert(1, figure)
        rows.insert(
            2,
            (
                "logins (dovecot: cheap hashes)",
                "logins/s",
                f"{figure.ours:.1f}",
                f"{figure.ref:.1f}",
                f"{figure.ratio:.2f}x",
            ),
        )
    print(_table(rows))
    for m in measured:
        print(
            f"note: {m.server}: {m.tls}; idle: all processes"
            f" {m.idle.per_connection() / 1024:.1f} KB RSS,"
            f" {m.idle.per_connection(pss=True) / 1024:.1f} KB PSS per connection"
            f" ({m.idle.after.processes} processes with {m.idle.count} sessions)"
        )
        if m.idle.hold_tried:
            held = m.idle.hold_open == m.idle.hold_answered == m.idle.hold_tried
            print(
                f"note: {m.server}: {m.idle.hold_tried} sessions"
                f" {'hold' if held else 'do NOT hold'}: {m.idle.hold_open} open,"
                f" {m.idle.hold_answered} answered NOOP {m.idle.hold_note}".rstrip()
            )
    for note in notes:
        print(f"note: {note}")
    if "dovecot" in by and "ours" in by:
        found_ours = {t.name: t.count for t in by["ours"].reads}
        found_ref = {t.name: t.count for t in by["dovecot"].reads}
        if found_ours != found_ref:
            raise BenchError(
                f"the servers disagree: ours {found_ours}, dovecot {found_ref}"
            )
        throughput = [f for f in figures if f.unit != "KB"]
        worst = min(f.ratio for f in throughput)
        print(
            f"goal: >= {GOAL_RATIO:g}x Dovecot's throughput: {worst:.2f}x at worst"
            f" -> {'met' if worst >= GOAL_RATIO else 'NOT met'}"
        )
    if "ours" in by:
        per = by["ours"].idle.per_connection(imap_only=True, pss=True)
        print(
            f"goal: <= {GOAL_IDLE_BYTES // 1024} KB per idle connection:"
            f" {per / 1024:.1f} KB -> {'met' if per <= GOAL_IDLE_BYTES else 'NOT met'}"
        )
    for f in figures:
        print(f.line())
    return figures


def _print_profile(path: Path, top: int = 30) -> None:
    import pstats

    print(f"\nprofile of the relay's event-loop thread ({path}), by own time:")
    stats = pstats.Stats(str(path), stream=sys.stdout)
    stats.sort_stats(pstats.SortKey.TIME).print_stats(top)
    stats.sort_stats(pstats.SortKey.CUMULATIVE).print_stats(top)


# --- driver ----------------------------------------------------------------------------


def _raise_fd_limit(wanted: int) -> str | None:
    """Raise RLIMIT_NOFILE for this process and its servers; why not, or None."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return None
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return None
    return f"RLIMIT_NOFILE is {soft} (hard {hard}), {wanted} needed"


def _settings(args: argparse.Namespace) -> None:
    for name, default in (
        ("users", DEFAULT_USERS),
        ("messages", DEFAULT_MESSAGES),
        ("logins", DEFAULT_LOGINS),
        ("clients", DEFAULT_CLIENTS),
        ("rounds", DEFAULT_ROUNDS),
        ("idle", DEFAULT_IDLE),
        ("hold", DEFAULT_HOLD),
    ):
        if getattr(args, name) is None:
            setattr(args, name, QUICK[name] if args.quick else default)


def run(args: argparse.Namespace) -> int:
    _settings(args)
    corpus = Corpus(tuple(users(args.users)), args.messages, args.size)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-imap-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)  # Dovecot's mail processes (nobody) walk to their Maildirs
    notes = [
        f"{len(corpus.users)} users; INBOX of {corpus.big} messages of about"
        f" {corpus.size // 1024} KB (the others {SMALL_INBOX}); implicit TLS;"
        f" {args.clients} login clients; medians of {args.rounds} rounds",
        "argon2id "
        + (
            "t=1 m=1MiB p=1 (--cheap-logins)"
            if args.cheap_logins
            else "t=3 m=64MiB p=4 (production defaults)"
        )
        + ", the same hashes on both servers; both cache verified logins",
    ]
    servers = [s for s in ("ours", "dovecot") if s in args.servers]
    connections = max(args.idle, args.hold) + args.clients + 10
    why = _raise_fd_limit(connections + 1000)  # each process holds one end
    if why is not None and args.hold:
        notes.append(f"{args.hold} sessions not tried: {why}")
        args.hold = 0
    if "dovecot" in servers:
        why = dovecot_unavailable(install=not args.quick and not args.no_install)
        if why is not None:
            servers.remove("dovecot")
            notes.append(f"Dovecot: skipped: {why}")
    measured: list[Measured] = []
    try:
        tls = write_tls(work / "tls")
        print(f"bench imap: {', '.join(servers)}; work in {work}", flush=True)
        (work / "ours").mkdir(exist_ok=True)
        config = _relay_toml(work / "ours", tls, cheap_logins=args.cheap_logins)
        started = time.perf_counter()
        hashes = seed_ours(config, corpus)
        print(f"  seeded ours in {time.perf_counter() - started:.1f} s", flush=True)
        profile = work / "ours" / "relay.prof" if args.profile else None
        for name in servers:
            if name == "ours":
                with ours(work / "ours", config, profile) as running:
                    measured.append(measure(running, tls, corpus, args))
            else:
                hold = args.hold if args.hold_ref else 0
                with dovecot(
                    work / "dovecot", tls, corpus, hashes, max(args.idle, hold) + 100
                ) as running:
                    measured.append(measure(running, tls, corpus, args))
        if "dovecot" in servers and not args.hold_ref and args.hold:
            notes.append(
                f"Dovecot: {args.hold} sessions not tried (one imap process each;"
                " --hold-ref tries them)"
            )
        report(measured, notes)
        if args.profile:
            _print_profile(work / "ours" / "relay.prof")
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench imap", description=__doc__.split("\n")[0]
    )

    def count(name: str, default: int, what: str) -> None:
        p.add_argument(
            f"--{name}",
            type=int,
            default=None,
            help=f"{what} (default {default}; --quick {QUICK[name]})",
        )

    count("users", DEFAULT_USERS, "accounts")
    count("messages", DEFAULT_MESSAGES, "messages in the INBOX read by FETCH/SEARCH")
    count("logins", DEFAULT_LOGINS, "logins timed")
    count("clients", DEFAULT_CLIENTS, "concurrent login clients")
    count("rounds", DEFAULT_ROUNDS, "timed rounds per FETCH/SEARCH (median)")
    count("idle", DEFAULT_IDLE, "idle sessions for the memory figure")
    count("hold", DEFAULT_HOLD, "sessions that must hold (0: not tried)")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help="message bytes")
    p.add_argument(
        "--servers",
        default="ours,dovecot",
        type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
        help="which servers, comma-separated (default ours,dovecot)",
    )
    p.add_argument("--no-dovecot", action="store_true", help="skip Dovecot")
    p.add_argument(
        "--no-install", action="store_true", help="never apt-get install dovecot"
    )
    p.add_argument(
        "--hold-ref",
        action="store_true",
        help="try --hold sessions on Dovecot too (one imap process each)",
    )
    p.add_argument(
        "--cheap-logins",
        action="store_true",
        help="argon2id t=1, m=1 MiB, p=1 on both servers (diagnostic)",
    )
    p.add_argument(
        "--profile", action="store_true", help="run ours under cProfile; print the top"
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per step")
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny run for a smoke test; never installs Dovecot",
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
    if args.no_dovecot:
        args.servers = [s for s in args.servers if s != "dovecot"]
    unknown = set(args.servers) - {"ours", "dovecot"}
    if unknown or "ours" not in args.servers:
        print(
            "bench imap: servers must include ours, among {ours, dovecot}",
            file=sys.stderr,
        )
        return 2
    try:
        return run(args)
    except BenchError as exc:
        print(f"bench imap: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
