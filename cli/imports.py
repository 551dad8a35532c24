"""``mssante directory import-*``: run an importer and print its report."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from directory.importers import ImportReport, import_file, import_whitelist
from relay.audit import AuditEvent

if TYPE_CHECKING:
    import argparse

    from cli.main import Context
    from directory.protocol import Directory


def _report_record(report: ImportReport) -> dict[str, Any]:
    return {
        "file": str(report.path),
        "source": report.source,
        "run_id": report.run_id,
        "rows": report.rows,
        "elapsed_seconds": round(report.elapsed, 3),
        "encoding": report.encoding,
        "kinds": {
            kind.value: {
                "added": k.counts.added,
                "updated": k.counts.updated,
                "unchanged": k.counts.unchanged,
                "duplicates": k.counts.duplicates,
                "suspended": k.suspended,
                "suspended_keys": k.suspended_keys,
            }
            for kind, k in report.kinds.items()
        },
        "rejected": report.rejected,
        "rejects": [{"line": r.line, "reason": r.reason} for r in report.rejects],
    }


def _report_text(report: ImportReport) -> str:
    lines = [
        f"imported {report.path.name}: {report.rows} rows in {report.elapsed:.1f} s"
    ]
    lines += [
        f"  {kind.value + 's':<14} added {k.counts.added}, updated {k.counts.updated}, "
        f"unchanged {k.counts.unchanged}, duplicates {k.counts.duplicates}, suspended {k.suspended}"
        for kind, k in report.kinds.items()
    ]
    lines.append(f"  rejected       {report.rejected}")
    lines += [f"    {r}" for r in report.rejects]
    if report.rejected > len(report.rejects):
        lines.append(f"    ... and {report.rejected - len(report.rejects)} more")
    return "\n".join(lines)


async def run_import(
    ctx: Context, d: Directory, fmt: str, args: argparse.Namespace
) -> int:
    if fmt == "whitelist":
        result = await import_whitelist(d, args.file, expected_sha256=args.sha256)
        whitelist = result.to_record()
        ctx.audit(
            AuditEvent.WHITELIST_IMPORTED,
            actor="cli",
            **{k: v for k, v in whitelist.items() if k != "rejects"},
        )
        ctx.emit(result.to_record(), result.describe())
        return 0
    show_progress = sys.stderr.isatty() and not args.no_progress and not ctx.as_json
    bar = tqdm(
        unit=" rows", unit_scale=True, disable=not show_progress, file=sys.stderr
    )
    done = 0

    def progress(rows: int) -> None:
        nonlocal done
        bar.update(rows - done)
        done = rows

    try:
        report = await import_file(
            d,
            args.file,
            "mssante" if fmt == "mssante" else "rpps",
            batch_size=args.batch_size,
            progress=progress,
        )
    finally:
        bar.close()
    ctx.audit(
        AuditEvent.DIRECTORY_IMPORTED,
        actor="cli",
        source=report.source,
        run_id=report.run_id,
        rows=report.rows,
        rejected=report.rejected,
        kinds={
            kind.value: {
                "added": k.counts.added,
                "updated": k.counts.updated,
                "unchanged": k.counts.unchanged,
                "suspended": k.suspended,
            }
            for kind, k in report.kinds.items()
        },
    )
    ctx.emit(_report_record(report), _report_text(report))
    return 0
