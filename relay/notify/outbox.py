"""The notice outbox: notices waiting to be sent, in SQLite, coalesced.

Owns: ``<data_dir>/notices.sqlite3`` (WAL). Table ``pending`` holds at most
one notice per (patient mailbox, kind): when it is due, how often it was
tried, which channels already took it. Table ``last_sent`` holds when each
patient was last told, for coalescing.

What must stay true:

- **Coalesced.** A patient gets at most one notice of a kind per
  ``min_interval``: a new message while one is pending adds nothing, and a
  new message soon after a notice makes one due ``min_interval`` after it
  (the way consumer services send "you have new messages").
- **No secret and no health data.** A row names a mailbox, a kind and
  times; the text is rebuilt from the kind when sent, and the contact
  address is looked up in the directory then. One-time codes are never
  queued here (:meth:`NoticeOutbox.enqueue` refuses their kinds): they are
  sent at once by the command that made them.
- **Never in the way of mail.** Writes use ``synchronous=NORMAL``: a commit
  is not fsynced (WAL), so queuing costs the delivery no sync. A crash may
  lose the last notices queued, never a message: the mail itself was made
  durable by the store before the notice is queued. A failure here is an
  :class:`relay.notify.errors.OutboxError`, which the delivery logs and
  ignores.
- Delivery threads and the event loop share one connection behind a lock;
  each call is one short transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from relay.contact import NoticeKind
from relay.notify.errors import OutboxError

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

OUTBOX_FILE_NAME: Final = "notices.sqlite3"
# Kinds that carry a one-time code: never stored.
SECRET_KINDS: Final = frozenset({NoticeKind.ACTIVATION_CODE, NoticeKind.RECOVERY_CODE})
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS pending (
    mailbox TEXT NOT NULL,
    kind TEXT NOT NULL,
    created_at REAL NOT NULL,
    due_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    done TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (mailbox, kind)
);
CREATE INDEX IF NOT EXISTS pending_due ON pending (due_at);
CREATE TABLE IF NOT EXISTS last_sent (
    mailbox TEXT NOT NULL,
    kind TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (mailbox, kind)
);
"""


@dataclass(frozen=True, slots=True)
class Pending:
    """One notice waiting: times are POSIX seconds."""

    mailbox: str
    kind: NoticeKind
    created_at: float
    due_at: float
    attempts: int
    done: frozenset[str]  # channels that already took it


class NoticeOutbox:
    """The durable queue of notices (see the module docstring)."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, data_dir: Path) -> NoticeOutbox:
        path = data_dir / OUTBOX_FILE_NAME
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox: cannot open {path}: {exc}") from exc
        return cls(db, path)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def enqueue(
        self,
        mailboxes: Iterable[str],
        kind: NoticeKind,
        *,
        now: float,
        min_interval: float,
    ) -> int:
        """Queue a notice for each mailbox unless one is pending; the number added.

        It is due now, or ``min_interval`` after the last one sent.
        """
        if kind in SECRET_KINDS:
            raise ValueError(f"{kind} notices carry a code and are never queued")
        rows = [
            (m, kind.value, now, now, m, kind.value, min_interval)
            for m in dict.fromkeys(mailboxes)
        ]
        with self._lock, self._translated():
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR IGNORE INTO pending (mailbox, kind, created_at, due_at)"
                " SELECT ?, ?, ?, MAX(?, COALESCE((SELECT at FROM last_sent"
                " WHERE mailbox = ? AND kind = ?) + ?, 0))",
                rows,
            )
            self._db.execute("COMMIT")
            return self._db.total_changes - before

    def due(self, now: float, *, limit: int = 100) -> list[Pending]:
        """The notices due at ``now``, the oldest due first."""
        with self._lock, self._translated():
            found = self._db.execute(
                "SELECT mailbox, kind, created_at, due_at, attempts, done FROM pending"
                " WHERE due_at <= ? ORDER BY due_at LIMIT ?",
                (now, limit),
            ).fetchall()
        return [
            Pending(
                mailbox=m,
                kind=NoticeKind(k),
                created_at=c,
                due_at=d,
                attempts=a,
                done=frozenset(filter(None, done.split(","))),
            )
            for m, k, c, d, a, done in found
        ]

    def next_due(self) -> float | None:
        """When the next notice is due (POSIX seconds), or None if none waits."""
        with self._lock, self._translated():
            (at,) = self._db.execute("SELECT MIN(due_at) FROM pending").fetchone()
        return float(at) if at is not None else None

    def pending(self, mailbox: str) -> list[Pending]:
        """The notices waiting for one mailbox (for tests and operators)."""
        return [
            p for p in self.due(float("inf"), limit=1_000_000) if p.mailbox == mailbox
        ]

    def sent(self, notice: Pending, *, now: float) -> None:
        """Done: remove it and remember when this patient was told."""
        with self._lock, self._translated():
            self._db.execute("BEGIN IMMEDIATE")
            self._remove(notice)
            self._db.execute(
                "INSERT INTO last_sent (mailbox, kind, at) VALUES (?, ?, ?)"
                " ON CONFLICT (mailbox, kind) DO UPDATE SET at = excluded.at",
                (notice.mailbox, notice.kind.value, now),
            )
            self._db.execute("COMMIT")

    def retry(self, notice: Pending, *, due_at: float, done: frozenset[str]) -> None:
        """Try again at ``due_at``, skipping the channels in ``done``."""
        with self._lock, self._translated():
            self._db.execute(
                "UPDATE pending SET due_at = ?, attempts = attempts + 1, done = ?"
                " WHERE mailbox = ? AND kind = ?",
                (due_at, ",".join(sorted(done)), notice.mailbox, notice.kind.value),
            )

    def drop(self, notice: Pending) -> None:
        """Give up on it (expired, refused for good, nobody to tell)."""
        with self._lock, self._translated():
            self._remove(notice)

    def _remove(self, notice: Pending) -> None:
        self._db.execute(
            "DELETE FROM pending WHERE mailbox = ? AND kind = ?",
            (notice.mailbox, notice.kind.value),
        )

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        """sqlite3 errors become :class:`OutboxError`; an open transaction is undone."""
        try:
            yield
        except sqlite3.Error as exc:
            if self._db.in_transaction:
                self._db.rollback()
            raise OutboxError(f"outbox: {exc}") from exc
