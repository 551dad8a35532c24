"""A directory file from before the proxies index gets it filled when opened."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

from directory.sqlite import SqliteDirectory
from tests.directory import samples

if TYPE_CHECKING:
    from pathlib import Path


async def test_proxies_are_indexed_for_an_older_file(tmp_path: Path) -> None:
    path = tmp_path / "directory.sqlite3"
    d = await SqliteDirectory.open(path)
    await d.add(samples.patient())
    await d.close()
    # As a file written before the table existed: no rows, no marker.
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM proxies")
        db.execute("DELETE FROM meta WHERE name='proxies_indexed'")
    d = await SqliteDirectory.open(path)
    try:
        assert [p.ins for p in await d.patients_with_proxy("aidant-1")] == [
            samples.INS_1
        ]
    finally:
        await d.close()
