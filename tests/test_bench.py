"""Smoke tests of the benchmarks: generators the importers accept, BENCH lines."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

import pytest

from bench import __main__ as bench_main
from bench import directory as bench_directory
from bench import generate
from bench import smtp as bench_smtp
from directory.identifiers import luhn_valid
from directory.importers import import_file
from directory.model import Kind
from directory.sqlite import SqliteDirectory

if TYPE_CHECKING:
    from pathlib import Path


def test_generated_numbers_carry_valid_keys() -> None:
    assert all(luhn_valid(generate.rpps_number(n)) for n in range(0, 5000, 7))
    assert all(luhn_valid(generate.adeli_number(n)) for n in range(0, 5000, 7))
    assert all(luhn_valid(generate.siret_number(n)) for n in range(0, 5000, 7))


async def test_generated_extractions_import_without_rejects(tmp_path: Path) -> None:
    m, r = tmp_path / "m.txt", tmp_path / "r.txt"
    addresses = generate.write_mssante(m, 600)
    people = generate.write_rpps(r, 400)
    d = await SqliteDirectory.open(tmp_path / "d.sqlite3")
    try:
        mr = await import_file(d, m, "mssante", batch_size=100)
        rr = await import_file(d, r, "rpps", batch_size=100)
        assert (mr.rows, mr.rejected, mr.added) == (600, 0, addresses)
        assert mr.duplicates == 600 - addresses > 0
        assert (rr.rows, rr.rejected, rr.added, rr.encoding) == (
            400,
            0,
            people,
            "cp1252",
        )
        assert await d.count(Kind.PRACTITIONER) == people < 400  # multi-activity
        assert await d.practitioner("0" + generate.adeli_number(50)) is not None
    finally:
        await d.close()


def test_generators_are_deterministic(tmp_path: Path) -> None:
    generate.write_rpps(tmp_path / "a.txt", 300)
    generate.write_rpps(tmp_path / "b.txt", 300)
    assert (tmp_path / "a.txt").read_bytes() == (tmp_path / "b.txt").read_bytes()


def test_bench_directory_prints_bench_lines(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        bench_directory.main(
            ["--rows", "300", "--quick", "--lookups", "50", "--no-ldap"]
        )
        == 0
    )

    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("BENCH directory ")]
    metrics = {line.split()[2] for line in lines}
    assert {"import_mssante_sqlite_seconds", "import_rpps_sqlite_peak_rss"} <= metrics
    assert "lookup_mailbox_p99_sqlite" in metrics
    assert all(" ours=" in line and " ratio=" in line for line in lines)
    assert "LDAP: skipped: --no-ldap" in out


def test_every_area_the_guide_names_is_built() -> None:
    # python -m bench AREA for directory, smtp, imap, crypto, delivery.
    assert bench_main.AREAS == ("directory", "smtp", "imap", "crypto", "delivery")
    assert all(importlib.util.find_spec(f"bench.{a}") for a in bench_main.AREAS)


def test_smtp_message_template_is_dot_stuffed_and_about_its_size() -> None:
    party = bench_smtp.parties(1)[0]
    for size in bench_smtp.SIZES.values():
        head, message_id, tail = bench_smtp.template(party, size).parts("x.1@example")
        message = head + message_id + tail
        assert abs(len(message) - size) < 200
        assert tail.endswith(b"\r\n.\r\n")
        body = message[: -len(b".\r\n")]
        assert b"\r\n.\r\n" not in body
        assert body.replace(b"\r\n", b"").count(b"\n") == 0  # no bare LF


def test_bench_smtp_quick_prints_bench_lines_against_the_sink(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert (
        bench_smtp.main(
            ["--quick", "--messages", "8", "--sessions", "2", "--no-postfix"]
        )
        == 0
    )

    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("BENCH smtp ")]
    metrics = {line.split()[2] for line in lines}
    assert metrics == {"accept_store_5KB_vs_sink", "accept_store_100KB_vs_sink"}
    assert all(" ours=" in line and line.endswith("unit=msg/s") for line in lines)
    assert "ours  " in out
    assert "sink  " in out


def test_bench_imap_quick_prints_bench_lines_or_says_dovecot_is_missing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench import imap as bench_imap

    tiny = ["--users", "2", "--messages", "6", "--logins", "4", "--clients", "2"]
    assert bench_imap.main(["--quick", *tiny, "--idle", "4", "--cheap-logins"]) == 0

    out = capsys.readouterr().out
    assert "ours     fetch_bodies    6 in " in out
    assert "ours     search_unseen   2 in " in out  # one message in four unread
    lines = [line for line in out.splitlines() if line.startswith("BENCH imap ")]
    if not bench_imap.DOVECOT_BIN.exists():
        assert "Dovecot: skipped: dovecot not installed" in out
        assert lines == []
        pytest.skip("Dovecot not installed: only ours was measured")
    metrics = {line.split()[2] for line in lines}
    assert {"logins", "fetch_headers", "fetch_bodies", "search_text"} <= metrics
    assert "idle_memory_per_connection" in metrics
    assert all(" ours=" in line and " ratio=" in line for line in lines)


def test_bench_delivery_quick_moves_every_message_from_a_to_b(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from bench import delivery as bench_delivery

    assert bench_delivery.main(["--quick", "--messages", "6", "--sessions", "2"]) == 0

    out = capsys.readouterr().out
    # The bench fails (status 1) when B's INBOXes or A's Sent folders miss one.
    assert "ours -> ours  5KB    6 " in out
    assert "ours -> ours  100KB  6 " in out
    assert "Postfix: skipped: --quick" in out
    assert "BENCH delivery" not in out  # no reference, no ratio
