"""Exceptions of the mailbox store.

::

    StoreError
     ├── MasterKeyError            the master key file is missing, unreadable,
     │                             readable by group or others, malformed, or not
     │                             the key this store was created with
     ├── StoreLockedError          another process has the data directory open
     ├── MailboxNotFoundError      no mailbox for that address (ensure_mailbox first)
     ├── FolderNotFoundError       no folder of that name in the mailbox
     ├── FolderExistsError         create/rename onto a name already taken
     ├── FolderNotAllowedError     the operation is not allowed on that folder
     │                             (delete INBOX, delete a folder with children,
     │                             a malformed name)
     ├── InvalidFlagError          a flag that is not a system flag or an atom,
     │                             or \\Recent, which only the server sets
     ├── MessageNotFoundError      no message with that UID in the folder
     └── CorruptMessageError       a message file or cached structure fails its
                                   integrity check (tampered, swapped, truncated
                                   or missing): never returned silently

Every error the store raises is a :class:`StoreError`; an ``OSError`` or
``sqlite3.Error`` escaping the store is a fault of the host (disk full, I/O
error), not of the caller, and is let through unchanged. ``ValueError`` for a
naive datetime or a non-bytes message is a bug in the caller.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class StoreError(Exception):
    """Root of every error raised by the mailbox store."""


class MasterKeyError(StoreError):
    """The master key cannot be used; the message says why and names the file."""


class StoreLockedError(StoreError):
    def __init__(self, root: Path) -> None:
        self.root = root
        super().__init__(f"{root}: the mail store is already open in another process")


class MailboxNotFoundError(StoreError, LookupError):
    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__(f"no mailbox for {address!r}")


class FolderNotFoundError(StoreError, LookupError):
    def __init__(self, address: str, folder: str) -> None:
        self.address = address
        self.folder = folder
        super().__init__(f"{address!r}: no folder {folder!r}")


class FolderExistsError(StoreError):
    def __init__(self, address: str, folder: str) -> None:
        self.address = address
        self.folder = folder
        super().__init__(f"{address!r}: folder {folder!r} already exists")


class FolderNotAllowedError(StoreError):
    def __init__(self, folder: str, reason: str) -> None:
        self.folder = folder
        self.reason = reason
        super().__init__(f"folder {folder!r}: {reason}")


class InvalidFlagError(StoreError, ValueError):
    def __init__(self, flag: str, reason: str) -> None:
        self.flag = flag
        self.reason = reason
        super().__init__(f"flag {flag!r}: {reason}")


class MessageNotFoundError(StoreError, LookupError):
    def __init__(self, folder: str, uid: int) -> None:
        self.folder = folder
        self.uid = uid
        super().__init__(f"folder {folder!r}: no message with UID {uid}")


class CorruptMessageError(StoreError):
    """A stored message or its cached structure fails authentication.

    Raised when the AES-GCM tag does not verify (a flipped byte, a file swapped
    with another message's or moved from another mailbox, the wrong data key),
    or when the file is missing or truncated. The store never returns
    unauthenticated bytes.
    """

    def __init__(self, what: str, reason: str) -> None:
        self.what = what
        self.reason = reason
        super().__init__(f"{what}: {reason}")
