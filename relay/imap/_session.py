"""One IMAP session: who is logged in, which mailboxes they reach, what is
selected, and the changes other sessions made that we still have to tell.

Naming (RFC 2342 namespaces, delimiter ``/``):

- the account's first own mailbox is the personal namespace, at the root
  (``INBOX``, ``Sent``, ...);
- every other mailbox the account reaches (its other own mailboxes, a
  delegation, a patient's proxy grant) is under ``Shared/<address>/``.

What must stay true:

- An account reaches only its own mailboxes, those it holds an active
  delegation for, and patients' mailboxes whose entry grants it an active
  proxy. Any other name is ``NO [NONEXISTENT]``, exactly as a folder that does
  not exist: the reply never tells that another account's mailbox exists.
- Read-only grants (delegation scope ``read``, proxy scope ``read``) select
  folders read-only: no flag change, no expunge, no append, copy or move in.
- Untagged EXPUNGE is sent only between commands, never during FETCH, STORE
  or SEARCH (RFC 3501 §7.4.1), so sequence numbers do not shift under a
  client's feet; pending changes wait in :attr:`Selected.pending`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from relay.imap._errors import CommandRefusedError

if TYPE_CHECKING:
    from relay.accounts import Account
    from relay.store import Change

SHARED_PREFIX: Final = "Shared"
DELIMITER: Final = "/"


class Via(enum.StrEnum):
    """Why an account reaches a mailbox (recorded in the audit trail)."""

    OWNER = "owner"
    DELEGATION = "delegation"
    PROXY = "proxy"


@dataclass(frozen=True, slots=True)
class Grant:
    address: str
    via: Via
    writable: bool


@dataclass(frozen=True, slots=True)
class Target:
    """A client's mailbox name resolved to a store mailbox and folder."""

    grant: Grant
    folder: str  # "" for a namespace node (Shared/<address>), never selectable

    @property
    def address(self) -> str:
        return self.grant.address


@dataclass(slots=True)
class Access:
    """The mailboxes one logged-in account reaches."""

    account: Account
    grants: dict[str, Grant] = field(default_factory=dict)
    personal: str | None = None  # the mailbox shown at the root

    def prefix(self, address: str) -> str:
        """How names of ``address``'s folders start on the wire."""
        if address == self.personal:
            return ""
        return f"{SHARED_PREFIX}{DELIMITER}{address}{DELIMITER}"

    def resolve(self, name: str) -> Target:
        """The mailbox and folder a client's name designates.

        Raises:
            CommandRefusedError: ``NONEXISTENT`` for a mailbox the account
                does not reach, whatever the reason.
        """
        head, sep, rest = name.partition(DELIMITER)
        if sep and head == SHARED_PREFIX:
            address, _, folder = rest.partition(DELIMITER)
            grant = self.grants.get(address)
            if grant is None:
                raise CommandRefusedError("NONEXISTENT", "No such mailbox")
            return Target(grant, folder)
        if head.upper() == SHARED_PREFIX.upper() and not sep:
            raise CommandRefusedError("NONEXISTENT", "No such mailbox")
        if self.personal is None:
            raise CommandRefusedError("NONEXISTENT", "No such mailbox")
        return Target(self.grants[self.personal], name)


@dataclass(slots=True)
class Selected:
    """The selected folder: sequence numbers and what we told the client.

    ``uids[i]`` is the UID of message ``i + 1``. ``flags`` holds the flags we
    last reported, so a change notification already told (our own STORE)
    is not told twice.
    """

    target: Target
    uidvalidity: int
    read_only: bool
    uids: list[int]
    flags: dict[int, frozenset[str]]
    recent: set[int]
    pending: list[Change] = field(default_factory=list)
    subscription: int | None = None

    @property
    def address(self) -> str:
        return self.target.address

    @property
    def folder(self) -> str:
        return self.target.folder

    def seq_of(self, uid: int) -> int | None:
        """The sequence number of ``uid`` (binary search), if present."""
        lo, hi = 0, len(self.uids)
        while lo < hi:
            mid = (lo + hi) // 2
            if self.uids[mid] < uid:
                lo = mid + 1
            else:
                hi = mid
        if lo < len(self.uids) and self.uids[lo] == uid:
            return lo + 1
        return None
