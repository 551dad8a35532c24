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
- Read-only grants (delegation scope ``read``, proxy scope ``read``, an
  administrator's break-glass access) select folders read-only: no flag
  change, no expunge, no append, copy or move in.
- A patient's grants (proxy, break-glass) are checked again each time a
  client names the mailbox, and a selected folder's reads (FETCH, SEARCH)
  stop at the grant's expiry: a revoked or expired grant reads nothing more.
- Untagged EXPUNGE is sent only between commands, never during FETCH, STORE
  or SEARCH (RFC 3501 §7.4.1), so sequence numbers do not shift under a
  client's feet; pending changes wait in :attr:`Selected.pending`.
- What a session decrypted for its selected folder (:class:`ReadCache`:
  structures, search documents, text parts) lives only in this session's
  memory, for the account that is logged in, and goes when the folder is
  unselected or the connection ends; it is never written anywhere. A
  message's content never changes under its UID (RFC 3501 §2.3.1.1), so the
  cache needs no invalidation but a folder deleted or renamed under it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

from relay.imap._errors import CommandRefusedError

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from relay.accounts import Account
    from relay.imap._search import SearchDoc
    from relay.store import Change, ParsedStructure

SHARED_PREFIX: Final = "Shared"
DELIMITER: Final = "/"
# What one session may keep decrypted for its selected folder, in bytes
# (estimated): 1,000 messages of 5 KB take about 4 MB (structure, search
# document, text parts). Past it, FETCH and SEARCH load what they need again
# for each command (as Dovecot reads its cache file), so the bound is on
# memory, never on what a client can read.
DEFAULT_CACHE_BUDGET: Final = 8 * 1024 * 1024
# A structure's Python objects, beyond its header bytes (measured: about
# 2 KB for a 3-part message).
_STRUCTURE_OVERHEAD: Final = 2048
_V = TypeVar("_V")


class Via(enum.StrEnum):
    """Why an account reaches a mailbox (recorded in the audit trail)."""

    OWNER = "owner"
    DELEGATION = "delegation"
    PROXY = "proxy"
    BREAK_GLASS = "break-glass"  # an administrator's emergency access, read-only


@dataclass(frozen=True, slots=True)
class Grant:
    address: str
    via: Via
    writable: bool
    expires: datetime | None = None  # a proxy's or break-glass grant's end

    @property
    def checked_on_use(self) -> bool:
        """Granted by the patient's entry: looked up again at every SELECT,
        EXAMINE or other name a client gives, so a revoke or an expiry ends
        it without a new login."""
        return self.via in (Via.PROXY, Via.BREAK_GLASS)


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
class ReadCache:
    """The selected folder's decrypted data this session has read, by UID.

    ``meta`` holds the immutable index data (internal date, size); flags are
    not cached here (:attr:`Selected.flags` and the store say them).
    """

    budget: int = DEFAULT_CACHE_BUDGET
    used: int = 0
    meta: dict[int, tuple[datetime, int]] = field(default_factory=dict)
    structures: dict[int, ParsedStructure] = field(default_factory=dict)
    headers: dict[int, bytes] = field(default_factory=dict)  # header-only reads
    docs: dict[int, SearchDoc] = field(default_factory=dict)
    bodies: dict[int, str] = field(default_factory=dict)

    def admit(
        self, table: dict[int, _V], items: dict[int, _V], cost: Callable[[_V], int]
    ) -> dict[int, _V]:
        """Keep ``items`` in ``table`` while the budget lasts; returns the rest."""
        rest: dict[int, _V] = {}
        for uid, value in items.items():
            n = cost(value)
            if self.used + n > self.budget:
                rest[uid] = value
                continue
            table[uid] = value
            self.used += n
        return rest

    def forget(self, uids: list[int]) -> None:
        for uid in uids:
            self.meta.pop(uid, None)
            self.structures.pop(uid, None)
            self.headers.pop(uid, None)
            self.docs.pop(uid, None)
            self.bodies.pop(uid, None)

    def clear(self) -> None:
        self.meta.clear()
        self.structures.clear()
        self.headers.clear()
        self.docs.clear()
        self.bodies.clear()
        self.used = 0


def structure_cost(structure: ParsedStructure) -> int:
    return len(structure.header) + _STRUCTURE_OVERHEAD


def header_cost(header: bytes) -> int:
    return len(header) + 64


@dataclass(slots=True)
class Selected:
    """The selected folder: sequence numbers and what we told the client.

    ``uids[i]`` is the UID of message ``i + 1``. ``flags`` holds the flags we
    last reported, so a change notification already told (our own STORE)
    is not told twice; it has entries for UIDs of ``uids`` only (a new
    message has none until its flags are read).
    """

    target: Target
    uidvalidity: int
    read_only: bool
    uids: list[int]
    flags: dict[int, frozenset[str]]
    recent: set[int]
    pending: list[Change] = field(default_factory=list)
    subscription: int | None = None
    cache: ReadCache | None = None
    # Messages whose content this session read (audited once per selection).
    read: set[int] = field(default_factory=set)
    _positions: dict[int, int] | None = None

    def uids_changed(self) -> None:
        """Call after changing :attr:`uids` (EXISTS, EXPUNGE told)."""
        self._positions = None

    def seqs_of(self, uids: list[int]) -> list[int]:
        """The sequence numbers of ``uids`` (all present), by a UID index
        built once per change of :attr:`uids`."""
        positions = self._positions
        if positions is None or len(positions) != len(self.uids):
            positions = {u: i for i, u in enumerate(self.uids, 1)}
            self._positions = positions
        return [positions[u] for u in uids]

    def read_cache(self) -> ReadCache:
        """This folder's :class:`ReadCache`, made at the first read."""
        if self.cache is None:
            self.cache = ReadCache(budget=DEFAULT_CACHE_BUDGET)
        return self.cache

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
