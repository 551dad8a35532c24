"""Conversation state between professionals and patients, kept by the relay.

Owns: ``<data_dir>/threads.sqlite3``. The policy (:mod:`relay.policy`) asks
it for :class:`~relay.policy.ThreadFacts` when a patient writes; the relay
records every message a professional sends to a patient, and every message a
patient sends, once it is accepted.

What must stay true:

- A thread is identified by the first message of it the relay saw; a message
  joins the thread of any message it names in ``In-Reply-To`` or
  ``References`` (RFC 5322 §3.6.4) that concerns the same patient.
- Message-IDs are stored only as keyed hashes (HMAC-SHA256): the table links
  messages without holding their identifiers.
- A closed thread stays closed (``X-MSS-MES: FIN`` or ``[FIN]``).
- For a professional's message, the addresses the patient may answer to are
  its ``Reply-To`` addresses when it has them, else its ``From``.
- Nothing here holds content: no subject, no body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from typing import TYPE_CHECKING, Final

from relay.policy import ThreadFacts, ThreadRef

if TYPE_CHECKING:
    from collections.abc import Iterable
    from pathlib import Path

THREADS_FILE_NAME: Final = "threads.sqlite3"

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS messages (
    ref TEXT NOT NULL,
    patient TEXT NOT NULL,
    thread TEXT NOT NULL,
    reply_addresses TEXT,
    at REAL NOT NULL,
    PRIMARY KEY (ref, patient)
);
CREATE INDEX IF NOT EXISTS messages_thread ON messages(thread);
CREATE TABLE IF NOT EXISTS closed_threads (thread TEXT PRIMARY KEY, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS wrote (
    patient TEXT NOT NULL,
    identity TEXT NOT NULL,
    at REAL NOT NULL,
    PRIMARY KEY (patient, identity)
);
"""


class ThreadStore:
    """Thread state; thread-safe, each recording is one transaction."""

    def __init__(self, path: Path, key: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.executescript(_SCHEMA)
        self._key = key
        self._lock = threading.Lock()

    @classmethod
    def open(cls, data_dir: Path, key: bytes) -> ThreadStore:
        return cls(data_dir / THREADS_FILE_NAME, key)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _ref(self, message_id: str) -> str:
        return hmac.new(
            self._key, message_id.strip().encode(), hashlib.sha256
        ).hexdigest()

    def _thread_of(self, patient: str, refs: Iterable[str]) -> str | None:
        for ref in refs:
            row = self._db.execute(
                "SELECT thread FROM messages WHERE ref = ? AND patient = ?",
                (ref, patient),
            ).fetchone()
            if row is not None:
                return str(row[0])
        return None

    def record(
        self,
        *,
        patient: str,
        message_id: str,
        references: Iterable[str],
        reply_addresses: Iterable[str] | None,
        author_identities: Iterable[str] = (),
        closes: bool = False,
    ) -> None:
        """Record a message between ``patient`` and a professional.

        ``reply_addresses`` is None for a patient's own message; for a
        professional's, the addresses the patient may answer to, and
        ``author_identities`` the identities that have now written to the
        patient.
        """
        ref = self._ref(message_id)
        refs = [self._ref(r) for r in references]
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                thread = self._thread_of(patient, refs) or ref
                addresses = (
                    json.dumps(sorted(set(reply_addresses)))
                    if reply_addresses is not None
                    else None
                )
                self._db.execute(
                    "INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?, ?)",
                    (ref, patient, thread, addresses, now),
                )
                self._db.executemany(
                    "INSERT OR REPLACE INTO wrote VALUES (?, ?, ?)",
                    [(patient, identity, now) for identity in set(author_identities)],
                )
                if closes:
                    self._db.execute(
                        "INSERT OR IGNORE INTO closed_threads VALUES (?, ?)",
                        (thread, now),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def facts(self, patient: str, references: Iterable[str]) -> ThreadFacts:
        """What the policy needs to judge a message from ``patient``."""
        refs = [self._ref(r) for r in references]
        with self._lock:
            threads: list[str] = []
            for ref in refs:
                row = self._db.execute(
                    "SELECT thread FROM messages WHERE ref = ? AND patient = ?",
                    (ref, patient),
                ).fetchone()
                if row is not None and row[0] not in threads:
                    threads.append(row[0])
            replied: list[ThreadRef] = []
            for thread in threads:
                addresses: set[str] = set()
                for (raw,) in self._db.execute(
                    "SELECT reply_addresses FROM messages"
                    " WHERE thread = ? AND patient = ? AND reply_addresses IS NOT NULL",
                    (thread, patient),
                ):
                    addresses.update(json.loads(raw))
                closed = (
                    self._db.execute(
                        "SELECT 1 FROM closed_threads WHERE thread = ?", (thread,)
                    ).fetchone()
                    is not None
                )
                replied.append(
                    ThreadRef(reply_addresses=frozenset(addresses), closed=closed)
                )
            wrote = frozenset(
                str(r[0])
                for r in self._db.execute(
                    "SELECT identity FROM wrote WHERE patient = ?", (patient,)
                )
            )
        return ThreadFacts(replied_to=tuple(replied), wrote_before=wrote)
