"""The outbound queue: messages for other operators until each recipient is done.

Owns: ``<data_dir>/outbound.sqlite3``. One row per message (its envelope,
the message sealed with AES-256-GCM under a key derived from the master
key, the queue id as associated data) and one row per remote recipient
with its state, attempts, next attempt time, last reply and lease.

The :class:`OutboundQueue` protocol is what delivery and the admin CLI use;
:class:`SqliteOutboundQueue` is the embedded backend. A PostgreSQL backend
would implement :meth:`claim` with ``SELECT … FOR UPDATE SKIP LOCKED``;
here a ``BEGIN IMMEDIATE`` transaction and a lease column do the same for
the processes sharing one file.

What must stay true:

- :meth:`enqueue` returns once the message is durable (WAL, ``synchronous
  = FULL``) and is idempotent on the queue id: the local delivery that
  calls it may replay a spool file after a crash.
- A claimed recipient is leased, not removed: a relay that dies while
  delivering leaves leases that expire, and the recipient is tried again
  (at least once; the receiving relay's own idempotence is out of reach).
- A recipient leaves the ``queued`` state only by delivery, bounce or an
  admin's delete; when no recipient of a message is queued, the message and
  its sealed content are removed.
- Nothing here is logged: addresses and reasons go to the audit trail.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from pathlib import Path

    from relay.queue.spool import Envelope, Recipient

OUTBOUND_FILE_NAME: Final = "outbound.sqlite3"
NONCE_SIZE: Final = 12
# Seconds a claimed recipient stays with its session: longer than a batch can
# take with RFC 5321's timeouts, so that no second session sends it meanwhile.
DEFAULT_LEASE: Final = 1800.0
# A claim stops adding messages past this many bytes (it holds them in memory).
CLAIM_BYTES: Final = 50 * 1024 * 1024

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    sender TEXT NOT NULL,
    envid TEXT,
    ret TEXT,
    body TEXT NOT NULL,
    smtputf8 INTEGER NOT NULL,
    message_ref TEXT NOT NULL,
    cid TEXT NOT NULL,
    received_at TEXT NOT NULL,
    queued_at REAL NOT NULL,
    size INTEGER NOT NULL,
    held INTEGER NOT NULL DEFAULT 0,
    sealed BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS recipients (
    message_id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    address TEXT NOT NULL,
    domain TEXT NOT NULL,
    notify TEXT NOT NULL,
    orcpt TEXT,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_reply TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0,
    delay_notified INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (message_id, address)
);
CREATE INDEX IF NOT EXISTS recipients_due ON recipients (state, next_attempt);
CREATE INDEX IF NOT EXISTS recipients_domain ON recipients (domain, state);
"""


class OutboundError(Exception):
    """The outbound queue cannot be read or written."""


class UnknownQueueIdError(OutboundError):
    """No message with this queue id is in the outbound queue."""


class State(enum.StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedMessage:
    """A message's envelope as the outbound queue holds it."""

    id: str
    sender: str
    envid: str | None
    ret: str | None
    body: str
    smtputf8: bool
    message_ref: str
    cid: str
    received_at: datetime
    queued_at: datetime
    size: int
    held: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedRecipient:
    message_id: str
    address: str
    domain: str
    notify: tuple[str, ...]
    orcpt: str | None
    state: State
    attempts: int
    next_attempt: datetime
    last_reply: str
    delay_notified: bool


@dataclass(frozen=True, slots=True)
class Claimed:
    """A message and the recipients of one destination leased for delivery."""

    message: QueuedMessage
    recipients: tuple[QueuedRecipient, ...]
    content: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """One attempt's result for one recipient."""

    message_id: str
    address: str
    state: State  # QUEUED: deferred, with next_attempt
    reply: str
    next_attempt: datetime | None = None
    delay_notified: bool = False  # a delay DSN went with this attempt

    def __post_init__(self) -> None:
        if self.state is State.QUEUED and self.next_attempt is None:
            raise ValueError("next_attempt: required for a deferral")


class OutboundQueue(Protocol):
    """The durable outbound queue (blocking calls: use a thread)."""

    def enqueue(
        self,
        envelope: Envelope,
        message: bytes,
        recipients: Sequence[Recipient],
        *,
        now: datetime,
    ) -> bool:
        """Queue ``message`` for ``recipients``; False if it was already queued."""
        ...

    def enqueue_many(
        self,
        items: Sequence[tuple[Envelope, bytes, Sequence[Recipient]]],
        *,
        now: datetime,
    ) -> list[bool]:
        """:meth:`enqueue` for several messages, in one transaction."""
        ...

    def due(self, now: datetime) -> dict[str, int]:
        """Destination domain → number of recipients that may be tried now."""
        ...

    def next_due(self) -> datetime | None:
        """The earliest next attempt of a queued, not held recipient."""
        ...

    def claim(
        self, domain: str, now: datetime, *, limit: int, lease: float = DEFAULT_LEASE
    ) -> list[Claimed]:
        """Lease up to ``limit`` messages' due recipients for ``domain``."""
        ...

    def record(self, outcomes: Sequence[Outcome]) -> None:
        """Attempts' outcomes, in one transaction."""
        ...

    def messages(self) -> list[tuple[QueuedMessage, list[QueuedRecipient]]]: ...

    def message(self, queue_id: str) -> tuple[QueuedMessage, list[QueuedRecipient]]: ...

    def hold(self, queue_id: str, *, held: bool = True) -> None: ...

    def retry(self, queue_id: str | None, now: datetime) -> int: ...

    def delete(self, queue_id: str) -> None: ...

    def close(self) -> None: ...


def _ts(value: datetime) -> float:
    return value.timestamp()


def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


class SqliteOutboundQueue:
    """:class:`OutboundQueue` in one SQLite file (WAL), shared by threads.

    Each thread has its own connection, so reads never wait for a write
    (WAL readers see the last commit); writes take one lock in turn rather
    than SQLite's sleeping busy handler.
    """

    def __init__(self, path: Path, key: bytes) -> None:
        self.path = path
        self._aead = AESGCM(key)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        try:
            db = self._conn()
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)
            # One relay process per data directory: leases left by a crash
            # belong to nobody now.
            db.execute("UPDATE recipients SET lease_until = 0")
        except sqlite3.Error as exc:
            raise OutboundError(f"{path}: {exc}") from exc
        path.chmod(0o600)

    def _conn(self) -> sqlite3.Connection:
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=30
            )
            # A queued message is acknowledged: every commit reaches the disk.
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
            with self._connections_lock:
                self._connections.append(db)
        return db

    @classmethod
    def open(cls, data_dir: Path, key: bytes) -> SqliteOutboundQueue:
        return cls(data_dir / OUTBOUND_FILE_NAME, key)

    def close(self) -> None:
        with self._connections_lock:
            for db in self._connections:
                db.close()
            self._connections.clear()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._write_lock:
            try:
                db = self._conn()
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise OutboundError(f"{self.path}: {exc}") from exc

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: the statements inside see one commit."""
        try:
            db = self._conn()
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise OutboundError(f"{self.path}: {exc}") from exc

    def _read(
        self, sql: str, params: Sequence[object] = ()
    ) -> list[tuple[object, ...]]:
        try:
            return list(self._conn().execute(sql, params))
        except sqlite3.Error as exc:
            raise OutboundError(f"{self.path}: {exc}") from exc

    # -- enqueue ------------------------------------------------------------

    def enqueue(
        self,
        envelope: Envelope,
        message: bytes,
        recipients: Sequence[Recipient],
        *,
        now: datetime,
    ) -> bool:
        [queued] = self.enqueue_many([(envelope, message, recipients)], now=now)
        return queued

    def enqueue_many(
        self,
        items: Sequence[tuple[Envelope, bytes, Sequence[Recipient]]],
        *,
        now: datetime,
    ) -> list[bool]:
        sealed: list[bytes] = []
        for envelope, message, _ in items:
            nonce = os.urandom(NONCE_SIZE)
            sealed.append(
                nonce + self._aead.encrypt(nonce, message, envelope.queue_id.encode())
            )
        out: list[bool] = []
        with self._tx() as db:
            for (envelope, message, recipients), blob in zip(
                items, sealed, strict=True
            ):
                out.append(self._insert(db, envelope, message, recipients, blob, now))
        return out

    @staticmethod
    def _insert(
        db: sqlite3.Connection,
        envelope: Envelope,
        message: bytes,
        recipients: Sequence[Recipient],
        sealed: bytes,
        now: datetime,
    ) -> bool:
        queue_id = envelope.queue_id
        if (
            not recipients
            or db.execute("SELECT 1 FROM messages WHERE id = ?", (queue_id,)).fetchone()
        ):
            return False
        db.execute(
            "INSERT INTO messages (id, sender, envid, ret, body, smtputf8,"
            " message_ref, cid, received_at, queued_at, size, sealed)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                queue_id,
                envelope.sender,
                envelope.envid,
                envelope.ret,
                envelope.body,
                int(envelope.smtputf8),
                envelope.message_ref,
                envelope.cid,
                envelope.received_at.isoformat(),
                _ts(now),
                len(message),
                sealed,
            ),
        )
        db.executemany(
            "INSERT INTO recipients (message_id, address, domain, notify, orcpt,"
            " state, next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    queue_id,
                    r.address,
                    domain_of(r.address),
                    ",".join(r.notify),
                    r.orcpt,
                    State.QUEUED.value,
                    _ts(now),
                )
                for r in recipients
            ],
        )
        return True

    # -- delivery -----------------------------------------------------------

    def due(self, now: datetime) -> dict[str, int]:
        rows = self._read(
            "SELECT r.domain, count(*) FROM recipients r JOIN messages m"
            " ON m.id = r.message_id WHERE r.state = ? AND r.next_attempt <= ?"
            " AND r.lease_until <= ? AND m.held = 0 GROUP BY r.domain",
            (State.QUEUED.value, _ts(now), _ts(now)),
        )
        return {str(domain): int(str(count)) for domain, count in rows}

    def next_due(self) -> datetime | None:
        rows = self._read(
            "SELECT min(max(r.next_attempt, r.lease_until)) FROM recipients r"
            " JOIN messages m ON m.id = r.message_id"
            " WHERE r.state = ? AND m.held = 0",
            (State.QUEUED.value,),
        )
        value = rows[0][0] if rows else None
        return _dt(float(str(value))) if value is not None else None

    def claim(
        self, domain: str, now: datetime, *, limit: int, lease: float = DEFAULT_LEASE
    ) -> list[Claimed]:
        until = _ts(now + timedelta(seconds=lease))
        with self._tx() as db:
            ids: list[str] = []
            total = 0
            for message_id, size in db.execute(
                "SELECT DISTINCT r.message_id, m.size FROM recipients r JOIN messages m"
                " ON m.id = r.message_id WHERE r.domain = ? AND r.state = ?"
                " AND r.next_attempt <= ? AND r.lease_until <= ? AND m.held = 0"
                " ORDER BY r.message_id LIMIT ?",
                (domain, State.QUEUED.value, _ts(now), _ts(now), limit),
            ):
                if ids and total + int(size) > CLAIM_BYTES:
                    break
                ids.append(str(message_id))
                total += int(size)
            claimed = []
            for message_id in ids:
                recipients = [
                    _recipient(row)
                    for row in db.execute(
                        f"SELECT {_RECIPIENT_COLUMNS} FROM recipients WHERE"  # noqa: S608 - constant column lists
                        " message_id = ? AND domain = ? AND state = ?"
                        " AND next_attempt <= ? AND lease_until <= ?"
                        " ORDER BY address",
                        (message_id, domain, State.QUEUED.value, _ts(now), _ts(now)),
                    )
                ]
                db.execute(
                    "UPDATE recipients SET lease_until = ? WHERE message_id = ?"
                    " AND domain = ? AND state = ? AND next_attempt <= ?"
                    " AND lease_until <= ?",
                    (until, message_id, domain, State.QUEUED.value, _ts(now), _ts(now)),
                )
                row = db.execute(
                    f"SELECT {_MESSAGE_COLUMNS}, sealed FROM messages WHERE id = ?",  # noqa: S608 - constant column lists
                    (message_id,),
                ).fetchone()
                message = _message(row[:-1])
                claimed.append(
                    Claimed(message, tuple(recipients), self._open(message_id, row[-1]))
                )
        return claimed

    def _open(self, queue_id: str, sealed: bytes) -> bytes:
        try:
            return self._aead.decrypt(
                sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], queue_id.encode()
            )
        except InvalidTag:
            raise OutboundError(
                f"queue id {queue_id}: message fails its integrity check"
            ) from None

    def record(self, outcomes: Sequence[Outcome]) -> None:
        with self._tx() as db:
            for o in outcomes:
                if o.state is State.QUEUED:
                    assert o.next_attempt is not None  # noqa: S101 - Outcome checks it
                    db.execute(
                        "UPDATE recipients SET attempts = attempts + 1,"
                        " next_attempt = ?, last_reply = ?, lease_until = 0,"
                        " delay_notified = max(delay_notified, ?)"
                        " WHERE message_id = ? AND address = ?",
                        (
                            _ts(o.next_attempt),
                            o.reply,
                            int(o.delay_notified),
                            o.message_id,
                            o.address,
                        ),
                    )
                    continue
                db.execute(
                    "UPDATE recipients SET state = ?, attempts = attempts + 1,"
                    " last_reply = ?, lease_until = 0"
                    " WHERE message_id = ? AND address = ?",
                    (o.state.value, o.reply, o.message_id, o.address),
                )
            for message_id in dict.fromkeys(o.message_id for o in outcomes):
                _drop_if_done(db, message_id)

    # -- admin ----------------------------------------------------------------

    def messages(self) -> list[tuple[QueuedMessage, list[QueuedRecipient]]]:
        with self._snapshot() as db:
            rows = list(
                db.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages ORDER BY id"  # noqa: S608 - constant column lists
                )
            )
            out = []
            for row in rows:
                message = _message(row)
                out.append((message, self._recipients_of(db, message.id)))
        return out

    @staticmethod
    def _recipients_of(db: sqlite3.Connection, queue_id: str) -> list[QueuedRecipient]:
        return [
            _recipient(row)
            for row in db.execute(
                f"SELECT {_RECIPIENT_COLUMNS} FROM recipients WHERE message_id = ?"  # noqa: S608 - constant column lists
                " ORDER BY address",
                (queue_id,),
            )
        ]

    def message(self, queue_id: str) -> tuple[QueuedMessage, list[QueuedRecipient]]:
        with self._snapshot() as db:
            row = db.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id = ?",  # noqa: S608 - constant column lists
                (queue_id,),
            ).fetchone()
            if row is None:
                raise UnknownQueueIdError(f"queue id {queue_id}: not queued")
            return _message(row), self._recipients_of(db, queue_id)

    def hold(self, queue_id: str, *, held: bool = True) -> None:
        with self._tx() as db:
            changed = db.execute(
                "UPDATE messages SET held = ? WHERE id = ?", (int(held), queue_id)
            ).rowcount
            if not changed:
                raise UnknownQueueIdError(f"queue id {queue_id}: not queued")

    def retry(self, queue_id: str | None, now: datetime) -> int:
        """Make queued recipients due now (all messages when ``queue_id`` is None)."""
        with self._tx() as db:
            if (
                queue_id is not None
                and not db.execute(
                    "SELECT 1 FROM messages WHERE id = ?", (queue_id,)
                ).fetchone()
            ):
                raise UnknownQueueIdError(f"queue id {queue_id}: not queued")
            sql = "UPDATE recipients SET next_attempt = ? WHERE state = ?"
            params: list[object] = [_ts(now), State.QUEUED.value]
            if queue_id is not None:
                sql += " AND message_id = ?"
                params.append(queue_id)
            return db.execute(sql, params).rowcount

    def delete(self, queue_id: str) -> None:
        with self._tx() as db:
            if not db.execute(
                "DELETE FROM messages WHERE id = ?", (queue_id,)
            ).rowcount:
                raise UnknownQueueIdError(f"queue id {queue_id}: not queued")


_MESSAGE_COLUMNS: Final = (
    "id, sender, envid, ret, body, smtputf8, message_ref, cid, received_at,"
    " queued_at, size, held"
)
_RECIPIENT_COLUMNS: Final = (
    "message_id, address, domain, notify, orcpt, state, attempts, next_attempt,"
    " last_reply, delay_notified"
)


def _message(row: Sequence[object]) -> QueuedMessage:
    return QueuedMessage(
        id=str(row[0]),
        sender=str(row[1]),
        envid=None if row[2] is None else str(row[2]),
        ret=None if row[3] is None else str(row[3]),
        body=str(row[4]),
        smtputf8=bool(row[5]),
        message_ref=str(row[6]),
        cid=str(row[7]),
        received_at=datetime.fromisoformat(str(row[8])),
        queued_at=_dt(float(str(row[9]))),
        size=int(str(row[10])),
        held=bool(row[11]),
    )


def _recipient(row: Sequence[object]) -> QueuedRecipient:
    notify = str(row[3])
    return QueuedRecipient(
        message_id=str(row[0]),
        address=str(row[1]),
        domain=str(row[2]),
        notify=tuple(notify.split(",")) if notify else (),
        orcpt=None if row[4] is None else str(row[4]),
        state=State(str(row[5])),
        attempts=int(str(row[6])),
        next_attempt=_dt(float(str(row[7]))),
        last_reply=str(row[8]),
        delay_notified=bool(row[9]),
    )


def _drop_if_done(db: sqlite3.Connection, message_id: str) -> None:
    if not db.execute(
        "SELECT 1 FROM recipients WHERE message_id = ? AND state = ?",
        (message_id, State.QUEUED.value),
    ).fetchone():
        db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
