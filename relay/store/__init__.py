"""The relay's mailbox store: encrypted at rest, ready for IMAP.

The only package that touches message files and the mailbox index. See
``relay/store/_store.py`` for the layout and its rules, and ``docs/store.md``.
"""

from relay.store._errors import (
    CorruptMessageError,
    FolderExistsError,
    FolderNotAllowedError,
    FolderNotFoundError,
    InvalidFlagError,
    MailboxNotFoundError,
    MasterKeyError,
    MessageNotFoundError,
    StoreError,
    StoreLockedError,
)
from relay.store._keys import MasterKey
from relay.store._models import (
    SYSTEM_FLAGS,
    AppendResult,
    Change,
    ChangeKind,
    CopyResult,
    Delivered,
    FlagMode,
    FolderInfo,
    MessageInfo,
    SpecialUse,
)
from relay.store._store import (
    DEFAULT_FOLDERS,
    HIERARCHY_DELIMITER,
    MailStore,
    NewDelivery,
    SealedBatch,
    canonical_address,
    canonical_folder,
)
from relay.store._structure import (
    MAX_DEPTH,
    MAX_PARTS,
    Address,
    BodyPart,
    Envelope,
    ParsedStructure,
    parse_structure,
)

__all__ = [
    "DEFAULT_FOLDERS",
    "HIERARCHY_DELIMITER",
    "MAX_DEPTH",
    "MAX_PARTS",
    "SYSTEM_FLAGS",
    "Address",
    "AppendResult",
    "BodyPart",
    "Change",
    "ChangeKind",
    "CopyResult",
    "CorruptMessageError",
    "Delivered",
    "Envelope",
    "FlagMode",
    "FolderExistsError",
    "FolderInfo",
    "FolderNotAllowedError",
    "FolderNotFoundError",
    "InvalidFlagError",
    "MailStore",
    "MailboxNotFoundError",
    "MasterKey",
    "MasterKeyError",
    "MessageInfo",
    "MessageNotFoundError",
    "NewDelivery",
    "ParsedStructure",
    "SealedBatch",
    "SpecialUse",
    "StoreError",
    "StoreLockedError",
    "canonical_address",
    "canonical_folder",
    "parse_structure",
]
