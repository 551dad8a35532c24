"""Audit records written together (one locked write) keep the chain."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from relay import audit
from relay.audit import AuditEvent, AuditTrail

if TYPE_CHECKING:
    from pathlib import Path

KEY = b"k" * 32


def test_records_written_together_are_chained_one_by_one(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(path, KEY)
    other = AuditTrail(path, KEY)  # a second writer of the same file
    trail.emit(AuditEvent.RELAY_STARTED)
    with trail.together():
        for n in range(3):
            trail.emit(AuditEvent.MESSAGE_DELIVERED, recipient=f"r{n}@a.example")
        assert len(path.read_bytes().splitlines()) == 1  # not written yet
    other.emit(AuditEvent.RELAY_STOPPED)
    trail.close()
    other.close()
    result = audit.verify(path, KEY)
    assert result.intact
    assert [r["seq"] for r in audit.records(path)] == [1, 2, 3, 4, 5]
    assert [r["event"] for r in audit.records(path)][1:4] == ["message.delivered"] * 3


def test_records_of_a_block_that_raises_are_still_written(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(path, KEY)

    def fail_inside() -> None:
        with trail.together():
            trail.emit(AuditEvent.MESSAGE_DELIVERED, recipient="r@a.example")
            raise RuntimeError

    with pytest.raises(RuntimeError):
        fail_inside()
    trail.close()
    assert audit.verify(path, KEY).records == 1


def test_records_written_together_are_redacted(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(path, KEY)
    with trail.together():
        trail.emit(AuditEvent.MESSAGE_DELIVERED, subject="MARKER-SECRET")
    trail.close()
    assert b"MARKER-SECRET" not in path.read_bytes()
