"""The ``Directory`` protocol every backend implements, and import planning.

Backends (``directory.sqlite``, ``directory.ldap``) pass the same contract
tests (``tests/directory/test_contract.py``). They differ in storage only: the
semantics of lookups, writes and imports live here or in the model.

Import semantics (one batch at a time, each batch one transaction):

- an entry whose key is new is **added**;
- one whose content digest (:func:`directory.model.content_digest`) equals the
  stored one is **unchanged**; one that differs is **updated**;
- an entry that a previous run suspended because it was absent comes back
  active (**reactivated**, counted as updated); a status an admin set
  (suspended or revoked by hand) is kept;
- the same key twice in one run: the importer's ``merge`` combines them (an
  RPPS practitioner with several activity rows), else the later one is counted
  as a **duplicate** and ignored;
- after the last batch, :meth:`Directory.suspend_absent` suspends the entries
  of that source that the run did not see. Nothing is ever deleted.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from directory.model import (
    Delegation,
    Entry,
    Kind,
    Mailbox,
    Operator,
    Organisation,
    Patient,
    Practitioner,
    Status,
    digest_of,
    encode_content,
    key_of,
    with_status,
)

if TYPE_CHECKING:
    from datetime import datetime

    from directory.consent import ConsentChange, ConsentOutcome
    from directory.model import ConsentRecord

Merge = Callable[[Entry, Entry], Entry]


class StatusOrigin(enum.StrEnum):
    """Who set an entry's current status."""

    ADMIN = "admin"  # by hand (CLI); imports never override it
    IMPORT = "import"  # by an import (absent from the file)


@dataclass(frozen=True, slots=True)
class StoredState:
    """What a backend knows about a stored entry, for import planning."""

    digest: str
    status: Status
    status_origin: StatusOrigin
    last_run: str
    entry: Entry | None = None  # loaded only when needed (same run, for merge)


@dataclass(slots=True)
class BatchCounts:
    added: int = 0
    updated: int = 0
    unchanged: int = 0
    duplicates: int = 0

    def __iadd__(self, other: BatchCounts) -> BatchCounts:
        self.added += other.added
        self.updated += other.updated
        self.unchanged += other.unchanged
        self.duplicates += other.duplicates
        return self


@dataclass(frozen=True, slots=True)
class Write:
    """One entry to store, with its bookkeeping."""

    key: str
    entry: Entry
    digest: str
    status_origin: StatusOrigin
    insert: bool  # True: new key; False: replace the stored entry
    content: str = ""  # encode_content(entry): computed once, for the digest


@dataclass(slots=True)
class BatchPlan:
    writes: list[Write] = field(default_factory=list)
    touch: list[str] = field(
        default_factory=list
    )  # unchanged keys: only last_run moves
    counts: BatchCounts = field(default_factory=BatchCounts)


def plan_batch(
    entries: Sequence[Entry],
    stored: Mapping[str, StoredState],
    run_id: str,
    merge: Merge | None = None,
    contents: Sequence[str] | None = None,
) -> BatchPlan:
    """Decide, for one batch, what to write. Pure; see the module docstring.

    ``stored`` holds the state of every key of ``entries`` that exists; for a
    key whose ``last_run`` is ``run_id`` and when ``merge`` is given, its
    ``entry`` must be loaded. Counts are per key, after merging, so that an
    entry built from several rows is compared whole. Each entry is encoded
    once (:func:`~directory.model.encode_content`); the digest is that
    encoding's, and :attr:`Write.content` hands it to the backend.
    ``contents``, when given, holds each entry's encoding already made (by the
    importer's parsing process); an entry that merging changed is encoded
    again.
    """
    plan = BatchPlan()
    combined: dict[str, Entry] = {}
    given: dict[str, str] = {}
    for i, entry in enumerate(entries):
        key = key_of(entry)
        earlier = combined.get(key)
        if earlier is None:
            state = stored.get(key)
            if state is not None and state.last_run == run_id:
                earlier = state.entry  # seen in an earlier batch of this run
                if earlier is None or merge is None:
                    plan.counts.duplicates += 1
                    continue
        if earlier is None:
            combined[key] = entry
            if contents is not None:
                given[key] = contents[i]
        elif merge is None:
            plan.counts.duplicates += 1
        else:
            combined[key] = merge(earlier, entry)
            given.pop(key, None)
    for key, entry in combined.items():
        content = given.get(key) or encode_content(entry)
        digest = digest_of(content)
        state = stored.get(key)
        if state is None:
            plan.writes.append(
                Write(key, entry, digest, StatusOrigin.IMPORT, True, content)
            )
            plan.counts.added += 1
            continue
        status, origin = state.status, state.status_origin
        reactivate = status is Status.SUSPENDED and origin is StatusOrigin.IMPORT
        if reactivate:
            status = Status.ACTIVE
        same_run = state.last_run == run_id  # already counted by an earlier batch
        if digest == state.digest and not reactivate:
            plan.touch.append(key)
            plan.counts.unchanged += not same_run
            continue
        plan.writes.append(
            Write(key, with_status(entry, status), digest, origin, False, content)
        )
        plan.counts.updated += not same_run
    return plan


@dataclass(frozen=True, slots=True)
class ImportRun:
    """Identifies one import run: its source tag and a unique id."""

    source: str
    run_id: str


@runtime_checkable
class Directory(Protocol):
    """The trust directory, whatever its backend.

    Every method may raise :class:`~directory.errors.DirectoryUnavailableError`
    when the backend fails; callers fail closed on it. Keys given by callers
    are normalised with :func:`directory.model.canonical_key`.
    """

    async def close(self) -> None: ...

    # --- lookups ---------------------------------------------------------
    async def get(self, kind: Kind, key: str) -> Entry | None:
        """The entry of that kind and key, or None."""
        ...

    async def practitioner(self, national_id_or_rpps: str) -> Practitioner | None: ...

    async def organisation(self, structure_id: str) -> Organisation | None: ...

    async def mailbox(self, address: str) -> Mailbox | None: ...

    async def patient(self, ins: str) -> Patient | None: ...

    async def operator(self, domain: str) -> Operator | None: ...

    async def resolve(self, address: str) -> Mailbox | Patient | None:
        """The mailbox or the patient that owns this address."""
        ...

    async def operators_for_certificate(self, subject_dn: str) -> list[Operator]:
        """Operators whose whitelist names this TLS certificate subject DN."""
        ...

    async def mailbox_for_certificate(self, fingerprint: str) -> Mailbox | None:
        """The mailbox a certificate (SHA-256 of its DER) is attached to."""
        ...

    async def mailboxes_of(self, owner_id: str) -> list[Mailbox]:
        """Mailboxes owned by a practitioner (national id) or organisation."""
        ...

    async def delegations(
        self, *, account: str | None = None, mailbox: str | None = None
    ) -> list[Delegation]: ...

    async def patients_with_proxy(self, account: str) -> list[Patient]:
        """Patients whose entry grants ``account`` a proxy (any scope, any expiry)."""

    async def search(
        self, text: str, *, kind: Kind | None = None, limit: int = 50
    ) -> list[Entry]:
        """Entries whose key or names contain ``text`` (case-insensitive)."""
        ...

    def entries(self, kind: Kind) -> AsyncIterator[Entry]:
        """Every entry of a kind, in key order, streamed."""
        ...

    async def count(self, kind: Kind) -> int: ...

    # --- changes ---------------------------------------------------------
    async def add(self, entry: Entry) -> None:
        """Store a new entry; :class:`EntryExistsError` if the key exists."""
        ...

    async def replace(self, entry: Entry) -> None:
        """Replace a stored entry; :class:`EntryNotFoundError` if absent,
        :class:`ImmutableFieldError` if a mailbox's BAL type would change."""
        ...

    async def set_status(self, kind: Kind, key: str, status: Status) -> Entry:
        """Set status by an admin; returns the updated entry."""
        ...

    # --- imports ---------------------------------------------------------
    async def import_batch(
        self,
        entries: Sequence[Entry],
        run: ImportRun,
        merge: Merge | None = None,
        *,
        contents: Sequence[str] | None = None,
    ) -> BatchCounts:
        """Apply one batch (all entries of one kind) in one transaction.

        ``contents``: each entry's :func:`~directory.model.encode_content`,
        when the caller has it already (see :func:`plan_batch`).
        """
        ...

    async def suspend_absent(self, kind: Kind, run: ImportRun) -> list[str]:
        """Suspend active entries of ``run.source`` not seen by the run;
        returns their keys."""
        ...

    # --- patients' consent -------------------------------------------------
    async def change_consent(
        self, ins: str, change: ConsentChange, *, actor: str, now: datetime
    ) -> ConsentOutcome:
        """Apply ``change`` to the stored patient and append its ledger record,
        together: both are stored or neither (sqlite: one transaction; LDAP:
        see :mod:`directory.ldap`). Concurrent changes to one patient are
        applied one after the other, each to the other's result.

        Raises:
            EntryNotFoundError: no such patient (or what the change removes).
            InvalidFieldError: the change does not apply as given.
        """
        ...

    async def consent_history(self, ins: str) -> list[ConsentRecord]:
        """The patient's consent ledger, by sequence (empty if none)."""
        ...

    async def get_meta(self, name: str) -> str | None:
        """A small named value (e.g. the loaded whitelist's generation date)."""
        ...

    async def set_meta(self, name: str, value: str) -> None: ...
