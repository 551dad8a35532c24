"""Client-side traces: every send, receipt and deletion, never the content.

Owns: one JSON-lines file chosen by the practice software. Each record says
what happened (``send.accepted``, ``send.refused``, ``receipt.received``,
``message.deleted``...), when, who did it (the author's login or address),
and the request and response in summary (addresses, Message-ID, size, SMTP
reply). Records older than the retention (six months by default, the MSSanté
obligation of practice software) are dropped by :meth:`TraceLog.prune`;
:meth:`TraceLog.export` hands them out for an audit.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mssante._config import DEFAULT_TRACE_RETENTION_DAYS
from mssante._mailbox import TracedSend

if TYPE_CHECKING:
    from pathlib import Path

# Keys that would carry content; never written whatever the caller passes.
_FORBIDDEN = frozenset(
    {"body", "subject", "content", "attachment", "filename", "password"}
)


class TraceLog:
    """An append-only trace file (thread-safe within one process)."""

    def __init__(
        self,
        path: Path,
        *,
        retention: timedelta = timedelta(days=DEFAULT_TRACE_RETENTION_DAYS),
        prune_on_open: bool = True,
    ) -> None:
        """Open (create) the trace file; records past ``retention`` are
        dropped now unless ``prune_on_open`` is False."""
        self.path = path
        self.retention = retention
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        if prune_on_open and path.exists():
            self.prune(datetime.now(UTC))

    def record(self, event: str, *, at: datetime, **fields: object) -> None:
        row: dict[str, Any] = {"time": at.astimezone(UTC).isoformat(), "event": event}
        row.update({k: v for k, v in fields.items() if k not in _FORBIDDEN})
        line = json.dumps(row, ensure_ascii=False, sort_keys=True, default=str) + "\n"
        with self._lock:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as f:
                f.write(line)

    def export(
        self, since: datetime | None = None, until: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The records in ``[since, until)``, oldest first."""
        out = []
        for row in self._rows():
            at = datetime.fromisoformat(row["time"])
            if (since is None or at >= since) and (until is None or at < until):
                out.append(row)
        return out

    def sent(self, since: datetime | None = None) -> list[TracedSend]:
        """The accepted submissions, to ask for their receipts."""
        return [
            TracedSend(
                message_id=str(row["message_id"]),
                read_receipt=bool(row.get("read_receipt", False)),
                at=datetime.fromisoformat(row["time"]),
            )
            for row in self.export(since)
            if row.get("event") == "send.accepted" and row.get("message_id")
        ]

    def prune(self, now: datetime) -> int:
        """Drop records older than the retention; returns how many went."""
        limit = now - self.retention
        with self._lock:
            rows = list(self._rows())
            kept = [r for r in rows if datetime.fromisoformat(r["time"]) >= limit]
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.writelines(
                    json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                    for r in kept
                )
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
        return len(rows) - len(kept)

    def _rows(self) -> list[dict[str, Any]]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]
