"""Exceptions of the trust directory.

::

    DirectoryError
     ├── InvalidFieldError      a value fails validation; names the field and value
     ├── EntryNotFoundError     the entry a change refers to does not exist
     ├── EntryExistsError       an add for a key that is already there
     ├── ImmutableFieldError    a change to a field that never changes (BAL address, type)
     └── DirectoryUnavailableError
                                the backend cannot be reached or failed; callers
                                answer with a temporary failure (fail closed)
"""

from __future__ import annotations


class DirectoryError(Exception):
    """Root of every error raised by the directory package."""


class InvalidFieldError(DirectoryError, ValueError):
    """A field value fails validation.

    The message always names the field, the value and the rule, so that a CLI
    can print it as is and an importer can record it against a line.
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}: {value!r}: {reason}")


class EntryNotFoundError(DirectoryError, LookupError):
    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"no {kind} with key {key!r}")


class EntryExistsError(DirectoryError):
    def __init__(self, kind: str, key: str) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"a {kind} with key {key!r} already exists")


class ImmutableFieldError(DirectoryError):
    def __init__(self, kind: str, key: str, field: str) -> None:
        self.kind = kind
        self.key = key
        self.field = field
        super().__init__(f"{kind} {key!r}: {field} never changes once created")


class DirectoryUnavailableError(DirectoryError):
    """The backend is unreachable or failed mid-operation.

    The relay maps this to a temporary reply (``451 4.4.3``), never an accept.
    """
