"""Changes a patient (or an admin for them) makes to their consent, as data.

Owns: what each consent change does to a :class:`~directory.model.Patient`
and what its ledger record says. Backends apply a change with
:meth:`directory.protocol.Directory.change_consent`: they read the stored
patient, call :meth:`ConsentChange.apply`, and store the new entry and the
record together (one transaction in sqlite; in LDAP the ledger record first,
then the patient guarded by its record count, see :mod:`directory.ldap`).

What must stay true:

- Pure: no I/O, no clock (``now`` is given). A change that would change
  nothing returns ``None`` and leaves no record (the ledger records changes,
  not requests).
- A record's detail names identifiers only (see
  :class:`~directory.model.ConsentRecord`); a break-glass reason is kept in
  the grant and the audit trail, not in the ledger.
- Blocked parties are stored in the canonical form the relay's policy
  compares sender identities with (:func:`relay.policy.sender_identities`):
  a canonical mailbox address, ``8``+RPPS / ``0``+ADELI, ``1``+FINESS /
  ``3``+SIRET.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from directory import identifiers as ids
from directory.errors import EntryNotFoundError, InvalidFieldError
from directory.model import (
    BreakGlassGrant,
    CareKind,
    CareRelationship,
    ConsentAction,
    ConsentRecord,
    Patient,
    ProxyGrant,
    ProxyScope,
)

if TYPE_CHECKING:
    from datetime import datetime

    from directory.model import Mailbox, Organisation, Practitioner
    from directory.protocol import Directory

Detail = tuple[tuple[str, str], ...]
Applied = tuple[Patient, ConsentAction, Detail]


class ConsentChange(Protocol):
    """One change to a patient's consent."""

    def apply(self, patient: Patient, now: datetime) -> Applied | None:
        """The patient after the change, the ledger action and its detail;
        ``None`` when the change would change nothing.

        Raises:
            InvalidFieldError: the change cannot apply as given (names the field).
            EntryNotFoundError: it removes something the patient does not have.
        """
        ...


@dataclass(frozen=True, slots=True)
class ConsentOutcome:
    """What :meth:`~directory.protocol.Directory.change_consent` did."""

    patient: Patient
    record: ConsentRecord | None  # None: nothing changed, nothing recorded


def party_kind(party: str) -> str:
    """Which kind of party a block names: ``mailbox``, ``practitioner`` or
    ``organisation`` (by its form; :func:`canonical_party` validates it)."""
    value = party.strip()
    if "@" in value:
        return "mailbox"
    if value[:1] in ("8", "0"):
        return "practitioner"
    if value[:1] in ("1", "3"):
        return "organisation"
    raise InvalidFieldError(
        "party",
        party,
        "must be a mailbox address, 8+RPPS / 0+ADELI or 1+FINESS / 3+SIRET",
    )


def canonical_party(party: str) -> str:
    """A blocked party in the form the relay compares (see the module docstring)."""
    match party_kind(party):
        case "mailbox":
            return ids.address(party, "party")
        case "practitioner":
            return ids.national_practitioner_id(party.strip(), "party")
        case _:
            return ids.national_structure_id(party.strip(), "party")


async def find_party(
    directory: Directory, party: str
) -> Mailbox | Practitioner | Organisation | None:
    """The directory entry a canonical party names (mailbox, practitioner or
    organisation), or None."""
    match party_kind(party):
        case "mailbox":
            return await directory.mailbox(party)
        case "practitioner":
            return await directory.practitioner(party)
        case _:
            return await directory.organisation(party)


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


@dataclass(frozen=True, slots=True)
class OptOut:
    def apply(self, patient: Patient, now: datetime) -> Applied | None:
        if patient.opted_out:
            return None
        return dataclasses.replace(patient, opted_out=True), ConsentAction.OPT_OUT, ()


@dataclass(frozen=True, slots=True)
class OptIn:
    def apply(self, patient: Patient, now: datetime) -> Applied | None:
        if not patient.opted_out:
            return None
        return dataclasses.replace(patient, opted_out=False), ConsentAction.OPT_IN, ()


@dataclass(frozen=True, slots=True)
class Block:
    party: str

    def apply(self, patient: Patient, now: datetime) -> Applied | None:
        party = canonical_party(self.party)
        if party in patient.blocked_senders:
            return None
        blocked = (*patient.blocked_senders, party)
        return (
            dataclasses.replace(patient, blocked_senders=blocked),
            ConsentAction.BLOCK,
            (("party", party),),
        )


@dataclass(frozen=True, slots=True)
class Unblock:
    party: str

    def apply(self, patient: Patient, now: datetime) -> Applied | None:
        party = canonical_party(self.party)
        if party not in patient.blocked_senders:
            raise EntryNotFoundError("blocked party", party)
        blocked = tuple(p for p in patient.blocked_senders if p != party)
        return (
            dataclasses.replace(patient, blocked_senders=blocked),
            ConsentAction.UNBLOCK,
            (("party", party),),
        )


@dataclass(frozen=True, slots=True)
class GrantProxy:
    """Grant (or change the scope or expiry of) a proxy."""

    account: str
    scope: ProxyScope
    until: datetime | None = None

    def apply(self, patient: Patient, now: datetime) -> Applied | None:
        if self.until is not None and self.until <= now:
            raise InvalidFieldError("until", self.until.isoformat(), "is in the past")
        old = next((g for g in patient.proxies if g.account == self.account), None)
        if old is not None and (old.scope, old.expires) == (self.scope, self.until):
            return None
        grant = ProxyGrant(
            account=self.account, scope=self.scope, granted_at=now, expires=self.until
        )
        proxies = (*(g for g in patient.proxies if g.account != self.account), grant)
        return (
            dataclasses.replace(patient, proxies=proxies),
            ConsentAction.PROXY_GRANTED,
            (
                ("account", self.account),
                ("scope", self.scope.value),
                ("until", _iso(self.until)),
            ),
        )


@dataclass(frozen=True, slots=True)
class RevokeProxy:
    account: str

    def apply(self, patient: Patient, now: datetime) -> Applied | None:
        if not any(g.account == self.account for g in patient.proxies):
            raise EntryNotFoundError("proxy", self.account)
        proxies = tuple(g for g in patient.proxies if g.account != self.account)
        return (
            dataclasses.replace(patient, proxies=proxies),
            ConsentAction.PROXY_REVOKED,
            (("account", self.account),),
        )


@dataclass(frozen=True, slots=True)
class SetContact:
    """Change the ordinary contact; ``None`` keeps a field, ``""`` clears it.

    The record says which field changed (``set`` or ``cleared``), not the new
    value: the ledger keeps no copy of contacts the patient has left.
    """

    email: str | None = None
    phone: str | None = None

    def apply(self, patient: Patient, now: datetime) -> Applied | None:
        if self.email is None and self.phone is None:
            raise InvalidFieldError("contact", "", "give an e-mail, a phone or both")
        email = patient.contact_email if self.email is None else self.email
        phone = patient.contact_phone if self.phone is None else self.phone
        # Validated (and made canonical) by the entry's constructor.
        updated = dataclasses.replace(patient, contact_email=email, contact_phone=phone)
        detail: list[tuple[str, str]] = []
        if updated.contact_email != patient.contact_email:
            detail.append(("email", "set" if updated.contact_email else "cleared"))
        if updated.contact_phone != patient.contact_phone:
            detail.append(("phone", "set" if updated.contact_phone else "cleared"))
        if not detail:
            return None
        return updated, ConsentAction.CONTACT_CHANGED, tuple(detail)


@dataclass(frozen=True, slots=True)
class SetTreatingDoctor:
    """Declare the treating doctor: exactly one care relationship of kind
    treating, replacing any other."""

    address: str

    def apply(self, patient: Patient, now: datetime) -> Applied | None:
        doctor = ids.address(self.address, "doctor")
        treating = [
            r for r in patient.care_relationships if r.kind is CareKind.TREATING
        ]
        if [r.party for r in treating] == [doctor]:
            return None
        kept = tuple(
            r for r in patient.care_relationships if r.kind is not CareKind.TREATING
        )
        relation = CareRelationship(party=doctor, kind=CareKind.TREATING, since=now)
        detail: Detail = (("doctor", doctor),)
        if treating:
            detail += (("replaced", ",".join(r.party for r in treating)),)
        return (
            dataclasses.replace(patient, care_relationships=(*kept, relation)),
            ConsentAction.TREATING_DOCTOR_SET,
            detail,
        )


@dataclass(frozen=True, slots=True)
class OpenBreakGlass:
    """Open an administrator's read-only access; expired grants are dropped."""

    account: str
    reason: str
    until: datetime
    opened_by: str = ""

    def apply(self, patient: Patient, now: datetime) -> Applied | None:
        if not patient.address:
            raise InvalidFieldError("ins", patient.ins, "the patient has no mailbox")
        grant = BreakGlassGrant(
            account=self.account,
            reason=self.reason,
            opened_at=now,
            expires=self.until,
            opened_by=self.opened_by,
        )
        kept = tuple(
            g
            for g in patient.break_glass
            if g.active_at(now) and g.account != self.account
        )
        return (
            dataclasses.replace(patient, break_glass=(*kept, grant)),
            ConsentAction.BREAK_GLASS_OPENED,
            (("account", self.account), ("until", _iso(self.until))),
        )


def next_record(
    patient: Patient,
    change: ConsentChange,
    *,
    actor: str,
    now: datetime,
    sequence: int,
) -> tuple[Patient, ConsentRecord] | None:
    """The changed patient and its ledger record number ``sequence``, or
    ``None`` when the change changes nothing."""
    applied = change.apply(patient, now)
    if applied is None:
        return None
    updated, action, detail = applied
    record = ConsentRecord(
        ins=patient.ins,
        sequence=sequence,
        time=now,
        actor=actor,
        action=action,
        detail=detail,
    )
    return updated, record
