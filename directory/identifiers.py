"""Validation of the identifiers the trust space uses.

Pure functions: each takes the raw text, returns the canonical form, or raises
:class:`~directory.errors.InvalidFieldError` naming the field, the value and the
rule it breaks. Nothing here does I/O.

Rules (see docs/directory.md for sources):

- RPPS: 11 digits, Luhn key on all 11.
- National practitioner id (idNatPs): ``8`` + RPPS, or ``0`` + ADELI.
- ADELI: 9 digits, Luhn key on all 9.
- FINESS: 9 characters, digits except ``2A``/``2B`` (Corsica) in the department
  position; Luhn key computed with the letter read as ``0``.
- SIRET: 14 digits, Luhn; La Poste establishments (SIREN 356000000, other than
  its head office 35600000000048) use "digit sum divisible by 5" instead.
- National structure id (idNatStruct): ``1`` + FINESS or ``3`` + SIRET.
- INS matricule: 15 characters = NIR (13: sex digit, year, month, department
  with ``2A``/``2B``, commune, order) + key = 97 - (n mod 97), where ``2A`` and
  ``2B`` are replaced by 19 and 18 to compute n.
- INS OIDs: 1.2.250.1.213.1.4.8 (INS-NIR) and .4.9 (INS-NIA) are production
  OIDs; .4.10 (INS-NIR test) and .4.11 (demonstration) are refused in
  production mode.
- E-mail addresses: RFC 5321 §4.1.2 ``Mailbox`` in its dot-atom form (no quoted
  local parts, no address literals), with length limits of RFC 5321 §4.5.3.1.
"""

from __future__ import annotations

import functools
import re
from typing import Final

from directory.errors import InvalidFieldError

INS_NIR_OID: Final = "1.2.250.1.213.1.4.8"
INS_NIA_OID: Final = "1.2.250.1.213.1.4.9"
INS_NIR_TEST_OID: Final = "1.2.250.1.213.1.4.10"
INS_DEMO_OID: Final = "1.2.250.1.213.1.4.11"
PRODUCTION_INS_OIDS: Final = frozenset({INS_NIR_OID, INS_NIA_OID})
TEST_INS_OIDS: Final = frozenset({INS_NIR_TEST_OID, INS_DEMO_OID})
ALL_INS_OIDS: Final = PRODUCTION_INS_OIDS | TEST_INS_OIDS

RPPS_LENGTH: Final = 11
ADELI_LENGTH: Final = 9
FINESS_LENGTH: Final = 9
SIRET_LENGTH: Final = 14
INS_LENGTH: Final = 15
# RFC 5321 §4.5.3.1.1 and §4.5.3.1.2: local part and domain size limits.
MAX_LOCAL_PART_LENGTH: Final = 64
MAX_DOMAIN_LENGTH: Final = 255
LA_POSTE_SIREN: Final = "356000000"
LA_POSTE_HEAD_OFFICE_SIRET: Final = "35600000000048"

# RFC 5322 §3.2.3: atext, the characters that may appear unquoted (ASCII),
# and a dot-atom of them (also RFC 5321 §4.1.2 Dot-string). Regular
# expression pieces, shared by the relay's parsers.
ATEXT: Final = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
DOT_ATOM: Final = rf"{ATEXT}+(?:\.{ATEXT}+)*"
_LOCAL_PART = re.compile(DOT_ATOM)
# RFC 5321 §4.1.2 Domain: sub-domains of letters, digits and inner hyphens.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_INS = re.compile(r"[12378][0-9]{4}(?:[0-9]{2}|2A|2B)[0-9]{8}")
_FINESS = re.compile(r"(?:[0-9]{2}|2A|2B)[0-9]{7}")


# Luhn doubles every second digit from the right and adds the digits of the
# product: 0->0, 1->2, 2->4, 3->6, 4->8, 5->1, 6->3, 7->5, 8->7, 9->9.
_LUHN_DOUBLED_BYTES: Final = bytes.maketrans(b"0123456789", b"0246813579")


def luhn_valid(digits: str) -> bool:
    """Luhn check over a string of decimal digits (key included)."""
    if not _is_decimal(digits):
        msg = f"not decimal digits: {digits!r}"
        raise ValueError(msg)
    return _luhn(digits)


def _is_decimal(value: str) -> bool:
    # str.isdigit alone accepts other scripts' digits and superscripts.
    return value.isascii() and value.isdigit()


def _luhn(digits: str) -> bool:
    """Luhn over ASCII decimal digits: the digits from the right that stay
    (key, then every second one) and those that are doubled (translated to
    the digit sum of their double) are summed as bytes, in C."""
    raw = digits.encode()
    kept = sum(raw[::-2])
    doubled = sum(raw[-2::-2].translate(_LUHN_DOUBLED_BYTES))
    return (kept + doubled - 48 * len(raw)) % 10 == 0


def _digits(field: str, value: str, length: int) -> str:
    v = value.strip()
    if len(v) != length or not _is_decimal(v):
        raise InvalidFieldError(field, value, f"must be {length} digits")
    return v


def is_rpps(value: str) -> bool:
    """True when ``value`` is exactly an RPPS number (11 digits, Luhn key),
    with nothing to strip: the check of :func:`rpps` without an error."""
    return len(value) == RPPS_LENGTH and _is_decimal(value) and _luhn(value)


def is_adeli(value: str) -> bool:
    """True when ``value`` is exactly an ADELI number (9 digits, Luhn key)."""
    return len(value) == ADELI_LENGTH and _is_decimal(value) and _luhn(value)


def rpps(value: str, field: str = "rpps") -> str:
    """An RPPS number: 11 digits with a valid Luhn key."""
    v = _digits(field, value, RPPS_LENGTH)
    if not _luhn(v):
        raise InvalidFieldError(field, value, "RPPS key (Luhn) does not match")
    return v


def adeli(value: str, field: str = "adeli") -> str:
    """An ADELI number: 9 digits with a valid Luhn key."""
    v = _digits(field, value, ADELI_LENGTH)
    if not _luhn(v):
        raise InvalidFieldError(field, value, "ADELI key (Luhn) does not match")
    return v


def national_practitioner_id(value: str, field: str = "national_id") -> str:
    """idNatPs: ``8`` + RPPS or ``0`` + ADELI. A bare RPPS is accepted too."""
    v = value.strip()
    if len(v) == RPPS_LENGTH:
        return "8" + rpps(v, field)
    if v.startswith("8") and len(v) == RPPS_LENGTH + 1:
        return "8" + rpps(v[1:], field)
    if v.startswith("0") and len(v) == ADELI_LENGTH + 1:
        return "0" + adeli(v[1:], field)
    raise InvalidFieldError(
        field, value, "must be 8 + RPPS (12 digits), 0 + ADELI (10 digits) or an RPPS"
    )


def finess(value: str, field: str = "finess") -> str:
    """A FINESS number: 9 characters, ``2A``/``2B`` allowed, Luhn key."""
    try:
        return _finess(value)
    except InvalidFieldError as exc:
        raise InvalidFieldError(field, exc.value, exc.reason) from None


# Structure ids repeat on every row of a site: cached by value (the field name
# only goes into an error, and errors are not cached).
@functools.lru_cache(maxsize=65536)
def _finess(value: str) -> str:
    v = value.strip().upper()
    if not _FINESS.fullmatch(v):
        raise InvalidFieldError("finess", value, "must be 9 digits (2A/2B allowed)")
    if not luhn_valid(v.replace("A", "0").replace("B", "0")):
        raise InvalidFieldError("finess", value, "FINESS key (Luhn) does not match")
    return v


def siret(value: str, field: str = "siret") -> str:
    """A SIRET number: 14 digits, Luhn, or the La Poste digit-sum rule."""
    v = _digits(field, value.replace(" ", ""), SIRET_LENGTH)
    if v.startswith(LA_POSTE_SIREN) and v != LA_POSTE_HEAD_OFFICE_SIRET:
        if sum(ord(c) - 48 for c in v) % 5:
            raise InvalidFieldError(
                field, value, "La Poste SIRET: digit sum must be divisible by 5"
            )
        return v
    if not _luhn(v):
        raise InvalidFieldError(field, value, "SIRET key (Luhn) does not match")
    return v


def national_structure_id(value: str, field: str = "structure_id") -> str:
    """idNatStruct: ``1`` + FINESS or ``3`` + SIRET."""
    try:
        return _national_structure_id(value)
    except InvalidFieldError as exc:
        raise InvalidFieldError(field, exc.value, exc.reason) from None


@functools.lru_cache(maxsize=65536)  # by value, as _finess
def _national_structure_id(value: str) -> str:
    v = value.strip().upper()
    if v.startswith("1") and len(v) == FINESS_LENGTH + 1:
        return "1" + _finess(v[1:])
    if v.startswith("3") and len(v) == SIRET_LENGTH + 1:
        return "3" + siret(v[1:])
    raise InvalidFieldError("structure_id", value, "must be 1 + FINESS or 3 + SIRET")


def ins_key(nir: str) -> int:
    """The 2-digit key of a 13-character NIR (``2A``/``2B`` read as 19/18)."""
    n = int(nir.replace("2A", "19").replace("2B", "18"))
    return 97 - n % 97


def ins(value: str, field: str = "ins") -> str:
    """An INS matricule: 15 characters, NIR + key 97 - (n mod 97)."""
    v = value.strip().upper().replace(" ", "")
    if len(v) != INS_LENGTH or not _INS.fullmatch(v):
        raise InvalidFieldError(
            field,
            value,
            "must be 15 characters: 13-character NIR (2A/2B allowed) + 2-digit key",
        )
    if int(v[13:]) != ins_key(v[:13]):
        raise InvalidFieldError(field, value, "INS key (97 - n mod 97) does not match")
    return v


def ins_oid(value: str, *, production: bool, field: str = "ins_oid") -> str:
    """An INS assigning-authority OID; test and demo OIDs refused in production."""
    v = value.strip()
    if v not in ALL_INS_OIDS:
        raise InvalidFieldError(
            field, value, "not an INS OID (1.2.250.1.213.1.4.8/9/10/11)"
        )
    if production and v in TEST_INS_OIDS:
        raise InvalidFieldError(
            field, value, "test or demonstration INS OID refused in production mode"
        )
    return v


@functools.lru_cache(maxsize=4096)  # a few hundred mail domains in the whole space
def domain(value: str, field: str = "domain") -> str:
    """A mail domain, lower-cased (RFC 5321 §2.4: domains are case-insensitive)."""
    v = value.strip().rstrip(".").lower()
    labels = v.split(".")
    if (
        not v
        or len(v) > MAX_DOMAIN_LENGTH
        or len(labels) < 2  # a mail domain has at least two labels
        or not all(_LABEL.fullmatch(label) for label in labels)
    ):
        raise InvalidFieldError(field, value, "not a valid mail domain")
    return v


def is_plain_local_part(local: str) -> bool:
    """The common local parts, checked without a regular expression: ASCII
    letters and digits with inner single dots, hyphens and underscores (all
    RFC 5322 atext). False says only "not this simple": the full dot-atom
    rule decides then."""
    # RFC 5322 §3.2.3 atext (a subset) and RFC 5321 §4.1.2 Dot-string.
    plain = local.replace("-", "a").replace("_", "a")
    return (
        plain.isascii()
        and plain.replace(".", "").isalnum()
        and local[0] != "."
        and local[-1] != "."
        and ".." not in local
    )


def address(value: str, field: str = "address") -> str:
    """A mailbox address in its canonical form.

    RFC 5321 §2.4: the local part is case-sensitive, the domain is not. We keep
    the local part exactly as given and lower-case the domain; lookups apply
    the same normalisation, so ``Jean@EXAMPLE.fr`` and ``Jean@example.fr`` are
    one mailbox and ``jean@example.fr`` is another.
    """
    v = value.strip()
    if v.startswith("<") and v.endswith(">"):
        v = v[1:-1]
    local, sep, dom = v.rpartition("@")
    if not sep or not local:
        raise InvalidFieldError(field, value, "not an e-mail address (local@domain)")
    if len(local) > MAX_LOCAL_PART_LENGTH or not (
        is_plain_local_part(local) or _LOCAL_PART.fullmatch(local)
    ):
        raise InvalidFieldError(field, value, "invalid local part (RFC 5321 dot-atom)")
    try:
        canonical_domain = domain(dom, field)
    except InvalidFieldError:
        raise InvalidFieldError(field, value, "invalid domain") from None
    return f"{local}@{canonical_domain}"


_E164 = re.compile(r"\+[1-9][0-9]{7,14}")


def phone(value: str, field: str = "phone") -> str:
    """A telephone number in E.164 form (``+33612345678``).

    French national numbers (``06 12 34 56 78``, ``0612345678``) are taken as
    +33; spaces, dots and dashes are ignored.
    """
    v = re.sub(r"[\s.\-()]", "", value)
    if v.startswith("00"):
        v = "+" + v[2:]
    elif len(v) == 10 and v.startswith("0") and v.isdigit():
        v = "+33" + v[1:]
    if not _E164.fullmatch(v):
        raise InvalidFieldError(field, value, "not a telephone number (E.164, +33...)")
    return v


def address_domain(canonical_address: str) -> str:
    """The domain of an address already in canonical form."""
    return canonical_address.rpartition("@")[2]


_HEX64 = re.compile(r"[0-9a-f]{64}")
# RFC 4514 §3: attribute type names are case-insensitive; values are compared
# as written here (operators publish them in one spelling).
_DN_SPLIT = re.compile(r"(?<!\\),")


def distinguished_name(value: str, field: str = "dn") -> str:
    """An X.500 DN in RFC 4514 string form, normalised for comparison.

    Types are upper-cased, spaces around ``=`` and ``,`` removed; the RDN order
    is kept as written (most specific first, as OpenSSL ``-nameopt RFC2253``
    and the national whitelist print it). Escaped commas are kept.
    """
    parts = []
    for rdn in _DN_SPLIT.split(value.strip()):
        attr_type, sep, attr_value = rdn.partition("=")
        if not sep or not attr_type.strip() or not attr_value.strip():
            raise InvalidFieldError(
                field, value, "not a distinguished name (TYPE=value,...)"
            )
        parts.append(f"{attr_type.strip().upper()}={attr_value.strip()}")
    return ",".join(parts)


def sha256_fingerprint(value: str, field: str = "fingerprint") -> str:
    """A SHA-256 fingerprint as 64 lower-case hex digits (colons allowed on input)."""
    v = value.strip().replace(":", "").lower()
    if not _HEX64.fullmatch(v):
        raise InvalidFieldError(
            field, value, "must be a SHA-256 fingerprint (64 hex digits)"
        )
    return v
