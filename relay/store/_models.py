"""Values the mailbox store hands out: all frozen, none holds a key.

What must stay true: these are snapshots. A :class:`MessageInfo` or a
:class:`FolderInfo` never changes after it is returned; the IMAP server learns
of later changes through :class:`Change` notifications.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from datetime import datetime

__all__ = [
    "SYSTEM_FLAGS",
    "AppendResult",
    "Change",
    "ChangeKind",
    "CopyResult",
    "Delivered",
    "FlagMode",
    "FolderInfo",
    "MessageInfo",
    "SpecialUse",
]

# RFC 3501 §2.3.2: the system flags a client may set; \Recent is the server's.
SYSTEM_FLAGS: Final = ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft")


class SpecialUse(enum.Enum):
    """RFC 6154 §2 special-use attributes of the folders every mailbox gets."""

    SENT = "\\Sent"
    DRAFTS = "\\Drafts"
    TRASH = "\\Trash"
    ARCHIVE = "\\Archive"
    JUNK = "\\Junk"
    ALL = "\\All"
    FLAGGED = "\\Flagged"


class FlagMode(enum.Enum):
    """RFC 3501 §6.4.6: FLAGS (replace), +FLAGS (add), -FLAGS (remove)."""

    ADD = "add"
    REMOVE = "remove"
    REPLACE = "replace"


@dataclass(frozen=True, slots=True, kw_only=True)
class Delivered:
    """Where a delivery landed.

    ``duplicate`` is true when the delivery key had been seen before: nothing
    was stored and the fields describe the first delivery (its folder and UID
    then, even if the message has since been moved or expunged).
    """

    address: str
    folder: str
    uidvalidity: int
    uid: int
    size: int
    duplicate: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class AppendResult:
    """RFC 4315 §3 APPENDUID data."""

    folder: str
    uidvalidity: int
    uid: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CopyResult:
    """RFC 4315 §3 COPYUID data: ``source_uids[i]`` became ``dest_uids[i]``."""

    folder: str
    uidvalidity: int
    source_uids: tuple[int, ...]
    dest_uids: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class FolderInfo:
    """What SELECT, STATUS and LIST need about one folder."""

    name: str
    special_use: SpecialUse | None
    uidvalidity: int
    uidnext: int
    exists: int
    unseen: int
    recent: int
    subscribed: bool
    highest_modseq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageInfo:
    """Plain metadata of one message (no header, no body)."""

    uid: int
    flags: frozenset[str]
    internal_date: datetime
    size: int
    modseq: int
    recent: bool = False

    @property
    def seen(self) -> bool:
        return "\\Seen" in self.flags

    @property
    def deleted(self) -> bool:
        return "\\Deleted" in self.flags


class ChangeKind(enum.Enum):
    EXISTS = "exists"  # new messages (deliver, append, copy, move in)
    EXPUNGE = "expunge"  # messages removed (expunge, move out, folder deleted)
    FLAGS = "flags"  # flags changed
    FOLDER_CREATED = "folder-created"
    FOLDER_DELETED = "folder-deleted"
    FOLDER_RENAMED = "folder-renamed"


@dataclass(frozen=True, slots=True, kw_only=True)
class Change:
    """One committed change, sent to subscribers after the commit.

    ``uids`` are the UIDs concerned in ``folder`` (empty for folder changes);
    ``new_folder`` is set for a rename.
    """

    kind: ChangeKind
    address: str
    folder: str
    uids: tuple[int, ...] = ()
    modseq: int = 0
    new_folder: str | None = None
    messages: tuple[MessageInfo, ...] = field(default=())
