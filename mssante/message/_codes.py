"""Identifiers, OIDs and coded values shared by the message profile.

Owns the constants every other module of ``mssante.message`` spells: the OIDs
of the French identifiers, the XDS.b/ebRIM UUIDs of METADATA.XML and the
:class:`Code` triple. Values come from the standards cited next to them; a
constant is never rebuilt from pieces elsewhere.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mssante.message._errors import InvalidFieldError

# ANS, "Identifiants des acteurs de santé": idNatPs and idNatStruct OIDs.
OID_NATIONAL_PRACTITIONER_ID = "1.2.250.1.71.4.2.1"
OID_NATIONAL_STRUCTURE_ID = "1.2.250.1.71.4.2.2"
# ANS, "Référentiel INS": INS-NIR and INS-NIA (production), test, demonstration.
OID_INS_NIR = "1.2.250.1.213.1.4.8"
OID_INS_NIA = "1.2.250.1.213.1.4.9"
OID_INS_NIR_TEST = "1.2.250.1.213.1.4.10"
OID_INS_NIR_DEMO = "1.2.250.1.213.1.4.11"
INS_OIDS = frozenset({OID_INS_NIR, OID_INS_NIA, OID_INS_NIR_TEST, OID_INS_NIR_DEMO})
# ANS CI-SIS: confidentiality code scheme of the French masking codes.
OID_MASKING = "1.2.250.1.213.1.1.4.13"
# HL7 v3 Confidentiality code system (N, R, V).
OID_HL7_CONFIDENTIALITY = "2.16.840.1.113883.5.25"
# IHE ITI TF-3 §5.2: format codes of IHE documents.
OID_IHE_FORMAT_CODES = "1.3.6.1.4.1.19376.1.2.3"
# ITU-T X.667 §6.3: a UUID as an OID arc under 2.25.
OID_UUID_ARC = "2.25"

# HL7 v2 / XDS.b value delimiters: refused inside a name or identifier, since
# METADATA.XML packs them into ``^``/``&``-separated values.
HL7_DELIMITERS = frozenset("^&~|\\")


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value: ``code`` in the code system ``scheme`` (an OID)."""

    code: str
    display: str
    scheme: str

    def __post_init__(self) -> None:
        if not self.code or not self.scheme:
            raise InvalidFieldError("code", "code and scheme must not be empty")
        for name in ("code", "scheme"):
            if HL7_DELIMITERS & set(getattr(self, name)):
                raise InvalidFieldError(f"code.{name}", "holds an HL7 delimiter")

    def hl7(self) -> str:
        """The HL7 v2 CE form ``code^display^scheme`` used in XDS slots."""
        return f"{self.code}^{self.display}^{self.scheme}"


class Masking(enum.Enum):
    """The French masking confidentiality codes (scheme 1.2.250.1.213.1.1.4.13)."""

    MASQUE_PS = "MASQUE_PS"
    INVISIBLE_PATIENT = "INVISIBLE_PATIENT"

    @property
    def code(self) -> Code:
        """The confidentiality code this masking puts in METADATA.XML."""
        return Code(self.value, _MASKING_LABELS[self], OID_MASKING)


_MASKING_LABELS = {
    Masking.MASQUE_PS: "Document masqué aux professionnels de santé",
    Masking.INVISIBLE_PATIENT: "Document non visible par le patient",
}

CONFIDENTIALITY_NORMAL = Code("N", "Normal", OID_HL7_CONFIDENTIALITY)
# IHE ITI TF-3 Table 5.2-1 (XDS-SD) and IHE 2017 "mime type sufficient".
FORMAT_XDS_SD_PDF = Code("urn:ihe:iti:xds-sd:pdf:2008", "PDF", OID_IHE_FORMAT_CODES)
FORMAT_MIME_SUFFICIENT = Code(
    "urn:ihe:iti:xds:2017:mimeTypeSufficient", "Mime type", OID_IHE_FORMAT_CODES
)
