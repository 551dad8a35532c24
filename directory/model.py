"""The trust directory's entries, as immutable dataclasses.

What must stay true:

- Every entry validates its identifiers when constructed (``__post_init__``);
  an entry that exists is well-formed. Invalid input raises
  :class:`~directory.errors.InvalidFieldError` naming the field.
- Each entry kind has one key (:func:`key_of`): practitioner national id
  (``8``+RPPS or ``0``+ADELI), organisation national structure id (``1``+FINESS
  or ``3``+SIRET), mailbox address (canonical form, see
  :func:`directory.identifiers.address`), patient INS matricule, operator
  domain, delegation ``account|mailbox``.
- A mailbox's address and BAL type never change once created; backends refuse
  such a change with :class:`~directory.errors.ImmutableFieldError`.
- Only a qualified INS has a mailbox, and its address is
  ``<matricule>@patient.<domain>``.
- :func:`to_record` / :func:`from_record` convert to and from JSON-compatible
  dicts; both backends and the JSON export use them, so a round trip through
  any of them gives back an equal entry.
- :func:`encode_content` is the canonical JSON of an entry's content (every
  field but status and source, plus ``kind``, keys sorted): computed once per
  entry, it is both what :func:`content_digest` hashes and what the sqlite
  backend stores. Its bytes equal ``json.dumps`` of :func:`to_record` minus
  status and source with sorted keys, so digests do not depend on which codec
  made them.
- :func:`decode_content` rebuilds an entry from :func:`encode_content`'s
  output **without validating it again**: only for text the backend wrote
  itself from a validated entry. Anything from outside goes through
  :func:`from_record` (or the constructors), which validate.

Pure module: no I/O, no clock (times are passed in).
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import hashlib
import json
import operator
import types
import typing
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final, TypeAlias

from directory import identifiers as ids
from directory.errors import InvalidFieldError

if typing.TYPE_CHECKING:
    from collections.abc import Mapping, Sequence


class Status(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    REVOKED = "revoked"


class BalType(enum.StrEnum):
    """MSSanté mailbox (BAL) types."""

    PER = "PER"  # personal mailbox of a practitioner
    ORG = "ORG"  # organisational mailbox (a service, a secretariat)
    APP = "APP"  # applicative mailbox (software sending on behalf of an organisation)
    CAB = "CAB"  # shared mailbox of a practice (cabinet)


class OwnerKind(enum.StrEnum):
    PRACTITIONER = "practitioner"
    ORGANISATION = "organisation"


class Sex(enum.StrEnum):
    """INS sex trait."""

    M = "M"
    F = "F"
    I = "I"  # noqa: E741 - the INS code for "indéterminé"


class CertificateUsage(enum.StrEnum):
    SIGNATURE = "signature"
    ENCRYPTION = "encryption"
    AUTHENTICATION = "authentication"


class ProxyScope(enum.StrEnum):
    READ = "read"
    READ_REPLY = "read-reply"


class DelegationScope(enum.StrEnum):
    READ = "read"
    READ_SEND = "read-send"


class CareKind(enum.StrEnum):
    WROTE_FIRST = "wrote-first"  # the professional wrote to the patient first
    DISPENSED = "dispensed"  # a pharmacy that dispensed to the patient
    TREATING = "treating"  # the patient's declared treating doctor


class ConsentAction(enum.StrEnum):
    """What a consent ledger record says happened (closed set)."""

    OPT_OUT = "opt-out"
    OPT_IN = "opt-in"
    BLOCK = "block"
    UNBLOCK = "unblock"
    PROXY_GRANTED = "proxy-granted"
    PROXY_REVOKED = "proxy-revoked"
    CONTACT_CHANGED = "contact-changed"
    TREATING_DOCTOR_SET = "treating-doctor-set"
    BREAK_GLASS_OPENED = "break-glass-opened"


class Kind(enum.StrEnum):
    PRACTITIONER = "practitioner"
    ORGANISATION = "organisation"
    MAILBOX = "mailbox"
    PATIENT = "patient"
    DELEGATION = "delegation"
    OPERATOR = "operator"


SOURCE_MANUAL: Final = "manual"
SOURCE_MSSANTE: Final = "mssante"
SOURCE_RPPS: Final = "rpps"
SOURCE_WHITELIST: Final = "whitelist"
PATIENT_SUBDOMAIN: Final = "patient."
# The longest break-glass access an administrator may open at once.
BREAK_GLASS_MAX: Final = timedelta(hours=24)
# What a consent record's detail may name (never free text: see ConsentRecord).
CONSENT_DETAIL_KEYS: Final = frozenset(
    {"party", "account", "scope", "until", "email", "phone", "doctor", "replaced"}
)
_CONSENT_TEXT_MAX: Final = 320  # an address is at most 254 characters

_FROZEN = {"frozen": True, "slots": True, "kw_only": True}


def _require(field_name: str, value: str) -> None:
    if not value.strip():
        raise InvalidFieldError(field_name, value, "must not be empty")


def _check_aware(field_name: str, value: datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise InvalidFieldError(field_name, value.isoformat(), "must carry a time zone")


@dataclass(**_FROZEN)
class Activity:
    """One practice site of a practitioner (a row of the RPPS extraction)."""

    structure_id: str = ""  # idNatStruct of the site, when it has one
    structure_name: str = ""
    mode: str = ""  # L libéral, S salarié, B bénévole
    role: str = ""  # FON-01 ... role code


@dataclass(**_FROZEN)
class Practitioner:
    national_id: str  # 8 + RPPS, or 0 + ADELI
    last_name: str
    first_name: str = ""
    civility: str = ""
    profession_code: str = ""
    profession: str = ""
    specialty_code: str = ""
    specialty: str = ""
    activities: tuple[Activity, ...] = ()
    status: Status = Status.ACTIVE
    source: str = SOURCE_MANUAL

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "national_id", ids.national_practitioner_id(self.national_id)
        )
        _require("last_name", self.last_name)

    @property
    def rpps(self) -> str | None:
        return self.national_id[1:] if self.national_id.startswith("8") else None


@dataclass(**_FROZEN)
class Organisation:
    structure_id: str  # 1 + FINESS, or 3 + SIRET
    name: str
    trade_name: str = ""
    status: Status = Status.ACTIVE
    source: str = SOURCE_MANUAL

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "structure_id", ids.national_structure_id(self.structure_id)
        )
        _require("name", self.name)

    @property
    def finess(self) -> str | None:
        return self.structure_id[1:] if self.structure_id.startswith("1") else None

    @property
    def siret(self) -> str | None:
        return self.structure_id[1:] if self.structure_id.startswith("3") else None


@dataclass(**_FROZEN)
class Certificate:
    """A certificate attached to a mailbox, kept as DER with what lookups need."""

    usage: CertificateUsage
    der: bytes
    subject: str = ""
    issuer: str = ""
    serial: str = ""
    not_after: datetime | None = None
    email: str = ""

    def __post_init__(self) -> None:
        if not self.der:
            raise InvalidFieldError("certificate", "", "empty certificate")
        _check_aware("not_after", self.not_after)

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the DER encoding, lower-case hex (the lookup key)."""
        return hashlib.sha256(self.der).hexdigest()


@dataclass(**_FROZEN)
class Mailbox:
    """An MSSanté mailbox (BAL) of a professional or an organisation."""

    address: str
    bal_type: BalType
    owner_kind: OwnerKind
    owner_id: str  # national_id of the practitioner or structure_id of the organisation
    display_name: str = ""
    structure_id: str = ""  # organisation the mailbox belongs to (PER: the site)
    service: str = ""
    profession: str = ""
    published: bool = (
        True  # False: unlisted ("liste rouge"), readable by the relay only
    )
    certificates: tuple[Certificate, ...] = ()
    pgp_key: str = ""  # ASCII-armoured OpenPGP public key
    prefers_pgp: bool = False
    status: Status = Status.ACTIVE
    source: str = SOURCE_MANUAL

    def __post_init__(self) -> None:
        object.__setattr__(self, "address", ids.address(self.address))
        if type(self.bal_type) is not BalType:
            object.__setattr__(self, "bal_type", BalType(self.bal_type))
        if self.owner_kind is OwnerKind.PRACTITIONER:
            owner = ids.national_practitioner_id(self.owner_id, "owner_id")
        else:
            owner = ids.national_structure_id(self.owner_id, "owner_id")
        object.__setattr__(self, "owner_id", owner)
        if self.structure_id:
            object.__setattr__(
                self,
                "structure_id",
                ids.national_structure_id(self.structure_id, "structure_id"),
            )
        if (
            self.bal_type is BalType.PER
            and self.owner_kind is not OwnerKind.PRACTITIONER
        ):
            raise InvalidFieldError(
                "owner_kind",
                str(self.owner_kind),
                "a PER mailbox belongs to a practitioner",
            )
        if (
            self.bal_type in (BalType.ORG, BalType.APP)
            and self.owner_kind is not OwnerKind.ORGANISATION
        ):
            raise InvalidFieldError(
                "owner_kind",
                str(self.owner_kind),
                f"a {self.bal_type} mailbox belongs to an organisation",
            )
        if self.prefers_pgp and not self.pgp_key:
            raise InvalidFieldError("prefers_pgp", True, "needs an OpenPGP key")

    @property
    def domain(self) -> str:
        return ids.address_domain(self.address)


@dataclass(**_FROZEN)
class ProxyGrant:
    """A caregiver or legal representative allowed to use a patient's mailbox."""

    account: str
    scope: ProxyScope
    granted_at: datetime
    expires: datetime | None = None

    def __post_init__(self) -> None:
        _require("account", self.account)
        _check_aware("granted_at", self.granted_at)
        _check_aware("expires", self.expires)

    def active_at(self, now: datetime) -> bool:
        return self.expires is None or now < self.expires


@dataclass(**_FROZEN)
class BreakGlassGrant:
    """An administrator's emergency read-only access to a patient's mailbox.

    Kept apart from :class:`ProxyGrant` on purpose: nothing that treats
    proxies as the patient's trusted persons (sending on their behalf,
    recovery) can mistake an administrator for one. It never allows sending;
    it lasts at most :data:`BREAK_GLASS_MAX`, and a reason is required.
    """

    account: str
    reason: str
    opened_at: datetime
    expires: datetime
    opened_by: str = ""  # who asked for it (the CLI's --actor)

    def __post_init__(self) -> None:
        _require("account", self.account)
        _require("reason", self.reason)
        _check_aware("opened_at", self.opened_at)
        _check_aware("expires", self.expires)
        if not self.opened_at < self.expires <= self.opened_at + BREAK_GLASS_MAX:
            raise InvalidFieldError(
                "expires",
                self.expires.isoformat(),
                "must be after the opening and at most 24 hours later",
            )

    def active_at(self, now: datetime) -> bool:
        return self.opened_at <= now < self.expires


@dataclass(**_FROZEN)
class CareRelationship:
    """A professional or organisation the patient may write to first."""

    party: str  # mailbox address, national practitioner id or structure id
    kind: CareKind
    since: datetime

    def __post_init__(self) -> None:
        _require("party", self.party)
        _check_aware("since", self.since)


@dataclass(**_FROZEN)
class Patient:
    ins: str  # INS matricule
    ins_oid: str
    birth_name: str
    first_names: str  # the first names of the INS, space-separated, in civil order
    sex: Sex
    birth_date: date
    birth_place: str  # INSEE code of the birth commune (99xxx abroad)
    qualified: bool = False
    address: str | None = None
    opted_out: bool = False
    blocked_senders: tuple[str, ...] = ()
    care_relationships: tuple[CareRelationship, ...] = ()
    proxies: tuple[ProxyGrant, ...] = ()
    break_glass: tuple[BreakGlassGrant, ...] = ()
    # The patient's ordinary contact, told (without health data) that a secure
    # message waits, and used for account activation and recovery.
    contact_email: str = ""
    contact_phone: str = ""  # E.164
    status: Status = Status.ACTIVE
    source: str = SOURCE_MANUAL

    def __post_init__(self) -> None:
        object.__setattr__(self, "ins", ids.ins(self.ins))
        if self.contact_email:
            object.__setattr__(
                self, "contact_email", ids.address(self.contact_email, "contact_email")
            )
        if self.contact_phone:
            object.__setattr__(
                self, "contact_phone", ids.phone(self.contact_phone, "contact_phone")
            )
        # The production check is the caller's (it knows the mode): see
        # directory.identifiers.ins_oid(production=True).
        object.__setattr__(self, "ins_oid", ids.ins_oid(self.ins_oid, production=False))
        _require("birth_name", self.birth_name)
        _require("first_names", self.first_names)
        if len(self.birth_place) != 5:
            raise InvalidFieldError(
                "birth_place", self.birth_place, "must be a 5-character INSEE code"
            )
        object.__setattr__(self, "sex", Sex(self.sex))
        if self.address is not None:
            canonical = ids.address(self.address)
            local, _, domain = canonical.partition("@")
            if not self.qualified:
                raise InvalidFieldError(
                    "address", self.address, "only a qualified INS gets a mailbox"
                )
            if local != self.ins or not domain.startswith(PATIENT_SUBDOMAIN):
                raise InvalidFieldError(
                    "address", self.address, "must be <INS matricule>@patient.<domain>"
                )
            object.__setattr__(self, "address", canonical)
        object.__setattr__(
            self, "blocked_senders", tuple(sorted(set(self.blocked_senders)))
        )


@dataclass(**_FROZEN)
class Delegation:
    """A staff account (no RPPS) allowed to use a mailbox."""

    account: str
    mailbox: str
    scope: DelegationScope
    granted_by: str = ""
    expires: datetime | None = None
    status: Status = Status.ACTIVE
    source: str = SOURCE_MANUAL

    def __post_init__(self) -> None:
        _require("account", self.account)
        if "|" in self.account:
            raise InvalidFieldError("account", self.account, "must not contain '|'")
        object.__setattr__(self, "mailbox", ids.address(self.mailbox, "mailbox"))
        _check_aware("expires", self.expires)

    @property
    def key(self) -> str:
        return f"{self.account}|{self.mailbox}"

    def active_at(self, now: datetime) -> bool:
        return self.status is Status.ACTIVE and (
            self.expires is None or now < self.expires
        )


@dataclass(**_FROZEN)
class OperatorCertificate:
    """A TLS certificate an operator may present for its domain."""

    subject_dn: str
    issuer_dn: str = ""
    fingerprint: str = ""  # SHA-256 hex, when pinned

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "subject_dn", ids.distinguished_name(self.subject_dn, "subject_dn")
        )
        if self.issuer_dn:
            object.__setattr__(
                self, "issuer_dn", ids.distinguished_name(self.issuer_dn, "issuer_dn")
            )
        if self.fingerprint:
            object.__setattr__(
                self, "fingerprint", ids.sha256_fingerprint(self.fingerprint)
            )


@dataclass(**_FROZEN)
class Operator:
    """An MSSanté operator's domain and the certificates allowed for it."""

    domain: str
    certificates: tuple[OperatorCertificate, ...] = ()
    description: str = ""
    contacts: tuple[str, ...] = ()
    updated: date | None = None
    status: Status = Status.ACTIVE
    source: str = SOURCE_MANUAL

    def __post_init__(self) -> None:
        object.__setattr__(self, "domain", ids.domain(self.domain))
        unique = {
            c.subject_dn + "\0" + c.issuer_dn + "\0" + c.fingerprint: c
            for c in self.certificates
        }
        object.__setattr__(
            self, "certificates", tuple(unique[k] for k in sorted(unique))
        )

    def allows(self, subject_dn: str) -> bool:
        dn = ids.distinguished_name(subject_dn)
        return self.status is Status.ACTIVE and any(
            c.subject_dn == dn for c in self.certificates
        )


def _plain_text(field_name: str, value: str, limit: int) -> None:
    """Short text with no control character (no line a log could split)."""
    if len(value) > limit or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise InvalidFieldError(
            field_name, value, f"must be at most {limit} printable characters"
        )


@dataclass(**_FROZEN)
class ConsentRecord:
    """One record of a patient's consent ledger: who changed what, when.

    The ledger is append-only: a record is never changed nor removed, and
    ``sequence`` counts a patient's records from 1 without a gap. ``detail``
    names only identifiers (the blocked party, the proxy account, its scope
    and expiry, which contact changed): keys from :data:`CONSENT_DETAIL_KEYS`,
    short values, never free text (a record is shown to the patient and to
    admins; health data must not get in). A break-glass reason goes to the
    audit trail and the patient's notice, not here.
    """

    ins: str
    sequence: int
    time: datetime
    actor: str
    action: ConsentAction
    detail: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "ins", ids.ins(self.ins))
        if self.sequence < 1:
            raise InvalidFieldError("sequence", self.sequence, "must be 1 or more")
        _check_aware("time", self.time)
        _require("actor", self.actor)
        _plain_text("actor", self.actor, 128)
        object.__setattr__(self, "action", ConsentAction(self.action))
        for key, value in self.detail:
            if key not in CONSENT_DETAIL_KEYS:
                raise InvalidFieldError("detail", key, "not a consent detail key")
            _plain_text(f"detail.{key}", value, _CONSENT_TEXT_MAX)
        object.__setattr__(self, "detail", tuple(sorted(dict(self.detail).items())))

    @property
    def details(self) -> dict[str, str]:
        return dict(self.detail)

    def as_json(self) -> dict[str, JSON]:
        """A JSON-compatible dict (what the backends store and the CLI prints)."""
        return {
            "ins": self.ins,
            "sequence": self.sequence,
            "time": self.time.isoformat(),
            "actor": self.actor,
            "action": self.action.value,
            "detail": self.details,
        }

    @classmethod
    def from_json(cls, record: Mapping[str, JSON]) -> ConsentRecord:
        """The inverse of :meth:`as_json` (validates again)."""
        return cls(
            ins=record["ins"],
            sequence=int(record["sequence"]),
            time=datetime.fromisoformat(record["time"]),
            actor=record["actor"],
            action=ConsentAction(record["action"]),
            detail=tuple((str(k), str(v)) for k, v in record["detail"].items()),
        )


Entry: TypeAlias = (
    Practitioner | Organisation | Mailbox | Patient | Delegation | Operator
)

KIND_OF: Final[Mapping[type[Any], Kind]] = {
    Practitioner: Kind.PRACTITIONER,
    Organisation: Kind.ORGANISATION,
    Mailbox: Kind.MAILBOX,
    Patient: Kind.PATIENT,
    Delegation: Kind.DELEGATION,
    Operator: Kind.OPERATOR,
}
CLASS_OF: Final[Mapping[Kind, type[Any]]] = {v: k for k, v in KIND_OF.items()}


def kind_of(entry: Entry) -> Kind:
    return KIND_OF[type(entry)]


def key_of(entry: Entry) -> str:
    """The primary key of an entry (see the module docstring)."""
    match entry:
        case Practitioner():
            return entry.national_id
        case Organisation():
            return entry.structure_id
        case Mailbox():
            return entry.address
        case Patient():
            return entry.ins
        case Delegation():
            return entry.key
        case Operator():
            return entry.domain


def canonical_key(kind: Kind, key: str) -> str:
    """Normalise a user-given key the way entries normalise theirs."""
    match kind:
        case Kind.PRACTITIONER:
            return ids.national_practitioner_id(key, "national_id")
        case Kind.ORGANISATION:
            return ids.national_structure_id(key)
        case Kind.MAILBOX:
            return ids.address(key)
        case Kind.PATIENT:
            return ids.ins(key)
        case Kind.OPERATOR:
            return ids.domain(key)
        case Kind.DELEGATION:
            account, sep, mailbox = key.rpartition("|")
            if not sep or not account:
                raise InvalidFieldError("delegation", key, "must be account|mailbox")
            return f"{account}|{ids.address(mailbox, 'mailbox')}"


# --- JSON records -----------------------------------------------------------

JSON: TypeAlias = Any


@functools.cache
def _hints(cls: type[Any]) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _field_names(cls: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def _encode(value: Any) -> JSON:  # noqa: ANN401 - generic codec
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            name: _encode(getattr(value, name)) for name in _field_names(type(value))
        }
    return value


def _decode(tp: Any, value: JSON) -> Any:  # noqa: ANN401 - generic codec
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _decode(inner, value)
    if origin is tuple:
        inner = typing.get_args(tp)[0]
        return tuple(_decode(inner, v) for v in value)
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return tp(value)
        if tp is datetime:
            return datetime.fromisoformat(value)
        if tp is date:
            return date.fromisoformat(value)
        if tp is bytes:
            return base64.b64decode(value)
        if dataclasses.is_dataclass(tp):
            hints = _hints(tp)
            return tp(
                **{k: _decode(hints[k], v) for k, v in value.items() if k in hints}
            )
    return value


def to_record(entry: Entry) -> dict[str, JSON]:
    """A JSON-compatible dict of every field, plus ``kind``."""
    record: dict[str, JSON] = {"kind": kind_of(entry).value}
    record.update(_encode(entry))
    return record


def from_record(record: Mapping[str, JSON], kind: Kind | None = None) -> Entry:
    """Rebuild an entry from :func:`to_record`'s output (validates it again)."""
    k = kind if kind is not None else Kind(record["kind"])
    cls = CLASS_OF[k]
    entry: Entry = _decode(cls, {n: v for n, v in record.items() if n != "kind"})
    return entry


def content_digest(entry: Entry) -> str:
    """Digest of the content an import compares: every field but status and source."""
    return digest_of(encode_content(entry))


def digest_of(content: str) -> str:
    """The digest of a content encoding (:func:`encode_content`)."""
    return hashlib.blake2b(content.encode(), digest_size=16).hexdigest()


# --- canonical content, trusted decoding --------------------------------------
#
# Both run once per entry of an import or a lookup, so each class gets a plan
# built once from its type hints: which fields JSON takes as they are (str,
# bool, int, StrEnum -- a str --, None, tuples of those) and a converter for
# the others (nested dataclasses, dates, bytes).


# Keys are put in sorted order by the plans (nested records too), so the
# encoder need not sort: same bytes as ``sort_keys=True``, less work.
def _content_json() -> typing.Callable[[Any], str]:
    """``JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode``, made
    once: ``encode`` builds a new C encoder on every call, which costs as much
    as encoding a small record."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # no C accelerator: the plain encoder
        return json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def default(value: Any) -> Any:  # noqa: ANN401 - json's hook
        msg = f"not JSON serialisable: {type(value).__name__}"
        raise TypeError(msg)

    encoder = make(
        None,  # no circular-reference check: records are trees
        default,
        json.encoder.encode_basestring,  # ensure_ascii=False
        None,  # indent
        ":",
        ",",
        False,  # sort_keys: the plans put keys in order
        False,  # skipkeys
        True,  # allow_nan
    )
    return lambda record: "".join(encoder(record, 0))


_CONTENT_JSON: Final = _content_json()
_NOT_CONTENT: Final = ("status", "source")
_Convert: TypeAlias = typing.Callable[[Any], Any]


def _optional(convert: _Convert) -> _Convert:
    return lambda v: None if v is None else convert(v)


def _to_json(tp: Any) -> _Convert | None:  # noqa: ANN401 - type hint object
    """How a value of type ``tp`` becomes JSON; None when JSON takes it as is."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        convert = _to_json(inner)
        return None if convert is None else _optional(convert)
    if origin is tuple:
        item = _to_json(typing.get_args(tp)[0])
        return None if item is None else (lambda v: [item(i) for i in v])
    if tp is datetime or tp is date:
        return lambda v: v.isoformat()
    if tp is bytes:
        return lambda v: base64.b64encode(v).decode("ascii")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _content_plan(tp).as_dict
    return None  # str, bool, int, StrEnum


def _from_json(tp: Any) -> _Convert | None:  # noqa: ANN401 - type hint object
    """How JSON becomes a value of type ``tp`` (trusted); None: as is."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        convert = _from_json(inner)
        return None if convert is None else _optional(convert)
    if origin is tuple:
        item = _from_json(typing.get_args(tp)[0])
        return tuple if item is None else (lambda v: tuple(map(item, v)))
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return {m.value: m for m in tp}.__getitem__
        if tp is datetime:
            return datetime.fromisoformat
        if tp is date:
            return date.fromisoformat
        if tp is bytes:
            return base64.b64decode
        if dataclasses.is_dataclass(tp):
            return _content_plan(tp).trusted
    return None


def _to_plain(tp: Any) -> _Convert | None:  # noqa: ANN401 - type hint object
    """How a value of type ``tp`` becomes builtins only (for :mod:`marshal`)."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        convert = _to_plain(inner)
        return None if convert is None else _optional(convert)
    if origin is tuple:
        item = _to_plain(typing.get_args(tp)[0])
        return None if item is None else (lambda v: tuple(map(item, v)))
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return operator.attrgetter("_value_")
        if tp is datetime or tp is date:
            return lambda v: v.isoformat()
        if dataclasses.is_dataclass(tp):
            return _content_plan(tp).plain
    return None  # str, bool, int, bytes


def _from_plain(tp: Any) -> _Convert | None:  # noqa: ANN401 - type hint object
    """The inverse of :func:`_to_plain` (trusted)."""
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        convert = _from_plain(inner)
        return None if convert is None else _optional(convert)
    if origin is tuple:
        item = _from_plain(typing.get_args(tp)[0])
        return None if item is None else (lambda v: tuple(map(item, v)))
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum):
            return {m.value: m for m in tp}.__getitem__
        if tp is datetime:
            return datetime.fromisoformat
        if tp is date:
            return date.fromisoformat
        if dataclasses.is_dataclass(tp):
            return _content_plan(tp).from_plain
    return None


class _ContentPlan:
    """Encoder and trusted decoder of one dataclass, built once."""

    def __init__(self, cls: type[Any]) -> None:
        hints = typing.get_type_hints(cls)
        fields = dataclasses.fields(cls)
        self.cls = cls
        # Records are built with their keys in sorted order (see _CONTENT_JSON).
        names = sorted(f.name for f in fields)
        self.names = tuple(names)
        self.values = operator.attrgetter(*names)
        content = sorted([n for n in names if n not in _NOT_CONTENT] + ["kind"])
        self.kind_at = content.index("kind")
        self.content_names = tuple(content)
        self.content_values = operator.attrgetter(*(n for n in content if n != "kind"))
        self.encoders = tuple(
            (n, c) for n in names if (c := _to_json(hints[n])) is not None
        )
        self.decoders = tuple((f.name, _from_json(hints[f.name])) for f in fields)
        self.defaults = {
            f.name: f.default for f in fields if f.default is not dataclasses.MISSING
        }
        self.factories = tuple(
            (f.name, f.default_factory)
            for f in fields
            if f.default_factory is not dataclasses.MISSING
        )
        # Plain values (entry_values): names order, converters by position.
        self.to_plain = tuple(
            (i, c)
            for i, n in enumerate(names)
            if (c := _to_plain(hints[n])) is not None
        )
        self.from_plain_at = tuple(
            (i, c)
            for i, n in enumerate(names)
            if (c := _from_plain(hints[n])) is not None
        )

    def plain(self, obj: Any) -> tuple[Any, ...]:  # noqa: ANN401 - any dataclass
        values = self.values(obj)
        if not self.to_plain:
            return tuple(values)
        out = list(values)
        for i, convert in self.to_plain:
            out[i] = convert(out[i])
        return tuple(out)

    def from_plain(self, values: Sequence[Any]) -> Any:  # noqa: ANN401
        if self.from_plain_at:
            values = list(values)
            for i, convert in self.from_plain_at:
                if values[i] is not None:
                    values[i] = convert(values[i])
        obj = object.__new__(self.cls)
        setattr_ = object.__setattr__
        for name, value in zip(self.names, values, strict=True):
            setattr_(obj, name, value)
        return obj

    def as_dict(self, obj: Any) -> dict[str, Any]:  # noqa: ANN401 - any dataclass
        record = dict(zip(self.names, self.values(obj), strict=True))
        for name, convert in self.encoders:
            record[name] = convert(record[name])
        return record

    def content(self, obj: Any, kind: str) -> dict[str, Any]:  # noqa: ANN401
        values = list(self.content_values(obj))
        values.insert(self.kind_at, kind)
        record = dict(zip(self.content_names, values, strict=True))
        for name, convert in self.encoders:
            if name in record:
                record[name] = convert(record[name])
        return record

    def trusted(self, record: Mapping[str, Any]) -> Any:  # noqa: ANN401
        values = {**self.defaults, **record}
        for name, factory in self.factories:
            if name not in values:
                values[name] = factory()
        obj = object.__new__(self.cls)
        setattr_ = object.__setattr__
        try:
            for name, convert in self.decoders:
                value = values[name]
                if convert is not None and value is not None:
                    value = convert(value)
                setattr_(obj, name, value)
        except KeyError as exc:
            why = f"a stored {self.cls.__name__} lacks it"
            raise InvalidFieldError(str(exc.args[0]), "", why) from None
        return obj


_PLANS: Final[dict[type[Any], _ContentPlan]] = {}


def _content_plan(cls: type[Any]) -> _ContentPlan:
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = _ContentPlan(cls)
    return plan


def encode_content(entry: Entry) -> str:
    """The canonical JSON of an entry's content (see the module docstring)."""
    cls = type(entry)
    return _CONTENT_JSON(_content_plan(cls).content(entry, KIND_OF[cls].value))


def decode_content(kind: Kind, content: str, status: str, source: str) -> Entry:
    """Rebuild an entry from :func:`encode_content`'s output, trusted.

    Does **not** validate: only for content the caller stored itself from a
    validated entry (a record that also carries status and source, as older
    stores wrote, is read the same way: the arguments win).
    """
    record = json.loads(content)
    record["status"] = status
    record["source"] = source
    entry: Entry = _content_plan(CLASS_OF[kind]).trusted(record)
    return entry


def entry_values(entry: Entry) -> tuple[Any, ...]:
    """Every field of ``entry`` as builtins only (str, int, bool, bytes, None,
    tuples), in a fixed order: what :mod:`marshal` takes, which is how an
    import's parsing process hands its entries over. See
    :func:`entry_from_values`."""
    return _content_plan(type(entry)).plain(entry)


def entry_from_values(kind: Kind, values: Sequence[Any]) -> Entry:
    """Rebuild an entry from :func:`entry_values`, trusted (not validated again).

    Only for values taken from an entry that was validated when built.
    """
    entry: Entry = _content_plan(CLASS_OF[kind]).from_plain(values)
    return entry


def with_status(entry: Entry, status: Status) -> Entry:
    return dataclasses.replace(entry, status=status)
