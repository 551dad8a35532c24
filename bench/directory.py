"""Benchmark of the trust directory: imports at national scale, lookup latency.

Owns area ``directory`` of ``python -m bench``. Measures, in one invocation,
each figure next to a reference run on the same data:

- import of the MSSanté extraction (536,000 rows) into sqlite, then of the
  same file again (every entry unchanged); reference: a raw ``sqlite3``
  ``executemany`` of the same rows into a bare table (the floor);
- import of the RPPS extraction (2,000,000 rows) into the same sqlite file;
  same kind of reference;
- lookup latency p50/p99 at that size: mailbox by address, practitioner by
  RPPS, ``resolve``; reference: the raw ``SELECT`` on the same file;
- the MSSanté import into the LDAP backend (a private slapd,
  :mod:`directory.slapd`), reference: ``ldapadd`` of the equivalent LDIF
  (:func:`directory.export.export_ldif`); and an LDAP mailbox lookup against
  a raw ``ldapsearch``-free baseline is left out (no ldap3 outside
  ``directory.ldap``). Skipped, saying why, when slapd is missing.

What must stay true: every import runs in a child process (``-m
bench.directory --child ...``) so that its peak RSS is its own, read from
``os.wait4`` (the largest of that process and the parsing process it starts,
not their sum), and so is its CPU time (user + sys of both: on a shared
machine it moves less than the wall time); the output ends with one ``BENCH directory <metric> ours=<n>
ref=<n> ratio=<ours/ref> unit=<unit>`` line per figure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from bench import generate
from bench.figures import Figure

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

GOAL_SECONDS: Final = 10.0  # 536k MSSanté rows into sqlite
GOAL_RSS_MB: Final = 200.0
REPO: Final = Path(__file__).resolve().parent.parent
QUICK_ROWS: Final = 20_000
DEFAULT_LOOKUPS: Final = 2000
DEFAULT_LDAP_ROWS: Final = 20_000  # ldap3 adds one entry per round trip


def _figure(metric: str, ours: float, ref: float, unit: str, note: str = "") -> Figure:
    return Figure("directory", metric, ours, ref, unit, note)


@dataclass(frozen=True, slots=True)
class ChildRun:
    seconds: float
    peak_rss_mb: float
    result: dict[str, object]
    cpu_seconds: float = 0.0  # user + sys, with the parsing process it waited for


def run_child(*args: str) -> ChildRun:
    """Run ``-m bench.directory --child ARGS``; wall time and its own peak RSS."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.directory", "--child", *args],
        stdout=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert proc.stdout is not None  # noqa: S101 - stdout=PIPE
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        msg = f"child {args[0]} failed with status {proc.returncode}"
        raise RuntimeError(msg)
    result = json.loads(out.decode().strip().splitlines()[-1])
    cpu = usage.ru_utime + usage.ru_stime
    return ChildRun(seconds, usage.ru_maxrss / 1024, result, cpu)  # KiB on Linux


# --- children ------------------------------------------------------------


async def _child_import(fmt: str, path: Path, db: Path) -> dict[str, object]:
    from directory.importers import import_file
    from directory.sqlite import SqliteDirectory

    d = await SqliteDirectory.open(db)
    try:
        report = await import_file(d, path, "mssante" if fmt == "mssante" else "rpps")
    finally:
        await d.close()
    return {
        "rows": report.rows,
        "added": report.added,
        "rejected": report.rejected,
        "duplicates": report.duplicates,
        "elapsed": report.elapsed,
    }


def _child_raw_sqlite(path: Path, db: Path, columns: int) -> dict[str, object]:
    """The floor: decode, split, executemany into a bare table, one commit per 5000."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    cols = ",".join(f"c{i} TEXT" for i in range(columns))
    conn.execute(f"CREATE TABLE rows ({cols})")
    sql = f"INSERT INTO rows VALUES ({','.join('?' * columns)})"  # noqa: S608
    rows = 0
    with path.open("rb") as f:
        f.readline()
        batch: list[list[str]] = []
        for raw in f:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("cp1252")
            batch.append(text.rstrip("\r\n").split("|")[:columns])
            if len(batch) == 5000:
                conn.execute("BEGIN")
                conn.executemany(sql, batch)
                conn.execute("COMMIT")
                rows += len(batch)
                batch = []
        conn.execute("BEGIN")
        conn.executemany(sql, batch)
        conn.execute("COMMIT")
        rows += len(batch)
    conn.close()
    return {"rows": rows}


def child_main(argv: Sequence[str]) -> int:
    what, *rest = argv
    if what == "import":
        fmt, path, db = rest
        result = asyncio.run(_child_import(fmt, Path(path), Path(db)))
    elif what == "raw-sqlite":
        path, db, columns = rest
        result = _child_raw_sqlite(Path(path), Path(db), int(columns))
    else:
        print(f"unknown child {what!r}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


# --- lookups ---------------------------------------------------------------


def _percentiles(samples: list[float]) -> tuple[float, float]:
    qs = statistics.quantiles(samples, n=100, method="inclusive")
    return qs[49], qs[98]


async def _time_async(
    call: Callable[[str], Awaitable[object]], keys: list[str]
) -> list[float]:
    out = []
    for key in keys:
        t = time.perf_counter()
        found = await call(key)
        out.append((time.perf_counter() - t) * 1e6)
        if found is None:
            msg = f"lookup of {key!r} found nothing"
            raise RuntimeError(msg)
    return out


def _time_sync(conn: sqlite3.Connection, sql: str, keys: list[str]) -> list[float]:
    out = []
    for key in keys:
        t = time.perf_counter()
        row = conn.execute(sql, (key,)).fetchone()
        out.append((time.perf_counter() - t) * 1e6)
        if row is None:
            msg = f"raw lookup of {key!r} found nothing"
            raise RuntimeError(msg)
    return out


async def lookups(db: Path, n: int, seed: int = 3) -> list[Figure]:
    from directory.sqlite import SqliteDirectory

    raw = sqlite3.connect(db)
    rnd = random.Random(seed)

    def sample(kind: str) -> list[str]:
        keys = [
            k for (k,) in raw.execute("SELECT key FROM entries WHERE kind=?", (kind,))
        ]
        return rnd.sample(keys, min(n, len(keys)))

    addresses, practitioners = sample("mailbox"), sample("practitioner")
    d = await SqliteDirectory.open(db)
    figures = []
    try:
        cases: list[tuple[str, Callable[[str], Awaitable[object]], str, list[str]]] = [
            (
                "lookup_mailbox",
                d.mailbox,
                "SELECT data, status, source FROM entries WHERE kind='mailbox' AND key=?",
                addresses,
            ),
            (
                "lookup_practitioner",
                d.practitioner,
                "SELECT data, status, source FROM entries"
                " WHERE kind='practitioner' AND key=?",
                practitioners,
            ),
            (
                "resolve",
                d.resolve,
                # a mailbox address is its key (patients': the addr column)
                "SELECT data, status, source FROM entries WHERE kind='mailbox' AND key=?",
                addresses,
            ),
        ]
        for metric, call, sql, keys in cases:
            if not keys:
                continue
            ours = _percentiles(await _time_async(call, keys))
            ref = _percentiles(_time_sync(raw, sql, keys))
            figures.append(_figure(f"{metric}_p50_sqlite", ours[0], ref[0], "us"))
            figures.append(_figure(f"{metric}_p99_sqlite", ours[1], ref[1], "us"))
    finally:
        await d.close()
        raw.close()
    return figures


# --- LDAP --------------------------------------------------------------------


def ldap_unavailable() -> str | None:
    """Why the LDAP part cannot run, or None."""
    import importlib.util

    for module in ("directory.ldap", "directory.slapd", "directory.devpki"):
        if importlib.util.find_spec(module) is None:
            return f"{module} not built yet"
    from directory.slapd import slapd_available

    if not slapd_available():
        return "slapd/slapadd not installed"
    return None


async def ldap_figures(work: Path, mssante_file: Path, sqlite_db: Path) -> list[Figure]:
    """MSSanté import through LdapDirectory vs ldapadd of the same entries' LDIF."""
    from directory.devpki import make_server_pki
    from directory.export import export_ldif
    from directory.importers import import_file
    from directory.ldap import LdapDirectory
    from directory.model import Kind
    from directory.slapd import Slapd
    from directory.sqlite import SqliteDirectory

    pki = make_server_pki(work / "pki")
    with Slapd.start(
        work / "slapd",
        tls_cert=pki.cert_file,
        tls_key=pki.key_file,
        ca_file=pki.ca_file,
    ) as server:
        config = server.relay_config(pki.ca_file, "bench-relay", timeout=60.0)
        d = await LdapDirectory.open(config)
        try:
            report = await import_file(d, mssante_file, "mssante")
            ours = report.elapsed
        finally:
            await d.close()
        ldif = work / "mssante.ldif"
        src = await SqliteDirectory.open(sqlite_db)
        try:
            with ldif.open("w", encoding="utf-8") as out:
                await export_ldif(
                    src, out, [Kind.ORGANISATION, Kind.MAILBOX], base_dn=server.base_dn
                )
        finally:
            await src.close()
        server.wipe()
        started = time.monotonic()
        done = server.run_tool("ldapadd", "-c", "-f", str(ldif))
        ref = time.monotonic() - started
        if done.returncode not in (0, 68):  # 68: already exists (the base)
            msg = f"ldapadd failed: {done.stderr[-2000:]}"
            raise RuntimeError(msg)
    return [
        _figure("import_mssante_ldap_seconds", ours, ref, "s", f"{report.rows} rows")
    ]


# --- driver --------------------------------------------------------------------


def _table(rows: list[tuple[str, str, str, str, str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows
    )


def run(args: argparse.Namespace) -> int:
    rows = args.rows or (QUICK_ROWS if args.quick else generate.MSSANTE_ROWS)
    rpps_rows = args.rpps_rows or rows * generate.RPPS_ROWS // generate.MSSANTE_ROWS
    lookups_n = args.lookups or (200 if args.quick else DEFAULT_LOOKUPS)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench-directory-"))
    work.mkdir(parents=True, exist_ok=True)
    figures: list[Figure] = []
    notes: list[str] = []
    mssante_elapsed = 0.0
    try:
        m_file, r_file = work / "mssante.txt", work / "rpps.txt"
        t = time.monotonic()
        generate.write_mssante(m_file, rows)
        generate.write_rpps(r_file, rpps_rows)
        print(
            f"generated {rows} MSSanté + {rpps_rows} RPPS rows in {time.monotonic() - t:.1f} s"
        )
        db = work / "directory.sqlite3"
        for fmt, path, n, columns in (
            ("mssante", m_file, rows, 31),
            ("rpps", r_file, rpps_rows, 56),
        ):
            ours = run_child("import", fmt, str(path), str(db))
            again = (
                run_child("import", fmt, str(path), str(db))
                if fmt == "mssante"
                else None
            )
            if fmt == "mssante":
                mssante_elapsed = float(str(ours.result["elapsed"]))
            if ours.result["rejected"] != 0:
                notes.append(f"{fmt}: {ours.result['rejected']} rows rejected")
            ref = run_child(
                "raw-sqlite", str(path), str(work / f"raw-{fmt}.sqlite3"), str(columns)
            )
            figures.append(
                _figure(
                    f"import_{fmt}_sqlite_seconds",
                    ours.seconds,
                    ref.seconds,
                    "s",
                    f"{n} rows",
                )
            )
            figures.append(
                _figure(
                    f"import_{fmt}_sqlite_cpu_seconds",
                    ours.cpu_seconds,
                    ref.cpu_seconds,
                    "s",
                    f"{n} rows, user+sys",
                )
            )
            figures.append(
                _figure(
                    f"import_{fmt}_sqlite_peak_rss",
                    ours.peak_rss_mb,
                    ref.peak_rss_mb,
                    "MB",
                    f"{n} rows",
                )
            )
            if again is not None:  # the same file again: every entry unchanged
                figures.append(
                    _figure(
                        f"reimport_{fmt}_sqlite_seconds",
                        again.seconds,
                        ref.seconds,
                        "s",
                        f"{n} rows, unchanged",
                    )
                )
                figures.append(
                    _figure(
                        f"reimport_{fmt}_sqlite_cpu_seconds",
                        again.cpu_seconds,
                        ref.cpu_seconds,
                        "s",
                        f"{n} rows, unchanged, user+sys",
                    )
                )
        figures += asyncio.run(lookups(db, lookups_n))
        why = None if args.no_ldap else ldap_unavailable()
        if args.no_ldap:
            why = "--no-ldap"
        if why is None:
            ldap_rows = min(rows, args.ldap_rows)
            small = work / "mssante-ldap.txt"
            generate.write_mssante(small, ldap_rows)
            small_db = work / "ldap-source.sqlite3"
            run_child("import", "mssante", str(small), str(small_db))
            figures += asyncio.run(ldap_figures(work / "ldap", small, small_db))
        else:
            notes.append(f"LDAP: skipped: {why}")
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    header = ("metric", "ours", "ref", "ratio", "unit / size")
    table = [header] + [
        (
            f.metric,
            f"{f.ours:.4g}",
            f"{f.ref:.4g}",
            f"{f.ratio:.3g}",
            f"{f.unit} {f.note}".strip(),
        )
        for f in figures
    ]
    print(_table(table))
    for note in notes:
        print(note)
    by_metric = {f.metric: f for f in figures}
    rss = by_metric["import_mssante_sqlite_peak_rss"].ours
    if rows >= generate.MSSANTE_ROWS:
        seconds, how = by_metric["import_mssante_sqlite_seconds"].ours, "measured"
    else:  # the import's own time, per row, times the real volume
        seconds = mssante_elapsed * generate.MSSANTE_ROWS / rows
        how = f"extrapolated from {rows} rows, RSS not extrapolated"
    met = seconds <= GOAL_SECONDS and rss <= GOAL_RSS_MB
    print(
        f"goal: {generate.MSSANTE_ROWS} MSSanté rows into sqlite in <= {GOAL_SECONDS:g} s"
        f" and <= {GOAL_RSS_MB:g} MB: {seconds:.1f} s ({how}), {rss:.0f} MB"
        f" -> {'met' if met else 'NOT met'}"
    )
    for f in figures:
        print(f.line())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench directory", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--rows",
        type=int,
        default=0,
        help="MSSanté rows (default 536000; --quick 20000)",
    )
    p.add_argument(
        "--rpps-rows", type=int, default=0, help="RPPS rows (default: rows x 2M/536k)"
    )
    p.add_argument(
        "--lookups",
        type=int,
        default=0,
        help="lookups per kind (default 2000; --quick 200)",
    )
    p.add_argument(
        "--ldap-rows",
        type=int,
        default=DEFAULT_LDAP_ROWS,
        help="MSSanté rows for the LDAP import",
    )
    p.add_argument("--no-ldap", action="store_true", help="skip the LDAP part")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--workdir", type=Path, default=None, help="keep files here")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--child"]:
        return child_main(argv[1:])
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
