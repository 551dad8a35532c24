"""Running an import of an extraction file into a :class:`Directory`.

Owns the loop that reads rows (:mod:`directory.importers._reader`), maps them
with the pure row parsers (:mod:`.mssante`, :mod:`.rpps`), sends them in
batches to the backend and finishes with :meth:`Directory.suspend_absent`;
and the :class:`ImportReport` it returns.

What must stay true:

- One importer serves every backend: rows go to a backend that takes them
  as they are (:class:`RowImport`, the sqlite backend) with
  ``import_rows``, to any other as entries with
  :meth:`Directory.import_batch`; the rules and counts are those of
  :func:`directory.protocol.plan_batch` either way (a test compares both).
- Nothing is written before the header is checked; a file-level error
  (:class:`~directory.importers.ImportFileError`) raises before any batch.
- A bad row never stops the import: it is counted and, for the first
  :data:`MAX_REJECT_DETAILS`, recorded with its line number and reason.
- Memory is bounded by the batch size plus, for the MSSanté file, the set of
  structure ids seen (tens of thousands), never by the number of rows; with
  a parsing process, plus :data:`_READ_AHEAD_FRAMES` frames of
  :data:`CHUNK_ITEMS` items read ahead.
- Each batch is one transaction (the backend's) -- a :class:`RowImport`
  backend may make a first import one transaction (:meth:`RowImport.
  begin_import`) --; absent entries are suspended only after the last
  batch succeeded, so a failed run suspends nothing.
- The same rows give the same items, batches, counts and progress calls
  whether parsing runs in this process or in a parsing process beside it
  (``parallel``): :func:`parse_rows` is the one place rows become items. It
  gives the rows of :func:`parse`'s entries (the reference, entries built
  and validated by the model), without building them for plainly valid
  rows (a test compares both on the sample files).
- Idempotent: importing the same file twice gives only ``unchanged`` the
  second time and suspends nothing. (One exception, inherent to batching: an
  RPPS practitioner whose rows are *not adjacent* and fall into different
  batches is compared partially in the first batch and counted ``updated``;
  the real file lists a practitioner's rows together.)
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import marshal
import os
import struct
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, runtime_checkable

from directory.errors import DirectoryError, InvalidFieldError
from directory.importers import mssante, rpps
from directory.importers._errors import ImportFileError
from directory.importers._reader import UTF8, ExtractionReader, open_extraction
from directory.model import (
    SOURCE_MSSANTE,
    SOURCE_RPPS,
    Entry,
    Kind,
    Practitioner,
    Status,
    decode_content,
    encode_content,
)
from directory.protocol import BatchCounts, Directory, ImportRun, Merge
from directory.sqlite import import_row

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from directory.sqlite import ImportRow

Format = Literal["mssante", "rpps"]
FORMATS: Final[tuple[Format, ...]] = ("mssante", "rpps")
DEFAULT_BATCH_SIZE: Final = 5000  # rows per transaction: ~1-3 MB of entries
MAX_REJECT_DETAILS: Final = 1000  # rejects kept with their reason; all are counted
MAX_LISTED_KEYS: Final = 1000  # suspended keys listed in the report; all are counted
# From this file size on, rows are parsed in a process of their own (parsing
# and the backend's writes then share the machine's cores); below it, the
# ~0.3 s to start that process would cost more than it saves.
PARALLEL_MIN_BYTES: Final = 8 * 1024 * 1024
# Parsed items per chunk (and per frame from the parsing process, ~1 MB).
CHUNK_ITEMS: Final = 2000
# Frames from the parsing process: a 4-byte big-endian length, then the payload.
FRAME_HEADER: Final = struct.Struct(">I")
# The directory containing the ``directory`` package, for the parsing process.
_PACKAGE_ROOT: Final = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, slots=True)
class Reject:
    """A row that was not imported: its line number (header = 1) and why."""

    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass(slots=True, kw_only=True)
class KindReport:
    """Counts for one kind of entry of an import."""

    kind: Kind
    counts: BatchCounts = field(default_factory=BatchCounts)
    suspended: int = 0
    suspended_keys: list[str] = field(default_factory=list)  # first MAX_LISTED_KEYS


@dataclass(slots=True, kw_only=True)
class ImportReport:
    """What an import did.

    ``added``, ``updated``, ``unchanged``, ``duplicates``, ``suspended`` are
    those of the file's main kind (mailboxes for MSSanté, practitioners for
    RPPS); ``kinds`` holds every kind written (MSSanté: organisations too).
    """

    source: str
    path: Path
    run_id: str
    main: Kind
    kinds: dict[Kind, KindReport] = field(default_factory=dict)
    encoding: str = UTF8  # the encoding of the header row (see _reader)
    fallback_lines: int = 0  # data lines decoded in the other encoding
    rows: int = 0  # data rows read (header and blank lines excluded)
    rejected: int = 0
    rejects: list[Reject] = field(default_factory=list)  # first MAX_REJECT_DETAILS
    elapsed: float = 0.0  # seconds

    def kind(self, kind: Kind) -> KindReport:
        return self.kinds.setdefault(kind, KindReport(kind=kind))

    def reject(self, line: int, reason: str) -> None:
        self.rejected += 1
        if len(self.rejects) < MAX_REJECT_DETAILS:
            self.rejects.append(Reject(line, reason))

    @property
    def added(self) -> int:
        return self.kind(self.main).counts.added

    @property
    def updated(self) -> int:
        return self.kind(self.main).counts.updated

    @property
    def unchanged(self) -> int:
        return self.kind(self.main).counts.unchanged

    @property
    def duplicates(self) -> int:
        return self.kind(self.main).counts.duplicates

    @property
    def suspended(self) -> int:
        return self.kind(self.main).suspended

    @property
    def suspended_keys(self) -> list[str]:
        return self.kind(self.main).suspended_keys


@runtime_checkable
class RowImport(Protocol):
    """What a backend offers beside :class:`Directory` to take an import's
    rows as they are (:data:`directory.sqlite.ImportRow`), without the
    entries being rebuilt: :class:`directory.sqlite.SqliteDirectory`.

    :meth:`begin_import` and :meth:`end_import` bracket a run, so that the
    backend may make a first import one transaction.
    """

    async def begin_import(self, run: ImportRun, kinds: Sequence[Kind]) -> None: ...

    async def import_rows(
        self,
        kind: Kind,
        rows: Sequence[ImportRow],
        run: ImportRun,
        merge: Merge | None = None,
    ) -> BatchCounts: ...

    async def end_import(self, run: ImportRun, *, commit: bool) -> None: ...


class _Batcher:
    """Buffers the rows of one kind and sends them by ``batch_size``.

    One batch per kind is in flight while the next one is parsed (the backend
    works in its own thread); the next batch is sent only once the previous
    one is committed, so batches of one kind never overlap, whatever the
    backend's thread pool. A :class:`RowImport` backend takes the rows; any
    other gets the entries, rebuilt from their content (validated when they
    were parsed), with that content.
    """

    def __init__(
        self,
        directory: Directory,
        run: ImportRun,
        report: KindReport,
        batch_size: int,
        merge: Merge | None = None,
    ) -> None:
        self._directory = directory
        self._rows = directory if isinstance(directory, RowImport) else None
        self._run = run
        self._report = report
        self.kind = report.kind
        self.size = batch_size
        self._merge = merge
        self._in_flight: asyncio.Task[BatchCounts] | None = None
        self.pending: list[ImportRow] = []

    async def _wait(self) -> None:
        task, self._in_flight = self._in_flight, None
        if task is not None:
            self._report.counts += await task

    async def send(self) -> None:
        await self._wait()
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        if self._rows is not None:
            sent = self._rows.import_rows(self.kind, batch, self._run, self._merge)
        else:
            contents = [row[1] for row in batch]
            entries = [
                decode_content(self.kind, c, Status.ACTIVE, self._run.source)
                for c in contents
            ]
            sent = self._directory.import_batch(
                entries, self._run, self._merge, contents=contents
            )
        self._in_flight = asyncio.ensure_future(sent)

    async def flush(self) -> None:
        """Send what is buffered and wait until every batch is committed."""
        await self.send()
        await self._wait()

    async def abandon(self) -> None:
        """After a failure: let the batch in flight finish, ignore its result."""
        task, self._in_flight = self._in_flight, None
        if task is not None:
            with contextlib.suppress(DirectoryError):
                await task

    async def suspend_absent(self) -> None:
        keys = await self._directory.suspend_absent(self._report.kind, self._run)
        self._report.suspended = len(keys)
        self._report.suspended_keys = sorted(keys)[:MAX_LISTED_KEYS]


async def import_file(
    directory: Directory,
    path: Path,
    fmt: Format,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int], None] | None = None,
    run_id: str | None = None,
    suspend: bool = True,
    parallel: bool | None = None,
) -> ImportReport:
    """Import one extraction file (``.txt`` or ``.zip``) into ``directory``.

    Args:
        fmt: ``"mssante"`` (Extraction_Correspondance_MSSante: mailboxes and
            their organisations) or ``"rpps"`` (PS_LibreAcces_Personne_activite:
            practitioners with their activities).
        batch_size: entries per :meth:`Directory.import_batch` transaction.
        progress: called with the number of data rows read after each batch.
        run_id: the import run's unique id (default: a random one).
        suspend: suspend entries of the source absent from the file (default);
            False for a partial file.
        parallel: parse rows in a separate process while this one writes
            (default: for files of :data:`PARALLEL_MIN_BYTES` and more). The
            report is the same either way.

    Returns:
        The :class:`ImportReport`.

    Raises:
        ImportFileError: the file cannot be imported (wrong header, bad zip);
            raised before anything is written.
        DirectoryUnavailableError: the backend failed; batches already
            committed stay, nothing is suspended.
        OSError: the file cannot be read.
        ValueError: an unknown ``fmt`` or a ``batch_size`` below 1 (a bug).
    """
    if fmt not in FORMATS:
        msg = f"unknown extraction format {fmt!r} (expected one of {FORMATS})"
        raise ValueError(msg)
    if batch_size < 1:
        msg = f"batch_size must be at least 1, got {batch_size}"
        raise ValueError(msg)
    started = time.monotonic()
    source = SOURCE_MSSANTE if fmt == "mssante" else SOURCE_RPPS
    run = ImportRun(source, run_id or f"{source}-{uuid.uuid4().hex}")
    main = Kind.MAILBOX if fmt == "mssante" else Kind.PRACTITIONER
    report = ImportReport(source=source, path=path, run_id=run.run_id, main=main)
    report.kind(main)
    if fmt == "mssante":
        batchers = {
            Kind.MAILBOX: _Batcher(
                directory, run, report.kind(Kind.MAILBOX), batch_size
            ),
            Kind.ORGANISATION: _Batcher(
                directory, run, report.kind(Kind.ORGANISATION), batch_size
            ),
        }
    else:
        batchers = {
            Kind.PRACTITIONER: _Batcher(
                directory, run, report.kind(Kind.PRACTITIONER), batch_size, rpps.merge
            )
        }
    rows = directory if isinstance(directory, RowImport) else None
    with (
        _fewer_collections(),
        open_extraction(path) as stream,  # the header is checked here, first
    ):
        reader = ExtractionReader(stream, layout(fmt), path.name)
        report.encoding = reader.encoding
        if parallel is None:
            parallel = _file_size(path) >= PARALLEL_MIN_BYTES
        if parallel:
            items: _Items = _parse_in_process(path, fmt)
        else:
            items = _parse_here(reader, fmt)
        if rows is not None:
            await rows.begin_import(run, list(batchers))
        try:
            await _feed(items, report, batchers, progress)
            if suspend:
                for batcher in batchers.values():
                    await batcher.suspend_absent()
        except BaseException:
            for batcher in batchers.values():
                await batcher.abandon()
            if rows is not None:
                with contextlib.suppress(DirectoryError):  # the first error wins
                    await rows.end_import(run, commit=False)
            raise
        finally:
            await items.aclose()
    if rows is not None:
        await rows.end_import(run, commit=True)
    report.elapsed = time.monotonic() - started
    return report


# An import allocates millions of short-lived objects (entries, rows) and
# keeps only a batch or two: collecting the youngest generation every 700
# allocations only walks them again and again. Raised for the import's
# duration, then restored.
_IMPORT_GC_THRESHOLD: Final = 50_000


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    old = gc.get_threshold()
    gc.set_threshold(max(old[0], _IMPORT_GC_THRESHOLD), *old[1:])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def _file_size(path: Path) -> int:
    return path.stat().st_size


def layout(fmt: Format) -> Any:  # noqa: ANN401 - a _reader.Layout
    return mssante.LAYOUT if fmt == "mssante" else rpps.LAYOUT


@dataclass(slots=True)
class Tally:
    """What the reader saw, beside the items: data rows and fallback lines."""

    rows: int = 0
    fallback_lines: int = 0


# One parsed item: (data rows read so far, kind, row) for an entry -- its
# :data:`directory.sqlite.ImportRow` --, (data rows read so far, "", (line,
# reason)) for a rejected row. Builtins only: the parsing process sends them
# as they are (marshal).
_Item = tuple[int, str, Any]


def parse(
    reader: ExtractionReader, fmt: Format, tally: Tally
) -> Iterator[tuple[int, Entry | Reject]]:
    """The entries and rejects of a file's rows, in file order: the one place
    rows become entries (in this process or in the parsing process)."""
    yield from (_mssante if fmt == "mssante" else _rpps)(reader, tally)
    tally.fallback_lines = reader.fallback_lines


# Items by CHUNK_ITEMS, sorted out: (rejects as (line, reason), and for each
# kind its rows with, beside each, the data rows read when it came out). The
# importing process then handles a chunk with a few list operations, not
# one step per row. Builtins only (a frame of the parsing process).
_Chunk = tuple[list[tuple[int, str]], dict[str, tuple[list[Any], list[int]]]]


def chunks(items: Iterator[_Item]) -> Iterator[_Chunk]:
    """:func:`parse_rows`'s items by :data:`CHUNK_ITEMS`, sorted out by kind
    (each kind's rows, and the rejects, stay in file order)."""
    while True:
        rejects: list[tuple[int, str]] = []
        kinds: dict[str, tuple[list[Any], list[int]]] = {}
        taken = 0
        for rows, kind, row in itertools.islice(items, CHUNK_ITEMS):
            taken += 1
            if not kind:
                rejects.append(row)
                continue
            found = kinds.get(kind)
            if found is None:
                found = kinds[kind] = ([], [])
            found[0].append(row)
            found[1].append(rows)
        if not taken:
            return
        yield rejects, kinds


def parse_rows(reader: ExtractionReader, fmt: Format, tally: Tally) -> Iterator[_Item]:
    """The items of a file's rows, in file order: :func:`parse`'s entries as
    rows (:func:`directory.sqlite.import_row`), and its rejects. The one
    place rows become items, in this process or in the parsing process.

    MSSanté rows that :func:`.mssante.fast_rows` recognises skip the entries
    (the same rows, tested); the others take :func:`parse`'s path.
    """
    yield from (_mssante_rows if fmt == "mssante" else _rpps_rows)(reader, tally)
    tally.fallback_lines = reader.fallback_lines


_MAILBOX: Final = Kind.MAILBOX.value
_ORGANISATION: Final = Kind.ORGANISATION.value


def _mssante_rows(reader: ExtractionReader, tally: Tally) -> Iterator[_Item]:
    # As _mssante, row by row: a row's organisation (the first time its
    # structure is seen) comes before its mailbox.
    known: set[str] = set()
    fast = mssante.fast_rows
    for number, item in reader:
        tally.rows += 1
        rows = tally.rows
        if isinstance(item, str):
            yield rows, "", (number, item)
            continue
        made = fast(item, known)
        if made is None:
            try:
                row = mssante.parse_row(item, known)
            except InvalidFieldError as exc:
                yield rows, "", (number, str(exc))
                continue
            box = import_row(row.mailbox, encode_content(row.mailbox))
            org = row.organisation
            made = box, None if org is None else import_row(org, encode_content(org))
        box_row, org_row = made
        if org_row is not None:
            known.add(org_row[0])
            yield rows, _ORGANISATION, org_row
        yield rows, _MAILBOX, box_row


_PRACTITIONER: Final = Kind.PRACTITIONER.value


def _rpps_rows(reader: ExtractionReader, tally: Tally) -> Iterator[_Item]:
    # As _rpps: consecutive rows of one practitioner make one row (the later
    # row's identity, the activities in first-seen order, once each).
    fast = rpps.fast_row
    identity: rpps.Identity | None = None
    activities: list[rpps.ActivityValues] = []
    for number, item in reader:
        tally.rows += 1
        if isinstance(item, str):
            yield tally.rows, "", (number, item)
            continue
        made = fast(item)
        if made is None:
            try:
                made = rpps.values_of(rpps.parse_row(item))
            except InvalidFieldError as exc:
                yield tally.rows, "", (number, str(exc))
                continue
        new_identity, activity = made
        if identity is not None and new_identity[0] == identity[0]:
            identity = new_identity
            if activity not in activities:
                activities.append(activity)
            continue
        if identity is not None:
            yield tally.rows, _PRACTITIONER, rpps.practitioner_row(identity, activities)
        identity, activities = new_identity, [activity]
    if identity is not None:
        yield tally.rows, _PRACTITIONER, rpps.practitioner_row(identity, activities)


def _mssante(
    reader: ExtractionReader, tally: Tally
) -> Iterator[tuple[int, Entry | Reject]]:
    # A row's organisation (the first time its structure is seen) comes
    # before its mailbox.
    known: set[str] = set()  # structures whose organisation is already out
    for number, item in reader:
        tally.rows += 1
        if isinstance(item, str):
            yield tally.rows, Reject(number, item)
            continue
        try:
            row = mssante.parse_row(item, known)
        except InvalidFieldError as exc:
            yield tally.rows, Reject(number, str(exc))
            continue
        if row.organisation is not None:
            known.add(row.organisation.structure_id)
            yield tally.rows, row.organisation
        yield tally.rows, row.mailbox


def _rpps(
    reader: ExtractionReader, tally: Tally
) -> Iterator[tuple[int, Entry | Reject]]:
    # Consecutive rows of one practitioner are merged here, so that a
    # practitioner is never split across two batches.
    current: Practitioner | None = None
    current_key = ""
    for number, item in reader:
        tally.rows += 1
        if isinstance(item, str):
            yield tally.rows, Reject(number, item)
            continue
        try:
            practitioner = rpps.parse_row(item)
        except InvalidFieldError as exc:
            yield tally.rows, Reject(number, str(exc))
            continue
        key = practitioner.national_id
        if current is not None and key == current_key:
            merged = rpps.merge(current, practitioner)
            assert isinstance(merged, Practitioner)  # noqa: S101 - merge keeps the kind
            current = merged
            continue
        if current is not None:
            yield tally.rows, current
        current, current_key = practitioner, key
    if current is not None:
        yield tally.rows, current


class _Items:
    """Parsed items, from this process or from the parsing process."""

    def __init__(self) -> None:
        self.tally = Tally()

    def __aiter__(self) -> _Items:
        return self

    async def __anext__(self) -> _Chunk:
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Release what the items hold (the parsing process)."""


class _HereItems(_Items):
    def __init__(self, reader: ExtractionReader, fmt: Format) -> None:
        super().__init__()
        self._chunks = chunks(parse_rows(reader, fmt, self.tally))

    async def __anext__(self) -> _Chunk:
        chunk = next(self._chunks, None)
        if chunk is None:
            raise StopAsyncIteration
        return chunk


def _parse_here(reader: ExtractionReader, fmt: Format) -> _Items:
    return _HereItems(reader, fmt)


# --- the parsing process (directory.importers._parser) ------------------------


# Frames read ahead of the writes: the parser keeps working while a batch is
# being written (the pipe holds 1 MB, about one frame: see _parser).
_READ_AHEAD_FRAMES: Final = 4
# Buffer of the pipe's stream reader (asyncio's default is 64 KiB): a frame
# (~1 MB) is read in a few large reads, not in pauses and resumes.
_STREAM_LIMIT: Final = 4 * 1024 * 1024


class _ProcessItems(_Items):
    """Items from ``python -m directory.importers._parser`` (see its docstring).

    A reader task moves raw frames from the pipe to a bounded queue, so the
    parser is never blocked on the pipe while this process writes a batch.
    """

    def __init__(self, path: Path, fmt: Format) -> None:
        super().__init__()
        self._path = path
        self._fmt = fmt
        self._process: asyncio.subprocess.Process | None = None
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue(_READ_AHEAD_FRAMES)
        self._reader: asyncio.Task[None] | None = None
        self._done = False

    async def _start(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "directory.importers._parser",
            self._fmt,
            str(self._path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=_STREAM_LIMIT,
        )
        assert self._process.stdout is not None  # noqa: S101 - stdout=PIPE
        self._reader = asyncio.create_task(self._read(self._process.stdout))

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        try:
            while True:
                header = await stdout.readexactly(FRAME_HEADER.size)
                (size,) = FRAME_HEADER.unpack(header)
                await self._frames.put(await stdout.readexactly(size))
        except asyncio.IncompleteReadError as exc:
            if exc.partial:  # a frame cut short: the parser died mid-write
                await self._frames.put(None)
                return
        await self._frames.put(None)  # end of stream

    async def __anext__(self) -> _Chunk:
        if self._done:
            raise StopAsyncIteration
        if self._process is None:
            await self._start()
        frame = await self._frames.get()
        if frame is None:
            self._done = True
            msg = f"{self._path.name}: the parsing process ended before the file did"
            raise ImportFileError(msg)
        payload = marshal.loads(frame)  # noqa: S302 - from our own parsing process
        if isinstance(payload, dict):
            self._done = True
            if "failed" in payload:
                msg = f"{self._path.name}: {payload['failed']}"
                raise ImportFileError(msg)
            self.tally.rows = payload["rows"]
            self.tally.fallback_lines = payload["fallback_lines"]
            raise StopAsyncIteration
        chunk: _Chunk = payload
        return chunk

    async def aclose(self) -> None:
        process = self._process
        if process is None:
            return
        if process.returncode is None and not self._done:
            process.kill()
        if self._reader is not None:
            if not self._done:
                self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await process.wait()


def _parse_in_process(path: Path, fmt: Format) -> _Items:
    return _ProcessItems(path, fmt)


async def _feed(
    items: _Items,
    report: ImportReport,
    batchers: dict[Kind, _Batcher],
    progress: Callable[[int], None] | None,
) -> None:
    """Send parsed items to their batchers; progress after each main batch."""
    main = batchers[report.main]
    by_kind = {kind.value: batcher for kind, batcher in batchers.items()}
    async for rejects, kinds in items:
        for line, reason in rejects:
            report.reject(line, reason)
        for kind, (rows, read) in kinds.items():
            batcher = by_kind[kind]
            start = 0
            while start < len(rows):
                room = batcher.size - len(batcher.pending)
                batcher.pending += rows[start : start + room]
                start += room
                if len(batcher.pending) >= batcher.size:
                    await batcher.send()
                    if batcher is main and progress is not None:
                        progress(read[start - 1])  # rows read when it filled
    report.rows = items.tally.rows
    report.fallback_lines = items.tally.fallback_lines
    for batcher in batchers.values():
        await batcher.flush()
    if progress is not None:
        progress(report.rows)
