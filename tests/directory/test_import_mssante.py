"""Import of the MSSanté extraction (Extraction_Correspondance_MSSante), every backend."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from directory.errors import InvalidFieldError
from directory.importers import (
    HeaderMismatchError,
    ImportFileError,
    import_file,
    mssante,
)
from directory.model import BalType, Kind, OwnerKind, Status

if TYPE_CHECKING:
    from directory.protocol import Directory

ROOT = Path(__file__).resolve().parents[2]
GOOD = ROOT / "conf/demo/Extraction_Correspondance_MSSante_202611220300.txt"
BAD = (
    ROOT / "tests/data/annuaire/bad/Extraction_Correspondance_MSSante_202611220300.txt"
)
RPPS = ROOT / "conf/demo/PS_LibreAcces_Personne_activite_202611220300.txt"
GOOD_ROWS = 120
GOOD_STRUCTURES = 6


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def row(**changes: str) -> str:
    """A PER row of the sample with some columns changed (by column name)."""
    fields = lines_of(GOOD)[1].split("|")
    for name, value in changes.items():
        fields[mssante.COLUMNS.index(name.replace("_", " "))] = value
    return "|".join(fields)


async def test_good_sample_imports_every_row(directory: Directory) -> None:
    report = await import_file(directory, GOOD, "mssante")

    assert (report.rows, report.added, report.rejected) == (GOOD_ROWS, GOOD_ROWS, 0)
    assert report.kinds[Kind.ORGANISATION].counts.added == GOOD_STRUCTURES
    assert (report.updated, report.duplicates, report.suspended) == (0, 0, 0)
    assert report.encoding == "utf-8"
    assert await directory.count(Kind.MAILBOX) == GOOD_ROWS
    assert await directory.count(Kind.ORGANISATION) == GOOD_STRUCTURES


async def test_per_row_maps_to_practitioner_mailbox(directory: Directory) -> None:
    await import_file(directory, GOOD, "mssante")

    box = await directory.mailbox("zoe.moreau.0311@sage-femme.mssante.fr")
    assert box is not None
    assert (box.bal_type, box.owner_kind) == (BalType.PER, OwnerKind.PRACTITIONER)
    assert box.owner_id == "810285900311"
    assert box.structure_id == "1319139093"
    assert box.display_name == "Dr Zoé MOREAU"
    assert box.profession == "Sage-Femme"
    assert (box.source, box.status) == ("mssante", Status.ACTIVE)


async def test_org_row_maps_to_structure_mailbox(directory: Directory) -> None:
    await import_file(directory, GOOD, "mssante")

    box = await directory.mailbox("laboratoire@ch-lyon-2.mssante.fr")
    assert box is not None
    assert (box.bal_type, box.owner_kind) == (BalType.ORG, OwnerKind.ORGANISATION)
    assert box.owner_id == box.structure_id == "1699083010"
    assert box.service == "Laboratoire"
    assert box.display_name == "Laboratoire - CENTRE HOSPITALIER LYON 2"
    org = await directory.organisation("1699083010")
    assert org is not None
    assert (org.name, org.source) == ("CENTRE HOSPITALIER LYON 2", "mssante")
    corsica = await directory.organisation("12A0308245")
    assert corsica is not None


async def test_bad_sample_rejects_bad_rows_with_line_numbers(
    directory: Directory,
) -> None:
    report = await import_file(directory, BAD, "mssante")

    assert report.rows == 34
    assert report.added == 31
    assert report.rejected == 3
    assert [r.line for r in report.rejects] == [13, 17, 21]
    reasons = [r.reason for r in report.rejects]
    assert reasons[0].startswith("Identification nationale PP: '10000000000'")
    assert "RPPS key (Luhn) does not match" in reasons[0]
    assert reasons[1] == "Type de BAL: 'XYZ': unknown BAL type (PER, ORG, APP, CAB)"
    assert reasons[2] == "row has 4 fields, expected 31"
    assert str(report.rejects[2]) == "line 21: row has 4 fields, expected 31"
    assert await directory.mailbox("x@medecin.mssante.fr") is None


async def test_reimport_of_same_file_changes_nothing(directory: Directory) -> None:
    await import_file(directory, GOOD, "mssante")
    report = await import_file(directory, GOOD, "mssante")

    assert (report.added, report.updated, report.unchanged) == (0, 0, GOOD_ROWS)
    assert report.suspended == 0
    organisations = report.kinds[Kind.ORGANISATION]
    assert (organisations.counts.unchanged, organisations.suspended) == (6, 0)


async def test_removed_row_suspended_changed_row_updated_then_reactivated(
    directory: Directory, tmp_path: Path
) -> None:
    lines = lines_of(GOOD)
    removed = lines[5].split("|")[1]
    changed_fields = lines[6].split("|")
    changed_fields[mssante.LAST_NAME] = "NOUVEAU-NOM"
    changed = changed_fields[1]
    second = [*lines[:5], "|".join(changed_fields), *lines[7:]]
    await import_file(directory, GOOD, "mssante")

    report = await import_file(directory, write(tmp_path / "v2.txt", second), "mssante")

    assert (report.added, report.updated, report.unchanged) == (0, 1, GOOD_ROWS - 2)
    assert report.suspended_keys == [removed]
    gone = await directory.mailbox(removed)
    assert gone is not None  # suspended, never deleted
    assert gone.status is Status.SUSPENDED
    updated = await directory.mailbox(changed)
    assert updated is not None
    assert updated.display_name.endswith("NOUVEAU-NOM")
    assert await directory.count(Kind.MAILBOX) == GOOD_ROWS

    again = await import_file(directory, GOOD, "mssante")

    assert (again.added, again.updated, again.suspended) == (0, 2, 0)
    back = await directory.mailbox(removed)
    assert back is not None
    assert back.status is Status.ACTIVE


async def test_mailbox_suspended_by_admin_stays_suspended(
    directory: Directory,
) -> None:
    await import_file(directory, GOOD, "mssante")
    address = lines_of(GOOD)[1].split("|")[1]
    await directory.set_status(Kind.MAILBOX, address, Status.SUSPENDED)

    await import_file(directory, GOOD, "mssante")

    box = await directory.mailbox(address)
    assert box is not None
    assert box.status is Status.SUSPENDED


@pytest.mark.parametrize("batch_size", [1, 7, 5000])
async def test_identical_duplicate_rows_are_counted_not_rejected(
    directory: Directory, tmp_path: Path, batch_size: int
) -> None:
    lines = lines_of(GOOD)
    doubled = [*lines, lines[1], lines[40]]
    path = write(tmp_path / "dup.txt", doubled)

    report = await import_file(directory, path, "mssante", batch_size=batch_size)

    assert (report.rows, report.added) == (GOOD_ROWS + 2, GOOD_ROWS)
    assert (report.duplicates, report.rejected) == (2, 0)


async def test_zip_wrapping_one_txt_imports_like_the_txt(
    directory: Directory, tmp_path: Path
) -> None:
    archive = tmp_path / "Extraction_Correspondance_MSSante.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(GOOD, GOOD.name)

    report = await import_file(directory, archive, "mssante")

    assert (report.rows, report.added, report.rejected) == (GOOD_ROWS, GOOD_ROWS, 0)


async def test_zip_with_two_files_is_refused(
    directory: Directory, tmp_path: Path
) -> None:
    archive = tmp_path / "two.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(GOOD, "a.txt")
        z.write(GOOD, "b.txt")

    with pytest.raises(ImportFileError, match=r"exactly one \.txt"):
        await import_file(directory, archive, "mssante")
    assert await directory.count(Kind.MAILBOX) == 0


async def test_windows_1252_file_reads_the_same(
    directory: Directory, tmp_path: Path
) -> None:
    path = write(tmp_path / "cp1252.txt", lines_of(GOOD), encoding="cp1252")

    report = await import_file(directory, path, "mssante")

    assert (report.encoding, report.added, report.rejected) == ("cp1252", 120, 0)
    box = await directory.mailbox("zoe.moreau.0311@sage-femme.mssante.fr")
    assert box is not None
    assert box.display_name == "Dr Zoé MOREAU"


async def test_a_windows_1252_line_in_a_utf8_file_falls_back(
    directory: Directory, tmp_path: Path
) -> None:
    lines = lines_of(GOOD)
    path = tmp_path / "mixed.txt"
    body = "\n".join(lines[:3]).encode() + b"\n" + lines[3].encode("cp1252") + b"\n"
    path.write_bytes(body + b"\xef\xbb\xbfnot|a|row\n")

    report = await import_file(directory, path, "mssante", suspend=False)

    assert (report.encoding, report.fallback_lines, report.added) == ("utf-8", 1, 3)
    assert [r.line for r in report.rejects] == [5]
    box = await directory.mailbox(lines[3].split("|")[1])
    assert box is not None
    assert box.profession == "Masseur-Kinésithérapeute"


async def test_wrong_header_is_an_error_before_any_write(
    directory: Directory, tmp_path: Path
) -> None:
    with pytest.raises(HeaderMismatchError, match="header column 1"):
        await import_file(directory, RPPS, "mssante")
    lines = lines_of(GOOD)
    lines[0] = lines[0].replace("Adresse BAL", "Adresse")
    with pytest.raises(HeaderMismatchError, match="column 2 is 'Adresse'"):
        await import_file(directory, write(tmp_path / "h.txt", lines), "mssante")
    lines = lines_of(GOOD)
    lines[0] += "|Extra"
    with pytest.raises(HeaderMismatchError, match="32 columns, expected 31"):
        await import_file(directory, write(tmp_path / "x.txt", lines), "mssante")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(HeaderMismatchError, match="no header"):
        await import_file(directory, tmp_path / "empty.txt", "mssante")

    assert await directory.count(Kind.MAILBOX) == 0
    assert await directory.count(Kind.ORGANISATION) == 0


async def test_progress_reports_rows_read(directory: Directory) -> None:
    seen: list[int] = []

    await import_file(directory, GOOD, "mssante", batch_size=50, progress=seen.append)

    assert seen == [50, 100, 120]


async def test_crlf_line_ends_and_blank_lines(
    directory: Directory, tmp_path: Path
) -> None:
    path = tmp_path / "crlf.txt"
    path.write_bytes(("\r\n".join(lines_of(GOOD)[:11]) + "\r\n\r\n").encode())

    report = await import_file(directory, path, "mssante")

    assert (report.rows, report.added, report.rejected) == (10, 10, 0)


# --- pure row mapping --------------------------------------------------------


def fields(line: str) -> list[str]:
    return line.split("|")


def test_app_row_belongs_to_the_structure() -> None:
    line = row(Type_de_BAL="APP", Adresse_BAL="lps@ch.mssante.fr")
    parsed = mssante.parse_row(fields(line))
    assert parsed.mailbox.bal_type is BalType.APP
    assert parsed.mailbox.owner_kind is OwnerKind.ORGANISATION


def test_cab_row_without_structure_belongs_to_the_practitioner() -> None:
    line = row(Type_de_BAL="CAB", **{"Type identifiant structure": "4"})
    parsed = mssante.parse_row(fields(line))
    assert parsed.mailbox.owner_kind is OwnerKind.PRACTITIONER
    assert (parsed.mailbox.structure_id, parsed.organisation) == ("", None)


def test_siret_structure_type_3() -> None:
    line = row(
        **{
            "Type identifiant structure": "3",
            "Identification Structure": "73282932000074",
        }
    )
    parsed = mssante.parse_row(fields(line))
    assert parsed.mailbox.structure_id == "373282932000074"
    assert parsed.organisation is not None


def test_org_row_with_unsupported_structure_type_is_rejected() -> None:
    line = row(Type_de_BAL="ORG", **{"Type identifiant structure": "4"})
    with pytest.raises(InvalidFieldError, match="Identification Structure"):
        mssante.parse_row(fields(line))


def test_bad_finess_key_is_rejected_naming_the_column() -> None:
    line = row(**{"Identification Structure": "319139094"})
    with pytest.raises(
        InvalidFieldError, match="Identification Structure: '319139094'"
    ):
        mssante.parse_row(fields(line))


def test_bad_address_is_rejected() -> None:
    with pytest.raises(InvalidFieldError, match="Adresse BAL"):
        mssante.parse_row(fields(row(Adresse_BAL="no-at-sign")))


def test_known_structures_are_not_rebuilt() -> None:
    parsed = mssante.parse_row(fields(row()), known_structures={"1319139093"})
    assert parsed.organisation is None
