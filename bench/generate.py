"""Synthetic Annuaire Santé extractions at real scale, for the benchmarks.

Owns two generators that write files in exactly the layout and encoding of
the public extractions the importers read (:mod:`directory.importers`):

- :func:`write_mssante`: ``Extraction_Correspondance_MSSante`` (UTF-8, 31
  columns). Real file: about 536,000 rows, 85 % PER and 15 % ORG, a few
  addresses on two identical rows.
- :func:`write_rpps`: ``PS_LibreAcces_Personne_activite`` (Windows-1252, 56
  columns and a trailing ``|``). Real file: about 2 million activity rows; a
  practitioner with several sites has consecutive rows.

What must stay true: every row is valid (RPPS, FINESS and SIRET keys pass the
Luhn rule, addresses are dot-atoms), so an import rejects nothing; output is
deterministic for a seed; rows are built as plain strings and written in
blocks (no per-row object), so 2 million rows take seconds, not minutes.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Final

from directory.importers import mssante, rpps

if TYPE_CHECKING:
    from pathlib import Path

MSSANTE_ROWS: Final = 536_000  # real extraction, 2025
RPPS_ROWS: Final = 2_000_000  # real extraction, 2025
DUPLICATE_EVERY: Final = 500  # one address in 500 on two identical rows
ORG_SHARE: Final = 0.15  # ORG mailboxes among all (80-90k of 536k)
ROWS_PER_STRUCTURE: Final = 18  # ~30,000 structures for 536k mailboxes
_BLOCK: Final = 10_000  # rows joined and written at once

LAST_NAMES: Final = (
    "MARTIN", "BERNARD", "DUBOIS", "THOMAS", "ROBERT", "RICHARD", "PETIT",
    "DURAND", "LEROY", "MOREAU", "SIMON", "LAURENT", "LEFÈVRE", "MICHEL",
    "GARCIA", "D'ALMEIDA", "N'GUYEN", "LE GALL", "FAURE-DUPRÉ", "ÇELIK",
)  # fmt: skip
FIRST_NAMES: Final = (
    "Zoé", "Loïc", "Anaïs", "Jérôme", "Hélène", "Éric", "Noël", "Chloé",
    "Amélie", "François", "Marie", "Jean",
)  # fmt: skip
PROFESSIONS: Final = (
    ("10", "Médecin", "medecin", "SM54", "Médecine générale"),
    ("10", "Médecin", "medecin", "SM04", "Cardiologie et maladies vasculaires"),
    ("21", "Pharmacien", "pharmacien", "", ""),
    ("40", "Chirurgien-Dentiste", "chirurgien-dentiste", "", ""),
    ("50", "Sage-Femme", "sage-femme", "", ""),
    ("60", "Infirmier", "infirmier", "", ""),
    ("70", "Masseur-Kinésithérapeute", "masseur-kinesitherapeute", "", ""),
)
CIVILITIES: Final = (("M", "Monsieur"), ("MME", "Madame"), ("DR", "Docteur"))
SERVICES: Final = ("Urgences", "Laboratoire", "Cardio", "Radiologie", "Pédiatrie")
_ASCII: Final = str.maketrans(
    "ÈÉÊËÇÀÂÎÏÔÛÙèéêëçàâîïôûù' ", "EEEECAAIIOUUeeeecaaiiouu--"
)


def luhn_key(prefix: str) -> str:
    """The digit that makes ``prefix + digit`` pass the Luhn check."""
    total = 0
    for i, ch in enumerate(reversed(prefix)):
        d = ord(ch) - 48
        if i % 2 == 0:  # doubled once the key digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def rpps_number(n: int) -> str:
    """The n-th synthetic RPPS (11 digits, valid key)."""
    prefix = f"10{n:08d}"
    return prefix + luhn_key(prefix)


def adeli_number(n: int) -> str:
    prefix = f"75{n:06d}"
    return prefix + luhn_key(prefix)


def finess_number(n: int) -> str:
    """The n-th synthetic FINESS (9 digits; a few in Corsica, 2A/2B)."""
    department = ("2A", "2B")[n % 2] if n % 50 == 0 else f"{1 + n % 95:02d}"
    digits = f"{department}{n % 1_000_000:06d}"
    return digits + luhn_key(digits.replace("A", "0").replace("B", "0"))


def siret_number(n: int) -> str:
    prefix = f"4{n:012d}"
    return prefix + luhn_key(prefix)


def _slug(text: str) -> str:
    return text.translate(_ASCII).lower()


def _write_blocks(path: Path, rows: list[str], encoding: str, first: bool) -> None:
    with path.open("w" if first else "a", encoding=encoding, newline="") as f:
        f.write("\n".join(rows))
        f.write("\n")


def write_mssante(path: Path, rows: int = MSSANTE_ROWS, seed: int = 1) -> int:
    """Write an MSSanté extraction of ``rows`` data rows; returns the address count.

    Row ``i`` is deterministic for ``seed``; every ``DUPLICATE_EVERY``-th
    row repeats the previous one exactly.
    """
    rnd = random.Random(seed)
    structures = max(1, rows // ROWS_PER_STRUCTURE)
    block = ["|".join(mssante.COLUMNS)]
    first = True
    addresses = 0
    previous = ""
    for i in range(rows):
        if i and i % DUPLICATE_EVERY == 0:
            line = previous
        else:
            addresses += 1
            s = rnd.randrange(structures)
            finess = finess_number(s)
            company = f"CENTRE HOSPITALIER {s}"
            department = finess[:2]
            tail = f"||||||||75011 PARIS|75011|{department}|France"
            if rnd.random() < ORG_SHARE:
                service = SERVICES[i % len(SERVICES)]
                address = f"{_slug(service)}.{i}@ch-{s}.mssante.fr"
                line = (
                    f"ORG|{address}||||1|{finess}|{service}|||||||||||{company}"
                    f"||||1||R|de la Santé||75011 PARIS|75011|{department}|France"
                )
            else:
                code, label, domain, sf_code, sf_label = rnd.choice(PROFESSIONS)
                last, first_name = rnd.choice(LAST_NAMES), rnd.choice(FIRST_NAMES)
                number = rpps_number(i)
                address = f"{_slug(first_name)}.{_slug(last)}.{i}@{domain}.mssante.fr"
                civility = rnd.choice(CIVILITIES)[0]
                line = (
                    f"PER|{address}|8|{number}|8{number}|1|{finess}||{civility}|{last}|"
                    f"{first_name}|C|Civil|{code}|{label}|{sf_code}|{sf_label}|O|"
                    f"{company}|{tail}"
                )
        previous = line
        block.append(line)
        if len(block) >= _BLOCK:
            _write_blocks(path, block, "utf-8", first)
            block, first = [], False
    _write_blocks(path, block, "utf-8", first)
    return addresses


def write_rpps(path: Path, rows: int = RPPS_ROWS, seed: int = 2) -> int:
    """Write an RPPS extraction (Windows-1252) of ``rows`` rows; returns the
    number of practitioners.

    About 60 % of practitioners have one activity, the rest two or three, on
    consecutive rows; one in 50 is an ADELI row (type ``0``). Sites have a
    FINESS (60 %), a SIRET (15 %) or neither.
    """
    rnd = random.Random(seed)
    structures = max(1, rows // 40)
    block = ["|".join(rpps.COLUMNS) + "|"]
    first = True
    written = 0
    people = 0
    while written < rows:
        people += 1
        n = people
        if n % 50 == 0:
            number = adeli_number(n)
            id_type, national = "0", "0" + number
        else:
            number = rpps_number(n)
            id_type, national = "8", "8" + number
        code, label, _, sf_code, sf_label = rnd.choice(PROFESSIONS)
        civility, civility_label = rnd.choice(CIVILITIES)
        last, first_name = rnd.choice(LAST_NAMES), rnd.choice(FIRST_NAMES)
        sf_type = "S|Spécialité ordinale" if sf_code else "|"
        head = (
            f"{id_type}|{number}|{national}|{civility}|{civility_label}|||{last}|"
            f"{first_name}|{code}|{label}|C|Civil|{sf_type}|{sf_code}|{sf_label}|"
        )
        roll = rnd.random()
        activities = 1 if roll < 0.6 else 2 if roll < 0.9 else 3
        for a in range(min(activities, rows - written)):
            s = rnd.randrange(structures)
            site = rnd.random()
            finess = finess_number(s) if site < 0.6 else ""
            siret = siret_number(s) if 0.6 <= site < 0.75 else ""
            mode, mode_label = ("L", "Libéral") if a == 0 else ("S", "Salarié")
            role = "FON-01" if a == 0 else "FON-05"
            block.append(
                f"{head}{mode}|{mode_label}|{siret}|{siret[:9]}|{finess}|{finess}|"
                f"F{s}|CENTRE HOSPITALIER {s}|||||||||||75011|75111|Paris|99000|"
                f"France|||||75|Paris|||||||{role}|Titulaire|||"
            )
            written += 1
        if len(block) >= _BLOCK:
            _write_blocks(path, block, "cp1252", first)
            block, first = [], False
    _write_blocks(path, block, "cp1252", first)
    return people
