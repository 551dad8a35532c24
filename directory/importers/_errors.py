"""Exceptions of the importers: file-level failures that stop an import.

A bad *row* never raises: it is recorded against its line number in the
report and the import goes on. These exceptions are for a file that cannot be
imported at all, and each is raised before anything is written::

    DirectoryError                      (directory.errors)
     └── ImportFileError                the file cannot be imported
          ├── HeaderMismatchError       the header row is not the expected layout
          ├── ChecksumMismatchError     the file's SHA-256 is not the expected one
          ├── StaleWhitelistError       a whitelist older than the one loaded
          └── UnsafeXmlError            a DOCTYPE, entity or malformed XML
"""

from __future__ import annotations

from directory.errors import DirectoryError


class ImportFileError(DirectoryError):
    """The file cannot be imported; nothing was written."""


class HeaderMismatchError(ImportFileError):
    """The header row does not match the expected column layout.

    The message names the first column that differs, so that an operator sees
    at once whether the wrong file (RPPS for MSSanté) or a new format version
    was given.
    """


class ChecksumMismatchError(ImportFileError):
    def __init__(self, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(f"SHA-256 of the file is {actual}, expected {expected}")


class StaleWhitelistError(ImportFileError):
    def __init__(self, generated: str, loaded: str) -> None:
        self.generated = generated
        self.loaded = loaded
        super().__init__(
            f"whitelist generated {generated} is older than the one loaded ({loaded})"
        )


class UnsafeXmlError(ImportFileError):
    """The XML declares a DTD or entities, or is not well-formed."""
