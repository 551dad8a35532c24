"""Client traces: kept six months, exported by period, never content."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from mssante import TraceLog

if TYPE_CHECKING:
    from pathlib import Path


def test_traces_older_than_the_retention_go_when_the_log_is_opened(
    tmp_path: Path,
) -> None:
    path = tmp_path / "traces.jsonl"
    now = datetime.now(UTC)
    log = TraceLog(path)
    log.record("send.accepted", at=now - timedelta(days=200), message_id="<old@x>")
    log.record(
        "send.accepted",
        at=now - timedelta(days=10),
        message_id="<new@x>",
        body="secret",
    )
    reopened = TraceLog(path)
    rows = reopened.export()
    assert [r["message_id"] for r in rows] == ["<new@x>"]
    assert "body" not in rows[0]
    assert reopened.export(since=now) == []
    assert [s.message_id for s in reopened.sent()] == ["<new@x>"]
    assert path.stat().st_mode & 0o077 == 0
