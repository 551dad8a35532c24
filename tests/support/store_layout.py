"""What the mailbox store holds on disk, read around its API (tests only):
the records its index names and the bytes of each in its segment."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING

from relay.store._segments import RECORD_OVERHEAD, SEGMENTS_DIR, segment_name

if TYPE_CHECKING:
    from pathlib import Path


@dataclass(frozen=True, slots=True)
class Record:
    blob_id: bytes
    mailbox_id: int
    segment: int
    offset: int
    length: int

    def path(self, root: Path) -> Path:
        return root / SEGMENTS_DIR / segment_name(self.segment)

    def read(self, root: Path) -> bytes:
        with self.path(root).open("rb") as f:
            f.seek(self.offset)
            return f.read(self.length)

    def write(self, root: Path, data: bytes) -> None:
        with self.path(root).open("r+b") as f:
            f.seek(self.offset)
            f.write(data)


def records(root: Path) -> list[Record]:
    """Every record the index names, in the order they were appended."""
    db = sqlite3.connect(f"file:{root / 'index.sqlite3'}?mode=ro", uri=True)
    try:
        rows = db.execute(
            "SELECT id, mailbox_id, segment, seg_offset, size FROM blobs"
            " WHERE segment IS NOT NULL ORDER BY segment, seg_offset"
        ).fetchall()
    finally:
        db.close()
    return [
        Record(bytes(blob), mailbox, segment, offset, size + RECORD_OVERHEAD)
        for blob, mailbox, segment, offset, size in rows
    ]


def segment_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / SEGMENTS_DIR).iterdir() if p.is_file())


def freed(root: Path, record: Record) -> bool:
    """The record's range holds nothing any more (punched, or zeros), or its
    segment is gone."""
    if not record.path(root).exists():
        return True
    data = record.read(root)
    return data.count(0) == len(data)
