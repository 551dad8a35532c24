"""Importers of the trust directory: the public extraction files and the whitelist.

- :func:`import_file`: an Annuaire Santé extraction (``.txt`` or ``.zip``):
  ``"mssante"`` (Extraction_Correspondance_MSSante -> mailboxes and their
  organisations) or ``"rpps"`` (PS_LibreAcces_Personne_activite ->
  practitioners with their activities).
- :func:`import_whitelist`: the operators' whitelist
  (``listeblanchemssante.xml``) -> operators and their certificate DNs.

Row parsing (:mod:`.mssante`, :mod:`.rpps`, :func:`parse_whitelist`) is pure
and separate from running (async, through the
:class:`~directory.protocol.Directory` protocol only), so the same importer
serves the sqlite and the LDAP backends. A large extraction is parsed in a
process of its own (:mod:`._parser`) while this one writes.
"""

from __future__ import annotations

from directory.importers._errors import (
    ChecksumMismatchError,
    HeaderMismatchError,
    ImportFileError,
    StaleWhitelistError,
    UnsafeXmlError,
)
from directory.importers._run import (
    DEFAULT_BATCH_SIZE,
    FORMATS,
    MAX_LISTED_KEYS,
    MAX_REJECT_DETAILS,
    PARALLEL_MIN_BYTES,
    Format,
    ImportReport,
    KindReport,
    Reject,
    import_file,
)
from directory.importers.whitelist import (
    WhitelistDiff,
    WhitelistReport,
    import_whitelist,
    parse_whitelist,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "FORMATS",
    "MAX_LISTED_KEYS",
    "MAX_REJECT_DETAILS",
    "PARALLEL_MIN_BYTES",
    "ChecksumMismatchError",
    "Format",
    "HeaderMismatchError",
    "ImportFileError",
    "ImportReport",
    "KindReport",
    "Reject",
    "StaleWhitelistError",
    "UnsafeXmlError",
    "WhitelistDiff",
    "WhitelistReport",
    "import_file",
    "import_whitelist",
    "parse_whitelist",
]
