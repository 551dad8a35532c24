"""Purging the audit trail: the anchor, verification from it, writers that follow."""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from relay import audit
from relay.app import load_master_key
from relay.audit import AuditEvent, AuditTrail
from tests.support.relay_fixtures import COLLEAGUE, DOCTOR

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.relay_fixtures import Harness

KEY = b"k" * 32
T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 9, 1, tzinfo=UTC)


def write_dated(path: Path, days: list[int]) -> None:
    """One record per entry, dated T0 + that many days."""
    trail = AuditTrail(path, KEY)
    for n, day in enumerate(days):
        trail.emit(
            AuditEvent.MESSAGE_DELIVERED,
            time=(T0 + timedelta(days=day)).isoformat(),
            recipient=f"r{n}@a.example",
        )
    trail.close()


def seqs(path: Path) -> list[int]:
    return [r["seq"] for r in audit.records(path)]


def test_purge_keeps_records_from_the_cutoff_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_dated(path, [0, 10, 20, 30, 40])
    result = audit.purge(path, KEY, T0 + timedelta(days=20), NOW)
    assert (result.purged, result.kept) == (2, 3)
    assert result.anchor is not None
    assert result.anchor.seq == 2
    assert seqs(path) == [3, 4, 5]
    assert audit.anchor_path(path).exists()
    checked = audit.verify(path, KEY)
    assert checked.intact, checked
    assert checked.records == 3


def test_purge_with_nothing_old_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_dated(path, [30, 40])
    before = path.read_bytes()
    result = audit.purge(path, KEY, T0, NOW)
    assert (result.purged, result.anchor) == (0, None)
    assert path.read_bytes() == before
    assert not audit.anchor_path(path).exists()


def test_appends_after_a_purge_chain_to_the_kept_records(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_dated(path, [0, 10, 20])
    audit.purge(path, KEY, T0 + timedelta(days=15), NOW)
    write_dated(path, [50])
    assert seqs(path) == [3, 4]
    assert audit.verify(path, KEY).intact


def test_purging_everything_leaves_the_anchor_as_head(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_dated(path, [0, 10])
    audit.purge(path, KEY, NOW, NOW)
    assert path.read_bytes() == b""
    assert audit.verify(path, KEY).intact
    write_dated(path, [300])
    assert seqs(path) == [3]
    assert audit.verify(path, KEY).intact


def test_second_purge_chains_its_anchor_to_the_first(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_dated(path, [0, 10, 20, 30, 40])
    first = audit.purge(path, KEY, T0 + timedelta(days=5), NOW).anchor
    second = audit.purge(path, KEY, T0 + timedelta(days=25), NOW).anchor
    assert first is not None
    assert second is not None
    assert (second.seq, second.previous_seq, second.previous_mac) == (
        3,
        1,
        first.mac,
    )
    assert seqs(path) == [4, 5]
    assert audit.verify(path, KEY).intact


def test_verify_names_the_first_bad_line_after_a_purge(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_dated(path, [0, 10, 20, 30, 40])
    audit.purge(path, KEY, T0 + timedelta(days=15), NOW)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"r3@a.example", b"r9@a.example")
    path.write_bytes(b"".join(lines))
    checked = audit.verify(path, KEY)
    assert checked.first_bad_line == 2
    assert "modified" in checked.problem


def test_forged_anchor_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_dated(path, [0, 10, 20, 30])
    audit.purge(path, KEY, T0 + timedelta(days=15), NOW)
    where = audit.anchor_path(path)
    anchor = json.loads(where.read_bytes())
    anchor["count"] = 1  # hide how many were purged
    where.write_text(json.dumps(anchor))
    checked = audit.verify(path, KEY)
    assert checked.first_bad_line == 0
    assert "anchor" in checked.problem


def test_anchor_moved_forward_to_hide_records_is_detected(tmp_path: Path) -> None:
    """Removing kept records from the start and claiming they were purged
    needs a new anchor, which only the key holder can MAC."""
    path = tmp_path / "audit.jsonl"
    write_dated(path, [0, 10, 20, 30])
    audit.purge(path, KEY, T0 + timedelta(days=5), NOW)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[1:]))  # drop record 2
    checked = audit.verify(path, KEY)
    assert checked.first_bad_line == 1
    assert "chain broken" in checked.problem


def test_deleted_anchor_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_dated(path, [0, 10, 20])
    audit.purge(path, KEY, T0 + timedelta(days=5), NOW)
    audit.anchor_path(path).unlink()
    checked = audit.verify(path, KEY)
    assert checked.first_bad_line == 1


def test_purge_interrupted_before_the_file_was_replaced_still_verifies(
    tmp_path: Path,
) -> None:
    """A crash after the anchor is written but before the rename: the old
    file and the new anchor verify, and the next purge finishes the job."""
    path = tmp_path / "audit.jsonl"
    write_dated(path, [0, 10, 20, 30])
    audit.purge(path, KEY, T0 + timedelta(days=5), NOW)  # anchor at 1
    old = path.read_bytes()
    audit.purge(path, KEY, T0 + timedelta(days=15), NOW)  # anchor at 2
    path.write_bytes(old)  # as if the rename never happened
    assert seqs(path) == [2, 3, 4]
    assert audit.verify(path, KEY).intact
    result = audit.purge(path, KEY, T0 + timedelta(days=15), NOW)
    assert result.purged == 1
    assert seqs(path) == [3, 4]
    assert audit.verify(path, KEY).intact


def test_purge_refuses_a_broken_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_dated(path, [0, 10, 20])
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + lines[2])
    with pytest.raises(audit.AuditError, match="nothing purged"):
        audit.purge(path, KEY, NOW, NOW)
    assert seqs(path) == [1, 3]


def test_open_trail_follows_the_replaced_file(tmp_path: Path) -> None:
    """A writer that opened the file before the purge (the running relay)
    writes into the new file, chained to the records kept."""
    path = tmp_path / "audit.jsonl"
    relay_trail = AuditTrail(path, KEY)
    relay_trail.emit(AuditEvent.RELAY_STARTED, time=T0.isoformat())
    relay_trail.emit(
        AuditEvent.MESSAGE_DELIVERED, time=(T0 + timedelta(days=30)).isoformat()
    )
    audit.purge(path, KEY, T0 + timedelta(days=1), NOW)
    admin = AuditTrail(path, KEY)
    admin.emit(AuditEvent.AUDIT_PURGED, actor="cli")
    admin.close()
    relay_trail.emit(AuditEvent.MESSAGE_READ, actor="p@a.example")
    relay_trail.close()
    assert [r["event"] for r in audit.records(path)] == [
        "message.delivered",
        "audit.purged",
        "message.read",
    ]
    assert seqs(path) == [2, 3, 4]
    assert audit.verify(path, KEY).intact


def _append_many(path: Path, count: int) -> None:
    trail = AuditTrail(path, KEY)
    for n in range(count):
        trail.emit(AuditEvent.MESSAGE_ACCEPTED, sender=f"s{n}@a.example")
    trail.close()


def test_purges_during_appends_from_another_process_lose_nothing(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    write_dated(path, [0])
    ctx = multiprocessing.get_context("spawn")
    writer = ctx.Process(target=_append_many, args=(path, 300))
    writer.start()
    purged = 0
    try:
        while writer.is_alive():
            purged += audit.purge(
                path, KEY, datetime.now(UTC), datetime.now(UTC)
            ).purged
    finally:
        writer.join(timeout=60)
    purged += audit.purge(path, KEY, datetime.now(UTC), datetime.now(UTC)).purged
    assert writer.exitcode == 0
    assert purged == 301  # every record went through the file, none was lost
    assert audit.verify(path, KEY).intact
    _append_many(path, 1)
    assert seqs(path) == [302]


async def test_running_relay_keeps_a_verifiable_chain_after_a_purge(
    relay: Harness,
) -> None:
    """The relay holds the trail open; ``mssante audit purge`` replaces the
    file under it; what the relay writes next lands in the new file."""
    h = relay
    path = h.running.audit.path
    master = load_master_key(h.config).derive("audit")

    def send() -> None:
        with h.submission() as client:
            client.sendmail(
                DOCTOR.address,
                [COLLEAGUE.address],
                (
                    f"From: {DOCTOR.address}\r\nTo: {COLLEAGUE.address}\r\n"
                    "Subject: x\r\n\r\nx\r\n"
                ).encode(),
            )

    await h.run(send)
    await h.delivered()
    before = len(list(audit.records(path)))
    now = datetime.now(UTC)
    result = await asyncio.to_thread(audit.purge, path, master, now, now)
    assert result.purged == before
    assert list(audit.records(path)) == []
    await h.run(send)
    await h.delivered()
    events = [r["event"] for r in audit.records(path)]
    assert "message.delivered" in events
    assert next(iter(audit.records(path)))["seq"] == before + 1
    checked = audit.verify(path, master)
    assert checked.intact, checked
