"""Fixtures shared by the whole suite.

``directory`` is parametrized over both backends: every test that takes it
runs against the embedded sqlite store and against a real slapd (through
``tests.support.ldap_fixtures``). LDAP tests are skipped when slapd is missing
on a developer machine, and fail in CI (``CI`` set), never skip there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from directory.sqlite import SqliteDirectory

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from directory.protocol import Directory

pytest_plugins = ["tests.support.ldap_fixtures", "tests.support.relay_fixtures"]


@pytest.fixture(params=["sqlite", pytest.param("ldap", marks=pytest.mark.slapd)])
async def directory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Directory]:
    """An empty directory, one per backend."""
    if request.param == "sqlite":
        d = await SqliteDirectory.open(tmp_path / "directory.sqlite3")
        try:
            yield d
        finally:
            await d.close()
    else:
        ldap_directory: Directory = request.getfixturevalue("ldap_directory")
        yield ldap_directory
