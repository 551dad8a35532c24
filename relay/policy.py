"""The trust policy: facts about a session, its parties and a thread in, a decision out.

Pure: no I/O, no clock (``now`` is a parameter), no directory or store calls.
The SMTP handler gathers the facts, asks here, and records the decision
(reply and audit reason); this module is the one place the rules live
(DESIGN §4, the MSSanté operator rules).

Rules, in the order the SMTP transaction meets them:

- **Sender (MAIL FROM).**
  - Submission: an authenticated account may send only as a mailbox it owns,
    holds an active read-send delegation for, or holds an active read-reply
    proxy grant for (a caregiver for a patient). The mailbox must be local,
    listed and active; a patient's must be qualified.
  - MX: the client certificate's subject DN must be whitelisted for the
    envelope sender's domain (two-level admission: the operator vouches for
    its own senders). An address of that domain that the directory does not
    know passes; one it lists as suspended or revoked is refused. A null
    sender (a DSN) passes from any whitelisted operator. Nobody else may use
    our own domains from outside.
- **Recipient (RCPT TO).** Local domains only: no relaying for anyone, ever.
  A professional's mailbox must be listed (``550 5.1.1``) and active
  (``550 5.2.1``). A patient's mailbox must exist, be qualified and active,
  not opted out, and not block the sender; all of these refusals share one
  reply (:data:`R550_PATIENT_UNAVAILABLE`) so a sender cannot tell them
  apart; the reason goes to the audit trail only. Patient to patient is
  refused. One patient per message (``452 4.5.3``: send separately).
- **Patient to professional.** The professional writes first. A patient may
  answer within a thread a professional opened, to the address the
  professional designated (``Reply-To``, else ``From``), and may start a new
  conversation with a professional or organisation that already wrote to
  them, or with a pharmacy that dispensed to them in the past year (a care
  relationship in the directory). A message carrying ``X-MSS-MES: FIN`` or
  the subject ``[FIN]`` closes its thread: a patient's reply to any message
  of it is refused. Decided at DATA, once the threading headers are known.
- **Header From (DATA).** Every ``From:`` address must be one the account may
  send as; when the account is not the owner, ``Sender:`` names the account
  (the relay adds it when missing and refuses another value).
- **Copy to the treating doctor (DATA).** A professional writing to a
  patient may ask (``X-MSSante-Copy-Treating: yes``) that the patient's
  declared treating doctor get a copy. The doctor's mailbox must pass the
  recipient rules like any recipient (listed, active; on MX, local only); a
  patient who declared none gets the message alone. The sender is never told
  who the doctor is or whether there is one: the choice is recorded in the
  audit trail.
- **S/MIME signature (DATA).** A signed message whose signature verifies is
  accepted. One that does not is refused (``550 5.7.7`` for an altered
  message, ``550 5.7.5`` for a signer the relay cannot trust), or accepted
  with a warning when the operator configured ``invalid_signature = "warn"``
  for the sender's domain. A revocation status the relay cannot determine is
  never an accept and never a final refusal: ``451 4.7.5``, try again later.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Final

from directory.model import (
    CareKind,
    DelegationScope,
    Mailbox,
    Patient,
    ProxyScope,
    Status,
)
from mssante.crypto.certs import Reason

if TYPE_CHECKING:
    from collections.abc import Iterable
    from datetime import datetime

    from directory.model import Delegation, Operator


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply with its enhanced status code (RFC 3463)."""

    code: int
    status: str  # "5.1.1"
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def accepted(self) -> bool:
        return self.code < 400


R250_OK: Final = Reply(250, "2.1.0", "Sender OK")
R250_RECIPIENT_OK: Final = Reply(250, "2.1.5", "Recipient OK")
R250_MESSAGE_OK: Final = Reply(250, "2.6.0", "Message accepted")
R451_DIRECTORY_UNAVAILABLE: Final = Reply(
    451, "4.4.3", "Directory unavailable, try again later"
)
R451_LOCAL_ERROR: Final = Reply(451, "4.3.0", "Local error, try again later")
R452_ONE_PATIENT: Final = Reply(
    452, "4.5.3", "One patient per message: send to this patient separately"
)
R530_AUTH_REQUIRED: Final = Reply(530, "5.7.0", "Authentication required")
R530_CERTIFICATE_REQUIRED: Final = Reply(
    530, "5.7.0", "A client certificate of a listed operator is required"
)
R550_MAILBOX_UNKNOWN: Final = Reply(
    550, "5.1.1", "Recipient address rejected: unknown mailbox"
)
R550_MAILBOX_DISABLED: Final = Reply(550, "5.2.1", "Recipient mailbox is not active")
# One reply for a patient who opted out, blocked the sender, is not qualified
# or does not exist: a sender must not learn which (DESIGN §4).
R550_PATIENT_UNAVAILABLE: Final = Reply(
    550, "5.1.1", "Recipient address rejected: unknown mailbox"
)
R550_SENDER_UNLISTED: Final = Reply(
    550, "5.7.1", "Sender is not listed and active in the trust directory"
)
R550_SENDER_SUSPENDED: Final = Reply(550, "5.7.1", "Sender mailbox is not active")
R550_OPERATOR_NOT_AUTHORISED: Final = Reply(
    550, "5.7.1", "Client certificate is not authorised for the sender domain"
)
R550_PATIENT_TO_PATIENT: Final = Reply(
    550, "5.7.1", "A patient may not write to another patient"
)
R550_PATIENT_FIRST_CONTACT: Final = Reply(
    550, "5.7.1", "A patient may write only to a professional who wrote first"
)
R550_THREAD_CLOSED: Final = Reply(
    550, "5.7.1", "This conversation was closed by the professional"
)
R550_PATIENT_CANNOT_SEND: Final = Reply(
    550, "5.7.1", "This account may read this mailbox but not send from it"
)
R553_SENDER_NOT_OWNED: Final = Reply(
    553, "5.7.1", "Sender address rejected: not owned by the authenticated account"
)
R550_FROM_NOT_OWNED: Final = Reply(
    550, "5.7.1", "From header names a mailbox the account may not send as"
)
R550_SENDER_HEADER_MISMATCH: Final = Reply(
    550, "5.7.1", "Sender header must name the authenticated account"
)
R554_RELAY_DENIED: Final = Reply(554, "5.7.1", "Relay access denied")
R550_DOMAIN_NOT_TRUSTED: Final = Reply(
    550, "5.7.1", "Recipient domain is not in the trust space"
)
# RFC 3463 §3.8 X.7.7 "Message integrity failure": the signature does not
# match the content (the message was altered, or signed wrongly).
R550_SIGNATURE_INVALID: Final = Reply(
    550, "5.7.7", "S/MIME signature does not match the message"
)
# RFC 3463 §3.8 X.7.5 "Cryptographic failure": the key information needed to
# validate the message is invalid (untrusted, expired, revoked, wrong usage,
# not the sender's certificate, unreadable signature).
R550_SIGNER_NOT_TRUSTED: Final = Reply(
    550, "5.7.5", "S/MIME signer certificate is not valid for this sender"
)
# RFC 3463 §3.8 X.7.5, transient: the information (a current CRL) is not
# available now; the sender's server retries (fail closed, never an accept).
R451_SIGNATURE_UNCHECKED: Final = Reply(
    451, "4.7.5", "Cannot check the S/MIME signature now, try again later"
)

# A pharmacy that dispensed to the patient in the past year may be written to
# first (MSSanté patient messaging rules).
DISPENSING_WINDOW: Final = timedelta(days=365)


class Channel(enum.StrEnum):
    SUBMISSION = "submission"
    MX = "mx"


class Role(enum.StrEnum):
    """What the sender is, for the recipient rules."""

    PROFESSIONAL = "professional"  # a mailbox (PER, ORG, APP, CAB), local or remote
    PATIENT = "patient"


@dataclass(frozen=True, slots=True)
class Decision:
    """A reply and the reason for the audit trail (never for the peer)."""

    reply: Reply
    reason: str
    # Set when the recipient is accepted but the patient rules need the
    # threading headers: the handler asks :func:`check_patient_message` at DATA.
    needs_thread: bool = False
    # MAIL FROM on submission: how the account may use the sender address
    # ("owner", "delegation", "proxy"); audited with each message it sends.
    via: str = ""

    @property
    def accepted(self) -> bool:
        return self.reply.accepted


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountFacts:
    login: str
    owned: frozenset[str]  # mailbox addresses the account owns
    can_send: bool = True  # False for read-only kinds


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionFacts:
    channel: Channel
    account: AccountFacts | None = None  # submission, after AUTH
    # MX: the domains the client certificate is whitelisted for (empty: no
    # certificate, or one no operator lists).
    operator_domains: frozenset[str] = frozenset()
    has_client_certificate: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalDomains:
    domains: frozenset[str]
    patient_domain: str  # patient.<domain>

    def is_local(self, address: str) -> bool:
        """Whether the relay holds mailboxes of this address's domain.

        An entry starting with a dot (``.mssante.fr``) matches every
        subdomain, as Postfix's ``parent_domain_matches_subdomains`` does.
        """
        domain = _domain(address)
        if domain in self.domains:
            return True
        return any(d.startswith(".") and domain.endswith(d) for d in self.domains)

    def is_patient_address(self, address: str) -> bool:
        return _domain(address) == self.patient_domain


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


@dataclass(frozen=True, slots=True, kw_only=True)
class SenderFacts:
    """The established sender of a transaction, handed to the recipient rules."""

    address: str
    role: Role
    entry: Mailbox | Patient | None  # None: an unlisted address vouched for by MX
    # Identifiers a patient may have blocked or a recipient may know the sender by.
    identities: frozenset[str] = frozenset()
    # Submission: how the account acts for this address (owner, delegation,
    # proxy); "" on MX.
    via: str = ""


def sender_identities(address: str, entry: Mailbox | Patient | None) -> frozenset[str]:
    """The address, and for a mailbox its owner and structure identifiers."""
    ids = {address}
    if isinstance(entry, Mailbox):
        ids.add(entry.owner_id)
        if entry.structure_id:
            ids.add(entry.structure_id)
    return frozenset(i for i in ids if i)


# -- MAIL FROM ---------------------------------------------------------------


def may_send_as(
    account: AccountFacts,
    address: str,
    entry: Mailbox | Patient | None,
    delegations: Iterable[Delegation],
    now: datetime,
) -> tuple[bool, str]:
    """Whether ``account`` may use ``address``, and through what (for the audit)."""
    if address in account.owned:
        return True, "owner"
    for d in delegations:
        if (
            d.account == account.login
            and d.mailbox == address
            and d.status is Status.ACTIVE
            and d.scope is DelegationScope.READ_SEND
            and (d.expires is None or now < d.expires)
        ):
            return True, "delegation"
    if isinstance(entry, Patient):
        for grant in entry.proxies:
            if (
                grant.account == account.login
                and grant.scope is ProxyScope.READ_REPLY
                and grant.active_at(now)
            ):
                return True, "proxy"
    return False, ""


def check_submission_sender(
    session: SessionFacts,
    address: str,
    entry: Mailbox | Patient | None,
    delegations: Iterable[Delegation],
    local: LocalDomains,
    now: datetime,
) -> Decision:
    """MAIL FROM on the submission ports."""
    account = session.account
    if account is None:
        return Decision(R530_AUTH_REQUIRED, "not authenticated")
    if not address:
        return Decision(R553_SENDER_NOT_OWNED, "null sender on submission")
    allowed, via = may_send_as(account, address, entry, delegations, now)
    if not allowed:
        return Decision(R553_SENDER_NOT_OWNED, "sender not owned, delegated or proxied")
    if not account.can_send:
        return Decision(R550_PATIENT_CANNOT_SEND, "account kind may not send")
    if not local.is_local(address):
        return Decision(R553_SENDER_NOT_OWNED, "sender domain is not local")
    if entry is None:
        return Decision(R550_SENDER_UNLISTED, "sender not in directory")
    if entry.status is not Status.ACTIVE:
        return Decision(R550_SENDER_SUSPENDED, f"sender {entry.status.value}")
    if isinstance(entry, Patient) and not entry.qualified:
        return Decision(R550_SENDER_UNLISTED, "sender INS not qualified")
    return Decision(R250_OK, f"sender allowed ({via})", via=via)


def check_mx_sender(
    session: SessionFacts,
    address: str,
    entry: Mailbox | Patient | None,
    local: LocalDomains,
) -> Decision:
    """MAIL FROM on the MX port (mutual TLS between operators)."""
    if not session.has_client_certificate:
        return Decision(R530_CERTIFICATE_REQUIRED, "no client certificate")
    if not session.operator_domains:
        return Decision(R550_OPERATOR_NOT_AUTHORISED, "certificate DN not whitelisted")
    if not address:
        return Decision(R250_OK, "null sender from a whitelisted operator")
    domain = _domain(address)
    if local.is_local(address):
        return Decision(R550_OPERATOR_NOT_AUTHORISED, "remote use of a local domain")
    if domain not in session.operator_domains:
        return Decision(
            R550_OPERATOR_NOT_AUTHORISED,
            "certificate DN not whitelisted for the sender domain",
        )
    if entry is not None and entry.status is not Status.ACTIVE:
        return Decision(R550_SENDER_SUSPENDED, f"sender {entry.status.value}")
    return Decision(R250_OK, "sender vouched for by its operator")


def whitelisted_domains(
    operators: Iterable[Operator], issuer_dn: str, fingerprint: str
) -> frozenset[str]:
    """The domains active operators whitelist this client certificate for.

    ``operators`` are those listing the certificate's subject DN; an entry that
    also names an issuer DN or pins a fingerprint must match it too.
    """
    domains = set()
    for operator in operators:
        if operator.status is not Status.ACTIVE:
            continue
        for cert in operator.certificates:
            if cert.issuer_dn and _dn(cert.issuer_dn) != _dn(issuer_dn):
                continue
            if cert.fingerprint and cert.fingerprint != fingerprint:
                continue
            domains.add(operator.domain.lower())
    return frozenset(domains)


def _dn(value: str) -> str:
    return ",".join(part.strip().upper() for part in value.split(","))


def role_of(address: str, entry: Mailbox | Patient | None, local: LocalDomains) -> Role:
    if isinstance(entry, Patient) or local.is_patient_address(address):
        return Role.PATIENT
    return Role.PROFESSIONAL


# -- RCPT TO -----------------------------------------------------------------


def check_recipient(
    sender: SenderFacts,
    address: str,
    entry: Mailbox | Patient | None,
    local: LocalDomains,
    patients_so_far: int,
    now: datetime,
    remote: RemoteDomain | None = None,
) -> Decision:
    """RCPT TO: local, listed, active, and allowed for this sender.

    ``remote`` is given for an address of another domain when this relay
    delivers to other operators (submission only): without it, such an
    address is a relay attempt.
    """
    if not local.is_local(address):
        if remote is None:
            return Decision(R554_RELAY_DENIED, "recipient domain not local")
        return _check_remote_recipient(sender, entry, remote, now)
    if local.is_patient_address(address) or isinstance(entry, Patient):
        return _check_patient_recipient(sender, entry, patients_so_far)
    if not isinstance(entry, Mailbox):
        return Decision(R550_MAILBOX_UNKNOWN, "recipient not in directory")
    if entry.status is not Status.ACTIVE:
        return Decision(R550_MAILBOX_DISABLED, f"recipient {entry.status.value}")
    if sender.role is Role.PATIENT:
        return _check_patient_first_contact(sender, entry, now)
    return Decision(R250_RECIPIENT_OK, "professional to professional")


@dataclass(frozen=True, slots=True, kw_only=True)
class RemoteDomain:
    """What the directory says of a recipient domain served by another operator."""

    domain: str
    operator: Operator | None  # None: no operator lists it (not in the trust space)


def _check_remote_recipient(
    sender: SenderFacts,
    entry: Mailbox | Patient | None,
    remote: RemoteDomain,
    now: datetime,
) -> Decision:
    operator = remote.operator
    # DESIGN §4: mail leaves only for a whitelisted operator's domain, refused
    # at RCPT rather than queued and bounced.
    if operator is None or operator.status is not Status.ACTIVE:
        return Decision(R550_DOMAIN_NOT_TRUSTED, "recipient domain has no operator")
    if isinstance(entry, Mailbox) and entry.status is not Status.ACTIVE:
        return Decision(R550_MAILBOX_DISABLED, f"recipient {entry.status.value}")
    if sender.role is Role.PATIENT:
        if not isinstance(entry, Mailbox):
            return Decision(R550_MAILBOX_UNKNOWN, "patient to an unlisted address")
        return _check_patient_first_contact(sender, entry, now)
    # Two-level admission, seen from this side: the peer operator answers
    # for its own addresses, listed in the national extraction or not yet.
    return Decision(R250_RECIPIENT_OK, "to another operator")


def _check_patient_recipient(
    sender: SenderFacts, entry: Mailbox | Patient | None, patients_so_far: int
) -> Decision:
    if sender.role is Role.PATIENT:
        return Decision(R550_PATIENT_TO_PATIENT, "patient to patient")
    if not isinstance(entry, Patient):
        return Decision(R550_PATIENT_UNAVAILABLE, "patient unknown")
    if entry.status is not Status.ACTIVE:
        return Decision(R550_PATIENT_UNAVAILABLE, f"patient {entry.status.value}")
    if not entry.qualified:
        return Decision(R550_PATIENT_UNAVAILABLE, "patient INS not qualified")
    if entry.opted_out:
        return Decision(R550_PATIENT_UNAVAILABLE, "patient opted out")
    if sender.identities & set(entry.blocked_senders):
        return Decision(R550_PATIENT_UNAVAILABLE, "patient blocked the sender")
    if patients_so_far >= 1:
        return Decision(R452_ONE_PATIENT, "second patient in one message")
    return Decision(R250_RECIPIENT_OK, "professional to patient")


def _recipient_identities(mailbox: Mailbox) -> frozenset[str]:
    return sender_identities(mailbox.address, mailbox)


def _may_write_first(patient: Patient, recipient: Mailbox, now: datetime) -> str:
    """The care relationship that lets the patient write first, or ``""``."""
    ids = _recipient_identities(recipient)
    for rel in patient.care_relationships:
        if rel.party not in ids:
            continue
        if rel.kind is CareKind.DISPENSED and now - rel.since > DISPENSING_WINDOW:
            continue
        return rel.kind.value
    return ""


def _check_patient_first_contact(
    sender: SenderFacts, recipient: Mailbox, now: datetime
) -> Decision:
    patient = sender.entry
    if isinstance(patient, Patient):
        via = _may_write_first(patient, recipient, now)
        if via:
            return Decision(
                R250_RECIPIENT_OK, f"patient to professional ({via})", needs_thread=True
            )
    return Decision(
        R250_RECIPIENT_OK, "patient to professional (thread check)", needs_thread=True
    )


# -- DATA --------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadFacts:
    """What the relay's thread state knows about a patient's message.

    ``replied_to`` holds, for each earlier message this one answers
    (``In-Reply-To``/``References``) that was sent to this patient, the
    addresses the patient may answer to and whether its thread is closed.
    ``wrote_before`` holds the identities (addresses, owner and structure ids)
    of everyone who has written to this patient.
    """

    replied_to: tuple[ThreadRef, ...] = ()
    wrote_before: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class ThreadRef:
    reply_addresses: frozenset[str]
    closed: bool = False


def check_patient_message(
    patient: Patient | None,
    recipient: Mailbox,
    thread: ThreadFacts,
    now: datetime,
) -> Decision:
    """DATA, for each professional recipient of a patient's message."""
    if any(ref.closed for ref in thread.replied_to):
        return Decision(R550_THREAD_CLOSED, "reply in a closed thread")
    if any(recipient.address in ref.reply_addresses for ref in thread.replied_to):
        return Decision(R250_MESSAGE_OK, "patient reply in thread")
    if _recipient_identities(recipient) & thread.wrote_before:
        return Decision(R250_MESSAGE_OK, "patient to a professional who wrote first")
    if patient is not None:
        via = _may_write_first(patient, recipient, now)
        if via:
            return Decision(R250_MESSAGE_OK, f"patient to professional ({via})")
    return Decision(R550_PATIENT_FIRST_CONTACT, "patient first contact")


@dataclass(frozen=True, slots=True)
class HeaderDecision:
    decision: Decision
    add_sender: str = ""  # a Sender: value the relay must add


def check_from_header(
    account: AccountFacts,
    envelope_sender: str,
    from_addresses: Iterable[str],
    sender_header: str | None,
    allowed: frozenset[str] = frozenset(),
) -> HeaderDecision:
    """``From:`` must name mailboxes the account may send as (RFC 5322 §3.6.2).

    ``allowed`` holds the addresses already established as usable by the
    account in this transaction (the envelope sender at least).
    """
    usable = set(allowed) | {envelope_sender}
    froms = [a for a in from_addresses if a]
    if not froms or any(a not in usable for a in froms):
        return HeaderDecision(Decision(R550_FROM_NOT_OWNED, "From header not usable"))
    if all(a in account.owned for a in froms):
        return HeaderDecision(Decision(R250_MESSAGE_OK, "From owned"))
    # RFC 5322 §3.6.2: the agent responsible for the transmission, when it is
    # not the author, goes in Sender.
    if sender_header is None:
        return HeaderDecision(
            Decision(R250_MESSAGE_OK, "From delegated; Sender added"),
            add_sender=account.login,
        )
    if sender_header != account.login:
        return HeaderDecision(
            Decision(R550_SENDER_HEADER_MISMATCH, "Sender header mismatch")
        )
    return HeaderDecision(
        Decision(R250_MESSAGE_OK, "From delegated; Sender names account")
    )


class SignatureAction(enum.StrEnum):
    """The operator's choice for a signature that does not verify."""

    REFUSE = "refuse"
    WARN = "warn"


def check_signature(reason: Reason | None, action: SignatureAction) -> Decision:
    """DATA: the S/MIME verification result of a signed message.

    Args:
        reason: the verification outcome; ``None`` when the relay could not
            run the check at all (a crypto failure).
        action: ``refuse`` or ``warn`` for the sender's domain.

    Returns:
        An accepting decision (the message carries the result in its trace
        header) or the refusal. ``REVOCATION_UNKNOWN`` and ``None`` are
        temporary whatever ``action`` says: a signature that may be revoked is
        neither accepted nor finally refused.
    """
    if reason is Reason.VALID:
        return Decision(R250_MESSAGE_OK, "signature verified")
    if reason is None:
        return Decision(R451_SIGNATURE_UNCHECKED, "signature check failed")
    if reason is Reason.REVOCATION_UNKNOWN:
        return Decision(R451_SIGNATURE_UNCHECKED, f"signature {reason.value}")
    if action is SignatureAction.WARN:
        return Decision(
            R250_MESSAGE_OK, f"signature {reason.value}; delivered with warning"
        )
    if reason is Reason.BAD_SIGNATURE:
        return Decision(R550_SIGNATURE_INVALID, f"signature {reason.value}")
    return Decision(R550_SIGNER_NOT_TRUSTED, f"signature {reason.value}")


def closes_thread(subject: str | None, mss_mes: str | None) -> bool:
    """``X-MSS-MES: FIN`` or the subject ``[FIN]`` closes a conversation."""
    if mss_mes is not None and mss_mes.strip().upper() == "FIN":
        return True
    return subject is not None and "[FIN]" in subject.upper()


# -- Copy to the treating doctor -------------------------------------------

COPY_TREATING_HEADER: Final = "X-MSSante-Copy-Treating"
_YES: Final = frozenset({"yes", "oui", "true", "1"})


def asks_treating_copy(value: str | None) -> bool:
    """Whether the message's ``X-MSSante-Copy-Treating`` field asks for a copy."""
    return value is not None and value.strip().lower() in _YES


def treating_doctor(patient: Patient) -> str:
    """The party the patient declared as treating doctor (the most recent
    declaration), or ``""``: a mailbox address or a national practitioner id."""
    declared = [r for r in patient.care_relationships if r.kind is CareKind.TREATING]
    if not declared:
        return ""
    return max(declared, key=lambda r: r.since).party
