"""The row path of an import (sqlite backend).

Rows go to :meth:`SqliteDirectory.import_rows` as they are: the same rows,
counts and entries as the entry path (:meth:`Directory.import_batch`); a
first import is one transaction; a re-import decides on the digest.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from directory.errors import DirectoryUnavailableError, InvalidFieldError
from directory.importers import Format, ImportReport, import_file, mssante
from directory.importers._reader import ExtractionReader, open_extraction
from directory.importers._run import Reject, Tally, layout, parse, parse_rows
from directory.model import Kind, Status, encode_content, kind_of
from directory.sqlite import SqliteDirectory, import_row
from tests.directory import samples

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from directory.model import Entry
    from directory.protocol import BatchCounts, ImportRun, Merge
    from directory.sqlite import ImportRow

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "conf/demo"
BAD = ROOT / "tests/data/annuaire/bad"
MSSANTE = "Extraction_Correspondance_MSSante_202611220300.txt"
RPPS = "PS_LibreAcces_Personne_activite_202611220300.txt"
GOOD_ROWS = 120


def fields_of(path: Path) -> list[list[str]]:
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [f for f in (line.split("|") for line in lines) if len(f) == 31]


def reference(
    fields: list[str], known: set[str]
) -> tuple[ImportRow, ImportRow | None] | None:
    """parse_row, then import_row: what fast_rows must give (None: rejected)."""
    try:
        row = mssante.parse_row(fields, known)
    except InvalidFieldError:
        return None
    org = row.organisation
    return (
        import_row(row.mailbox, encode_content(row.mailbox)),
        None if org is None else import_row(org, encode_content(org)),
    )


@pytest.mark.parametrize("path", [DEMO / MSSANTE, BAD / MSSANTE], ids=["demo", "bad"])
def test_fast_mssante_rows_equal_parse_row_then_import_row(path: Path) -> None:
    known: set[str] = set()
    fast_count = 0
    for fields in fields_of(path):
        fast = mssante.fast_rows(fields, known)
        ref = reference(fields, known)
        if fast is not None:
            fast_count += 1
            assert fast == ref
        if ref is not None and ref[1] is not None:
            known.add(ref[1][0])
    if path.parent == DEMO:
        assert fast_count == GOOD_ROWS  # the plain rows all take the fast path


# Text a field can hold: no separator, no line end.
FIELD_TEXT = st.text(
    st.characters(blacklist_characters="|\r\n", blacklist_categories=["Cs"]),
    max_size=40,
)


@given(
    row=st.sampled_from(fields_of(DEMO / MSSANTE)),
    column=st.integers(min_value=0, max_value=30),
    value=FIELD_TEXT | st.sampled_from(["PER", "ORG", "CAB", "APP", "", " 1", "5"]),
)
def test_fast_mssante_rows_of_any_field_value_agree_or_step_aside(
    row: list[str], column: int, value: str
) -> None:
    fields = list(row)
    fields[column] = value

    fast = mssante.fast_rows(fields, set())

    assert fast is None or fast == reference(fields, set())


class EntriesOnly:
    """The sqlite backend seen through the :class:`Directory` protocol only
    (no row path): what an import does with any other backend."""

    def __init__(self, inner: SqliteDirectory) -> None:
        self._inner = inner

    async def import_batch(
        self,
        entries: Sequence[Entry],
        run: ImportRun,
        merge: Merge | None = None,
        *,
        contents: Sequence[str] | None = None,
    ) -> BatchCounts:
        return await self._inner.import_batch(entries, run, merge, contents=contents)

    async def suspend_absent(self, kind: Kind, run: ImportRun) -> list[str]:
        return await self._inner.suspend_absent(kind, run)


def summary(report: ImportReport) -> dict[str, Any]:
    return {
        "rows": report.rows,
        "rejects": report.rejects,
        "kinds": {
            k: (r.counts, r.suspended, r.suspended_keys)
            for k, r in report.kinds.items()
        },
    }


def variant(tmp_path: Path, source: Path, encoding: str) -> Path:
    """The file with its 5th data row removed and the 6th changed (a name)."""
    lines = source.read_text(encoding=encoding).splitlines()
    changed = lines[6].split("|")
    changed[9] = changed[9] + "-NOUVEAU"  # MSSanté: last name; RPPS: first name
    out = [*lines[:5], "|".join(changed), *lines[7:]]
    path = tmp_path / f"v2-{source.name}"
    path.write_bytes(("\n".join(out) + "\n").encode(encoding))
    return path


async def import_sequence(
    tmp_path: Path, name: str, files: list[Path], fmt: str, *, rows: bool
) -> tuple[list[dict[str, Any]], dict[Kind, list[Entry]]]:
    d = await SqliteDirectory.open(tmp_path / f"{name}.sqlite3")
    target: Any = d if rows else EntriesOnly(d)
    try:
        reports = []
        for path in files:
            report = await import_file(
                target,
                path,
                "mssante" if fmt == "mssante" else "rpps",
                batch_size=7,
                parallel=False,
            )
            reports.append(summary(report))
        stored = {k: [e async for e in d.entries(k)] for k in Kind}
    finally:
        await d.close()
    return reports, stored


@pytest.mark.parametrize(
    ("source", "fmt", "encoding"),
    [
        (DEMO / MSSANTE, "mssante", "utf-8"),
        (BAD / MSSANTE, "mssante", "utf-8"),
        (DEMO / RPPS, "rpps", "cp1252"),
        (BAD / RPPS, "rpps", "cp1252"),
    ],
    ids=["mssante", "mssante-rejects", "rpps", "rpps-rejects"],
)
async def test_row_path_reports_and_stores_as_the_entry_path(
    tmp_path: Path, source: Path, fmt: str, encoding: str
) -> None:
    # first import, the same again, a changed file (update, suspension), back
    files = [source, source, variant(tmp_path, source, encoding), source]

    by_rows = await import_sequence(tmp_path, "rows", files, fmt, rows=True)
    by_entries = await import_sequence(tmp_path, "entries", files, fmt, rows=False)

    assert by_rows == by_entries
    reports, stored = by_rows
    assert reports[0]["rows"] > 0
    assert sum(map(len, stored.values())) > 0


async def test_reimport_detects_a_changed_field_by_its_digest(tmp_path: Path) -> None:
    lines = (DEMO / MSSANTE).read_text(encoding="utf-8").splitlines()
    fields = lines[3].split("|")
    fields[mssante.PROFESSION] = "Pédiatre"
    changed = tmp_path / "changed.txt"
    changed.write_text("\n".join([*lines[:3], "|".join(fields), *lines[4:]]) + "\n")
    d = await SqliteDirectory.open(tmp_path / "d.sqlite3")
    try:
        await import_file(d, DEMO / MSSANTE, "mssante")

        report = await import_file(d, changed, "mssante")

        assert (report.added, report.updated, report.unchanged) == (
            0,
            1,
            GOOD_ROWS - 1,
        )
        box = await d.mailbox(fields[mssante.ADDRESS])
        assert box is not None
        assert box.profession == "Pédiatre"
    finally:
        await d.close()


def stop_at(rows: int) -> Callable[[int], None]:
    def progress(read: int) -> None:
        if read >= rows:
            msg = "stopped by the test"
            raise RuntimeError(msg)

    return progress


async def test_failed_first_import_leaves_no_entry(tmp_path: Path) -> None:
    d = await SqliteDirectory.open(tmp_path / "d.sqlite3")
    try:
        with pytest.raises(RuntimeError, match="stopped"):
            await import_file(
                d, DEMO / MSSANTE, "mssante", batch_size=10, progress=stop_at(40)
            )

        assert await d.count(Kind.MAILBOX) == 0
        assert await d.count(Kind.ORGANISATION) == 0
        report = await import_file(d, DEMO / MSSANTE, "mssante")
        assert report.added == GOOD_ROWS
    finally:
        await d.close()


def test_first_import_killed_half_way_leaves_no_entry(tmp_path: Path) -> None:
    db = tmp_path / "d.sqlite3"
    script = f"""
import asyncio, os, signal
from pathlib import Path
from directory.importers import import_file
from directory.sqlite import SqliteDirectory

def progress(rows):
    if rows >= 60:
        os.kill(os.getpid(), signal.SIGKILL)

async def main():
    d = await SqliteDirectory.open(Path({str(db)!r}))
    await import_file(d, Path({str(DEMO / MSSANTE)!r}), "mssante", batch_size=10,
                      progress=progress, parallel=False)

asyncio.run(main())
"""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, check=False, timeout=60
    )
    assert done.returncode == -9  # killed in the middle, as intended

    async def check() -> tuple[int, int]:
        d = await SqliteDirectory.open(db)
        try:
            before = await d.count(Kind.MAILBOX)
            report = await import_file(d, DEMO / MSSANTE, "mssante")
            return before, report.added
        finally:
            await d.close()

    assert asyncio.run(check()) == (0, GOOD_ROWS)


async def test_failed_reimport_keeps_its_committed_batches(tmp_path: Path) -> None:
    lines = (DEMO / MSSANTE).read_text(encoding="utf-8").splitlines()
    fields = lines[2].split("|")
    fields[mssante.PROFESSION] = "Pédiatre"
    changed = tmp_path / "changed.txt"
    changed.write_text("\n".join([*lines[:2], "|".join(fields), *lines[3:]]) + "\n")
    d = await SqliteDirectory.open(tmp_path / "d.sqlite3")
    try:
        await import_file(d, DEMO / MSSANTE, "mssante")

        with pytest.raises(RuntimeError, match="stopped"):
            await import_file(
                d, changed, "mssante", batch_size=10, progress=stop_at(40)
            )

        box = await d.mailbox(fields[mssante.ADDRESS])
        assert box is not None
        assert box.profession == "Pédiatre"  # its batch was committed
        suspended = [
            e async for e in d.entries(Kind.MAILBOX) if e.status is not Status.ACTIVE
        ]
        assert suspended == []  # a failed run suspends nothing
    finally:
        await d.close()


async def test_import_beside_entries_of_its_kind_keeps_them(tmp_path: Path) -> None:
    d = await SqliteDirectory.open(tmp_path / "d.sqlite3")
    try:
        manual = samples.mailbox("manual@medecin.mssante.fr")
        await d.add(manual)

        report = await import_file(d, DEMO / MSSANTE, "mssante")

        assert (report.added, report.suspended) == (GOOD_ROWS, 0)
        assert await d.mailbox("manual@medecin.mssante.fr") == manual
        assert await d.count(Kind.MAILBOX) == GOOD_ROWS + 1
    finally:
        await d.close()


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        (DEMO / MSSANTE, "mssante"),
        (BAD / MSSANTE, "mssante"),
        (DEMO / RPPS, "rpps"),
        (BAD / RPPS, "rpps"),
        (BAD / "PS_LibreAcces_Personne_activite_rejects.txt", "rpps"),
    ],
    ids=["mssante", "mssante-bad", "rpps", "rpps-bad", "rpps-rejects"],
)
def test_parse_rows_gives_the_rows_of_parse(path: Path, fmt: Format) -> None:
    def items(make: Callable[[ExtractionReader, Tally], list[Any]]) -> list[Any]:
        with open_extraction(path) as stream:
            return make(ExtractionReader(stream, layout(fmt), path.name), Tally())

    def reference(reader: ExtractionReader, tally: Tally) -> list[Any]:
        return [
            (rows, "", (item.line, item.reason))
            if isinstance(item, Reject)
            else (rows, kind_of(item).value, import_row(item, encode_content(item)))
            for rows, item in parse(reader, fmt, tally)
        ]

    def fast(reader: ExtractionReader, tally: Tally) -> list[Any]:
        return list(parse_rows(reader, fmt, tally))

    assert items(fast) == items(reference)


async def test_other_writes_are_refused_while_a_first_import_runs(
    tmp_path: Path,
) -> None:
    d = await SqliteDirectory.open(tmp_path / "d.sqlite3")
    try:
        started = asyncio.Event()
        importing = asyncio.create_task(
            import_file(
                d,
                DEMO / MSSANTE,
                "mssante",
                batch_size=10,
                progress=lambda _: started.set(),
                parallel=False,
            )
        )
        await started.wait()

        with pytest.raises(DirectoryUnavailableError, match="first import"):
            await d.add(samples.mailbox("manual@medecin.mssante.fr"))

        report = await importing
        assert report.added == GOOD_ROWS
        await d.add(samples.mailbox("manual@medecin.mssante.fr"))  # once it ended
        assert await d.count(Kind.MAILBOX) == GOOD_ROWS + 1
    finally:
        await d.close()
