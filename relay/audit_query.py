"""The audit query core: what the trail says about one patient or mailbox.

Owns: reading the records about a set of addresses in a period and typing
them (:class:`Kind`): a message received, read (by whom, via what grant),
deleted, sent; a consent change; a break-glass opening; an administrator's
change; a report sent. ``mssante audit show`` and the patient's monthly
report (:mod:`relay.audit_report`) both ask here, so they cannot disagree on
what concerns whom.

What must stay true:

- Read only, and nothing beyond the trail: an :class:`Activity` holds what
  the record holds (never content; the trail has none). Names, organisations
  and document types are the report's business, from the directory and the
  patient's own mailbox.
- A record concerns an address when any of :data:`MATCH_FIELDS` names it
  (case-insensitive), in a list or alone; a patient is also matched by the
  bare INS (consent and directory records name the patient so).
- One pass over the file, whatever the number of addresses asked
  (:func:`by_address` serves the monthly run over every patient).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from relay.audit import AuditEvent, records

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Mapping
    from pathlib import Path

    from directory.model import ConsentRecord


def consent_fields(record: ConsentRecord) -> dict[str, object]:
    """The fields of a ``patient.consent.changed`` record for a ledger record
    (the report reads them back: ``action`` and the detail's identifiers)."""
    return {
        "actor": record.actor,
        "patient": record.ins,
        "action": record.action.value,
        "sequence": record.sequence,
        **record.details,
    }


# Fields that name a mailbox, an account or a patient in a record.
MATCH_FIELDS: Final = (
    "actor",
    "mailbox",
    "sender",
    "recipient",
    "recipients",
    "patient",
    "target",
)


class Kind(enum.StrEnum):
    """What an activity is, for the people it concerns."""

    RECEIVED = "received"  # a message delivered into the mailbox
    READ = "read"  # a message opened (owner, proxy, delegate)
    DELETED = "deleted"  # messages removed from the mailbox
    SENT = "sent"  # a message the mailbox sent (accepted from it)
    REFUSED = "refused"  # a message to it refused (opt-out, blocked...)
    CONSENT = "consent"  # opt-out, blocking, proxies changed
    BREAK_GLASS = "break-glass"  # an administrator opened the mailbox
    ADMIN = "admin"  # another administrator's change about it
    REPORT = "report"  # an activity report sent to it
    LOGIN = "login"  # a login of the account itself
    OTHER = "other"


_KINDS: Final[Mapping[str, Kind]] = {
    AuditEvent.MESSAGE_DELIVERED: Kind.RECEIVED,
    AuditEvent.MESSAGE_READ: Kind.READ,
    AuditEvent.MESSAGE_DELETED: Kind.DELETED,
    AuditEvent.MESSAGE_ACCEPTED: Kind.SENT,
    AuditEvent.SMTP_RECIPIENT_REJECTED: Kind.REFUSED,
    AuditEvent.MESSAGE_REJECTED: Kind.REFUSED,
    AuditEvent.PATIENT_CONSENT_CHANGED: Kind.CONSENT,
    AuditEvent.PATIENT_BREAK_GLASS: Kind.BREAK_GLASS,
    AuditEvent.DIRECTORY_CHANGED: Kind.ADMIN,
    AuditEvent.ACCOUNT_CHANGED: Kind.ADMIN,
    AuditEvent.ACCOUNT_RECOVERED: Kind.ADMIN,
    AuditEvent.ACCOUNT_RECOVERY_REQUESTED: Kind.ADMIN,
    AuditEvent.ACCOUNT_ACTIVATED: Kind.ADMIN,
    AuditEvent.PATIENT_ENROLLED: Kind.ADMIN,
    AuditEvent.PATIENT_REPORT_SENT: Kind.REPORT,
    AuditEvent.IMAP_LOGIN_SUCCEEDED: Kind.LOGIN,
    AuditEvent.AUTH_SUCCEEDED: Kind.LOGIN,
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Activity:
    """One record about the addresses asked, typed.

    ``actor`` is who acted (an account login, an address, ``cli``); ``via``
    how they reached the mailbox (``owner``, ``delegation``, ``proxy``,
    ``break-glass``...); ``message_ref`` the keyed hash of the Message-ID
    (:meth:`relay.audit.AuditTrail.message_ref`) when the record has one.
    """

    kind: Kind
    time: datetime
    event: str
    actor: str = ""
    via: str = ""
    mailbox: str = ""  # the mailbox concerned (recipient for a delivery)
    sender: str = ""
    message_ref: str = ""
    reason: str = ""
    count: int = 1  # messages concerned (a deletion may remove several)
    record: Mapping[str, Any] = field(default_factory=dict, repr=False)

    @property
    def on_behalf(self) -> bool:
        """Done by someone other than the mailbox's owner (proxy, delegate,
        administrator)."""
        return self.via not in ("", "owner")


@dataclass(frozen=True, slots=True)
class Period:
    """``start <= time < end``; either bound may be open."""

    start: datetime | None = None
    end: datetime | None = None

    def __contains__(self, when: datetime) -> bool:
        return (self.start is None or when >= self.start) and (
            self.end is None or when < self.end
        )


def _time(record: Mapping[str, Any]) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(record.get("time", "")))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _names(record: Mapping[str, Any]) -> set[str]:
    found: set[str] = set()
    for name in MATCH_FIELDS:
        value = record.get(name)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and v:
                found.add(v.lower())
    return found


def _text(record: Mapping[str, Any], name: str) -> str:
    value = record.get(name)
    return value if isinstance(value, str) else ""


def classify(record: Mapping[str, Any], address: str) -> Activity | None:
    """Type one record as seen from ``address``; None without a usable time."""
    when = _time(record)
    if when is None:
        return None
    event = _text(record, "event")
    kind = _KINDS.get(event, Kind.OTHER)
    mailbox = _text(record, "mailbox") or _text(record, "recipient") or address
    via = _text(record, "via")
    if kind is Kind.BREAK_GLASS and not via:
        via = "break-glass"
    if kind is Kind.LOGIN and _text(record, "actor").lower() != address.lower():
        kind = Kind.OTHER
    uids = record.get("uids")
    return Activity(
        kind=kind,
        time=when,
        event=event,
        actor=_text(record, "actor"),
        via=via,
        mailbox=mailbox,
        sender=_text(record, "sender"),
        message_ref=_text(record, "message_ref"),
        reason=_text(record, "reason"),
        count=len(uids) if isinstance(uids, list) else 1,
        record=record,
    )


def by_address(
    path: Path, addresses: Iterable[str], period: Period = Period()
) -> dict[str, list[Activity]]:
    """For each address (canonical lower case), its activities in ``period``,
    oldest first. An address is also matched by its local part when that is
    a patient's INS (records naming the patient by INS)."""
    wanted: dict[str, str] = {}
    for address in addresses:
        canonical = address.lower()
        wanted[canonical] = canonical
        local, at, _ = canonical.partition("@")
        if at and local.isalnum():
            wanted.setdefault(local, canonical)
    found: dict[str, list[Activity]] = {a.lower(): [] for a in addresses}
    for record in _in_period(records(path), period):
        for name in _names(record) & wanted.keys():
            address = wanted[name]
            activity = classify(record, address)
            if activity is not None and (
                not found[address] or found[address][-1].record is not record
            ):
                found[address].append(activity)
    return found


def query(
    path: Path, addresses: Iterable[str], period: Period = Period()
) -> list[Activity]:
    """The activities about any of ``addresses`` in ``period``, oldest first
    (``mssante audit show``)."""
    asked = list(addresses)
    seen: set[int] = set()
    out: list[Activity] = []
    wanted = {a.lower() for a in asked}
    for record in _in_period(records(path), period):
        names = _names(record)
        match = sorted(names & wanted)
        if match and id(record) not in seen:
            seen.add(id(record))
            activity = classify(record, match[0])
            if activity is not None:
                out.append(activity)
    return out


def _in_period(
    found: Iterator[dict[str, Any]], period: Period
) -> Iterator[dict[str, Any]]:
    for record in found:
        when = _time(record)
        if when is not None and when in period:
            yield record
