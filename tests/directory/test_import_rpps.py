"""Import of the RPPS extraction (PS_LibreAcces_Personne_activite), every backend."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from directory.importers import HeaderMismatchError, import_file, rpps
from directory.model import Activity, Kind, Practitioner, Status

if TYPE_CHECKING:
    from directory.protocol import Directory

ROOT = Path(__file__).resolve().parents[2]
GOOD = ROOT / "conf/demo/PS_LibreAcces_Personne_activite_202611220300.txt"
BAD = ROOT / "tests/data/annuaire/bad/PS_LibreAcces_Personne_activite_202611220300.txt"
REJECTS = ROOT / "tests/data/annuaire/bad/PS_LibreAcces_Personne_activite_rejects.txt"
MSSANTE = ROOT / "conf/demo/Extraction_Correspondance_MSSante_202611220300.txt"
GOOD_ROWS = 150
GOOD_PRACTITIONERS = 120
TWO_SITES = "810797543237"  # DUBOIS Loïc, pharmacist at two Ajaccio sites


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="cp1252").splitlines()


def write(path: Path, lines: list[str]) -> Path:
    path.write_bytes(("\n".join(lines) + "\n").encode("cp1252"))
    return path


async def test_good_sample_imports_every_row(directory: Directory) -> None:
    report = await import_file(directory, GOOD, "rpps")

    assert (report.rows, report.rejected, report.encoding) == (GOOD_ROWS, 0, "cp1252")
    assert report.added == GOOD_PRACTITIONERS
    assert (report.updated, report.duplicates, report.suspended) == (0, 0, 0)
    assert await directory.count(Kind.PRACTITIONER) == GOOD_PRACTITIONERS


async def test_rows_of_one_practitioner_become_activities(
    directory: Directory,
) -> None:
    await import_file(directory, GOOD, "rpps")

    p = await directory.practitioner(TWO_SITES)
    assert p is not None
    assert (p.last_name, p.first_name, p.civility) == ("DUBOIS", "Loïc", "M")
    assert (p.profession_code, p.profession, p.source) == ("21", "Pharmacien", "rpps")
    assert p.activities == (
        Activity(
            structure_id="12A6131864",
            structure_name="CENTRE HOSPITALIER AJACCIO 3",
            mode="L",
            role="FON-01",
        ),
        Activity(
            structure_id="12A2819488",
            structure_name="CENTRE HOSPITALIER AJACCIO 6",
            mode="S",
            role="FON-05",
        ),
    )
    doctor = await directory.practitioner("10219935185")  # a bare RPPS works too
    assert doctor is not None
    assert (doctor.specialty_code, doctor.specialty) == ("SM54", "Médecine générale")


async def test_shared_bad_sample_imports_its_rows(directory: Directory) -> None:
    # The shared bad/ RPPS sample holds only valid rows (38 rows, 30 people).
    report = await import_file(directory, BAD, "rpps")

    assert (report.rows, report.added, report.rejected) == (38, 30, 0)


async def test_bad_rows_rejected_with_line_numbers(directory: Directory) -> None:
    report = await import_file(directory, REJECTS, "rpps")

    assert report.rows == 9
    assert [r.line for r in report.rejects] == [4, 5, 6, 7, 8]
    reasons = [r.reason for r in report.rejects]
    assert reasons[0] == (
        "Identification nationale PP: '10797543238': RPPS key (Luhn) does not match"
    )
    assert reasons[1] == "row has 5 fields, expected 56"
    assert reasons[2].startswith("Numéro FINESS site: ")
    assert "FINESS key (Luhn) does not match" in reasons[2]
    assert reasons[3] == "Nom d'exercice: '': must not be empty"
    assert reasons[4] == "line is neither UTF-8 nor Windows-1252"
    assert report.added == 4  # lines 2+3 (one person), 9 (ADELI), 10


async def test_adeli_row_imports_with_national_id_0_adeli(
    directory: Directory,
) -> None:
    await import_file(directory, REJECTS, "rpps")

    p = await directory.practitioner("0751234568")
    assert p is not None
    assert (p.national_id, p.rpps, p.first_name) == ("0751234568", None, "René")


async def test_reimport_of_same_file_changes_nothing(directory: Directory) -> None:
    await import_file(directory, GOOD, "rpps")
    report = await import_file(directory, GOOD, "rpps", batch_size=7)

    assert (report.added, report.updated) == (0, 0)
    assert (report.unchanged, report.suspended) == (GOOD_PRACTITIONERS, 0)


async def test_removed_practitioner_suspended_changed_updated_then_reactivated(
    directory: Directory, tmp_path: Path
) -> None:
    lines = lines_of(GOOD)
    removed = lines[1].split("|")[2]
    assert lines[2].split("|")[2] != removed
    fields = lines[4].split("|")
    fields[rpps.MODE] = "B"  # a third row of another practitioner changes mode
    changed = fields[2]
    second = [lines[0], *lines[2:4], "|".join(fields), *lines[5:]]
    await import_file(directory, GOOD, "rpps")

    report = await import_file(directory, write(tmp_path / "v2.txt", second), "rpps")

    assert (report.added, report.updated) == (0, 1)
    assert report.unchanged == GOOD_PRACTITIONERS - 2
    assert report.suspended_keys == [removed]
    gone = await directory.practitioner(removed)
    assert gone is not None
    assert gone.status is Status.SUSPENDED
    updated = await directory.practitioner(changed)
    assert updated is not None
    assert "B" in {a.mode for a in updated.activities}

    again = await import_file(directory, GOOD, "rpps")

    assert (again.updated, again.suspended) == (2, 0)
    back = await directory.practitioner(removed)
    assert back is not None
    assert back.status is Status.ACTIVE


async def test_repeats_not_adjacent_are_merged_across_batches(
    directory: Directory, tmp_path: Path
) -> None:
    lines = lines_of(GOOD)
    first, second = lines[2], lines[3]  # the two rows of TWO_SITES
    assert first.split("|")[2] == second.split("|")[2] == TWO_SITES
    shuffled = [lines[0], first, *lines[4:10], second]

    report = await import_file(
        directory, write(tmp_path / "s.txt", shuffled), "rpps", batch_size=2
    )

    assert (report.rows, report.rejected, report.duplicates) == (8, 0, 0)
    p = await directory.practitioner(TWO_SITES)
    assert p is not None
    assert [a.mode for a in p.activities] == ["L", "S"]


async def test_zip_wrapper(directory: Directory, tmp_path: Path) -> None:
    archive = tmp_path / "PS_LibreAcces.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(GOOD, GOOD.name)

    report = await import_file(directory, archive, "rpps")

    assert (report.rows, report.added, report.rejected) == (150, 120, 0)


async def test_wrong_header_is_an_error_before_any_write(
    directory: Directory, tmp_path: Path
) -> None:
    with pytest.raises(HeaderMismatchError, match="not the PS_LibreAcces"):
        await import_file(directory, MSSANTE, "rpps")
    lines = lines_of(GOOD)
    lines[0] = lines[0].replace("Code rôle", "Code role")
    with pytest.raises(HeaderMismatchError, match="column 53 is 'Code role'"):
        await import_file(directory, write(tmp_path / "h.txt", lines), "rpps")

    assert await directory.count(Kind.PRACTITIONER) == 0


async def test_header_and_rows_without_trailing_separator(
    directory: Directory, tmp_path: Path
) -> None:
    lines = [line.removesuffix("|") for line in lines_of(GOOD)]

    report = await import_file(directory, write(tmp_path / "n.txt", lines), "rpps")

    assert (report.added, report.rejected) == (GOOD_PRACTITIONERS, 0)


async def test_unknown_format_is_a_bug(directory: Directory) -> None:
    with pytest.raises(ValueError, match="unknown extraction format"):
        await import_file(directory, GOOD, "finess")  # type: ignore[arg-type]


# --- pure mapping ------------------------------------------------------------


def test_merge_keeps_first_seen_activities_without_duplicates() -> None:
    a = Activity(structure_id="1319139093", mode="L")
    b = Activity(structure_id="12A6131864", mode="S")
    one = Practitioner(national_id=TWO_SITES, last_name="DUBOIS", activities=(a,))
    two = Practitioner(national_id=TWO_SITES, last_name="DUBOIS", activities=(b, a))

    merged = rpps.merge(one, two)

    assert isinstance(merged, Practitioner)
    assert merged.activities == (a, b)
    assert rpps.merge(merged, two) == merged


def test_activity_without_finess_uses_siret_then_nothing() -> None:
    fields = lines_of(GOOD)[1].split("|")
    fields[rpps.FINESS] = ""
    fields[rpps.SIRET] = "73282932000074"
    assert rpps.activity(fields).structure_id == "373282932000074"
    fields[rpps.SIRET] = ""
    assert rpps.activity(fields).structure_id == ""
