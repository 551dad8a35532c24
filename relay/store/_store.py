"""The mailbox store: every mailbox, folder and message of the relay.

Storage layout (``root`` is the data directory the caller gives)::

    root/.lock                    flock: one process has the store open
    root/index.sqlite3            the index (WAL, synchronous=FULL)
    root/segments/<16 hex>        the encrypted messages, appended in batches
                                  (:mod:`relay.store._segments`)
    root/messages/<n>/<hex id>    one encrypted file per message, as stores
                                  made before segments wrote them (read,
                                  never written); <n> the mailbox's number

Index tables:

- ``mailboxes``: number, locator (HMAC of the address), the address sealed
  under the master key, the data key wrapped under the master key;
- ``folders``: name (chosen by the user, plain), SPECIAL-USE role,
  UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, subscription;
- ``blobs``: one per stored message body: mailbox, size, where its record
  is (segment and offset; none for a file of an older store), the parsed
  structure (envelope, BODYSTRUCTURE, top-level header) sealed under the data
  key, and how many messages refer to it (COPY shares a record);
- ``messages``: (folder, UID) -> blob, flags, internal date, size, MODSEQ,
  \\Recent;
- ``deliveries``: HMAC of each delivery key -> where it landed (the spool
  replays after a crash; a replay stores nothing twice);
- ``meta``: the master key check value, the next UIDVALIDITY, the clean
  shutdown mark.

What must stay true:

- The store is the only code that reads or writes message records and the index.
- Encrypted at rest: message records and structures are AES-256-GCM under the
  mailbox's data key with associated data naming the mailbox number and the
  blob id, so a record moved to another mailbox or swapped with another fails
  to decrypt. Addresses and delivery keys are stored only as HMACs (plus the
  sealed address). Plain: numbers, flags, sizes, dates, folder names.
- Never an index row without its record: a batch appends its records to a
  segment it alone holds and syncs it once, and only then commits the rows
  that name them (:meth:`MailStore.deliver_batch`). Removing goes the other
  way: commit, then free the record (its range is deallocated, so the
  ciphertext leaves the disk). A crash leaves at most records no row names;
  :meth:`MailStore.open` cuts and frees them after an unclean shutdown.
- RFC 3501 §2.3.1.1: UIDs in a folder strictly ascend and are never reused
  (UIDNEXT only grows); a folder created, even under a deleted folder's name,
  gets a UIDVALIDITY never used before in this store.
- Every change to a message gives it the folder's next MODSEQ (RFC 7162 §3.1.1,
  ready for CONDSTORE).
- Thread-safe: one connection, one lock; file writes and encryption run
  outside the lock, so deliveries from several threads overlap their fsyncs.
  Change notifications are sent after the commit, in commit order, while the
  lock is held: callbacks must only hand the change over (for example with
  ``loop.call_soon_threadsafe``), never block.
"""

from __future__ import annotations

import contextlib
import fcntl
import hmac
import os
import secrets
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Final, NamedTuple

from relay.store._errors import (
    CorruptMessageError,
    FolderExistsError,
    FolderNotAllowedError,
    FolderNotFoundError,
    InvalidFlagError,
    MailboxNotFoundError,
    MasterKeyError,
    MessageNotFoundError,
    StoreError,
    StoreLockedError,
)
from relay.store._keys import NONCE_SIZE, TAG_SIZE
from relay.store._models import (
    AppendResult,
    Change,
    ChangeKind,
    CopyResult,
    Delivered,
    FlagMode,
    FolderInfo,
    MessageInfo,
    SpecialUse,
)
from relay.store._segments import RECORD_OVERHEAD, SEGMENTS_DIR, Reader, Segments
from relay.store._structure import ParsedStructure, parse_structure

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence
    from pathlib import Path

    from relay.store._keys import DataKey, KeyRing, MasterKey

__all__ = [
    "DEFAULT_FOLDERS",
    "HIERARCHY_DELIMITER",
    "MailStore",
    "NewDelivery",
    "canonical_address",
    "canonical_folder",
]

INDEX_FILENAME: Final = "index.sqlite3"
MESSAGES_DIR: Final = "messages"
HIERARCHY_DELIMITER: Final = "/"
# The folders every mailbox gets (RFC 6154 §2 roles).
DEFAULT_FOLDERS: Final = (
    ("INBOX", None),
    ("Sent", SpecialUse.SENT),
    ("Drafts", SpecialUse.DRAFTS),
    ("Trash", SpecialUse.TRASH),
    ("Archive", SpecialUse.ARCHIVE),
)
# Message file: magic and format version, then nonce || ciphertext || tag.
_MAGIC: Final = b"MSSTORE1"
_BLOB_ID_SIZE: Final = 16
# Index page cache (KiB) of one store.
_INDEX_CACHE_KIB: Final = 64 * 1024
# RFC 3501 §9: nz-number and uniqueid are 32-bit unsigned.
_MAX_UID: Final = 2**32 - 1
_MAX_FOLDER_NAME: Final = 255

# System flags as bits in messages.flags; RFC 3501 §2.3.2.
_FLAG_BITS: Final = {
    "\\seen": (1, "\\Seen"),
    "\\answered": (2, "\\Answered"),
    "\\flagged": (4, "\\Flagged"),
    "\\deleted": (8, "\\Deleted"),
    "\\draft": (16, "\\Draft"),
}
_SEEN: Final = 1
_DELETED: Final = 8
# RFC 3501 §9: atom-specials are ( ) { SP CTL % * " \ ]; a keyword is an atom.
_ATOM_SPECIALS: Final = frozenset('(){ %*"\\]')

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mailboxes (
    id INTEGER PRIMARY KEY,
    locator BLOB NOT NULL UNIQUE,
    address BLOB NOT NULL,
    data_key BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS folders (
    id INTEGER PRIMARY KEY,
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id),
    name TEXT NOT NULL,
    special_use TEXT,
    uidvalidity INTEGER NOT NULL,
    uidnext INTEGER NOT NULL,
    highest_modseq INTEGER NOT NULL,
    subscribed INTEGER NOT NULL,
    UNIQUE (mailbox_id, name)
);
CREATE TABLE IF NOT EXISTS blobs (
    id BLOB PRIMARY KEY,
    mailbox_id INTEGER NOT NULL,
    size INTEGER NOT NULL,
    structure BLOB NOT NULL,
    refs INTEGER NOT NULL,
    segment INTEGER,
    seg_offset INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    folder_id INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    blob_id BLOB NOT NULL,
    flags INTEGER NOT NULL,
    keywords TEXT NOT NULL,
    internal_date INTEGER NOT NULL,
    tz_offset INTEGER NOT NULL,
    size INTEGER NOT NULL,
    modseq INTEGER NOT NULL,
    recent INTEGER NOT NULL,
    PRIMARY KEY (folder_id, uid)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deliveries (
    tag BLOB PRIMARY KEY,
    mailbox_id INTEGER NOT NULL,
    folder TEXT NOT NULL,
    uidvalidity INTEGER NOT NULL,
    uid INTEGER NOT NULL,
    size INTEGER NOT NULL
) WITHOUT ROWID;
"""

_MSG_COLS: Final = (
    "uid, flags, keywords, internal_date, tz_offset, size, modseq, recent"
)
_MsgRow = tuple[int, int, str, int, int, int, int, int]
# Where a record is: (segment, offset, length).
_Loc = tuple[int, int, int]


@dataclass(frozen=True, slots=True)
class _Mailbox:
    id: int
    address: str
    key: DataKey
    directory: Path


class _BlobRow(NamedTuple):
    """A message's blob as the index has it; ``segment`` None: a file of an
    older store."""

    uid: int
    blob_id: bytes
    value: bytes | None
    size: int
    segment: int | None
    offset: int

    @classmethod
    def of(
        cls, row: tuple[int, bytes, bytes | None, int, int | None, int | None]
    ) -> _BlobRow:
        uid, blob_id, value, size, segment, offset = row
        return cls(
            uid,
            bytes(blob_id),
            None if value is None else bytes(value),
            size,
            segment,
            offset or 0,
        )


@dataclass(frozen=True, slots=True)
class _Folder:
    id: int
    name: str
    uidvalidity: int


@dataclass(frozen=True, slots=True, kw_only=True)
class NewDelivery:
    """One message for :meth:`MailStore.deliver_batch` (the arguments of
    :meth:`MailStore.deliver`)."""

    address: str
    message: bytes
    delivery_key: str
    internal_date: datetime
    folder: str | SpecialUse = "INBOX"
    flags: tuple[str, ...] = ()
    # ``parse_structure(message)`` when the caller has it already (the INBOX
    # and Sent copies of one message share one parse,
    # ParsedStructure.with_return_path); None: the store parses.
    structure: ParsedStructure | None = None


@dataclass(slots=True)
class _Job:
    """One insert waiting for a group commit."""

    apply: Callable[[sqlite3.Connection, _Tx], Delivered]
    result: Delivered | None = None
    error: StoreError | None = None
    done: bool = False
    committed: bool = False


@dataclass(slots=True)
class _Tx:
    changes: list[Change] = field(default_factory=list)
    # After the commit: files of an older store to remove, segment records
    # (segment, offset, length) to free, segments left without a record.
    unlink: list[Path] = field(default_factory=list)
    free: list[_Loc] = field(default_factory=list)
    drop: set[int] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class _SealedCopy:
    """One delivery of a batch, sealed, waiting for its place in a segment."""

    n: int  # its index in the batch
    mailbox: _Mailbox
    folder: str | SpecialUse
    blob_id: bytes
    size: int
    structure: bytes  # sealed
    record: bytes  # sealed: what goes into the segment
    row: tuple[int, str, int, int]  # flag bits, keyword text, date, zone
    tag: bytes


@dataclass(frozen=True, slots=True)
class SealedBatch:
    """A batch of deliveries made ready by :meth:`MailStore.seal_batch`: each
    one refused, found delivered before, or sealed under its mailbox's key.
    Opaque outside the store; :meth:`MailStore.store_sealed` stores it."""

    known: tuple[Delivered | StoreError | None, ...]
    copies: tuple[_SealedCopy, ...]


def canonical_address(address: str) -> str:
    """RFC 5321 §2.4: the local part is case-sensitive, the domain is not."""
    local, at, domain = (
        address.strip().removeprefix("<").removesuffix(">").rpartition("@")
    )
    return f"{local}@{domain.lower()}" if at else address.strip()


def canonical_folder(name: str) -> str:
    """Validate a folder name and return its stored form.

    RFC 3501 §5.1: ``INBOX`` is case-insensitive; a trailing delimiter (a
    client announcing a hierarchy, RFC 3501 §6.3.3) is dropped.

    Raises:
        FolderNotAllowedError: empty, too long, an empty level, or a control
            character.
    """
    n = name.removesuffix(HIERARCHY_DELIMITER)
    if not n or len(n) > _MAX_FOLDER_NAME:
        raise FolderNotAllowedError(name, "empty or longer than 255 characters")
    if any(ord(c) < 0x20 or c == "\x7f" for c in n) or "*" in n or "%" in n:
        raise FolderNotAllowedError(name, "control characters, * and % are not allowed")
    if "" in n.split(HIERARCHY_DELIMITER):
        raise FolderNotAllowedError(name, "empty hierarchy level")
    if n.upper() == "INBOX":
        return "INBOX"
    return n


def _parse_flags(flags: Iterable[str]) -> tuple[int, dict[str, str]]:
    bits = 0
    keywords: dict[str, str] = {}
    for flag in flags:
        low = flag.lower()
        if low.startswith("\\"):
            if low == "\\recent":
                # RFC 3501 §2.3.2: \Recent cannot be set or cleared by a client.
                raise InvalidFlagError(flag, "\\Recent is set by the server only")
            entry = _FLAG_BITS.get(low)
            if entry is None:
                raise InvalidFlagError(flag, "not a system flag")
            bits |= entry[0]
        else:
            if not flag or any(
                c in _ATOM_SPECIALS or ord(c) <= 0x20 or ord(c) >= 0x7F for c in flag
            ):
                raise InvalidFlagError(flag, "a keyword is an atom (RFC 3501 §9)")
            keywords.setdefault(low, flag)
    return bits, keywords


def _flag_set(bits: int, keywords: str) -> frozenset[str]:
    names = [name for bit, name in _FLAG_BITS.values() if bits & bit]
    if keywords:
        names.extend(keywords.split(" "))
    return frozenset(names)


def _keyword_text(keywords: dict[str, str]) -> str:
    return " ".join(sorted(keywords.values(), key=str.lower))


def _keyword_dict(text: str) -> dict[str, str]:
    return {k.lower(): k for k in text.split(" ")} if text else {}


def _date_parts(when: datetime) -> tuple[int, int]:
    offset = when.utcoffset()
    if offset is None:
        raise ValueError("internal_date must be timezone-aware")
    return int(when.timestamp()), int(offset.total_seconds()) // 60


def _info(row: _MsgRow) -> MessageInfo:
    uid, bits, keywords, ts, tz, size, modseq, recent = row
    return MessageInfo(
        uid=uid,
        flags=_flag_set(bits, keywords),
        internal_date=datetime.fromtimestamp(ts, timezone(timedelta(minutes=tz))),
        size=size,
        modseq=modseq,
        recent=bool(recent),
    )


def _aad(kind: bytes, mailbox_id: int, blob_id: bytes) -> bytes:
    return _MAGIC + kind + struct.pack(">Q", mailbox_id) + blob_id


def _read_file(path: str, size: int) -> bytes:
    """A file expected to hold ``size`` bytes, read in two or three system
    calls where ``Path.read_bytes`` makes five (FETCH reads a thousand files
    a command). Returns what is there: the caller checks the length.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # One byte more than expected tells a longer file at once.
        data = os.read(fd, size + 1)
        if 0 < len(data) < size:  # short read: rare on a regular file
            chunks = [data]
            while chunk := os.read(fd, size + 1):
                chunks.append(chunk)
            data = b"".join(chunks)
    finally:
        os.close(fd)
    return data


def _new_blob_id() -> bytes:
    """A blob id: the time in microseconds, then random bytes. Ids made one
    after another sort one after another, so a batch's index rows go to the
    last pages of the blobs table instead of random ones (fewer pages to
    write at each commit); the random half keeps them unique."""
    return time.time_ns().to_bytes(8, "big") + secrets.token_bytes(_BLOB_ID_SIZE - 8)


def _uid_list(uids: Iterable[int]) -> list[int]:
    return sorted({int(u) for u in uids})


class MailStore:
    """The relay's mailboxes: SQLite index + encrypted message files.

    Open with :meth:`open`; all methods are synchronous and thread-safe (the
    asyncio side calls them through ``asyncio.to_thread``). ``address`` is a
    mailbox address (domain compared case-insensitively); ``folder`` a folder
    name (``INBOX`` case-insensitive) or, where noted, a :class:`SpecialUse`.
    """

    def __init__(
        self,
        root: Path,
        db: sqlite3.Connection,
        keys: KeyRing,
        lock_fd: int,
        *,
        sanity_checks: bool,
    ) -> None:
        self._root = root
        self._messages_dir = root / MESSAGES_DIR
        self._db: sqlite3.Connection | None = db
        self._keys = keys
        self._lock_fd = lock_fd
        self._sanity = sanity_checks
        self._lock = threading.RLock()
        self._pending_lock = threading.Lock()
        self._pending: list[_Job] = []
        self._mailboxes: dict[str, _Mailbox] = {}
        self._subscribers: dict[int, tuple[Callable[[Change], None], str | None]] = {}
        self._next_subscriber = 0
        self._segments = Segments(root / SEGMENTS_DIR)

    # --- life cycle ---------------------------------------------------------

    @classmethod
    def open(
        cls, root: Path, master_key: MasterKey, *, sanity_checks: bool = False
    ) -> MailStore:
        """Open (creating if needed) the store in ``root``.

        After an unclean shutdown, removes orphan and temporary message files
        (a crash between a file write and its index commit). With
        ``sanity_checks``, also verifies that every indexed message has its
        file and that the index invariants hold, and re-checks after every
        change (tests turn this on).

        Raises:
            StoreLockedError: another process has this store open.
            MasterKeyError: ``master_key`` is not the key the store was made with.
            CorruptMessageError: (with ``sanity_checks``) an invariant is broken.
        """
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        (root / MESSAGES_DIR).mkdir(mode=0o700, exist_ok=True)
        lock_fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(lock_fd)
            raise StoreLockedError(root) from exc
        db: sqlite3.Connection | None = None
        try:
            db = cls._connect(root / INDEX_FILENAME)
            store = cls(
                root, db, master_key._keyring(), lock_fd, sanity_checks=sanity_checks
            )
            store._start()
        except BaseException:
            if db is not None:
                db.close()
            os.close(lock_fd)
            raise
        return store

    @staticmethod
    def _connect(path: Path) -> sqlite3.Connection:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        path.chmod(0o600)
        db.execute("PRAGMA journal_mode=WAL")
        # Durable on commit: WAL with synchronous=FULL fsyncs the log at every
        # commit, so an acknowledged delivery survives a power loss.
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA foreign_keys=ON")
        # The index's hot pages (each folder's last leaf, the delivery keys)
        # stay in memory: SQLite's default 2 MB cache made every batch read
        # back pages it had just written.
        db.execute(f"PRAGMA cache_size=-{_INDEX_CACHE_KIB}")
        db.executescript(_SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(blobs)")}
        if "segment" not in columns:  # a store made before segments
            db.execute("ALTER TABLE blobs ADD COLUMN segment INTEGER")
            db.execute("ALTER TABLE blobs ADD COLUMN seg_offset INTEGER")
        db.execute(
            "CREATE INDEX IF NOT EXISTS blobs_by_segment ON blobs (segment)"
            " WHERE segment IS NOT NULL"
        )
        return db

    def _start(self) -> None:
        db = self._conn()
        rows = dict(db.execute("SELECT name, value FROM meta").fetchall())
        check = rows.get("check")
        if check is None:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT INTO meta VALUES ('check', ?)", (self._keys.check_value,)
            )
            # RFC 3501 §2.3.1.1: UIDVALIDITY values start from the clock so
            # that a store rebuilt from scratch does not repeat old values.
            db.execute(
                "INSERT INTO meta VALUES ('uidvalidity', ?)",
                (max(1, int(time.time()) & 0x7FFFFFFF),),
            )
            db.execute("INSERT INTO meta VALUES ('clean', 1)")
            db.execute("COMMIT")
            rows["clean"] = 1
        elif not hmac.compare_digest(bytes(check), self._keys.check_value):
            raise MasterKeyError(
                f"{self._root}: the master key is not the one this store was created with"
            )
        if rows.get("clean") != 1:
            self._remove_orphans()
        self._remove_empty_segments()
        db.execute("UPDATE meta SET value = 0 WHERE name = 'clean'")
        if self._sanity:
            self._check_invariants(files=True)

    def close(self) -> None:
        """Mark a clean shutdown and release the store. Idempotent."""
        with self._lock:
            if self._db is None:
                return
            self._db.execute("UPDATE meta SET value = 1 WHERE name = 'clean'")
            self._db.close()
            self._db = None
            self._segments.close()
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)

    def __enter__(self) -> MailStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError("the mail store is closed")
        return self._db

    def _remove_orphans(self) -> None:
        """After a crash: cut and free segment records no index row names (a
        batch that never committed, a deletion committed but not freed), and
        delete files no row names (older stores)."""
        db = self._conn()
        live: dict[int, list[tuple[int, int]]] = {}
        for segment, offset, size in db.execute(
            "SELECT segment, seg_offset, size FROM blobs WHERE segment IS NOT NULL"
        ):
            live.setdefault(segment, []).append((offset, size + RECORD_OVERHEAD))
        for segment in self._segments.on_disk():
            if segment in live:
                self._segments.repair(segment, live[segment])
        known: dict[int, set[str]] = {}
        for mailbox_id, blob_id in db.execute("SELECT mailbox_id, id FROM blobs"):
            known.setdefault(mailbox_id, set()).add(bytes(blob_id).hex())
        mailbox_ids = {row[0] for row in db.execute("SELECT id FROM mailboxes")}
        for directory in self._messages_dir.iterdir():
            if not directory.name.isdigit() or int(directory.name) not in mailbox_ids:
                continue
            names = known.get(int(directory.name), set())
            for path in directory.iterdir():
                if path.name not in names:
                    path.unlink(missing_ok=True)

    def _remove_empty_segments(self) -> None:
        """Remove the segment files no index row names (every record freed)."""
        named = {
            row[0]
            for row in self._conn().execute(
                "SELECT DISTINCT segment FROM blobs WHERE segment IS NOT NULL"
            )
        }
        for segment in self._segments.on_disk():
            if segment not in named:
                self._segments.remove(segment)

    def _after_commit(self, tx: _Tx) -> None:
        """Free what a committed transaction let go (the store lock is held)."""
        for path in tx.unlink:
            path.unlink(missing_ok=True)
        if tx.free:
            self._segments.free(tx.free)
        for segment in tx.drop:
            self._segments.remove(segment)

    # --- transactions and notifications --------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[tuple[sqlite3.Connection, _Tx]]:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN IMMEDIATE")
            tx = _Tx()
            try:
                yield db, tx
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            self._after_commit(tx)
            if self._sanity:
                self._check_invariants(files=False)
            self._notify(tx.changes)

    def subscribe_changes(
        self, callback: Callable[[Change], None], *, address: str | None = None
    ) -> int:
        """Call ``callback`` with every committed :class:`Change` (of one mailbox
        when ``address`` is given). Returns a handle for :meth:`unsubscribe`.

        The callback runs in the thread that made the change, after the commit,
        with the store's lock held: it must not block or call the store.
        """
        with self._lock:
            self._next_subscriber += 1
            self._subscribers[self._next_subscriber] = (
                callback,
                None if address is None else canonical_address(address),
            )
            return self._next_subscriber

    def unsubscribe(self, handle: int) -> None:
        with self._lock:
            self._subscribers.pop(handle, None)

    def _notify(self, changes: list[Change]) -> None:
        if not changes or not self._subscribers:
            return
        for callback, address in list(self._subscribers.values()):
            for change in changes:
                if address is None or address == change.address:
                    callback(change)

    # --- mailboxes ------------------------------------------------------------

    def ensure_mailbox(self, address: str) -> None:
        """Create the mailbox of ``address`` with its default folders.

        Idempotent: an existing mailbox is left as it is (a default folder the
        user deleted is not recreated).
        """
        addr = canonical_address(address)
        if addr in self._mailboxes:
            # The relay calls this before every delivery: no transaction then.
            return
        locator = self._keys.locator("address", addr)
        with self._tx() as (db, tx):
            row = db.execute(
                "SELECT id FROM mailboxes WHERE locator = ?", (locator,)
            ).fetchone()
            if row is not None:
                return
            (mailbox_id,) = db.execute(
                "INSERT INTO mailboxes (locator, address, data_key) VALUES (?, ?, ?) RETURNING id",
                (
                    locator,
                    self._keys.seal_address(addr, locator),
                    self._keys.new_wrapped_data_key(locator),
                ),
            ).fetchone()
            for name, role in DEFAULT_FOLDERS:
                self._insert_folder(db, mailbox_id, name, role, subscribed=True)
                tx.changes.append(
                    Change(kind=ChangeKind.FOLDER_CREATED, address=addr, folder=name)
                )

    def has_mailbox(self, address: str) -> bool:
        try:
            self._mailbox(address)
        except MailboxNotFoundError:
            return False
        return True

    def mailboxes(self) -> list[str]:
        """Addresses of every mailbox (decrypted), sorted."""
        with self._lock:
            rows = (
                self._conn()
                .execute("SELECT locator, address FROM mailboxes")
                .fetchall()
            )
        return sorted(self._keys.open_address(bytes(a), bytes(loc)) for loc, a in rows)

    def _mailbox(self, address: str) -> _Mailbox:
        addr = canonical_address(address)
        mailbox = self._mailboxes.get(addr)
        if mailbox is not None:
            return mailbox
        locator = self._keys.locator("address", addr)
        with self._lock:
            row = (
                self._conn()
                .execute(
                    "SELECT id, data_key FROM mailboxes WHERE locator = ?", (locator,)
                )
                .fetchone()
            )
        if row is None:
            raise MailboxNotFoundError(addr)
        # Where an older store kept this mailbox's files (nothing is written
        # there any more).
        directory = self._messages_dir / str(row[0])
        mailbox = _Mailbox(
            row[0], addr, self._keys.data_key(bytes(row[1]), locator), directory
        )
        with self._lock:
            return self._mailboxes.setdefault(addr, mailbox)

    # --- folders --------------------------------------------------------------

    def _insert_folder(
        self,
        db: sqlite3.Connection,
        mailbox_id: int,
        name: str,
        role: SpecialUse | None,
        *,
        subscribed: bool,
    ) -> int:
        (uidvalidity,) = db.execute(
            "UPDATE meta SET value = value + 1 WHERE name = 'uidvalidity' RETURNING value - 1"
        ).fetchone()
        (folder_id,) = db.execute(
            "INSERT INTO folders (mailbox_id, name, special_use, uidvalidity, uidnext,"
            " highest_modseq, subscribed) VALUES (?, ?, ?, ?, 1, 1, ?) RETURNING id",
            (
                mailbox_id,
                name,
                None if role is None else role.value,
                uidvalidity,
                int(subscribed),
            ),
        ).fetchone()
        return int(folder_id)

    def _folder(
        self, db: sqlite3.Connection, mailbox: _Mailbox, folder: str | SpecialUse
    ) -> _Folder:
        if isinstance(folder, SpecialUse):
            row = db.execute(
                "SELECT id, name, uidvalidity FROM folders WHERE mailbox_id = ?"
                " AND special_use = ? ORDER BY id LIMIT 1",
                (mailbox.id, folder.value),
            ).fetchone()
        else:
            row = db.execute(
                "SELECT id, name, uidvalidity FROM folders WHERE mailbox_id = ? AND name = ?",
                (mailbox.id, canonical_folder(folder)),
            ).fetchone()
        if row is None:
            raise FolderNotFoundError(
                mailbox.address, str(getattr(folder, "value", folder))
            )
        return _Folder(*row)

    def folders(self, address: str) -> list[FolderInfo]:
        """Every folder of the mailbox, INBOX first, then by name."""
        mailbox = self._mailbox(address)
        with self._lock:
            db = self._conn()
            rows = db.execute(
                "SELECT id, name, special_use, uidvalidity, uidnext, subscribed, highest_modseq"
                " FROM folders WHERE mailbox_id = ?",
                (mailbox.id,),
            ).fetchall()
            counts = {
                r[0]: r[1:]
                for r in db.execute(
                    "SELECT m.folder_id, count(*), sum((m.flags & ?) = 0), sum(m.recent)"
                    " FROM messages m JOIN folders f ON f.id = m.folder_id"
                    " WHERE f.mailbox_id = ? GROUP BY m.folder_id",
                    (_SEEN, mailbox.id),
                )
            }
        out = []
        for folder_id, name, role, uidvalidity, uidnext, subscribed, modseq in rows:
            exists, unseen, recent = counts.get(folder_id, (0, 0, 0))
            out.append(
                FolderInfo(
                    name=name,
                    special_use=None if role is None else SpecialUse(role),
                    uidvalidity=uidvalidity,
                    uidnext=uidnext,
                    exists=exists,
                    unseen=unseen,
                    recent=recent,
                    subscribed=bool(subscribed),
                    highest_modseq=modseq,
                )
            )
        out.sort(key=lambda f: (f.name != "INBOX", f.name))
        return out

    def folder(self, address: str, folder: str | SpecialUse) -> FolderInfo:
        """One folder's :class:`FolderInfo` (SELECT, STATUS).

        Raises:
            MailboxNotFoundError, FolderNotFoundError.
        """
        mailbox = self._mailbox(address)
        with self._lock:
            name = self._folder(self._conn(), mailbox, folder).name
        for info in self.folders(address):
            if info.name == name:
                return info
        raise FolderNotFoundError(mailbox.address, name)

    def create_folder(
        self, address: str, folder: str, *, special_use: SpecialUse | None = None
    ) -> FolderInfo:
        """Create ``folder`` and any missing parent (RFC 3501 §6.3.3).

        Raises:
            FolderExistsError: the folder already exists.
            FolderNotAllowedError: a malformed name.
        """
        mailbox = self._mailbox(address)
        name = canonical_folder(folder)
        with self._tx() as (db, tx):
            self._create(db, tx, mailbox, name, special_use)
        return self.folder(address, name)

    def _create(
        self,
        db: sqlite3.Connection,
        tx: _Tx,
        mailbox: _Mailbox,
        name: str,
        role: SpecialUse | None,
    ) -> None:
        existing = {
            r[0]
            for r in db.execute(
                "SELECT name FROM folders WHERE mailbox_id = ?", (mailbox.id,)
            )
        }
        if name in existing:
            raise FolderExistsError(mailbox.address, name)
        levels = name.split(HIERARCHY_DELIMITER)
        for i in range(1, len(levels) + 1):
            path = HIERARCHY_DELIMITER.join(levels[:i])
            if path in existing:
                continue
            self._insert_folder(
                db, mailbox.id, path, role if path == name else None, subscribed=False
            )
            tx.changes.append(
                Change(
                    kind=ChangeKind.FOLDER_CREATED, address=mailbox.address, folder=path
                )
            )

    def rename_folder(self, address: str, folder: str, new_name: str) -> None:
        """Rename a folder and everything under it (RFC 3501 §6.3.5).

        Renaming INBOX moves its messages to a new folder and leaves INBOX
        empty. Folders keep their UIDVALIDITY and UIDs.

        Raises:
            FolderNotFoundError, FolderExistsError, FolderNotAllowedError (a
            folder renamed under itself).
        """
        mailbox = self._mailbox(address)
        old = canonical_folder(folder)
        new = canonical_folder(new_name)
        if new == old or new.startswith(old + HIERARCHY_DELIMITER):
            raise FolderNotAllowedError(
                new, "a folder cannot be renamed onto or under itself"
            )
        if new == "INBOX":
            raise FolderExistsError(mailbox.address, new)
        with self._tx() as (db, tx):
            src = self._folder(db, mailbox, old)
            taken = db.execute(
                "SELECT 1 FROM folders WHERE mailbox_id = ? AND name = ?",
                (mailbox.id, new),
            ).fetchone()
            if taken is not None:
                raise FolderExistsError(mailbox.address, new)
            if old == "INBOX":
                # RFC 3501 §6.3.5: renaming INBOX moves its messages to the new
                # name; INBOX itself stays (empty), its inferiors are not moved.
                self._create(db, tx, mailbox, new, None)
                dest = self._folder(db, mailbox, new)
                uids = [
                    r[0]
                    for r in db.execute(
                        "SELECT uid FROM messages WHERE folder_id = ?", (src.id,)
                    )
                ]
                if uids:
                    self._transfer(db, tx, mailbox, src, dest, uids, keep_source=False)
                return
            prefix = old + HIERARCHY_DELIMITER
            rows = db.execute(
                "SELECT id, name FROM folders WHERE mailbox_id = ? AND (name = ? OR substr(name, 1, ?) = ?)",
                (mailbox.id, old, len(prefix), prefix),
            ).fetchall()
            renamed = [(fid, new + name[len(old) :], name) for fid, name in rows]
            parent = new.rpartition(HIERARCHY_DELIMITER)[0]
            if parent:
                with contextlib.suppress(FolderExistsError):
                    self._create(db, tx, mailbox, parent, None)
            for fid, to_name, from_name in renamed:
                if db.execute(
                    "SELECT 1 FROM folders WHERE mailbox_id = ? AND name = ?",
                    (mailbox.id, to_name),
                ).fetchone():
                    raise FolderExistsError(mailbox.address, to_name)
                db.execute("UPDATE folders SET name = ? WHERE id = ?", (to_name, fid))
                tx.changes.append(
                    Change(
                        kind=ChangeKind.FOLDER_RENAMED,
                        address=mailbox.address,
                        folder=from_name,
                        new_folder=to_name,
                    )
                )

    def delete_folder(self, address: str, folder: str) -> None:
        """Delete a folder and its messages (RFC 3501 §6.3.4).

        Raises:
            FolderNotFoundError.
            FolderNotAllowedError: INBOX, or a folder that has sub-folders
                (delete those first; we do not keep \\Noselect placeholders).
        """
        mailbox = self._mailbox(address)
        name = canonical_folder(folder)
        if name == "INBOX":
            raise FolderNotAllowedError(name, "INBOX cannot be deleted")
        with self._tx() as (db, tx):
            target = self._folder(db, mailbox, name)
            prefix = name + HIERARCHY_DELIMITER
            child = db.execute(
                "SELECT 1 FROM folders WHERE mailbox_id = ? AND substr(name, 1, ?) = ? LIMIT 1",
                (mailbox.id, len(prefix), prefix),
            ).fetchone()
            if child is not None:
                raise FolderNotAllowedError(name, "it has sub-folders")
            uids = [
                r[0]
                for r in db.execute(
                    "SELECT uid FROM messages WHERE folder_id = ? ORDER BY uid",
                    (target.id,),
                )
            ]
            self._delete_messages(db, tx, mailbox, target, uids)
            db.execute("DELETE FROM folders WHERE id = ?", (target.id,))
            tx.changes.append(
                Change(
                    kind=ChangeKind.FOLDER_DELETED, address=mailbox.address, folder=name
                )
            )

    def subscribe(self, address: str, folder: str, *, subscribed: bool = True) -> None:
        """SUBSCRIBE / UNSUBSCRIBE (RFC 3501 §6.3.6, §6.3.7) an existing folder."""
        mailbox = self._mailbox(address)
        with self._tx() as (db, _tx):
            target = self._folder(db, mailbox, folder)
            db.execute(
                "UPDATE folders SET subscribed = ? WHERE id = ?",
                (int(subscribed), target.id),
            )

    # --- delivery -------------------------------------------------------------

    def deliver(
        self,
        address: str,
        message: bytes,
        *,
        delivery_key: str,
        internal_date: datetime,
        folder: str | SpecialUse = "INBOX",
        flags: Iterable[str] = (),
    ) -> Delivered:
        """Store ``message`` for ``address``, exactly once per ``delivery_key``.

        Durable on return: the encrypted file and its directory are fsynced and
        the index commit is on disk. A second call with the same
        ``delivery_key`` stores nothing and returns the first
        :class:`Delivered` with ``duplicate=True``; the spool relies on this
        to replay after a crash.

        Raises:
            MailboxNotFoundError, FolderNotFoundError, InvalidFlagError.
            ValueError: ``internal_date`` is naive (a bug in the caller).
        """
        mailbox = self._mailbox(address)
        tag = self._keys.locator("delivery", delivery_key)
        with self._lock:
            prior = self._prior_delivery(self._conn(), mailbox, tag)
        if prior is not None:
            return prior
        return self._store_new(mailbox, folder, message, internal_date, flags, tag)

    def has_delivered(self, delivery_key: str) -> bool:
        """Whether a delivery with this key has been committed."""
        tag = self._keys.locator("delivery", delivery_key)
        with self._lock:
            row = (
                self._conn()
                .execute("SELECT 1 FROM deliveries WHERE tag = ?", (tag,))
                .fetchone()
            )
        return row is not None

    def append(
        self,
        address: str,
        folder: str | SpecialUse,
        message: bytes,
        *,
        internal_date: datetime,
        flags: Iterable[str] = (),
    ) -> AppendResult:
        """IMAP APPEND (RFC 3501 §6.3.11); returns APPENDUID data (RFC 4315 §3)."""
        mailbox = self._mailbox(address)
        delivered = self._store_new(
            mailbox, folder, message, internal_date, flags, None
        )
        return AppendResult(
            folder=delivered.folder,
            uidvalidity=delivered.uidvalidity,
            uid=delivered.uid,
        )

    def _prior_delivery(
        self, db: sqlite3.Connection, mailbox: _Mailbox, tag: bytes
    ) -> Delivered | None:
        row = db.execute(
            "SELECT folder, uidvalidity, uid, size FROM deliveries WHERE tag = ?",
            (tag,),
        ).fetchone()
        if row is None:
            return None
        return Delivered(
            address=mailbox.address,
            folder=row[0],
            uidvalidity=row[1],
            uid=row[2],
            size=row[3],
            duplicate=True,
        )

    def _store_new(
        self,
        mailbox: _Mailbox,
        folder: str | SpecialUse,
        message: bytes,
        internal_date: datetime,
        flags: Iterable[str],
        tag: bytes | None,
    ) -> Delivered:
        if not isinstance(message, bytes):
            raise ValueError("a message is bytes")
        bits, keywords = _parse_flags(flags)
        ts, tz = _date_parts(internal_date)
        if not isinstance(folder, SpecialUse):
            folder = canonical_folder(folder)
        blob_id = _new_blob_id()
        structure = mailbox.key.seal(
            parse_structure(message).to_json(), _aad(b"structure", mailbox.id, blob_id)
        )
        record = mailbox.key.seal(message, _aad(b"message", mailbox.id, blob_id))
        active = self._segments.acquire()
        start = active.size
        job = _Job(
            self._insert(
                mailbox,
                folder,
                blob_id,
                len(message),
                structure,
                (bits, _keyword_text(keywords), ts, tz),
                tag,
                (active.id, start, len(record)),
            )
        )
        try:
            self._segments.append(active, [record])
            self._segments.sync(active)
            return self._commit_grouped(job)
        finally:
            self._segments.release(active, rewind_to=None if job.committed else start)

    def _insert(
        self,
        mailbox: _Mailbox,
        folder: str | SpecialUse,
        blob_id: bytes,
        size: int,
        structure: bytes,
        row: tuple[int, str, int, int],
        tag: bytes | None,
        loc: _Loc,
    ) -> Callable[[sqlite3.Connection, _Tx], Delivered]:
        """The index insert of a new message whose record is durable at
        ``loc``; ``row`` is (flag bits, keyword text, internal date, zone
        offset)."""
        bits, kw, ts, tz = row

        def insert(db: sqlite3.Connection, tx: _Tx) -> Delivered:
            if tag is not None:
                prior = self._prior_delivery(db, mailbox, tag)
                if prior is not None:
                    # A concurrent delivery with the same key won the race.
                    tx.free.append(loc)
                    return prior
            target = self._folder(db, mailbox, folder)
            uid, modseq = self._next_uid(db, target)
            db.execute(
                "INSERT INTO blobs (id, mailbox_id, size, structure, refs, segment,"
                " seg_offset) VALUES (?, ?, ?, ?, 1, ?, ?)",
                (blob_id, mailbox.id, size, structure, loc[0], loc[1]),
            )
            db.execute(
                f"INSERT INTO messages (folder_id, blob_id, {_MSG_COLS})"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                (target.id, blob_id, uid, bits, kw, ts, tz, size, modseq),
            )
            if tag is not None:
                db.execute(
                    "INSERT INTO deliveries VALUES (?, ?, ?, ?, ?, ?)",
                    (tag, mailbox.id, target.name, target.uidvalidity, uid, size),
                )
            tx.changes.append(
                Change(
                    kind=ChangeKind.EXISTS,
                    address=mailbox.address,
                    folder=target.name,
                    uids=(uid,),
                    modseq=modseq,
                )
            )
            return Delivered(
                address=mailbox.address,
                folder=target.name,
                uidvalidity=target.uidvalidity,
                uid=uid,
                size=size,
            )

        return insert

    def deliver_batch(
        self, deliveries: Sequence[NewDelivery], *, fresh: bool = False
    ) -> list[Delivered | StoreError]:
        """Store several messages, each exactly once per delivery key, with one
        append, one sync and one index commit for all of them.

        The records are appended to one segment, the segment is synced once,
        and only then are their rows committed, in one transaction: never a
        row without its durable record. Durable on return, like
        :meth:`deliver`. Returns one result per delivery, in order: a
        :class:`Delivered` (``duplicate=True`` for a key seen before, also
        within the batch), or the :class:`StoreError` that refused that one
        (unknown mailbox or folder, bad flag); the others are stored all the
        same.

        ``fresh``: the delivery keys were made just now (a message stored
        before its ``250``, never spooled): no early look for a prior
        delivery, which waits for the index lock behind another batch's
        commit. Always safe: the commit itself still checks every key (a
        duplicate then only costs its record, freed at once).

        Raises:
            OSError, sqlite3.Error: a host fault; nothing of the batch is stored.
        """
        return self.store_sealed(self.seal_batch(deliveries, fresh=fresh))

    def seal_batch(
        self, deliveries: Sequence[NewDelivery], *, fresh: bool = False
    ) -> SealedBatch:
        """The first half of :meth:`deliver_batch`: each delivery's structure
        parsed (unless given) and its message and structure sealed, nothing
        written. CPU work only when ``fresh`` and the mailboxes are known to
        this store (the relay seals on its event loop, then stores in a
        thread: the sealing does not compete for the GIL with the loop).

        Raises:
            OSError, sqlite3.Error: a host fault looking up a mailbox or a
                prior delivery.
        """
        known: list[Delivered | StoreError | None] = [None] * len(deliveries)
        copies: list[_SealedCopy] = []
        for n, d in enumerate(deliveries):
            if not isinstance(d.message, bytes):
                raise ValueError("a message is bytes")
            try:
                mailbox = self._mailbox(d.address)
                bits, keywords = _parse_flags(d.flags)
            except StoreError as exc:
                known[n] = exc
                continue
            tag = self._keys.locator("delivery", d.delivery_key)
            if not fresh:
                with self._lock:
                    prior = self._prior_delivery(self._conn(), mailbox, tag)
                if prior is not None:
                    known[n] = prior
                    continue
            ts, tz = _date_parts(d.internal_date)
            folder = d.folder
            if not isinstance(folder, SpecialUse):
                folder = canonical_folder(folder)
            blob_id = _new_blob_id()
            parsed = d.structure
            if parsed is None:
                parsed = parse_structure(d.message)
            elif self._sanity and parsed != parse_structure(d.message):
                raise ValueError("a delivery's structure is not its message's")
            copies.append(
                _SealedCopy(
                    n=n,
                    mailbox=mailbox,
                    folder=folder,
                    blob_id=blob_id,
                    size=len(d.message),
                    structure=mailbox.key.seal(
                        parsed.to_json(), _aad(b"structure", mailbox.id, blob_id)
                    ),
                    record=mailbox.key.seal(
                        d.message, _aad(b"message", mailbox.id, blob_id)
                    ),
                    row=(bits, _keyword_text(keywords), ts, tz),
                    tag=tag,
                )
            )
        return SealedBatch(tuple(known), tuple(copies))

    def store_sealed(self, batch: SealedBatch) -> list[Delivered | StoreError]:
        """The second half of :meth:`deliver_batch` (blocking): the sealed
        records appended to one segment and synced, then their rows committed
        in one transaction. Returns one result per delivery of the batch.

        Raises:
            OSError, sqlite3.Error: a host fault; nothing of the batch is stored.
        """
        results = list(batch.known)
        jobs: list[tuple[int, _Job, _Loc]] = []
        active = self._segments.acquire()
        begin = at = active.size
        try:
            for c in batch.copies:
                loc = (active.id, at, len(c.record))
                at += len(c.record)
                insert = self._insert(
                    c.mailbox,
                    c.folder,
                    c.blob_id,
                    c.size,
                    c.structure,
                    c.row,
                    c.tag,
                    loc,
                )
                jobs.append((c.n, _Job(insert), loc))
            if jobs:
                self._segments.append(active, [c.record for c in batch.copies])
                self._segments.sync(active)
                self._commit_jobs([job for _, job, _ in jobs])
        finally:
            lost = [loc for _, job, loc in jobs if not job.committed]
            if lost and len(lost) == len(jobs):
                self._segments.release(active, rewind_to=begin)
            else:
                try:
                    self._segments.free(lost)
                finally:
                    self._segments.release(active)
        for n, job, _ in jobs:
            results[n] = job.error if job.error is not None else job.result
        out: list[Delivered | StoreError] = []
        for result in results:
            if result is None:  # pragma: no cover (every job is done or raised)
                raise StoreError("delivery lost its result")
            out.append(result)
        return out

    def _commit_grouped(self, job: _Job) -> Delivered:
        """Commit ``job`` together with every insert queued meanwhile.

        Group commit: a thread that gets the lock commits all queued inserts
        in one transaction (one WAL fsync); the threads whose inserts it took
        find theirs done when they get the lock. Each insert runs under its
        own savepoint, so a refused one (unknown folder) does not undo the
        others.
        """
        self._commit_jobs([job])
        if job.error is not None:
            raise job.error
        if job.result is None:  # pragma: no cover (done implies result or error)
            raise StoreError("delivery lost its result")
        return job.result

    def _commit_jobs(self, jobs: list[_Job]) -> None:
        with self._pending_lock:
            self._pending.extend(jobs)
        with self._lock:
            if not all(j.done for j in jobs):
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._run_batch(batch)

    def _run_batch(self, batch: list[_Job]) -> None:
        db = self._conn()
        tx = _Tx()
        try:
            db.execute("BEGIN IMMEDIATE")
            for j in batch:
                db.execute("SAVEPOINT job")
                try:
                    j.result = j.apply(db, tx)
                except StoreError as exc:
                    db.execute("ROLLBACK TO job")
                    j.error = exc
                db.execute("RELEASE job")
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            for j in batch:
                j.done = True
                if j.error is None:
                    j.result = None
                    j.error = StoreError(f"the index commit failed: {exc}")
                    j.error.__cause__ = exc
            raise
        for j in batch:
            j.done = True
            j.committed = j.error is None
        self._after_commit(tx)
        if self._sanity:
            self._check_invariants(files=False)
        self._notify(tx.changes)

    def _next_uid(
        self, db: sqlite3.Connection, folder: _Folder, count: int = 1
    ) -> tuple[int, int]:
        """Reserve ``count`` UIDs and one MODSEQ; returns (first UID, MODSEQ)."""
        uid, modseq = db.execute(
            "UPDATE folders SET uidnext = uidnext + ?, highest_modseq = highest_modseq + 1"
            " WHERE id = ? RETURNING uidnext - ?, highest_modseq",
            (count, folder.id, count),
        ).fetchone()
        if uid + count - 1 > _MAX_UID:
            raise StoreError(
                f"folder {folder.name!r}: UIDs exhausted (RFC 3501 §2.3.1.1)"
            )
        return int(uid), int(modseq)

    def _bump_modseq(self, db: sqlite3.Connection, folder_id: int) -> int:
        (modseq,) = db.execute(
            "UPDATE folders SET highest_modseq = highest_modseq + 1 WHERE id = ?"
            " RETURNING highest_modseq",
            (folder_id,),
        ).fetchone()
        return int(modseq)

    # --- reading --------------------------------------------------------------

    def messages(self, address: str, folder: str | SpecialUse) -> list[MessageInfo]:
        """Metadata of every message in the folder, by ascending UID."""
        mailbox = self._mailbox(address)
        with self._lock:
            db = self._conn()
            target = self._folder(db, mailbox, folder)
            rows = db.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE folder_id = ? ORDER BY uid",  # noqa: S608
                (target.id,),
            ).fetchall()
        return [_info(r) for r in rows]

    def message(self, address: str, folder: str | SpecialUse, uid: int) -> MessageInfo:
        """Metadata of one message.

        Raises:
            MessageNotFoundError: no such UID in the folder.
        """
        mailbox = self._mailbox(address)
        with self._lock:
            db = self._conn()
            target = self._folder(db, mailbox, folder)
            row = db.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE folder_id = ? AND uid = ?",  # noqa: S608
                (target.id, uid),
            ).fetchone()
        if row is None:
            raise MessageNotFoundError(target.name, uid)
        return _info(row)

    def _blob_row(
        self, mailbox: _Mailbox, folder: str | SpecialUse, uid: int, column: str
    ) -> _BlobRow:
        with self._lock:
            db = self._conn()
            target = self._folder(db, mailbox, folder)
            row = db.execute(
                f"SELECT m.uid, b.id, {column}, b.size, b.segment, b.seg_offset"  # noqa: S608
                " FROM messages m JOIN blobs b ON b.id = m.blob_id"
                " WHERE m.folder_id = ? AND m.uid = ?",
                (target.id, uid),
            ).fetchone()
        if row is None:
            raise MessageNotFoundError(target.name, uid)
        return _BlobRow.of(row)

    def _open_record(self, mailbox: _Mailbox, row: _BlobRow, reader: Reader) -> bytes:
        """Read and decrypt one message record (segment, or file of an older
        store).

        Raises:
            FileNotFoundError: its segment or file is gone.
            CorruptMessageError: truncated, tampered with, or not this
                message's (another mailbox's, another message's).
        """
        what = f"message {mailbox.id}/{row.blob_id.hex()}"
        expected = NONCE_SIZE + row.size + TAG_SIZE
        if row.segment is None:
            data = _read_file(
                os.path.join(mailbox.directory, row.blob_id.hex()),  # noqa: PTH118 - hot path
                len(_MAGIC) + expected,
            )
            if not data.startswith(_MAGIC):
                raise CorruptMessageError(what, "not a store message file")
            sealed = memoryview(data)[len(_MAGIC) :]
        else:
            sealed = memoryview(reader.read(row.segment, row.offset, expected))
        if len(sealed) < expected:
            raise CorruptMessageError(what, "truncated")
        if len(sealed) > expected:
            raise CorruptMessageError(what, "not a store message file of its size")
        return mailbox.key.unseal(
            sealed, _aad(b"message", mailbox.id, row.blob_id), what
        )

    def fetch(self, address: str, folder: str | SpecialUse, uid: int) -> bytes:
        """The message, decrypted and authenticated, in memory only.

        Raises:
            MessageNotFoundError: no such UID in the folder.
            CorruptMessageError: the record is missing, truncated, tampered
                with, or belongs to another message or mailbox.
        """
        mailbox = self._mailbox(address)
        row = self._blob_row(mailbox, folder, uid, "NULL")
        with self._segments.reader() as reader:
            return self._read_message(mailbox, folder, row, reader)

    def _read_message(
        self, mailbox: _Mailbox, folder: str | SpecialUse, row: _BlobRow, reader: Reader
    ) -> bytes:
        """:meth:`_open_record`, telling a message expunged between the index
        read and the record read (commit, then free:
        :class:`MessageNotFoundError`) from a record lost or damaged
        (:class:`CorruptMessageError`, never skipped silently)."""
        try:
            return self._open_record(mailbox, row, reader)
        except (FileNotFoundError, CorruptMessageError) as exc:
            self._blob_row(mailbox, folder, row.uid, "NULL")  # gone: not found
            if isinstance(exc, FileNotFoundError):
                what = f"message {mailbox.id}/{row.blob_id.hex()}"
                raise CorruptMessageError(what, "message file missing") from exc
            raise

    def structure(
        self, address: str, folder: str | SpecialUse, uid: int
    ) -> ParsedStructure:
        """The structure cached at delivery (ENVELOPE, BODYSTRUCTURE, offsets).

        Raises:
            MessageNotFoundError, CorruptMessageError.
        """
        mailbox = self._mailbox(address)
        row = self._blob_row(mailbox, folder, uid, "b.structure")
        what = f"structure {mailbox.id}/{row.blob_id.hex()}"
        if row.value is None:
            raise CorruptMessageError(what, "no cached structure")
        plain = mailbox.key.unseal(
            row.value, _aad(b"structure", mailbox.id, row.blob_id), what
        )
        return ParsedStructure.from_json(plain)

    def _blobs_of(
        self,
        mailbox: _Mailbox,
        folder: str | SpecialUse,
        uids: list[int],
        *,
        structure: bool,
    ) -> list[_BlobRow]:
        """The blob rows of the ``uids`` present (with the sealed structure
        when ``structure`` is asked), in one query."""
        if not uids:
            return []
        lo, hi = uids[0], uids[-1]
        wanted = set(uids)
        column = "b.structure" if structure else "NULL"
        sql = (
            f"SELECT m.uid, b.id, {column}, b.size, b.segment, b.seg_offset"  # noqa: S608
            " FROM messages m JOIN blobs b ON b.id = m.blob_id"
            " WHERE m.folder_id = ? AND m.uid BETWEEN ? AND ? ORDER BY m.uid"
        )
        with self._lock:
            db = self._conn()
            target = self._folder(db, mailbox, folder)
            rows = db.execute(sql, (target.id, lo, hi)).fetchall()
        return [_BlobRow.of(row) for row in rows if row[0] in wanted]

    def fetch_many(
        self, address: str, folder: str | SpecialUse, uids: Iterable[int]
    ) -> dict[int, bytes]:
        """:meth:`fetch` for several messages: one index query, then the files.

        UIDs that do not exist (or were expunged meanwhile) are left out.

        Raises:
            CorruptMessageError: a file is tampered with, truncated, moved or
                missing while its index row is there.
        """
        mailbox = self._mailbox(address)
        out: dict[int, bytes] = {}
        with self._segments.reader() as reader:
            for row in self._blobs_of(
                mailbox, folder, _uid_list(uids), structure=False
            ):
                # Expunged after the index read: left out, like a UID that
                # does not exist.
                with contextlib.suppress(MessageNotFoundError):
                    out[row.uid] = self._read_message(mailbox, folder, row, reader)
        return out

    def headers(
        self, address: str, folder: str | SpecialUse, uids: Iterable[int]
    ) -> dict[int, bytes]:
        """The top-level header of several messages, from their sealed
        structures (no message file is read). UIDs that do not exist are
        left out.

        Raises:
            CorruptMessageError: a sealed structure does not authenticate.
        """
        return {
            uid: ParsedStructure.header_from_json(plain)
            for uid, plain in self._open_structures(address, folder, uids)
        }

    def _open_structures(
        self, address: str, folder: str | SpecialUse, uids: Iterable[int]
    ) -> Iterator[tuple[int, bytes]]:
        mailbox = self._mailbox(address)
        for row in self._blobs_of(mailbox, folder, _uid_list(uids), structure=True):
            what = f"structure {mailbox.id}/{row.blob_id.hex()}"
            if row.value is None:
                raise CorruptMessageError(what, "no cached structure")
            yield (
                row.uid,
                mailbox.key.unseal(
                    row.value, _aad(b"structure", mailbox.id, row.blob_id), what
                ),
            )

    def structures(
        self, address: str, folder: str | SpecialUse, uids: Iterable[int]
    ) -> dict[int, ParsedStructure]:
        """:meth:`structure` for several messages, in one index query.

        UIDs that do not exist are left out.

        Raises:
            CorruptMessageError: a sealed structure does not authenticate.
        """
        return {
            uid: ParsedStructure.from_json(plain)
            for uid, plain in self._open_structures(address, folder, uids)
        }

    # --- changing -------------------------------------------------------------

    def store_flags(
        self,
        address: str,
        folder: str | SpecialUse,
        uids: Iterable[int],
        flags: Iterable[str],
        mode: FlagMode,
    ) -> list[MessageInfo]:
        """STORE (RFC 3501 §6.4.6): change flags; returns the messages after.

        UIDs that do not exist are ignored (RFC 3501 §6.4.8). A message whose
        flags actually change gets a new MODSEQ; the others keep theirs.

        Raises:
            InvalidFlagError: a flag that is neither a system flag nor an atom,
                or \\Recent.
        """
        mailbox = self._mailbox(address)
        bits, keywords = _parse_flags(flags)
        wanted = _uid_list(uids)
        with self._tx() as (db, tx):
            target = self._folder(db, mailbox, folder)
            out: list[MessageInfo] = []
            changed: list[MessageInfo] = []
            modseq = 0
            for row in self._rows(db, target.id, wanted):
                uid, old_bits, old_kw_text = row[0], row[1], row[2]
                old_kw = _keyword_dict(old_kw_text)
                if mode is FlagMode.ADD:
                    new_bits, new_kw = old_bits | bits, {**keywords, **old_kw}
                elif mode is FlagMode.REMOVE:
                    new_bits = old_bits & ~bits
                    new_kw = {k: v for k, v in old_kw.items() if k not in keywords}
                else:
                    new_bits, new_kw = bits, keywords
                new_text = _keyword_text(new_kw)
                if new_bits == old_bits and new_text == old_kw_text:
                    out.append(_info(row))
                    continue
                if not modseq:
                    modseq = self._bump_modseq(db, target.id)
                db.execute(
                    "UPDATE messages SET flags = ?, keywords = ?, modseq = ?"
                    " WHERE folder_id = ? AND uid = ?",
                    (new_bits, new_text, modseq, target.id, uid),
                )
                info = _info((uid, new_bits, new_text, *row[3:6], modseq, row[7]))
                out.append(info)
                changed.append(info)
            if changed:
                tx.changes.append(
                    Change(
                        kind=ChangeKind.FLAGS,
                        address=mailbox.address,
                        folder=target.name,
                        uids=tuple(i.uid for i in changed),
                        modseq=modseq,
                        messages=tuple(changed),
                    )
                )
        return out

    def claim_recent(self, address: str, folder: str | SpecialUse) -> frozenset[int]:
        """Clear \\Recent in the folder and return the UIDs that had it.

        RFC 3501 §2.3.2: the first session to SELECT a folder after a message
        arrived sees it as \\Recent; no other session does.
        """
        mailbox = self._mailbox(address)
        with self._tx() as (db, _tx):
            target = self._folder(db, mailbox, folder)
            rows = db.execute(
                "UPDATE messages SET recent = 0 WHERE folder_id = ? AND recent = 1 RETURNING uid",
                (target.id,),
            ).fetchall()
        return frozenset(r[0] for r in rows)

    def _rows(
        self, db: sqlite3.Connection, folder_id: int, uids: list[int]
    ) -> list[_MsgRow]:
        if not uids:
            return []
        lo, hi = uids[0], uids[-1]
        wanted = set(uids)
        return [
            r
            for r in db.execute(
                f"SELECT {_MSG_COLS} FROM messages WHERE folder_id = ?"  # noqa: S608
                " AND uid BETWEEN ? AND ? ORDER BY uid",
                (folder_id, lo, hi),
            )
            if r[0] in wanted
        ]

    def expunge(
        self, address: str, folder: str | SpecialUse, uids: Iterable[int] | None = None
    ) -> list[int]:
        """Remove the messages flagged \\Deleted (RFC 3501 §6.4.3), only those
        in ``uids`` when given (UID EXPUNGE, RFC 4315 §2.1). Returns the UIDs
        removed, ascending."""
        mailbox = self._mailbox(address)
        with self._tx() as (db, tx):
            target = self._folder(db, mailbox, folder)
            candidates = [
                r[0]
                for r in db.execute(
                    "SELECT uid FROM messages WHERE folder_id = ? AND (flags & ?) != 0 ORDER BY uid",
                    (target.id, _DELETED),
                )
            ]
            if uids is not None:
                keep = set(_uid_list(uids))
                candidates = [u for u in candidates if u in keep]
            self._delete_messages(db, tx, mailbox, target, candidates)
        return candidates

    def _delete_messages(
        self,
        db: sqlite3.Connection,
        tx: _Tx,
        mailbox: _Mailbox,
        folder: _Folder,
        uids: list[int],
    ) -> None:
        if not uids:
            return
        modseq = self._bump_modseq(db, folder.id)
        segments: set[int] = set()
        for uid in uids:
            (blob_id,) = db.execute(
                "DELETE FROM messages WHERE folder_id = ? AND uid = ? RETURNING blob_id",
                (folder.id, uid),
            ).fetchone()
            (refs,) = db.execute(
                "UPDATE blobs SET refs = refs - 1 WHERE id = ? RETURNING refs",
                (blob_id,),
            ).fetchone()
            if refs == 0:
                segment, offset, size = db.execute(
                    "DELETE FROM blobs WHERE id = ? RETURNING segment, seg_offset, size",
                    (blob_id,),
                ).fetchone()
                if segment is None:
                    tx.unlink.append(mailbox.directory / bytes(blob_id).hex())
                else:
                    tx.free.append((segment, offset, size + RECORD_OVERHEAD))
                    segments.add(segment)
        for segment in segments:
            if (
                db.execute(
                    "SELECT 1 FROM blobs WHERE segment = ? LIMIT 1", (segment,)
                ).fetchone()
                is None
            ):
                tx.drop.add(segment)
        tx.changes.append(
            Change(
                kind=ChangeKind.EXPUNGE,
                address=mailbox.address,
                folder=folder.name,
                uids=tuple(uids),
                modseq=modseq,
            )
        )

    def copy(
        self,
        address: str,
        folder: str | SpecialUse,
        uids: Iterable[int],
        dest: str | SpecialUse,
    ) -> CopyResult:
        """COPY (RFC 3501 §6.4.7): flags and internal date kept, \\Recent set
        on the copies. The copies share the encrypted file. Returns COPYUID
        data (RFC 4315 §3); UIDs that do not exist are skipped.
        """
        return self._copy_or_move(address, folder, uids, dest, keep_source=True)

    def move(
        self,
        address: str,
        folder: str | SpecialUse,
        uids: Iterable[int],
        dest: str | SpecialUse,
    ) -> CopyResult:
        """MOVE (RFC 6851 §3.1): copy and expunge from the source in one
        transaction; subscribers see EXISTS in ``dest`` and EXPUNGE in the
        source."""
        return self._copy_or_move(address, folder, uids, dest, keep_source=False)

    def _copy_or_move(
        self,
        address: str,
        folder: str | SpecialUse,
        uids: Iterable[int],
        dest: str | SpecialUse,
        *,
        keep_source: bool,
    ) -> CopyResult:
        mailbox = self._mailbox(address)
        wanted = _uid_list(uids)
        with self._tx() as (db, tx):
            src = self._folder(db, mailbox, folder)
            dst = self._folder(db, mailbox, dest)
            return self._transfer(
                db, tx, mailbox, src, dst, wanted, keep_source=keep_source
            )

    def _transfer(
        self,
        db: sqlite3.Connection,
        tx: _Tx,
        mailbox: _Mailbox,
        src: _Folder,
        dst: _Folder,
        uids: list[int],
        *,
        keep_source: bool,
    ) -> CopyResult:
        wanted = set(uids)
        rows = [
            r
            for r in db.execute(
                "SELECT uid, blob_id, flags, keywords, internal_date, tz_offset, size"
                " FROM messages WHERE folder_id = ? ORDER BY uid",
                (src.id,),
            )
            if r[0] in wanted
        ]
        if not rows:
            return CopyResult(
                folder=dst.name,
                uidvalidity=dst.uidvalidity,
                source_uids=(),
                dest_uids=(),
            )
        first, modseq = self._next_uid(db, dst, len(rows))
        dest_uids = tuple(range(first, first + len(rows)))
        for new_uid, (_uid, blob_id, bits, kw, ts, tz, size) in zip(
            dest_uids, rows, strict=True
        ):
            db.execute(
                f"INSERT INTO messages (folder_id, blob_id, {_MSG_COLS})"  # noqa: S608
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1)",
                (dst.id, blob_id, new_uid, bits, kw, ts, tz, size, modseq),
            )
            db.execute("UPDATE blobs SET refs = refs + 1 WHERE id = ?", (blob_id,))
        tx.changes.append(
            Change(
                kind=ChangeKind.EXISTS,
                address=mailbox.address,
                folder=dst.name,
                uids=dest_uids,
                modseq=modseq,
            )
        )
        source_uids = tuple(r[0] for r in rows)
        if not keep_source:
            self._delete_messages(db, tx, mailbox, src, list(source_uids))
        return CopyResult(
            folder=dst.name,
            uidvalidity=dst.uidvalidity,
            source_uids=source_uids,
            dest_uids=dest_uids,
        )

    # --- invariants -------------------------------------------------------------

    def _check_invariants(self, *, files: bool) -> None:
        """Raise :class:`CorruptMessageError` if the index breaks a rule."""
        db = self._conn()
        bad = db.execute(
            "SELECT f.name, m.uid FROM messages m JOIN folders f ON f.id = m.folder_id"
            " WHERE m.uid >= f.uidnext OR m.modseq > f.highest_modseq LIMIT 1"
        ).fetchone()
        if bad is not None:
            raise CorruptMessageError(
                "index", f"UID {bad[1]} in {bad[0]!r} breaks UIDNEXT/MODSEQ"
            )
        bad = db.execute(
            "SELECT hex(b.id) FROM blobs b WHERE b.refs !="
            " (SELECT count(*) FROM messages m WHERE m.blob_id = b.id) LIMIT 1"
        ).fetchone()
        if bad is not None:
            raise CorruptMessageError(
                "index", f"blob {bad[0]} has a wrong reference count"
            )
        bad = db.execute(
            "SELECT m.uid FROM messages m LEFT JOIN blobs b ON b.id = m.blob_id"
            " WHERE b.id IS NULL LIMIT 1"
        ).fetchone()
        if bad is not None:
            raise CorruptMessageError("index", f"message UID {bad[0]} has no blob row")
        if files:
            for mailbox_id, blob_id, size, segment, offset in db.execute(
                "SELECT mailbox_id, id, size, segment, seg_offset FROM blobs"
            ):
                if segment is None:
                    path = self._messages_dir / str(mailbox_id) / bytes(blob_id).hex()
                    if not path.is_file():
                        raise CorruptMessageError(
                            str(path), "indexed message file missing"
                        )
                    continue
                path = self._segments.path(segment)
                end = offset + size + RECORD_OVERHEAD
                if not path.is_file() or path.stat().st_size < end:
                    raise CorruptMessageError(
                        str(path), "indexed message record missing"
                    )
