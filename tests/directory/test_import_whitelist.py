"""Import of the operators' whitelist (listeblanchemssante.xml), every backend."""

from __future__ import annotations

import hashlib
import io
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from directory.importers import (
    ChecksumMismatchError,
    ImportFileError,
    StaleWhitelistError,
    UnsafeXmlError,
    import_whitelist,
    parse_whitelist,
)
from directory.importers.whitelist import META_GENERATED, diff_whitelist
from directory.model import Kind, Status

if TYPE_CHECKING:
    from directory.protocol import Directory

DATA = Path(__file__).resolve().parents[1] / "data" / "whitelist"
V1 = DATA / "listeblanchemssante_v1.xml"
V2 = DATA / "listeblanchemssante_v2.xml"
OLDER = DATA / "listeblanchemssante_older.xml"
ENTITIES = DATA / "listeblanchemssante_entities.xml"
MALFORMED = DATA / "listeblanchemssante_malformed.xml"
MX1 = "CN=mx1.mssante.fr,OU=Messagerie,O=Agence Exemple,L=Paris,C=FR"
MX2 = "CN=mx2.mssante.fr,OU=Messagerie,O=Agence Exemple,L=Paris,C=FR"
MX3 = "CN=mx3.mssante.fr,OU=Messagerie,O=Agence Exemple,L=Paris,C=FR"
NS = "https://listeblanche.mssante.fr/schema"


async def test_first_load_groups_dns_by_domain(directory: Directory) -> None:
    report = await import_whitelist(directory, V1)

    assert (report.domains, report.certificates) == (3, 4)
    assert report.counts.added == 3
    assert report.previous is None
    assert report.diff.domains_added == (
        "ch-lyon.mssante.fr",
        "clinique-exemple.fr",
        "mssante.fr",
    )
    op = await directory.operator("mssante.fr")
    assert op is not None
    assert [c.subject_dn for c in op.certificates] == [MX1, MX2]
    assert (op.description, op.contacts) == (
        "Opérateur national de messagerie",
        ("support@mssante.fr",),
    )
    assert (op.source, op.updated is not None) == ("whitelist", True)
    assert [o.domain for o in await directory.operators_for_certificate(MX2)] == [
        "mssante.fr"
    ]
    assert await directory.get_meta(META_GENERATED) == "2026-11-01T03:00:00+01:00"


async def test_same_file_again_is_idempotent(directory: Directory) -> None:
    await import_whitelist(directory, V1)

    report = await import_whitelist(directory, V1)

    assert (report.counts.added, report.counts.updated) == (0, 0)
    assert report.counts.unchanged == 3
    assert report.diff.empty
    assert report.suspended == []


async def test_new_version_diff_and_absent_domain_suspended(
    directory: Directory,
) -> None:
    await import_whitelist(directory, V1)

    report = await import_whitelist(directory, V2)

    assert report.previous == "2026-11-01T03:00:00+01:00"
    assert report.diff.domains_added == ("pharma-exemple.fr",)
    assert report.diff.domains_removed == ("clinique-exemple.fr",)
    assert dict(report.diff.dns_added) == {"mssante.fr": (MX3,)}
    assert dict(report.diff.dns_removed) == {"mssante.fr": (MX2,)}
    assert report.diff.lines() == [
        "+ domain pharma-exemple.fr",
        "- domain clinique-exemple.fr",
        f"+ mssante.fr DN {MX3}",
        f"- mssante.fr DN {MX2}",
    ]
    assert report.suspended == ["clinique-exemple.fr"]
    assert f"- mssante.fr DN {MX2}" in report.describe()
    assert report.to_record()["diff"]["dns_added"] == {"mssante.fr": [MX3]}
    assert (report.counts.added, report.counts.updated) == (1, 1)
    gone = await directory.operator("clinique-exemple.fr")
    assert gone is not None
    assert gone.status is Status.SUSPENDED
    assert await directory.operators_for_certificate(MX2) == []
    assert [r.line for r in report.rejects] == [35]
    assert "DNCertificatOperateur" in report.rejects[0].reason
    assert await directory.operator("broken-dn.fr") is None


async def test_older_whitelist_is_refused(directory: Directory) -> None:
    await import_whitelist(directory, V1)

    with pytest.raises(StaleWhitelistError, match="older than the one loaded"):
        await import_whitelist(directory, OLDER)

    assert await directory.get_meta(META_GENERATED) == "2026-11-01T03:00:00+01:00"


async def test_checksum_checked_before_any_write(directory: Directory) -> None:
    good = hashlib.sha256(V1.read_bytes()).hexdigest()

    with pytest.raises(ChecksumMismatchError):
        await import_whitelist(directory, V1, expected_sha256="00" * 32)
    assert await directory.count(Kind.OPERATOR) == 0

    report = await import_whitelist(directory, V1, expected_sha256=good.upper())
    assert report.sha256 == good


async def test_doctype_and_entities_are_refused(directory: Directory) -> None:
    started = time.monotonic()
    with pytest.raises(UnsafeXmlError, match="DOCTYPE refused"):
        await import_whitelist(directory, ENTITIES)
    assert time.monotonic() - started < 1
    assert await directory.count(Kind.OPERATOR) == 0
    assert await directory.get_meta(META_GENERATED) is None


async def test_malformed_xml_is_refused(directory: Directory) -> None:
    with pytest.raises(UnsafeXmlError, match="mismatched tag at line 8"):
        await import_whitelist(directory, MALFORMED)
    assert await directory.count(Kind.OPERATOR) == 0


async def test_suspended_by_admin_stays_suspended(directory: Directory) -> None:
    await import_whitelist(directory, V1)
    await directory.set_status(Kind.OPERATOR, "mssante.fr", Status.SUSPENDED)

    await import_whitelist(directory, V2)

    op = await directory.operator("mssante.fr")
    assert op is not None
    assert op.status is Status.SUSPENDED


def xml(body: str, generated: str = "2026-11-01T00:00:00") -> io.BytesIO:
    text = (
        f'<ListeBlancheMSSante xmlns="{NS}">'
        f"<DateDeGeneration>{generated}</DateDeGeneration>"
        f"<ListeDomaines>{body}</ListeDomaines></ListeBlancheMSSante>"
    )
    return io.BytesIO(text.encode())


DOMAIN = "<Domaine><Nom>a.fr</Nom><DNCertificatOperateur>CN=a</DNCertificatOperateur></Domaine>"


def test_parse_streams_records_with_their_line() -> None:
    parsed = parse_whitelist(xml(DOMAIN))
    assert parsed.generated == "2026-11-01T00:00:00"
    assert [(r.line, r.first("Nom")) for r in parsed.records] == [(1, "a.fr")]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (b"<ListeBlancheMSSante/>", "not in namespace"),
        (f'<Other xmlns="{NS}"/>'.encode(), "root element is 'Other'"),
        (xml("").getvalue(), "no Domaine"),
        (
            xml(DOMAIN).getvalue().replace(b"2026-11-01T00:00:00", b""),
            "DateDeGeneration",
        ),
        (xml("<Domaine><Nom>&ext;</Nom></Domaine>").getvalue(), "undefined entity"),
    ],
)
def test_not_a_whitelist_is_refused(document: bytes, message: str) -> None:
    with pytest.raises(ImportFileError, match=message):
        parse_whitelist(io.BytesIO(document))


def test_diff_lists_dns_only_for_domains_in_both() -> None:
    old = {"a.fr": frozenset({"CN=1"}), "b.fr": frozenset({"CN=2"})}
    new = {"a.fr": frozenset({"CN=1", "CN=3"}), "c.fr": frozenset({"CN=4"})}
    diff = diff_whitelist(old, new)
    assert (diff.domains_added, diff.domains_removed) == (("c.fr",), ("b.fr",))
    assert (dict(diff.dns_added), dict(diff.dns_removed)) == ({"a.fr": ("CN=3",)}, {})
