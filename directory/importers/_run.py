"""Running an import of an extraction file into a :class:`Directory`.

Owns the loop that reads rows (:mod:`directory.importers._reader`), maps them
with the pure row parsers (:mod:`.mssante`, :mod:`.rpps`), sends them in
batches to :meth:`Directory.import_batch` and finishes with
:meth:`Directory.suspend_absent`; and the :class:`ImportReport` it returns.

What must stay true:

- Only the :class:`~directory.protocol.Directory` protocol is used, so one
  importer serves every backend.
- Nothing is written before the header is checked; a file-level error
  (:class:`~directory.importers.ImportFileError`) raises before any batch.
- A bad row never stops the import: it is counted and, for the first
  :data:`MAX_REJECT_DETAILS`, recorded with its line number and reason.
- Memory is bounded by the batch size plus, for the MSSanté file, the set of
  structure ids seen (tens of thousands), never by the number of rows.
- Each batch is one transaction (the backend's); absent entries are suspended
  only after the last batch succeeded, so a failed run suspends nothing.
- Idempotent: importing the same file twice gives only ``unchanged`` the
  second time and suspends nothing. (One exception, inherent to batching: an
  RPPS practitioner whose rows are *not adjacent* and fall into different
  batches is compared partially in the first batch and counted ``updated``;
  the real file lists a practitioner's rows together.)
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from directory.errors import DirectoryError, InvalidFieldError
from directory.importers import mssante, rpps
from directory.importers._reader import UTF8, ExtractionReader, open_extraction
from directory.model import SOURCE_MSSANTE, SOURCE_RPPS, Entry, Kind, Practitioner
from directory.protocol import BatchCounts, Directory, ImportRun, Merge

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

Format = Literal["mssante", "rpps"]
FORMATS: Final[tuple[Format, ...]] = ("mssante", "rpps")
DEFAULT_BATCH_SIZE: Final = 5000  # rows per transaction: ~1-3 MB of entries
MAX_REJECT_DETAILS: Final = 1000  # rejects kept with their reason; all are counted
MAX_LISTED_KEYS: Final = 1000  # suspended keys listed in the report; all are counted


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


class _Batcher:
    """Buffers entries of one kind and sends them by ``batch_size``.

    One batch per kind is in flight while the next one is parsed (the backend
    works in its own thread); the next batch is sent only once the previous
    one is committed, so batches of one kind never overlap, whatever the
    backend's thread pool.
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
        self._run = run
        self._report = report
        self._size = batch_size
        self._merge = merge
        self._in_flight: asyncio.Task[BatchCounts] | None = None
        self.pending: list[Entry] = []

    async def add(self, entry: Entry) -> bool:
        """Buffer one entry; True when that sent a batch."""
        self.pending.append(entry)
        if len(self.pending) < self._size:
            return False
        await self._send()
        return True

    async def _wait(self) -> None:
        task, self._in_flight = self._in_flight, None
        if task is not None:
            self._report.counts += await task

    async def _send(self) -> None:
        await self._wait()
        if self.pending:
            batch, self.pending = self.pending, []
            self._in_flight = asyncio.ensure_future(
                self._directory.import_batch(batch, self._run, self._merge)
            )

    async def flush(self) -> None:
        """Send what is buffered and wait until every batch is committed."""
        await self._send()
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
    with open_extraction(path) as stream:
        layout = mssante.LAYOUT if fmt == "mssante" else rpps.LAYOUT
        reader = ExtractionReader(stream, layout, path.name)
        report.encoding = reader.encoding
        if fmt == "mssante":
            batchers = [
                _Batcher(directory, run, report.kind(Kind.MAILBOX), batch_size),
                _Batcher(directory, run, report.kind(Kind.ORGANISATION), batch_size),
            ]
            work = _mssante(reader, report, batchers[0], batchers[1], progress)
        else:
            batchers = [
                _Batcher(
                    directory,
                    run,
                    report.kind(Kind.PRACTITIONER),
                    batch_size,
                    rpps.merge,
                )
            ]
            work = _rpps(reader, report, batchers[0], progress)
        try:
            await work
        except BaseException:
            for batcher in batchers:
                await batcher.abandon()
            raise
        report.fallback_lines = reader.fallback_lines
    if suspend:
        for batcher in batchers:
            await batcher.suspend_absent()
    report.elapsed = time.monotonic() - started
    return report


async def _mssante(
    reader: ExtractionReader,
    report: ImportReport,
    mailboxes: _Batcher,
    organisations: _Batcher,
    progress: Callable[[int], None] | None,
) -> None:
    known: set[str] = set()  # structures whose organisation is already queued
    for number, item in reader:
        report.rows += 1
        if isinstance(item, str):
            report.reject(number, item)
            continue
        try:
            row = mssante.parse_row(item, known)
        except InvalidFieldError as exc:
            report.reject(number, str(exc))
            continue
        if row.organisation is not None:
            known.add(row.organisation.structure_id)
            await organisations.add(row.organisation)
        if await mailboxes.add(row.mailbox) and progress is not None:
            progress(report.rows)
    await mailboxes.flush()
    await organisations.flush()
    if progress is not None:
        progress(report.rows)


async def _rpps(
    reader: ExtractionReader,
    report: ImportReport,
    practitioners: _Batcher,
    progress: Callable[[int], None] | None,
) -> None:
    # Consecutive rows of one practitioner are merged here, so that a
    # practitioner is never split across two batches.
    current: Practitioner | None = None
    current_key = ""
    for number, item in reader:
        report.rows += 1
        if isinstance(item, str):
            report.reject(number, item)
            continue
        try:
            practitioner = rpps.parse_row(item)
        except InvalidFieldError as exc:
            report.reject(number, str(exc))
            continue
        key = practitioner.national_id
        if current is not None and key == current_key:
            merged = rpps.merge(current, practitioner)
            assert isinstance(merged, Practitioner)  # noqa: S101 - merge keeps the kind
            current = merged
            continue
        if (
            current is not None
            and await practitioners.add(current)
            and progress is not None
        ):
            progress(report.rows)
        current, current_key = practitioner, key
    if current is not None:
        await practitioners.add(current)
    await practitioners.flush()
    if progress is not None:
        progress(report.rows)
