"""Embedded SQLite backend of the trust directory (the zero-setup default).

Storage layout (one file, ``directory.sqlite3`` in the data directory):

- ``entries``: one row per entry, ``(kind, key)`` primary key (a rowid
  table: rows are wide, too wide for ``WITHOUT ROWID`` to pay); ``data`` is
  the entry's content encoding (:func:`directory.model.encode_content`, the
  very text its ``digest`` hashes); ``status``, ``source`` are columns (not in
  ``data``), with who set the status and ``last_run``, the last import run
  that wrote the entry (the entries a run finds unchanged are kept in
  memory while it runs, not rewritten: see :class:`_Import`); and derived
  columns that lookups use: ``addr`` (a patient's address;
  a mailbox is found by its key), ``owner`` (mailbox owner, delegation
  account), ``ref`` (delegation mailbox), ``search`` (lower-cased text for
  substring search). Each derived column has an index.
- ``certs``: certificate fingerprint -> mailbox address.
- ``operator_dns``: normalised subject DN -> operator domain.
- ``proxies``: account -> INS of each patient granting it a proxy (filled
  for files made before it existed when they are opened).
- ``consent_ledger``: each patient's consent records, ``(ins, sequence)``
  key, ``record`` the JSON of :meth:`ConsentRecord.as_json`. Append-only:
  triggers abort any UPDATE or DELETE, and an INSERT whose sequence is not
  the patient's next (so ``INSERT OR REPLACE`` cannot overwrite a record). A record and the patient change it describes are
  written in one transaction (:meth:`SqliteDirectory.change_consent`).
- ``meta``: small named values.

Decoding: ``data`` was written here from a validated entry, so it is decoded
without validating again (:func:`directory.model.decode_content`); what comes
from outside (keys to look up, entries to add) is validated as always.

Concurrency: one worker thread owns the writing connection; every write and
every multi-row read runs there in order. Point lookups (an entry by key,
``resolve``, by certificate) run on the caller's thread through a read-only
connection of that thread: WAL lets readers run beside the writer, and a
statement is always read to its end, so no read transaction stays open. A
second process (the CLI while the relay runs) reads the same way. A write is
one transaction; a failed batch leaves nothing behind.

Imports: the importers hand rows over ready to store (:data:`ImportRow`,
:meth:`SqliteDirectory.import_rows`); only rows that are neither new nor
unchanged become entries again, for :func:`directory.protocol.plan_batch`.
A first import (no entry of its kinds yet) is one transaction from
:meth:`SqliteDirectory.begin_import` to :meth:`SqliteDirectory.end_import`,
inserting without looking up: if it fails or the process dies, nothing of
it is there, so a half-imported directory can never pass for a complete
one. Durability is unchanged (WAL, ``synchronous=NORMAL``): the transaction
is a plain one, only larger, and readers keep reading the last committed
state meanwhile; other writers wait for it (the relay does not write here;
an admin command run meanwhile waits ``busy_timeout`` and then fails with
:class:`~directory.errors.DirectoryUnavailableError`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import operator
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

from directory import identifiers as ids
from directory.consent import ConsentOutcome, next_record
from directory.errors import (
    DirectoryUnavailableError,
    EntryExistsError,
    EntryNotFoundError,
    ImmutableFieldError,
)
from directory.model import (
    ConsentRecord,
    Delegation,
    Entry,
    Kind,
    Mailbox,
    Operator,
    Organisation,
    Patient,
    Practitioner,
    Status,
    canonical_key,
    decode_content,
    digest_of,
    encode_content,
    key_of,
    kind_of,
    with_status,
)
from directory.protocol import (
    BatchCounts,
    BatchPlan,
    ImportRun,
    Merge,
    StatusOrigin,
    StoredState,
    plan_batch,
)

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Callable,
        Iterable,
        Iterator,
        Mapping,
        Sequence,
    )
    from datetime import datetime
    from pathlib import Path

    from directory.consent import ConsentChange

T = TypeVar("T")

DEFAULT_FILENAME: Final = "directory.sqlite3"
# SQLite's default SQLITE_MAX_VARIABLE_NUMBER is 32766 since 3.32; stay well under.
_IN_CHUNK: Final = 900
# Rows fetched per round trip when streaming a whole kind (export).
_STREAM_CHUNK: Final = 2000
# Page cache of the writing connection, in KiB (SQLite's default is 2 MB): an
# import touches index pages all over the key space; 64 MB holds the key
# index of the national MSSanté extraction.
_WRITER_CACHE_KIB: Final = 64 * 1024
# WAL pages between automatic checkpoints (default 1000, 4 MB): fewer, larger
# checkpoints during imports; the WAL file is reset after each one.
_WAL_AUTOCHECKPOINT_PAGES: Final = 16384
# Page size of a new file (SQLite's default is 4096): a first import of the
# national MSSanté extraction spends 30 % less CPU in SQLite with 16 KiB
# pages (fewer, shallower pages to split), and point lookups are unchanged.
_PAGE_SIZE: Final = 16384
# How long a point read on the caller's thread may wait for a lock (WAL
# readers wait only while a crashed writer's WAL is recovered).
_READER_BUSY_MS: Final = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    data TEXT NOT NULL,
    digest TEXT NOT NULL,
    status TEXT NOT NULL,
    status_origin TEXT NOT NULL,
    source TEXT NOT NULL,
    last_run TEXT NOT NULL DEFAULT '',
    addr TEXT,
    owner TEXT,
    ref TEXT,
    search TEXT NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX IF NOT EXISTS entries_addr ON entries(addr) WHERE addr IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_owner ON entries(kind, owner) WHERE owner IS NOT NULL;
CREATE INDEX IF NOT EXISTS entries_ref ON entries(kind, ref) WHERE ref IS NOT NULL;
-- suspend_absent scans one kind through the primary key; an index on
-- last_run would be rewritten by every entry an import sees again.
DROP INDEX IF EXISTS entries_source;
CREATE TABLE IF NOT EXISTS certs (
    fingerprint TEXT PRIMARY KEY,
    address TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS certs_address ON certs(address);
CREATE TABLE IF NOT EXISTS operator_dns (
    dn TEXT NOT NULL,
    domain TEXT NOT NULL,
    PRIMARY KEY (dn, domain)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS proxies (
    account TEXT NOT NULL,
    ins TEXT NOT NULL,
    PRIMARY KEY (account, ins)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS proxies_ins ON proxies(ins);
CREATE TABLE IF NOT EXISTS consent_ledger (
    ins TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    record TEXT NOT NULL,
    PRIMARY KEY (ins, sequence)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS consent_ledger_no_update
    BEFORE UPDATE ON consent_ledger
    BEGIN SELECT RAISE(ABORT, 'the consent ledger is append-only'); END;
-- REPLACE deletes without firing DELETE triggers: a record must come next.
CREATE TRIGGER IF NOT EXISTS consent_ledger_next_only
    BEFORE INSERT ON consent_ledger
    WHEN NEW.sequence <> 1 + (SELECT coalesce(max(sequence), 0)
                              FROM consent_ledger WHERE ins = NEW.ins)
    BEGIN SELECT RAISE(ABORT, 'the consent ledger is append-only'); END;
CREATE TRIGGER IF NOT EXISTS consent_ledger_no_delete
    BEFORE DELETE ON consent_ledger
    BEGIN SELECT RAISE(ABORT, 'the consent ledger is append-only'); END;
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
"""

_Row = tuple[
    Kind,
    str,
    str,
    str,
    Status,
    StatusOrigin,
    str,
    str,
    str | None,
    str | None,
    str | None,
    str,
]
_STATUS: Final = {s.value: s for s in Status}
_first: Final = operator.itemgetter(0)
_ORIGIN: Final = {o.value: o for o in StatusOrigin}


def _derived(entry: Entry) -> tuple[str | None, str | None, str | None, str]:
    """(addr, owner, ref, search) columns of an entry."""
    match entry:
        case Mailbox():  # found by its key: no addr
            words = [entry.address, entry.display_name, entry.service, entry.owner_id]
            return None, entry.owner_id, None, " ".join(words).lower()
        case Patient():
            words = [
                entry.ins,
                entry.birth_name,
                entry.first_names,
                entry.address or "",
            ]
            return entry.address, None, None, " ".join(words).lower()
        case Practitioner():
            words = [
                entry.national_id,
                entry.last_name,
                entry.first_name,
                entry.profession,
            ]
            return None, None, None, " ".join(words).lower()
        case Organisation():
            words = [entry.structure_id, entry.name, entry.trade_name]
            return None, None, None, " ".join(words).lower()
        case Delegation():
            return None, entry.account, entry.mailbox, entry.key.lower()
        case Operator():
            return None, None, None, " ".join([entry.domain, entry.description]).lower()


_ENTRY_COLUMNS: Final = "data, status, source"  # what _load takes, in order

ImportRow = tuple[str, str, str, str | None, str | None, str | None, str]
"""One entry of an import, ready to store: (key, data, digest, addr, owner,
ref, search). See :func:`import_row`."""


def import_row(entry: Entry, content: str) -> ImportRow:
    """The row an import stores for ``entry`` (validated; ``content`` is its
    :func:`~directory.model.encode_content`).

    This is the reference: the importers' faster row builders are tested to
    give the same rows (``tests/directory/test_import_rows.py``).
    """
    addr, owner, ref, search = _derived(entry)
    return (key_of(entry), content, digest_of(content), addr, owner, ref, search)


def _sql_text(value: str) -> str:
    """A string as an SQL literal (quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def _insert_sql(kind: Kind, run: ImportRun) -> str:
    """INSERT of :data:`ImportRow` rows of a run: the columns that are the
    same for all of them are literals, so each row binds 7 values, not 12."""
    constants = ",".join(
        _sql_text(v)
        for v in (
            kind.value,
            Status.ACTIVE.value,
            StatusOrigin.IMPORT.value,
            run.source,
            run.run_id,
        )
    )
    # Literals are quoted by _sql_text; the values are bound.
    return (
        "INSERT OR IGNORE INTO entries (key, data, digest, addr, owner, ref, search,"
        " kind, status, status_origin, source, last_run)"
        f" VALUES (?,?,?,?,?,?,?,{constants})"
    )


# Rowids below this are kept in a bitmap (16 MB at most); any beyond, in a set.
_BITMAP_ROWIDS: Final = 1 << 27


class _RowidSet:
    """A set of ``entries`` rowids. Rowids are dense from 1 (rows are never
    deleted), so a bitmap holds a national directory's in a few hundred KB."""

    __slots__ = ("_bits", "_far")

    def __init__(self) -> None:
        self._bits = bytearray()
        self._far: set[int] = set()

    def add(self, rowid: int) -> None:
        if rowid >= _BITMAP_ROWIDS:
            self._far.add(rowid)
            return
        byte = rowid >> 3
        if byte >= len(self._bits):
            self._bits.extend(bytes(byte + 1 - len(self._bits) + 4096))
        self._bits[byte] |= 1 << (rowid & 7)

    def __contains__(self, rowid: int) -> bool:
        if rowid >= _BITMAP_ROWIDS:
            return rowid in self._far
        byte = rowid >> 3
        return byte < len(self._bits) and bool(self._bits[byte] >> (rowid & 7) & 1)


@dataclass(slots=True)
class _Import:
    """What the backend keeps about a running import.

    ``seen``: the rows the run found unchanged (a row it inserts or replaces
    carries the run in ``last_run``). Keeping them here, instead of
    rewriting ``last_run`` in each wide row, is what makes a re-import cheap;
    a run that dies leaves nothing behind. :meth:`SqliteDirectory.end_import`
    forgets the run; a run driven through
    :meth:`SqliteDirectory.import_batch` alone (no end) is kept until the
    directory is closed. ``bulk_kinds``: the kinds of a first import (see
    :meth:`SqliteDirectory.begin_import`).
    """

    seen: _RowidSet = field(default_factory=_RowidSet)
    bulk_kinds: frozenset[Kind] = frozenset()


def _load(kind: Kind, data: str, status: str, source: str) -> Entry:
    return decode_content(kind, data, status, source)


# What _stored knows of a stored entry: rowid, digest, status, status origin,
# and whether this run saw it already.
_Stored = tuple[int, str, str, str, bool]


class SqliteDirectory:
    """The :class:`~directory.protocol.Directory` on one SQLite file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="directory-sqlite"
        )
        self._conn: sqlite3.Connection | None = None
        self._local = threading.local()  # .reader: this thread's read connection
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self._closed = False
        self._imports: dict[str, _Import] = {}  # by run id
        self._first_import: str | None = None  # run id holding the transaction

    @classmethod
    async def open(cls, path: Path) -> SqliteDirectory:
        """Open (creating if needed) the directory file at ``path``."""
        directory = cls(path)
        await directory._run(directory._connect)
        return directory

    def _connect(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, isolation_level=None)
        # Only a new file takes it (before its first table).
        conn.execute(f"PRAGMA page_size={_PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute(f"PRAGMA cache_size=-{_WRITER_CACHE_KIB}")
        conn.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
        conn.executescript(_SCHEMA)
        self._conn = conn
        self._index_proxies_once(conn)

    def _index_proxies_once(self, conn: sqlite3.Connection) -> None:
        """Fill ``proxies`` for a file written before the table existed."""
        done = conn.execute(
            "SELECT 1 FROM meta WHERE name='proxies_indexed'"
        ).fetchone()
        if done is not None:
            return
        patients = [
            e
            for e in self._select_on(
                conn,
                f"SELECT kind, {_ENTRY_COLUMNS} FROM entries WHERE kind='patient'",
                (),
            )
            if isinstance(e, Patient)
        ]
        conn.execute("BEGIN IMMEDIATE")
        self._index_side_tables(conn, patients, new=False)
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('proxies_indexed', '1')")
        conn.execute("COMMIT")

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise DirectoryUnavailableError("directory is closed")
        return self._conn

    def _reader(self) -> sqlite3.Connection:
        """This thread's read-only connection (opened on first use)."""
        reader: sqlite3.Connection | None = getattr(self._local, "reader", None)
        if reader is not None:
            return reader
        if self._closed:
            raise DirectoryUnavailableError("directory is closed")
        uri = self._path.resolve().as_uri() + "?mode=ro"
        reader = sqlite3.connect(uri, uri=True, isolation_level=None)
        reader.execute(f"PRAGMA busy_timeout={_READER_BUSY_MS}")
        self._local.reader = reader
        with self._readers_lock:
            self._readers.append(reader)
        return reader

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a point read on this thread's read connection."""
        try:
            return fn(self._reader())
        except sqlite3.Error as exc:
            raise DirectoryUnavailableError(f"sqlite: {exc}") from exc

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, fn, *args)
        except sqlite3.Error as exc:
            raise DirectoryUnavailableError(f"sqlite: {exc}") from exc

    async def close(self) -> None:
        self._closed = True
        if self._conn is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for reader in readers:
            # sqlite3 objects may only be closed by their thread unless
            # check_same_thread is off; a reader of another thread is left
            # to be closed by the garbage collector with that thread.
            with contextlib.suppress(sqlite3.ProgrammingError):
                reader.close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextlib.contextmanager
    def _transaction(
        self, run: ImportRun | None = None
    ) -> Iterator[sqlite3.Connection]:
        """One atomic write: a transaction, or, for ``run`` when it is the
        first import holding the open transaction (:meth:`begin_import`), a
        savepoint inside it."""
        db = self._db
        if db.in_transaction:
            self._refuse_during_first_import(run)
            db.execute("SAVEPOINT write")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK TO write")
                db.execute("RELEASE write")
                raise
            db.execute("RELEASE write")
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _refuse_during_first_import(self, run: ImportRun | None) -> None:
        """A write of anything but the first import whose transaction is
        open would share its fate (rolled back if it fails): refused, as
        another process would be after ``busy_timeout``."""
        if run is None or run.run_id != self._first_import:
            msg = "a first import is running; try again when it has ended"
            raise DirectoryUnavailableError(msg)

    # --- lookups ---------------------------------------------------------

    @staticmethod
    def _get_on(db: sqlite3.Connection, kind: Kind, key: str) -> Entry | None:
        rows = db.execute(
            f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE kind=? AND key=?",
            (kind.value, key),
        ).fetchall()
        return _load(kind, *rows[0]) if rows else None

    async def get(self, kind: Kind, key: str) -> Entry | None:
        canonical = canonical_key(kind, key)
        return self._read(lambda db: self._get_on(db, kind, canonical))

    async def practitioner(self, national_id_or_rpps: str) -> Practitioner | None:
        entry = await self.get(Kind.PRACTITIONER, national_id_or_rpps)
        assert entry is None or isinstance(entry, Practitioner)  # noqa: S101 - kind invariant
        return entry

    async def organisation(self, structure_id: str) -> Organisation | None:
        entry = await self.get(Kind.ORGANISATION, structure_id)
        assert entry is None or isinstance(entry, Organisation)  # noqa: S101
        return entry

    async def mailbox(self, address: str) -> Mailbox | None:
        entry = await self.get(Kind.MAILBOX, address)
        assert entry is None or isinstance(entry, Mailbox)  # noqa: S101
        return entry

    async def patient(self, ins: str) -> Patient | None:
        entry = await self.get(Kind.PATIENT, ins)
        assert entry is None or isinstance(entry, Patient)  # noqa: S101
        return entry

    async def operator(self, domain: str) -> Operator | None:
        entry = await self.get(Kind.OPERATOR, domain)
        assert entry is None or isinstance(entry, Operator)  # noqa: S101
        return entry

    @staticmethod
    def _resolve_on(db: sqlite3.Connection, address: str) -> Mailbox | Patient | None:
        found = SqliteDirectory._get_on(db, Kind.MAILBOX, address)
        if found is None:
            rows = db.execute(
                f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE addr=? AND kind='patient'",
                (address,),
            ).fetchall()
            found = _load(Kind.PATIENT, *rows[0]) if rows else None
        assert found is None or isinstance(found, Mailbox | Patient)  # noqa: S101
        return found

    async def resolve(self, address: str) -> Mailbox | Patient | None:
        canonical = ids.address(address)
        return self._read(lambda db: self._resolve_on(db, canonical))

    @staticmethod
    def _select_on(
        db: sqlite3.Connection, sql: str, args: Sequence[object]
    ) -> list[Entry]:
        return [_load(Kind(k), *rest) for k, *rest in db.execute(sql, args).fetchall()]

    def _select(self, sql: str, args: Sequence[object]) -> list[Entry]:
        return self._select_on(self._db, sql, args)

    async def operators_for_certificate(self, subject_dn: str) -> list[Operator]:
        dn = ids.distinguished_name(subject_dn, "subject_dn")
        found = self._read(
            lambda db: self._select_on(
                db,
                "SELECT e.kind, e.data, e.status, e.source FROM operator_dns d"
                " JOIN entries e ON e.kind='operator' AND e.key=d.domain"
                " WHERE d.dn=? ORDER BY e.key",
                (dn,),
            )
        )
        return [e for e in found if isinstance(e, Operator)]

    async def mailbox_for_certificate(self, fingerprint: str) -> Mailbox | None:
        fp = ids.sha256_fingerprint(fingerprint)
        found = self._read(
            lambda db: self._select_on(
                db,
                "SELECT e.kind, e.data, e.status, e.source FROM certs c"
                " JOIN entries e ON e.kind='mailbox' AND e.key=c.address"
                " WHERE c.fingerprint=?",
                (fp,),
            )
        )
        return next((e for e in found if isinstance(e, Mailbox)), None)

    async def mailboxes_of(self, owner_id: str) -> list[Mailbox]:
        owner = owner_id.strip().upper()
        found = await self._run(
            self._select,
            f"SELECT kind, {_ENTRY_COLUMNS} FROM entries"
            " WHERE kind='mailbox' AND owner=? ORDER BY key",
            (owner,),
        )
        return [e for e in found if isinstance(e, Mailbox)]

    async def patients_with_proxy(self, account: str) -> list[Patient]:
        found = self._read(
            lambda db: self._select_on(
                db,
                "SELECT e.kind, e.data, e.status, e.source FROM proxies p"
                " JOIN entries e ON e.kind='patient' AND e.key=p.ins"
                " WHERE p.account=? ORDER BY e.key",
                (account,),
            )
        )
        return [e for e in found if isinstance(e, Patient)]

    async def delegations(
        self, *, account: str | None = None, mailbox: str | None = None
    ) -> list[Delegation]:
        sql = f"SELECT kind, {_ENTRY_COLUMNS} FROM entries WHERE kind='delegation'"
        args: list[object] = []
        if account is not None:
            sql += " AND owner=?"
            args.append(account)
        if mailbox is not None:
            sql += " AND ref=?"
            args.append(ids.address(mailbox, "mailbox"))
        found = await self._run(self._select, sql + " ORDER BY key", args)
        return [e for e in found if isinstance(e, Delegation)]

    async def search(
        self, text: str, *, kind: Kind | None = None, limit: int = 50
    ) -> list[Entry]:
        pattern = (
            "%"
            + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            + "%"
        )
        sql = (
            f"SELECT kind, {_ENTRY_COLUMNS} FROM entries"
            " WHERE search LIKE ? ESCAPE '\\'"
        )
        args: list[object] = [pattern]
        if kind is not None:
            sql += " AND kind=?"
            args.append(kind.value)
        sql += " ORDER BY kind, key LIMIT ?"
        args.append(limit)
        return await self._run(self._select, sql, args)

    def _page(self, kind: Kind, after: str) -> list[tuple[str, str, str, str]]:
        return self._db.execute(
            f"SELECT key, {_ENTRY_COLUMNS} FROM entries"
            " WHERE kind=? AND key>? ORDER BY key LIMIT ?",
            (kind.value, after, _STREAM_CHUNK),
        ).fetchall()

    async def entries(self, kind: Kind) -> AsyncIterator[Entry]:
        after = ""
        while page := await self._run(self._page, kind, after):
            for _, data, status, source in page:
                yield _load(kind, data, status, source)
            after = page[-1][0]

    def _count(self, kind: Kind) -> int:
        (n,) = self._db.execute(
            "SELECT count(*) FROM entries WHERE kind=?", (kind.value,)
        ).fetchone()
        return int(n)

    async def count(self, kind: Kind) -> int:
        return await self._run(self._count, kind)

    # --- changes ---------------------------------------------------------

    @staticmethod
    def _row(
        entry: Entry, content: str, digest: str, origin: StatusOrigin, last_run: str
    ) -> _Row:
        addr, owner, ref, search = _derived(entry)
        # StrEnum members bind as their text (cheaper than .value, per row).
        return (
            kind_of(entry),
            key_of(entry),
            content,
            digest,
            entry.status,
            origin,
            entry.source,
            last_run,
            addr,
            owner,
            ref,
            search,
        )

    def _write_rows(
        self,
        db: sqlite3.Connection,
        entries: Sequence[Entry],
        rows: Sequence[_Row],
        *,
        new: bool = False,
    ) -> None:
        db.executemany(
            "INSERT OR REPLACE INTO entries (kind, key, data, digest, status, status_origin,"
            " source, last_run, addr, owner, ref, search) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        self._index_side_tables(db, entries, new=new)

    def _index_side_tables(
        self, db: sqlite3.Connection, entries: Sequence[Entry], *, new: bool
    ) -> None:
        """Certificates and operator DNs of ``entries``; ``new``: none stored yet."""
        mailboxes = [e for e in entries if isinstance(e, Mailbox)]
        operators = [e for e in entries if isinstance(e, Operator)]
        patients = [e for e in entries if isinstance(e, Patient)]
        if patients:
            if not new:
                db.executemany(
                    "DELETE FROM proxies WHERE ins=?", [(p.ins,) for p in patients]
                )
            db.executemany(
                "INSERT OR IGNORE INTO proxies (account, ins) VALUES (?,?)",
                [(g.account, p.ins) for p in patients for g in p.proxies],
            )
        if mailboxes:
            if not new:
                db.executemany(
                    "DELETE FROM certs WHERE address=?",
                    [(m.address,) for m in mailboxes],
                )
            db.executemany(
                "INSERT OR REPLACE INTO certs (fingerprint, address) VALUES (?,?)",
                [(c.fingerprint, m.address) for m in mailboxes for c in m.certificates],
            )
        if operators:
            if not new:
                db.executemany(
                    "DELETE FROM operator_dns WHERE domain=?",
                    [(o.domain,) for o in operators],
                )
            db.executemany(
                "INSERT OR IGNORE INTO operator_dns (dn, domain) VALUES (?,?)",
                [(c.subject_dn, o.domain) for o in operators for c in o.certificates],
            )

    def _encoded_row(self, entry: Entry, origin: StatusOrigin, last_run: str) -> _Row:
        content = encode_content(entry)
        return self._row(entry, content, digest_of(content), origin, last_run)

    def _add(self, entry: Entry) -> None:
        kind, key = kind_of(entry), key_of(entry)
        with self._transaction() as db:
            if self._get_on(db, kind, key) is not None:
                raise EntryExistsError(kind.value, key)
            row = self._encoded_row(entry, StatusOrigin.ADMIN, "")
            self._write_rows(db, [entry], [row])

    async def add(self, entry: Entry) -> None:
        await self._run(self._add, entry)

    def _replace(self, entry: Entry, origin: StatusOrigin | None) -> None:
        kind, key = kind_of(entry), key_of(entry)
        with self._transaction() as db:
            row = db.execute(
                f"SELECT {_ENTRY_COLUMNS}, status_origin, last_run FROM entries"
                " WHERE kind=? AND key=?",
                (kind.value, key),
            ).fetchone()
            if row is None:
                raise EntryNotFoundError(kind.value, key)
            data, status, source, stored_origin, last_run = row
            old = _load(kind, data, status, source)
            if (
                isinstance(old, Mailbox)
                and isinstance(entry, Mailbox)
                and old.bal_type != entry.bal_type
            ):
                raise ImmutableFieldError(kind.value, key, "bal_type")
            new_origin = origin or StatusOrigin(stored_origin)
            self._write_rows(
                db, [entry], [self._encoded_row(entry, new_origin, last_run)]
            )

    async def replace(self, entry: Entry) -> None:
        await self._run(self._replace, entry, None)

    async def set_status(self, kind: Kind, key: str, status: Status) -> Entry:
        canonical = canonical_key(kind, key)
        entry = await self.get(kind, canonical)
        if entry is None:
            raise EntryNotFoundError(kind.value, canonical)
        updated = with_status(entry, status)
        await self._run(self._replace, updated, StatusOrigin.ADMIN)
        return updated

    # --- imports ---------------------------------------------------------

    def _import_state(self, run: ImportRun) -> _Import:
        state = self._imports.get(run.run_id)
        if state is None:
            state = self._imports[run.run_id] = _Import()
        return state

    def _stored(
        self, kind: Kind, keys: Sequence[str], run: ImportRun
    ) -> dict[str, _Stored]:
        """What is stored of each of ``keys`` that exists."""
        state = self._import_state(run)
        every = kind in state.bulk_kinds  # all stored entries of it are this run's
        seen = state.seen
        stored: dict[str, _Stored] = {}
        for i in range(0, len(keys), _IN_CHUNK):
            chunk = keys[i : i + _IN_CHUNK]
            marks = ",".join("?" * len(chunk))
            sql = (
                "SELECT rowid, key, digest, status, status_origin, last_run=?"
                f" FROM entries WHERE kind=? AND key IN ({marks})"
            )
            for rowid, key, digest, status, origin, mine in self._db.execute(
                sql, (run.run_id, kind.value, *chunk)
            ):
                stored[key] = (
                    rowid,
                    digest,
                    status,
                    origin,
                    every or bool(mine) or rowid in seen,
                )
        return stored

    def _states(
        self,
        kind: Kind,
        stored: Mapping[str, _Stored],
        run: ImportRun,
        want_entry: bool,
    ) -> dict[str, StoredState]:
        """``stored`` as plan_batch takes it: ``last_run`` is the run's id when
        this run saw the key already, else ``""``; with ``want_entry``, such
        an entry is loaded."""
        entries: dict[str, Entry] = {}
        if want_entry:
            rowids = [s[0] for s in stored.values() if s[4]]
            for i in range(0, len(rowids), _IN_CHUNK):
                chunk = rowids[i : i + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                for key, data, status, source in self._db.execute(
                    f"SELECT key, {_ENTRY_COLUMNS} FROM entries WHERE rowid IN ({marks})",
                    chunk,
                ):
                    entries[key] = _load(kind, data, status, source)
        return {
            key: StoredState(
                digest,
                _STATUS[status],
                _ORIGIN[origin],
                run.run_id if same else "",
                entries.get(key),
            )
            for key, (_, digest, status, origin, same) in stored.items()
        }

    def _mark_seen(self, kind: Kind, rowids: Iterable[int], run: ImportRun) -> None:
        """Record that this run saw these rows unchanged (see :class:`_Import`)."""
        state = self._import_state(run)
        if kind not in state.bulk_kinds:
            add = state.seen.add
            for rowid in rowids:
                add(rowid)

    def _apply_plan(
        self,
        db: sqlite3.Connection,
        kind: Kind,
        plan: BatchPlan,
        stored: Mapping[str, _Stored],
        run: ImportRun,
    ) -> BatchCounts:
        inserts = [w for w in plan.writes if w.insert]
        updates = [w for w in plan.writes if not w.insert]
        for writes, new in ((inserts, True), (updates, False)):
            if writes:
                self._write_rows(
                    db,
                    [w.entry for w in writes],
                    [
                        self._row(
                            w.entry, w.content, w.digest, w.status_origin, run.run_id
                        )
                        for w in writes
                    ],
                    new=new,
                )
        self._mark_seen(kind, (stored[k][0] for k in plan.touch), run)
        return plan.counts

    def _import_batch(
        self,
        entries: Sequence[Entry],
        run: ImportRun,
        merge: Merge | None,
        contents: Sequence[str] | None,
    ) -> BatchCounts:
        if not entries:
            return BatchCounts()
        kind = kind_of(entries[0])
        with self._transaction(run) as db:
            stored = self._stored(kind, list({key_of(e) for e in entries}), run)
            states = self._states(kind, stored, run, merge is not None)
            plan = plan_batch(entries, states, run.run_id, merge, contents)
            return self._apply_plan(db, kind, plan, stored, run)

    async def import_batch(
        self,
        entries: Sequence[Entry],
        run: ImportRun,
        merge: Merge | None = None,
        *,
        contents: Sequence[str] | None = None,
    ) -> BatchCounts:
        return await self._run(self._import_batch, entries, run, merge, contents)

    # The row path: what the importers use on this backend (see
    # directory.importers._run.RowImport). Rows come ready to store
    # (:func:`import_row`); only those that are not plainly new or plainly
    # unchanged become entries again and go through plan_batch.

    def _begin_import(self, run: ImportRun, kinds: Sequence[Kind]) -> None:
        db = self._db
        if db.in_transaction:  # another first import holds the transaction
            self._refuse_during_first_import(None)
        state = self._import_state(run)
        db.execute("BEGIN IMMEDIATE")
        for kind in kinds:
            found = db.execute(
                "SELECT 1 FROM entries WHERE kind=? LIMIT 1", (kind.value,)
            ).fetchone()
            if found is not None:  # not a first import: a transaction per batch
                db.execute("ROLLBACK")
                return
        state.bulk_kinds = frozenset(kinds)
        self._first_import = run.run_id

    async def begin_import(self, run: ImportRun, kinds: Sequence[Kind]) -> None:
        """Start an import run of entries of ``kinds``.

        When none of them has any entry yet (a first import), the whole run
        becomes one transaction, committed by :meth:`end_import`: rows are
        inserted without looking for stored ones, and a run that fails or
        dies half-way leaves nothing behind (a half directory could not be
        told from a complete one). Other writers wait meanwhile (readers do
        not); other writes through this object, another import included,
        raise :class:`~directory.errors.DirectoryUnavailableError` until it
        ends. Otherwise each batch is its own transaction, as with
        :meth:`import_batch`.
        """
        await self._run(self._begin_import, run, kinds)

    def _end_import(self, run: ImportRun, commit: bool) -> None:
        state = self._imports.pop(run.run_id, None)
        if state is None:
            return
        db = self._db
        if state.bulk_kinds and self._first_import == run.run_id:
            self._first_import = None
            db.execute("COMMIT" if commit else "ROLLBACK")

    async def end_import(self, run: ImportRun, *, commit: bool) -> None:
        """End a run begun by :meth:`begin_import`: commit a first import's
        transaction (``commit``) or roll it back (a failed run)."""
        await self._run(self._end_import, run, commit)

    def _entries_of(
        self, kind: Kind, rows: Sequence[ImportRow], run: ImportRun
    ) -> list[Entry]:
        # Rows are made from validated entries of the run's source, active.
        return [_load(kind, row[1], Status.ACTIVE, run.source) for row in rows]

    def _import_rows(
        self,
        kind: Kind,
        rows: Sequence[ImportRow],
        run: ImportRun,
        merge: Merge | None,
    ) -> BatchCounts:
        if not rows:
            return BatchCounts()
        state = self._import_state(run)
        insert = _insert_sql(kind, run)
        counts = BatchCounts()
        if kind in state.bulk_kinds:
            # A first import: nothing stored but this run's rows. A key the
            # run wrote already is a duplicate (the first row wins, as in
            # plan_batch), unless rows of one key merge: then this batch
            # takes the entry path.
            db = self._db
            # In key order the key index is written page after page (a
            # stable sort: of two rows of one key, the first still wins).
            ordered = sorted(rows, key=_first)
            db.execute("SAVEPOINT rows")
            try:
                added = db.executemany(insert, ordered).rowcount
            except BaseException:
                db.execute("ROLLBACK TO rows")
                db.execute("RELEASE rows")
                raise
            if added == len(rows) or merge is None:
                db.execute("RELEASE rows")
                counts.added, counts.duplicates = added, len(rows) - added
                return counts
            db.execute("ROLLBACK TO rows")
            db.execute("RELEASE rows")
            return self._import_batch(
                self._entries_of(kind, rows, run), run, merge, [r[1] for r in rows]
            )
        keys = list({row[0] for row in rows})
        if merge is not None and len(keys) < len(rows):  # rows to merge: rare
            return self._import_batch(
                self._entries_of(kind, rows, run), run, merge, [r[1] for r in rows]
            )
        with self._transaction(run) as db:
            stored = self._stored(kind, keys, run)
            # The two plain cases of plan_batch, decided on the digest alone.
            fresh: list[ImportRow] = []
            same: list[int] = []
            rest: list[ImportRow] = []
            firsts: set[str] = set()
            suspended, by_import = Status.SUSPENDED.value, StatusOrigin.IMPORT.value
            for row in rows:
                key = row[0]
                if key in firsts:  # the same key again in this batch, no merge
                    counts.duplicates += 1
                    continue
                firsts.add(key)
                found = stored.get(key)
                if found is None:
                    fresh.append(row)
                    continue
                rowid, digest, status, origin, same_run = found
                if same_run:
                    if merge is None:
                        counts.duplicates += 1  # seen in an earlier batch of this run
                    else:
                        rest.append(row)
                elif row[2] == digest and not (
                    status == suspended and origin == by_import
                ):
                    same.append(rowid)
                else:
                    rest.append(row)  # updated or reactivated
            if fresh:
                db.executemany(insert, fresh)
                counts.added += len(fresh)
            counts.unchanged += len(same)
            self._mark_seen(kind, same, run)
            if rest:
                plan = plan_batch(
                    self._entries_of(kind, rest, run),
                    self._states(
                        kind, {r[0]: stored[r[0]] for r in rest}, run, merge is not None
                    ),
                    run.run_id,
                    merge,
                    [row[1] for row in rest],
                )
                counts += self._apply_plan(db, kind, plan, stored, run)
        return counts

    async def import_rows(
        self,
        kind: Kind,
        rows: Sequence[ImportRow],
        run: ImportRun,
        merge: Merge | None = None,
    ) -> BatchCounts:
        """:meth:`import_batch` for rows made by :func:`import_row` (all of
        ``kind``, from validated entries of ``run.source``, active): the
        same rules and counts, without rebuilding the entries that are new
        or unchanged."""
        return await self._run(self._import_rows, kind, rows, run, merge)

    def _suspend_absent(self, kind: Kind, run: ImportRun) -> list[str]:
        state = self._import_state(run)
        if kind in state.bulk_kinds:  # every entry of it is this run's
            return []
        seen = state.seen
        with self._transaction(run) as db:
            db.create_function(
                "unseen", 1, lambda rowid: rowid not in seen, deterministic=True
            )
            try:
                # Status is a column, not part of the stored content: one UPDATE.
                rows = db.execute(
                    "UPDATE entries SET status='suspended', status_origin='import'"
                    " WHERE kind=? AND source=? AND last_run<>? AND status='active'"
                    " AND unseen(rowid) RETURNING key",
                    (kind.value, run.source, run.run_id),
                ).fetchall()
            finally:
                db.create_function("unseen", 1, None)
        return [key for (key,) in rows]

    async def suspend_absent(self, kind: Kind, run: ImportRun) -> list[str]:
        return await self._run(self._suspend_absent, kind, run)

    # --- consent ledger ------------------------------------------------------

    def _change_consent(
        self, ins: str, change: ConsentChange, actor: str, now: datetime
    ) -> ConsentOutcome:
        with self._transaction() as db:
            patient = self._get_on(db, Kind.PATIENT, ins)
            if not isinstance(patient, Patient):
                raise EntryNotFoundError(Kind.PATIENT.value, ins)
            (last,) = db.execute(
                "SELECT coalesce(max(sequence), 0) FROM consent_ledger WHERE ins=?",
                (ins,),
            ).fetchone()
            done = next_record(
                patient, change, actor=actor, now=now, sequence=int(last) + 1
            )
            if done is None:
                return ConsentOutcome(patient, None)
            updated, record = done
            db.execute(
                "INSERT INTO consent_ledger (ins, sequence, record) VALUES (?,?,?)",
                (ins, record.sequence, json.dumps(record.as_json(), sort_keys=True)),
            )
            row = db.execute(
                "SELECT status_origin, last_run FROM entries WHERE kind=? AND key=?",
                (Kind.PATIENT.value, ins),
            ).fetchone()
            self._write_rows(
                db,
                [updated],
                [self._encoded_row(updated, StatusOrigin(row[0]), row[1])],
            )
            return ConsentOutcome(updated, record)

    async def change_consent(
        self, ins: str, change: ConsentChange, *, actor: str, now: datetime
    ) -> ConsentOutcome:
        canonical = canonical_key(Kind.PATIENT, ins)
        return await self._run(self._change_consent, canonical, change, actor, now)

    def _consent_history(self, ins: str) -> list[ConsentRecord]:
        rows = self._db.execute(
            "SELECT record FROM consent_ledger WHERE ins=? ORDER BY sequence", (ins,)
        ).fetchall()
        return [ConsentRecord.from_json(json.loads(text)) for (text,) in rows]

    async def consent_history(self, ins: str) -> list[ConsentRecord]:
        canonical = canonical_key(Kind.PATIENT, ins)
        return await self._run(self._consent_history, canonical)

    def _get_meta(self, name: str) -> str | None:
        row = self._db.execute(
            "SELECT value FROM meta WHERE name=?", (name,)
        ).fetchone()
        return None if row is None else str(row[0])

    async def get_meta(self, name: str) -> str | None:
        return await self._run(self._get_meta, name)

    def _set_meta(self, name: str, value: str) -> None:
        if self._db.in_transaction:
            self._refuse_during_first_import(None)
        self._db.execute(
            "INSERT OR REPLACE INTO meta (name, value) VALUES (?,?)", (name, value)
        )

    async def set_meta(self, name: str, value: str) -> None:
        await self._run(self._set_meta, name, value)
