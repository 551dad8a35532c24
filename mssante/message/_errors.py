"""Errors of the MSSanté message profile.

Every error raised by ``mssante.message`` derives from :class:`MessageError`,
which sits under the library root ``MSSanteError``.
A caller that builds or reads a message catches ``MessageError``; the
subclasses say which rule was broken, and the message names the field::

    MessageError
    ├── InvalidFieldError          a field of the model breaks its rule
    │   ├── MissingInsError        a patient or a CDA without an INS
    │   └── MultiplePatientsError  two patients in one message
    ├── InvalidDocumentError       a document is not what it claims to be
    │   ├── MalformedCdaError      CDA not well-formed or not a CDA R2 document
    │   └── NotAPdfError           a PDF that does not start with %PDF-
    ├── MalformedXdmError          IHE_XDM.ZIP or METADATA.XML unusable
    │   └── IntegrityError         a hash or size does not match METADATA.XML
    ├── MalformedMessageError      a message that is not an MSSanté message
    └── MalformedReceiptError      a DSN or MDN that cannot be read
"""

from __future__ import annotations

from mssante._errors import MSSanteError


class MessageError(MSSanteError):
    """Root of every error of the message profile."""


class InvalidFieldError(MessageError, ValueError):
    """A value of the model breaks its rule; ``field`` names it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class MissingInsError(InvalidFieldError):
    """A report, or a CDA document in it, has no INS for its patient."""


class MultiplePatientsError(InvalidFieldError):
    """A message concerns more than one patient (one patient per message)."""


class InvalidDocumentError(MessageError):
    """A document's content does not match its declared kind."""


class MalformedCdaError(InvalidDocumentError):
    """A CDA document is not well-formed XML or not a CDA R2 ClinicalDocument."""


class NotAPdfError(InvalidDocumentError):
    """A document declared as PDF does not start with the ``%PDF-`` magic."""


class MalformedXdmError(MessageError):
    """An IHE_XDM.ZIP archive or its METADATA.XML cannot be used."""


class IntegrityError(MalformedXdmError):
    """A document's SHA-1 or size differs from what METADATA.XML declares."""


class MalformedMessageError(MessageError):
    """A message does not follow the MSSanté message profile."""


class MalformedReceiptError(MessageError):
    """A DSN (RFC 3464) or MDN (RFC 8098) cannot be read."""
