"""The audit trail: chained, keyed, redacted, shared by several writers."""

from __future__ import annotations

import json
import multiprocessing
from typing import TYPE_CHECKING

import pytest

from relay import audit
from relay.audit import AuditEvent, AuditTrail

if TYPE_CHECKING:
    from pathlib import Path

KEY = b"k" * 32


def write_records(path: Path, count: int) -> None:
    trail = AuditTrail(path, KEY)
    for n in range(count):
        trail.emit(
            AuditEvent.MESSAGE_ACCEPTED,
            sender=f"s{n}@a.example",
            recipient="r@b.example",
        )
    trail.close()


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def test_intact_trail_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 5)
    result = audit.verify(path, KEY)
    assert result.intact
    assert result.records == 5


def test_modified_record_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 5)
    content = lines(path)
    content[2] = content[2].replace(b"s2@a.example", b"s9@a.example")
    path.write_bytes(b"".join(content))
    result = audit.verify(path, KEY)
    assert result.first_bad_line == 3
    assert "modified" in result.problem


def test_removed_record_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 5)
    content = lines(path)
    del content[1]
    path.write_bytes(b"".join(content))
    assert audit.verify(path, KEY).first_bad_line == 2


def test_reordered_records_are_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 5)
    content = lines(path)
    content[3], content[4] = content[4], content[3]
    path.write_bytes(b"".join(content))
    assert audit.verify(path, KEY).first_bad_line == 4


def test_recomputed_plain_hash_does_not_pass_without_the_key(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 2)
    assert not audit.verify(path, b"x" * 32).intact


def test_garbage_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_records(path, 2)
    path.write_bytes(path.read_bytes() + b"not json\n")
    result = audit.verify(path, KEY)
    assert result.first_bad_line == 3
    assert result.problem == "not an audit record"


def test_forbidden_keys_never_reach_the_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(path, KEY)
    trail.emit(
        AuditEvent.MESSAGE_ACCEPTED,
        subject="MARKER-subject",
        body="MARKER-body",
        password="MARKER-secret",
        filename="MARKER.pdf",
        sender="a@b.example",
    )
    trail.close()
    text = path.read_text()
    assert "MARKER" not in text
    assert json.loads(text)["sender"] == "a@b.example"


def test_message_ref_is_stable_and_not_the_id(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path / "audit.jsonl", KEY)
    ref = trail.message_ref("<abc@example>")
    assert ref == trail.message_ref("<abc@example>")
    assert "abc" not in ref
    trail.close()


def test_two_writers_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = AuditTrail(path, KEY)
    second = AuditTrail(path, KEY)
    for _ in range(3):
        first.emit(AuditEvent.AUTH_FAILED, actor="a")
        second.emit(AuditEvent.AUTH_FAILED, actor="b")
    first.close()
    second.close()
    result = audit.verify(path, KEY)
    assert result.intact
    assert result.records == 6


def test_writer_processes_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=write_records, args=(path, 50)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    result = audit.verify(path, KEY)
    assert result.intact
    assert result.records == 150


def test_concerning_finds_records_by_mailbox(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = AuditTrail(path, KEY)
    trail.emit(
        AuditEvent.MESSAGE_ACCEPTED, sender="a@x.example", recipients=["p@y.example"]
    )
    trail.emit(
        AuditEvent.MESSAGE_DELIVERED, sender="a@x.example", recipient="q@y.example"
    )
    trail.emit(AuditEvent.AUTH_FAILED, actor="P@Y.example")
    trail.close()
    found = list(audit.concerning(path, {"p@y.example"}))
    assert [r["event"] for r in found] == ["message.accepted", "auth.failed"]


def test_records_rejects_garbage(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text("{broken\n")
    with pytest.raises(audit.AuditError):
        list(audit.records(path))
