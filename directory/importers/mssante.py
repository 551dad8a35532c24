"""Rows of the MSSanté extraction (``Extraction_Correspondance_MSSante``) -> entries.

Owns the 31-column layout and the pure mapping of one row to a
:class:`~directory.model.Mailbox` and, when the row names a structure with a
company name, an :class:`~directory.model.Organisation` (both with source
``"mssante"``). No I/O: :func:`parse_row` takes the fields, returns entries or
raises :class:`~directory.errors.InvalidFieldError` whose message names the
column, the value and the rule, which the runner records against the line.

Mapping (one row = one BAL):

- ``Type de BAL``: ``PER`` (a practitioner's own box), ``ORG`` (a service of
  a structure), ``APP`` (software of a structure), ``CAB`` (a practice's
  shared box); anything else is rejected.
- PER: owner = ``Identification nationale PP`` (``8`` + RPPS or ``0`` + ADELI;
  when empty, built from ``Type Identifiant PP`` + ``Identifiant PP``);
  display name = civility, first name, name; profession = ``Libellé
  Profession``; structure = the site the practitioner works at.
- ORG/APP: owner = the structure, which is then required; service =
  ``Service de rattachement``; display name = service - company name.
- CAB: owner = the structure when the row has a supported one, else the
  practitioner.
- Structure id = ``Type identifiant structure`` + ``Identification
  Structure``, by the ANS nomenclature TRE_G07 (TypeIdentifiantStructure):
  ``1`` FINESS and ``5`` FINESS EJ -> ``1`` + FINESS, ``3`` SIRET -> ``3`` +
  SIRET. ``0`` (ADELI practice), ``2`` (SIREN) and ``4`` (RPPS-rang practice)
  have no national structure id in our model: the mailbox then has no
  structure (a PER row is still imported; an ORG/APP row is rejected, its
  owner being unknown).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from directory import identifiers as ids
from directory.errors import InvalidFieldError
from directory.importers._reader import Layout
from directory.model import (
    SOURCE_MSSANTE,
    BalType,
    Mailbox,
    Organisation,
    OwnerKind,
)

if TYPE_CHECKING:
    from collections.abc import Container

    from directory.sqlite import ImportRow

COLUMNS: Final = (
    "Type de BAL",
    "Adresse BAL",
    "Type Identifiant PP",
    "Identifiant PP",
    "Identification nationale PP",
    "Type identifiant structure",
    "Identification Structure",
    "Service de rattachement",
    "Civilité d'exercice",
    "Nom d'exercice",
    "Prénom d'exercice",
    "Catégorie profession",
    "Libellé de catégorie profession",
    "Code Profession",
    "Libellé Profession",
    "Code savoir-faire",
    "Libellé savoir-faire",
    "Dématérialisation",
    "Raison Sociale structure BAL",
    "Enseigne commerciale structure BAL",
    "L2COMPLEMENTLOCALISATION",
    "L3COMPLEMENTDISTRIBUTION",
    "L4NUMEROVOIE",
    "L4COMPLEMENTNUMEROVOIE",
    "NL4TYPEVOIE",
    "L4LIBELLEVOIE",
    "L5LIEUDITMENTION",
    "L6LIGNEACHEMINEMENT",
    "Code postal",
    "Département",
    "Pays",
)
LAYOUT: Final = Layout("Extraction_Correspondance_MSSante", COLUMNS)

# Column positions (0-based) of the fields the mapping reads.
BAL_TYPE: Final = 0
ADDRESS: Final = 1
PP_ID_TYPE: Final = 2
PP_ID: Final = 3
PP_NATIONAL_ID: Final = 4
STRUCTURE_ID_TYPE: Final = 5
STRUCTURE_ID: Final = 6
SERVICE: Final = 7
CIVILITY: Final = 8
LAST_NAME: Final = 9
FIRST_NAME: Final = 10
PROFESSION: Final = 14
COMPANY_NAME: Final = 18
TRADE_NAME: Final = 19

# TRE_G07 TypeIdentifiantStructure -> prefix of the national structure id.
STRUCTURE_PREFIX: Final = {"1": "1", "5": "1", "3": "3"}
# Civilité d'exercice codes (TRE_R11) as written before a name.
CIVILITY_TITLE: Final = {
    "DR": "Dr",
    "M": "M.",
    "MME": "Mme",
    "PR": "Pr",
    "MLLE": "Mlle",
}
_BAL_TYPES: Final = {t.value: t for t in BalType}
# Model fields whose errors are reported under the column they came from.
MODEL_FIELD_COLUMN: Final = {
    "address": COLUMNS[ADDRESS],
    "owner_id": COLUMNS[PP_NATIONAL_ID],
    "structure_id": COLUMNS[STRUCTURE_ID],
}


@dataclass(frozen=True, slots=True)
class MssanteRow:
    """What one row yields."""

    mailbox: Mailbox
    organisation: Organisation | None  # the structure, when it has a name


def structure_id(kind: str, value: str, field: str = COLUMNS[STRUCTURE_ID]) -> str:
    """The national structure id of a row's structure, or ``""`` if unsupported.

    Raises:
        InvalidFieldError: a FINESS or SIRET whose format or key is wrong.
    """
    value = value.strip()
    prefix = STRUCTURE_PREFIX.get(kind.strip())
    if not value or prefix is None:
        return ""
    return ids.national_structure_id(prefix + value, field)


def practitioner_id(fields: list[str]) -> str:
    """``Identification nationale PP``, or type + id when it is empty.

    Not validated here: :class:`Mailbox` validates its owner.
    """
    national = fields[PP_NATIONAL_ID].strip()
    field = COLUMNS[PP_NATIONAL_ID]
    if not national and fields[PP_ID].strip():
        national = fields[PP_ID_TYPE].strip() + fields[PP_ID].strip()
        field = COLUMNS[PP_ID]
    if not national:
        raise InvalidFieldError(field, "", "a PER mailbox needs its practitioner")
    return national


def _join(*parts: str) -> str:
    return " ".join(p for p in parts if p)


def parse_row(
    fields: list[str], known_structures: Container[str] = frozenset()
) -> MssanteRow:
    """Map the 31 fields of one row to its entries. Pure.

    ``known_structures``: structure ids whose organisation the caller already
    has; no :class:`Organisation` is built again for them (a speed-up only).

    Raises:
        InvalidFieldError: the row cannot be imported; the message names the
            column (or model field) and the value.
    """
    raw_type = fields[BAL_TYPE].strip()
    bal_type = _BAL_TYPES.get(raw_type.upper())
    if bal_type is None:
        raise InvalidFieldError(
            COLUMNS[BAL_TYPE], raw_type, "unknown BAL type (PER, ORG, APP, CAB)"
        )
    structure = structure_id(fields[STRUCTURE_ID_TYPE], fields[STRUCTURE_ID])
    service = fields[SERVICE].strip()
    company = fields[COMPANY_NAME].strip()
    if bal_type is BalType.PER or (bal_type is BalType.CAB and not structure):
        owner_kind, owner = OwnerKind.PRACTITIONER, practitioner_id(fields)
        civility = fields[CIVILITY].strip()
        display = _join(
            CIVILITY_TITLE.get(civility.upper(), civility),
            fields[FIRST_NAME].strip(),
            fields[LAST_NAME].strip(),
        )
    else:
        if not structure:
            raise InvalidFieldError(
                COLUMNS[STRUCTURE_ID],
                f"{fields[STRUCTURE_ID_TYPE].strip()}:{fields[STRUCTURE_ID].strip()}",
                f"a {bal_type} mailbox needs a FINESS (type 1/5) or SIRET (type 3) structure",
            )
        owner_kind, owner = OwnerKind.ORGANISATION, structure
        display = " - ".join(p for p in (service, company) if p)
    try:
        mailbox = Mailbox(
            address=fields[ADDRESS],
            bal_type=bal_type,
            owner_kind=owner_kind,
            owner_id=owner,
            display_name=display,
            structure_id=structure,
            service=service,
            profession=fields[PROFESSION].strip(),
            source=SOURCE_MSSANTE,
        )
    except InvalidFieldError as exc:
        # The model validates the address and the owner (once: they are the
        # costly checks); report them under the column they came from.
        column = MODEL_FIELD_COLUMN.get(exc.field, exc.field)
        raise InvalidFieldError(column, exc.value, exc.reason) from None
    organisation = None
    if structure and company and structure not in known_structures:
        organisation = Organisation(
            structure_id=structure,
            name=company,
            trade_name=fields[TRADE_NAME].strip(),
            source=SOURCE_MSSANTE,
        )
    return MssanteRow(mailbox, organisation)


# --- rows straight from the fields -------------------------------------------
#
# fast_rows is parse_row followed by directory.sqlite.import_row, for the
# rows it recognises as plainly valid, without building the entries: the
# content text is written field by field in encode_content's key order and
# format. Anything unusual returns None and the caller takes parse_row,
# which accepts or rejects the row with its reason. tests/directory/
# test_import_rows.py checks that both give the same rows.

_QUOTE: Final = json.encoder.encode_basestring  # JSON string, ensure_ascii=False
_BLAKE2B: Final = hashlib.blake2b


# Raw "Type de BAL" -> (BAL type, a practitioner's box even with a structure,
# a practitioner's box without one).
_FAST_BAL: Final = {
    t.value: (t.value, t is BalType.PER, t in (BalType.PER, BalType.CAB))
    for t in BalType
}
_PRACTITIONER: Final = OwnerKind.PRACTITIONER.value
_ORGANISATION: Final = OwnerKind.ORGANISATION.value
# Values that repeat from row to row, by the raw field(s), valid ones only:
# (type, id) -> national structure id ("" when unsupported; tens of thousands
# of structures), domain -> canonical domain (hundreds), civility -> title.
_STRUCTURES: dict[tuple[str, str], str] = {}
_DOMAINS: dict[str, str] = {}
_TITLES: dict[str, str] = {}
_MAX_REMEMBERED: Final = 65536  # per cache; a full cache starts again


def _remember(cache: dict[Any, str], key: object, value: str) -> None:
    if len(cache) >= _MAX_REMEMBERED:
        cache.clear()
    cache[key] = value


def fast_rows(
    fields: list[str], known_structures: Container[str]
) -> tuple[ImportRow, ImportRow | None] | None:
    """The mailbox row and, when the structure is new and named, the
    organisation row of one row; None when the row needs :func:`parse_row`."""
    bal = _FAST_BAL.get(fields[BAL_TYPE])
    if bal is None:  # unknown, or written otherwise ("per ", ...)
        return None
    bal_type, per, practitioner_without_structure = bal
    pair = (fields[STRUCTURE_ID_TYPE], fields[STRUCTURE_ID])
    structure = _STRUCTURES.get(pair)
    local, at, domain = fields[ADDRESS].rpartition("@")
    canonical_domain = _DOMAINS.get(domain)
    try:
        if structure is None:
            structure = structure_id(*pair)
            _remember(_STRUCTURES, pair, structure)
        if canonical_domain is None:
            canonical_domain = ids.domain(domain)
            _remember(_DOMAINS, domain, canonical_domain)
    except InvalidFieldError:
        return None
    # ids.address, for a plain local part (anything else: parse_row).
    if not (
        at
        and len(local) <= ids.MAX_LOCAL_PART_LENGTH
        and ids.is_plain_local_part(local)
    ):
        return None
    address = local + "@" + canonical_domain
    service = fields[SERVICE].strip()
    company = fields[COMPANY_NAME].strip()
    if per or (practitioner_without_structure and not structure):
        owner = fields[PP_NATIONAL_ID].strip()
        # 8 + RPPS only (ADELI and the other spellings go to parse_row).
        if not (len(owner) == 12 and owner[0] == "8" and ids.is_rpps(owner[1:])):
            return None
        owner_kind = _PRACTITIONER
        civility = fields[CIVILITY]
        title = _TITLES.get(civility)
        if title is None:
            stripped = civility.strip()
            title = CIVILITY_TITLE.get(stripped.upper(), stripped)
            _remember(_TITLES, civility, title)
        first = fields[FIRST_NAME].strip()
        last = fields[LAST_NAME].strip()
        if title and first and last:
            display = f"{title} {first} {last}"
        else:
            display = _join(title, first, last)
    elif structure:
        owner, owner_kind = structure, _ORGANISATION
        if service and company:
            display = f"{service} - {company}"
        else:
            display = service or company
    else:
        return None
    profession = fields[PROFESSION].strip()
    # owner and structure are validated ids (digits, A, B): nothing to escape.
    content = (
        f'{{"address":{_QUOTE(address)},"bal_type":"{bal_type}",'
        f'"certificates":[],"display_name":{_QUOTE(display)},"kind":"mailbox",'
        f'"owner_id":"{owner}","owner_kind":"{owner_kind}","pgp_key":"",'
        f'"prefers_pgp":false,"profession":{_QUOTE(profession)},"published":true,'
        f'"service":{_QUOTE(service)},"structure_id":"{structure}"}}'
    )
    mailbox = (
        address,
        content,
        _BLAKE2B(content.encode(), digest_size=16).hexdigest(),  # digest_of
        None,
        owner,
        None,
        f"{address} {display} {service} {owner}".lower(),
    )
    organisation = None
    if structure and company and structure not in known_structures:
        trade = fields[TRADE_NAME].strip()
        content = (
            f'{{"kind":"organisation","name":{_QUOTE(company)},'
            f'"structure_id":"{structure}","trade_name":{_QUOTE(trade)}}}'
        )
        organisation = (
            structure,
            content,
            _BLAKE2B(content.encode(), digest_size=16).hexdigest(),
            None,
            None,
            None,
            f"{structure} {company} {trade}".lower(),
        )
    return mailbox, organisation
