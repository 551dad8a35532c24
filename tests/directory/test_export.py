"""Exports: JSON round-trips; LDIF loads into a real slapd with ldapadd."""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING

import pytest

from directory.export import export_json, export_ldif
from directory.ldap import LdapDirectory
from directory.model import Kind, from_record, key_of
from directory.sqlite import SqliteDirectory
from tests.directory.test_contract import all_samples

if TYPE_CHECKING:
    from pathlib import Path

    from tests.support.ldap_fixtures import SlapdServer


async def filled(tmp_path: Path) -> SqliteDirectory:
    d = await SqliteDirectory.open(tmp_path / "d.sqlite3")
    for entry in all_samples():
        await d.add(entry)
    return d


async def test_json_export_round_trips(tmp_path: Path) -> None:
    d = await filled(tmp_path)
    out = io.StringIO()
    try:
        n = await export_json(d, out, list(Kind))
    finally:
        await d.close()
    records = json.loads(out.getvalue())
    assert n == len(records) == len(all_samples())
    assert sorted(map(key_of, map(from_record, records))) == sorted(
        map(key_of, all_samples())
    )
    assert {from_record(r) for r in records if r["kind"] == "patient"} == {
        e for e in all_samples() if type(e).__name__ == "Patient"
    }


async def test_empty_json_export_is_an_empty_array(tmp_path: Path) -> None:
    d = await SqliteDirectory.open(tmp_path / "d.sqlite3")
    out = io.StringIO()
    try:
        assert await export_json(d, out, [Kind.MAILBOX]) == 0
    finally:
        await d.close()
    assert json.loads(out.getvalue()) == []


@pytest.mark.slapd
async def test_ldif_export_loads_into_slapd_and_reads_back_equal(
    tmp_path: Path, slapd: SlapdServer
) -> None:
    d = await filled(tmp_path)
    out = io.StringIO()
    try:
        n = await export_ldif(d, out, list(Kind), base_dn=slapd.slapd.base_dn)
    finally:
        await d.close()
    assert n == len(all_samples())
    slapd.slapd.wipe()
    slapd.slapd.add_ldif(out.getvalue())
    ldap = await LdapDirectory.open(slapd.config())
    try:
        for entry in all_samples():
            kind = Kind(type(entry).__name__.lower())
            assert await ldap.get(kind, key_of(entry)) == entry
    finally:
        await ldap.close()
        slapd.slapd.wipe()
