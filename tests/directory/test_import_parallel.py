"""Parsing in a separate process gives the same import as parsing in one."""

from __future__ import annotations

import io
import marshal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from directory.importers import ImportFileError, ImportReport, import_file
from directory.importers import _parser as parser
from directory.importers._run import FRAME_HEADER
from directory.model import Kind
from directory.sqlite import SqliteDirectory

if TYPE_CHECKING:
    from directory.model import Entry

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "conf/demo"
BAD = ROOT / "tests/data/annuaire/bad"
MSSANTE = "Extraction_Correspondance_MSSante_202611220300.txt"
RPPS = "PS_LibreAcces_Personne_activite_202611220300.txt"


def summary(report: ImportReport) -> dict[str, Any]:
    return {
        "rows": report.rows,
        "rejected": report.rejected,
        "rejects": report.rejects,
        "encoding": report.encoding,
        "fallback_lines": report.fallback_lines,
        "kinds": {k: (r.counts, r.suspended) for k, r in report.kinds.items()},
    }


async def import_twice(
    tmp_path: Path, path: Path, fmt: str, *, parallel: bool, batch_size: int
) -> tuple[list[dict[str, Any]], list[int], dict[Kind, list[Entry]]]:
    d = await SqliteDirectory.open(tmp_path / f"{parallel}.sqlite3")
    try:
        seen: list[int] = []
        reports = []
        for _ in range(2):
            report = await import_file(
                d,
                path,
                "mssante" if fmt == "mssante" else "rpps",
                batch_size=batch_size,
                progress=seen.append,
                parallel=parallel,
            )
            reports.append(summary(report))
        stored = {k: [e async for e in d.entries(k)] for k in Kind}
    finally:
        await d.close()
    return reports, seen, stored


@pytest.mark.parametrize(
    ("path", "fmt"),
    [
        (DEMO / MSSANTE, "mssante"),
        (BAD / MSSANTE, "mssante"),
        (DEMO / RPPS, "rpps"),
        (BAD / RPPS, "rpps"),
    ],
    ids=["mssante", "mssante-rejects", "rpps", "rpps-rejects"],
)
async def test_parallel_import_reports_stores_and_progresses_as_in_one_process(
    tmp_path: Path, path: Path, fmt: str
) -> None:
    one = await import_twice(tmp_path, path, fmt, parallel=False, batch_size=7)
    two = await import_twice(tmp_path, path, fmt, parallel=True, batch_size=7)

    assert two == one
    reports, _, stored = two
    assert reports[0]["rows"] > 0
    assert sum(map(len, stored.values())) > 0


async def test_parallel_import_of_missing_file_fails_before_writing(
    tmp_path: Path,
) -> None:
    d = await SqliteDirectory.open(tmp_path / "d.sqlite3")
    try:
        with pytest.raises(FileNotFoundError):
            await import_file(d, tmp_path / "absent.txt", "mssante", parallel=True)
        assert await d.count(Kind.MAILBOX) == 0
    finally:
        await d.close()


def frames(data: bytes) -> list[Any]:
    out, view = [], memoryview(data)
    while view:
        (size,) = FRAME_HEADER.unpack(view[: FRAME_HEADER.size])
        view = view[FRAME_HEADER.size :]
        out.append(marshal.loads(view[:size]))  # noqa: S302 - own bytes
        view = view[size:]
    return out


def test_parser_frames_end_with_the_row_count(tmp_path: Path) -> None:
    out = io.BytesIO()

    parser.run(DEMO / MSSANTE, "mssante", out)

    *data, last = frames(out.getvalue())
    assert last == {"rows": 120, "fallback_lines": 0}
    kinds = {kind for _, by_kind in data for kind in by_kind}
    assert kinds == {"mailbox", "organisation"}
    _, by_kind = data[-1]
    assert by_kind["mailbox"][1][-1] == 120  # rows read when the last entry came out


def test_parser_reports_an_unreadable_file_as_failed(tmp_path: Path) -> None:
    out = io.BytesIO()

    parser.run(tmp_path / "absent.txt", "mssante", out)

    (last,) = frames(out.getvalue())
    assert "FileNotFoundError" in last["failed"]


async def test_parser_failure_surfaces_as_import_file_error(tmp_path: Path) -> None:
    # The header is fine (checked here), the parser then finds a bad zip.
    path = tmp_path / "x.txt"
    path.write_bytes((DEMO / MSSANTE).read_bytes())
    d = await SqliteDirectory.open(tmp_path / "d.sqlite3")
    try:
        items = parser_items(path)
        path.unlink()  # gone before the parsing process opens it
        with pytest.raises(ImportFileError, match="FileNotFoundError"):
            async for _ in items:
                pass
        await items.aclose()
    finally:
        await d.close()


def parser_items(path: Path) -> Any:  # noqa: ANN401 - the private _Items
    from directory.importers._run import _parse_in_process

    return _parse_in_process(path, "mssante")
