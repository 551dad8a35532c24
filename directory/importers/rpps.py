"""Rows of the RPPS extraction (``PS_LibreAcces_Personne_activite``) -> entries.

Owns the 56-column layout (each line ends with a ``|``) and the pure mapping
of rows to :class:`~directory.model.Practitioner` entries (source ``"rpps"``).
One row is one *activity* of a practitioner; a practitioner working at two
sites has two rows. No I/O.

What must stay true:

- :func:`parse_row` maps one row to a practitioner with exactly one
  :class:`~directory.model.Activity`, or raises
  :class:`~directory.errors.InvalidFieldError` naming the column and value.
- :func:`merge` combines two entries of the same practitioner: the later
  row's identity fields win, activities are the union in first-seen order
  without duplicates. It is associative, so rows merged consecutively by the
  runner and across batches by :func:`directory.protocol.plan_batch` give the
  same entry.
- ADELI rows (``Type d'identifiant PP`` ``0``) map the same way: the national
  id is ``0`` + ADELI.
- Activity structure: ``1`` + FINESS site when present, else ``3`` + SIRET
  site, else none.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING, Final

from directory import identifiers as ids
from directory.errors import InvalidFieldError
from directory.importers._reader import Layout
from directory.model import SOURCE_RPPS, Activity, Entry, Practitioner

if TYPE_CHECKING:
    from collections.abc import Sequence

    from directory.sqlite import ImportRow

COLUMNS: Final = (
    "Type d'identifiant PP",
    "Identifiant PP",
    "Identification nationale PP",
    "Code civilité d'exercice",
    "Libellé civilité d'exercice",
    "Code civilité",
    "Libellé civilité",
    "Nom d'exercice",
    "Prénom d'exercice",
    "Code profession",
    "Libellé profession",
    "Code catégorie professionnelle",
    "Libellé catégorie professionnelle",
    "Code type savoir-faire",
    "Libellé type savoir-faire",
    "Code savoir-faire",
    "Libellé savoir-faire",
    "Code mode exercice",
    "Libellé mode exercice",
    "Numéro SIRET site",
    "Numéro SIREN site",
    "Numéro FINESS site",
    "Numéro FINESS établissement juridique",
    "Identifiant technique de la structure",
    "Raison sociale site",
    "Enseigne commerciale site",
    "Complément destinataire (coord. structure)",
    "Complément point géographique (coord. structure)",
    "Numéro Voie (coord. structure)",
    "Indice répétition voie (coord. structure)",
    "Code type de voie (coord. structure)",
    "Libellé type de voie (coord. structure)",
    "Libellé Voie (coord. structure)",
    "Mention distribution (coord. structure)",
    "Bureau cedex (coord. structure)",
    "Code postal (coord. structure)",
    "Code commune (coord. structure)",
    "Libellé commune (coord. structure)",
    "Code pays (coord. structure)",
    "Libellé pays (coord. structure)",
    "Téléphone (coord. structure)",
    "Téléphone 2 (coord. structure)",
    "Télécopie (coord. structure)",
    "Adresse e-mail (coord. structure)",
    "Code Département (structure)",
    "Libellé Département (structure)",
    "Ancien identifiant de la structure",
    "Autorité d'enregistrement",
    "Code secteur d'activité",
    "Libellé secteur d'activité",
    "Code section tableau pharmaciens",
    "Libellé section tableau pharmaciens",
    "Code rôle",
    "Libellé rôle",
    "Code genre activité",
    "Libellé genre activité",
)
LAYOUT: Final = Layout(
    "PS_LibreAcces_Personne_activite", COLUMNS, trailing_separator=True
)

ID_TYPE: Final = 0
PP_ID: Final = 1
NATIONAL_ID: Final = 2
CIVILITY: Final = 3
LAST_NAME: Final = 7
FIRST_NAME: Final = 8
PROFESSION_CODE: Final = 9
PROFESSION: Final = 10
SPECIALTY_CODE: Final = 15
SPECIALTY: Final = 16
MODE: Final = 17
SIRET: Final = 19
FINESS: Final = 21
SITE_NAME: Final = 24
ROLE: Final = 52


def national_id(fields: list[str]) -> str:
    """The row's ``Identification nationale PP``, or type + id when it is empty.

    Not validated: this is the grouping key the runner compares rows with.
    """
    nid = fields[NATIONAL_ID].strip()
    return nid or fields[ID_TYPE].strip() + fields[PP_ID].strip()


def activity(fields: list[str]) -> Activity:
    """The practice site of one row.

    Raises:
        InvalidFieldError: a FINESS or SIRET whose format or key is wrong.
    """
    finess = fields[FINESS].strip()
    siret = fields[SIRET].strip()
    if finess:
        structure = "1" + ids.finess(finess, COLUMNS[FINESS])
    elif siret:
        structure = "3" + ids.siret(siret, COLUMNS[SIRET])
    else:
        structure = ""
    return Activity(
        structure_id=structure,
        structure_name=fields[SITE_NAME].strip(),
        mode=fields[MODE].strip(),
        role=fields[ROLE].strip(),
    )


def parse_row(fields: list[str]) -> Practitioner:
    """Map the 56 fields of one row to a practitioner with one activity. Pure.

    Raises:
        InvalidFieldError: the row cannot be imported (bad RPPS/ADELI key, no
            name, bad FINESS/SIRET); the message names the column and value.
    """
    field = COLUMNS[NATIONAL_ID] if fields[NATIONAL_ID].strip() else COLUMNS[PP_ID]
    nid = ids.national_practitioner_id(national_id(fields), field)
    last_name = fields[LAST_NAME].strip()
    if not last_name:
        raise InvalidFieldError(COLUMNS[LAST_NAME], "", "must not be empty")
    return Practitioner(
        national_id=nid,
        last_name=last_name,
        first_name=fields[FIRST_NAME].strip(),
        civility=fields[CIVILITY].strip(),
        profession_code=fields[PROFESSION_CODE].strip(),
        profession=fields[PROFESSION].strip(),
        specialty_code=fields[SPECIALTY_CODE].strip(),
        specialty=fields[SPECIALTY].strip(),
        activities=(activity(fields),),
        source=SOURCE_RPPS,
    )


def merge(earlier: Entry, later: Entry) -> Entry:
    """Combine two rows of one practitioner (see the module docstring).

    Used both by the runner for consecutive rows and as the ``merge`` of
    :meth:`directory.protocol.Directory.import_batch` for repeats that are
    not adjacent in the file.
    """
    if not isinstance(earlier, Practitioner) or not isinstance(later, Practitioner):
        msg = f"rpps.merge: practitioners only, got {type(earlier).__name__}"
        raise TypeError(msg)
    seen = dict.fromkeys(earlier.activities)
    seen.update(dict.fromkeys(later.activities))
    return dataclasses.replace(later, activities=tuple(seen), status=earlier.status)


# --- rows straight from the fields -------------------------------------------
#
# As for the MSSanté file (see directory.importers.mssante.fast_rows): the
# runner groups a practitioner's consecutive rows as (identity, activities)
# and makes its row once, without building entries; fast_row steps aside
# (None) for anything but plainly valid rows, which parse_row then takes.
# tests/directory/test_import_rows.py checks that both give the same rows.

Identity = tuple[str, str, str, str, str, str, str, str]
"""national_id, last_name, first_name, civility, profession_code,
profession, specialty_code, specialty."""
ActivityValues = tuple[str, str, str, str]
"""structure_id, structure_name, mode, role (:class:`Activity`'s order)."""

_QUOTE: Final = json.encoder.encode_basestring  # JSON string, ensure_ascii=False
_BLAKE2B: Final = hashlib.blake2b


def fast_row(fields: list[str]) -> tuple[Identity, ActivityValues] | None:
    """One row as :func:`parse_row` reads it, or None when it needs that."""
    nid = fields[NATIONAL_ID].strip() or fields[ID_TYPE].strip() + fields[PP_ID].strip()
    first = nid[:1]
    if not (
        (first == "8" and ids.is_rpps(nid[1:]))
        or (first == "0" and ids.is_adeli(nid[1:]))
    ):
        return None
    last_name = fields[LAST_NAME].strip()
    if not last_name:
        return None
    finess = fields[FINESS].strip()
    siret = fields[SIRET].strip()
    try:
        if finess:
            structure = "1" + ids.finess(finess)
        elif siret:
            structure = "3" + ids.siret(siret)
        else:
            structure = ""
    except InvalidFieldError:
        return None
    return (
        nid,
        last_name,
        fields[FIRST_NAME].strip(),
        fields[CIVILITY].strip(),
        fields[PROFESSION_CODE].strip(),
        fields[PROFESSION].strip(),
        fields[SPECIALTY_CODE].strip(),
        fields[SPECIALTY].strip(),
    ), (
        structure,
        fields[SITE_NAME].strip(),
        fields[MODE].strip(),
        fields[ROLE].strip(),
    )


def values_of(practitioner: Practitioner) -> tuple[Identity, ActivityValues]:
    """What :func:`fast_row` gives, from :func:`parse_row`'s entry."""
    p = practitioner
    a = p.activities[0]
    return (
        p.national_id,
        p.last_name,
        p.first_name,
        p.civility,
        p.profession_code,
        p.profession,
        p.specialty_code,
        p.specialty,
    ), (a.structure_id, a.structure_name, a.mode, a.role)


def practitioner_row(
    identity: Identity, activities: Sequence[ActivityValues]
) -> ImportRow:
    """The :data:`~directory.sqlite.ImportRow` of a practitioner: the same
    as :func:`directory.sqlite.import_row` of the merged entry."""
    nid, last, first, civility, pcode, profession, scode, specialty = identity
    q = _QUOTE
    listed = ",".join(
        f'{{"mode":{q(mode)},"role":{q(role)},"structure_id":"{structure}",'
        f'"structure_name":{q(name)}}}'
        for structure, name, mode, role in activities
    )
    # nid and structure ids are validated (digits, A, B): nothing to escape.
    content = (
        f'{{"activities":[{listed}],"civility":{q(civility)},'
        f'"first_name":{q(first)},"kind":"practitioner","last_name":{q(last)},'
        f'"national_id":"{nid}","profession":{q(profession)},'
        f'"profession_code":{q(pcode)},"specialty":{q(specialty)},'
        f'"specialty_code":{q(scode)}}}'
    )
    return (
        nid,
        content,
        _BLAKE2B(content.encode(), digest_size=16).hexdigest(),  # digest_of
        None,
        None,
        None,
        f"{nid} {last} {first} {profession}".lower(),
    )
