"""OpenLDAP backend of the trust directory (ldap3 against slapd).

The only module of the project that imports ldap3. It implements
:class:`directory.protocol.Directory` with the semantics of the reference
backend (:mod:`directory.sqlite`); the contract suite runs against both.

DIT (``<base>`` is ``LdapConfig.base_dn``)::

    <base>
     ├── ou=practitioners   mssPractitioner   mssKey=<idNatPs>
     ├── ou=organisations   mssOrganisation   mssKey=<idNatStruct>
     ├── ou=mailboxes       mssMailbox        mssKey=<address>
     ├── ou=patients        mssPatient        mssKey=<INS matricule>
     │    └── mssConsentSeq=<n>   mssConsentRecord  (the consent ledger)
     ├── ou=operators       mssOperator       mssKey=<domain>
     ├── ou=delegations     mssDelegation     mssKey=<account>|<mailbox>
     └── cn=meta            mssMetaStore      mssMeta: <name>=<value>

What must stay true:

- Every entry's RDN is ``mssKey=<key>`` (escaped with RFC 4514 rules);
  ``mssKey`` has octet-string equality, so keys compare byte for byte
  (``Jean@x.fr`` and ``jean@x.fr`` are two mailboxes; the model already
  lower-cases domains).
- Each model field has its own attribute (table ``_FIELDS``; a test checks that
  it covers every field). Empty strings and ``None`` are absent attributes.
  Nested tuples (activities, certificates, care relationships, proxies,
  operator certificates, contacts) are one value per item, each the JSON text
  ``[<position>, <item>]``: LDAP values are an unordered set without
  duplicates, the position keeps order and repeated items.
  :func:`directory.model.to_record`/``from_record`` do the field encoding, so a
  round trip gives back an equal entry.
- Derived attributes, rewritten with every write: ``mssSearchText`` (the same
  lower-cased words the sqlite backend searches), ``mssCertificateFingerprint``
  (mailboxes), ``mssCertificateSubjectDN`` (operators); and the import
  bookkeeping ``mssDigest``, ``mssStatusOrigin``, ``mssSource``, ``mssLastRun``.
- TLS always: ``ldap://`` means StartTLS before the bind, ``ldaps://`` implicit
  TLS; the server certificate is verified against ``LdapConfig.ca_file`` with
  host name check, TLS 1.2 at least. Verification is never turned off.
- Every ldap3, socket and TLS failure becomes
  :class:`~directory.errors.DirectoryUnavailableError` in one place
  (:func:`_unavailable_on_failure`), so callers fail closed.

Concurrency: ldap3 blocks, so every call runs in this directory's own thread
pool; each thread borrows a bound connection from a small pool (one operation
at a time per connection) and a connection that failed is dropped, not reused.
Imports fan their writes out over the pool.

Consent ledger (:meth:`LdapDirectory.change_consent`): each record is a
child of its patient, ``mssConsentSeq=<n>``, added once and never modified
(the ACLs give the relay identity add but not write or delete on them,
``conf/slapd/acl.ldif``). LDAP has no transaction over two entries, so the
patient entry carries the ledger's head: ``mssConsentSeq`` (the record count)
and ``mssConsentPending`` (the latest record). One modify changes the patient,
moves the count from n to n+1 (delete value n, add n+1: it fails if another
writer moved it first, and the change is then computed again) and sets the
pending record, atomically; the child n+1 is added after. If that add never
happens (a crash, a lost connection), the next change or history read of the
patient adds it from ``mssConsentPending`` (an add that fails if the child
exists, so it is added once). A change is therefore never without its
record.

Limits (see docs/directory-ldap.md): an import batch is not one transaction --
OpenLDAP has no multi-entry transactions that ldap3 can drive, so a batch that
fails halfway leaves the writes before the failure in place and raises
:class:`DirectoryUnavailableError`; running the import again converges (imports
are idempotent). ``entries()`` collects the keys of a kind first (one paged
search) to stream entries in key order.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import json
import math
import ssl
import threading
import urllib.parse
import warnings
from typing import TYPE_CHECKING, Any, Final, TypeVar

from directory import identifiers as ids
from directory.consent import ConsentOutcome, next_record
from directory.errors import (
    DirectoryUnavailableError,
    EntryExistsError,
    EntryNotFoundError,
    ImmutableFieldError,
)
from directory.model import (
    ConsentRecord,
    Delegation,
    Entry,
    Kind,
    Mailbox,
    Operator,
    Organisation,
    Patient,
    Practitioner,
    Status,
    canonical_key,
    content_digest,
    from_record,
    key_of,
    kind_of,
    to_record,
    with_status,
)
from directory.protocol import (
    BatchCounts,
    ImportRun,
    Merge,
    StatusOrigin,
    StoredState,
    Write,
    plan_batch,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
    from datetime import datetime

    from directory.config import LdapConfig
    from directory.consent import ConsentChange

# ldap3 2.9.1 imports names that pyasn1 >= 0.6 deprecates (tagMap, typeMap);
# the warning is raised once, at import, and says nothing about our code.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import ldap3
    from ldap3.core.exceptions import (
        LDAPAttributeOrValueExistsResult,
        LDAPConstraintViolationResult,
        LDAPEntryAlreadyExistsResult,
        LDAPException,
        LDAPNoSuchAttributeResult,
        LDAPNoSuchObjectResult,
    )
    from ldap3.utils.conv import escape_filter_chars
    from ldap3.utils.dn import escape_rdn

T = TypeVar("T")
Change = tuple[str, list[str]]  # (ldap3.MODIFY_*, values)

# Bound connections (and worker threads) per directory. slapd serves them in
# parallel; more than a few gains nothing on the relay's lookups and only a
# little on imports (mdb has a single writer).
DEFAULT_POOL_SIZE: Final = 4
# Keys per OR filter when fetching stored states or entries by key. Under
# slapd's default size limit (500) for any identity, and short enough for
# ldap3's pure-Python filter parser.
_KEYS_PER_FILTER: Final = 200
# Entries per page of a simple paged results search (RFC 2696).
_PAGE_SIZE: Final = 1000
# Below this many writes, fanning out over the pool costs more than it saves.
_MIN_WRITES_PER_THREAD: Final = 32
_DEFAULT_PORTS: Final = {"ldap": 389, "ldaps": 636}
# Tries of a consent change that another writer keeps overtaking.
_CONSENT_TRIES: Final = 20
_CONSENT_CLASS: Final = "mssConsentRecord"
_TRUE: Final = "TRUE"  # RFC 4517 §3.3.3 Boolean
_FALSE: Final = "FALSE"

_CONTAINER: Final[Mapping[Kind, str]] = {
    Kind.PRACTITIONER: "practitioners",
    Kind.ORGANISATION: "organisations",
    Kind.MAILBOX: "mailboxes",
    Kind.PATIENT: "patients",
    Kind.OPERATOR: "operators",
    Kind.DELEGATION: "delegations",
}
_OBJECT_CLASS: Final[Mapping[Kind, str]] = {
    Kind.PRACTITIONER: "mssPractitioner",
    Kind.ORGANISATION: "mssOrganisation",
    Kind.MAILBOX: "mssMailbox",
    Kind.PATIENT: "mssPatient",
    Kind.OPERATOR: "mssOperator",
    Kind.DELEGATION: "mssDelegation",
}
META_RDN: Final = "cn=meta"


class Codec(enum.Enum):
    """How a record field is stored in its attribute."""

    TEXT = "text"  # one value; "" and None are no value
    BOOL = "bool"  # TRUE / FALSE, always present
    SEQ = "seq"  # one JSON value [position, item] per tuple item
    SET = "set"  # one value per item; the model keeps these sorted and unique


_T, _B, _Q, _S = Codec.TEXT, Codec.BOOL, Codec.SEQ, Codec.SET
_COMMON = (("status", "mssStatus", _T), ("source", "mssSource", _T))
# model field -> (LDAP attribute, codec), per kind. Schema: directory/schema.
_FIELDS: Final[Mapping[Kind, tuple[tuple[str, str, Codec], ...]]] = {
    Kind.PRACTITIONER: (
        ("national_id", "mssNationalId", _T),
        ("last_name", "sn", _T),
        ("first_name", "givenName", _T),
        ("civility", "mssCivility", _T),
        ("profession_code", "mssProfessionCode", _T),
        ("profession", "mssProfession", _T),
        ("specialty_code", "mssSpecialtyCode", _T),
        ("specialty", "mssSpecialty", _T),
        ("activities", "mssActivity", _Q),
        *_COMMON,
    ),
    Kind.ORGANISATION: (
        ("structure_id", "mssStructureId", _T),
        ("name", "o", _T),
        ("trade_name", "mssTradeName", _T),
        *_COMMON,
    ),
    Kind.MAILBOX: (
        ("address", "mssMail", _T),
        ("bal_type", "mssBalType", _T),
        ("owner_kind", "mssOwnerKind", _T),
        ("owner_id", "mssOwnerId", _T),
        ("display_name", "displayName", _T),
        ("structure_id", "mssStructureId", _T),
        ("service", "mssService", _T),
        ("profession", "mssProfession", _T),
        ("published", "mssPublished", _B),
        ("certificates", "mssCertificate", _Q),
        ("pgp_key", "mssPgpKey", _T),
        ("prefers_pgp", "mssPrefersPgp", _B),
        *_COMMON,
    ),
    Kind.PATIENT: (
        ("ins", "mssIns", _T),
        ("ins_oid", "mssInsOid", _T),
        ("birth_name", "mssBirthName", _T),
        ("first_names", "mssFirstNames", _T),
        ("sex", "mssSex", _T),
        ("birth_date", "mssBirthDate", _T),
        ("birth_place", "mssBirthPlace", _T),
        ("qualified", "mssQualified", _B),
        ("address", "mssMail", _T),
        ("opted_out", "mssOptOut", _B),
        ("blocked_senders", "mssBlockedSender", _S),
        ("care_relationships", "mssCareRelationship", _Q),
        ("proxies", "mssProxyGrant", _Q),
        ("contact_email", "mssContactEmail", _T),
        ("contact_phone", "mssContactPhone", _T),
        ("break_glass", "mssBreakGlass", _Q),
        *_COMMON,
    ),
    Kind.DELEGATION: (
        ("account", "mssAccount", _T),
        ("mailbox", "mssDelegatedMailbox", _T),
        ("scope", "mssDelegationScope", _T),
        ("granted_by", "mssGrantedBy", _T),
        ("expires", "mssExpires", _T),
        *_COMMON,
    ),
    Kind.OPERATOR: (
        ("domain", "mssDomain", _T),
        ("certificates", "mssOperatorCertificate", _Q),
        ("description", "description", _T),
        ("contacts", "mssContact", _Q),
        ("updated", "mssUpdated", _T),
        *_COMMON,
    ),
}
_DERIVED: Final[Mapping[Kind, tuple[str, ...]]] = {
    Kind.MAILBOX: ("mssCertificateFingerprint",),
    Kind.OPERATOR: ("mssCertificateSubjectDN",),
    Kind.PATIENT: ("mssProxyAccount",),
}
_STATE_ATTRS: Final = [
    "mssKey",
    "mssDigest",
    "mssStatus",
    "mssStatusOrigin",
    "mssLastRun",
]


def field_attributes(kind: Kind) -> dict[str, str]:
    """Model field name -> LDAP attribute, for one kind (docs and tests)."""
    return {name: attr for name, attr, _ in _FIELDS[kind]}


# --- encoding ---------------------------------------------------------------


def _json(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _words(words: Sequence[str]) -> str:
    return " ".join(words).lower()


def _search_text(entry: Entry) -> str:
    """The words ``search()`` matches; the same as the sqlite backend's."""
    match entry:
        case Mailbox():
            return _words(
                [entry.address, entry.display_name, entry.service, entry.owner_id]
            )
        case Patient():
            return _words(
                [entry.ins, entry.birth_name, entry.first_names, entry.address or ""]
            )
        case Practitioner():
            return _words(
                [entry.national_id, entry.last_name, entry.first_name, entry.profession]
            )
        case Organisation():
            return _words([entry.structure_id, entry.name, entry.trade_name])
        case Delegation():
            return _words([entry.key])
        case Operator():
            return _words([entry.domain, entry.description])


def _derived(entry: Entry) -> dict[str, list[str]]:
    match entry:
        case Mailbox():
            fps = sorted({c.fingerprint for c in entry.certificates})
            return {"mssCertificateFingerprint": fps}
        case Operator():
            dns = sorted({c.subject_dn for c in entry.certificates})
            return {"mssCertificateSubjectDN": dns}
        case Patient():
            return {"mssProxyAccount": sorted({g.account for g in entry.proxies})}
        case _:
            return {}


def encode(entry: Entry) -> dict[str, list[str]]:
    """Every attribute of an entry's kind, with ``[]`` for those it lacks.

    Includes ``mssKey``, the derived attributes and ``mssSearchText``, not the
    import bookkeeping (digest, status origin, last run).
    """
    kind = kind_of(entry)
    record = to_record(entry)
    attrs: dict[str, list[str]] = {
        "mssKey": [key_of(entry)],
        "mssSearchText": [_search_text(entry)],
    }
    for name, attr, codec in _FIELDS[kind]:
        value = record[name]
        match codec:
            case Codec.TEXT:
                attrs[attr] = [] if value is None or value == "" else [str(value)]
            case Codec.BOOL:
                attrs[attr] = [_TRUE if value else _FALSE]
            case Codec.SEQ:
                attrs[attr] = [_json([i, item]) for i, item in enumerate(value)]
            case Codec.SET:
                attrs[attr] = sorted(set(value))
    attrs.update(_derived(entry))
    return attrs


def entry_dn(kind: Kind, key: str, base_dn: str) -> str:
    """The DN of an entry of ``kind`` with ``key`` under ``base_dn``."""
    return f"mssKey={escape_rdn(key)},ou={_CONTAINER[kind]},{base_dn}"


def containers(base_dn: str) -> list[tuple[str, dict[str, list[str]]]]:
    """The container entries (``ou=...``) an export must create first."""
    return [
        (f"ou={name},{base_dn}", {"objectClass": ["organizationalUnit"], "ou": [name]})
        for name in _CONTAINER.values()
    ]


def entry_record(entry: Entry, base_dn: str) -> tuple[str, dict[str, list[str]]]:
    """An entry as a complete LDAP record (DN, objectClass, attributes), as an
    admin-made entry: what ``mssante directory export --format ldif`` writes."""
    kind = kind_of(entry)
    attrs = {"objectClass": [_OBJECT_CLASS[kind]]}
    attrs.update({k: v for k, v in encode(entry).items() if v})
    attrs["mssDigest"] = [content_digest(entry)]
    attrs["mssStatusOrigin"] = [StatusOrigin.ADMIN.value]
    return entry_dn(kind, key_of(entry), base_dn), attrs


def _first(raw: Mapping[str, list[bytes]], attr: str) -> str | None:
    values = raw.get(attr.lower())
    return values[0].decode("utf-8") if values else None


def decode(kind: Kind, raw: Mapping[str, list[bytes]]) -> Entry:
    """Rebuild an entry from its raw attributes (names lower-cased)."""
    record: dict[str, Any] = {}
    for name, attr, codec in _FIELDS[kind]:
        values = raw.get(attr.lower(), [])
        match codec:
            case Codec.TEXT:
                if values:
                    record[name] = values[0].decode("utf-8")
            case Codec.BOOL:
                if values:
                    record[name] = values[0].upper() == _TRUE.encode()
            case Codec.SEQ:
                items = sorted((json.loads(v) for v in values), key=lambda p: int(p[0]))
                record[name] = [item for _, item in items]
            case Codec.SET:
                record[name] = sorted(v.decode("utf-8") for v in values)
    return from_record(record, kind)


def _raw(response_entry: Mapping[str, Any]) -> dict[str, list[bytes]]:
    raw: Mapping[str, list[bytes]] = response_entry["raw_attributes"]
    return {name.lower(): values for name, values in raw.items()}


def _escape(value: str) -> str:
    """RFC 4515 §3 escaping, spaces included (ldap3 strips unescaped ones)."""
    return escape_filter_chars(value).replace(" ", "\\20")


def _eq(attr: str, value: str) -> str:
    """An RFC 4515 equality filter with the value escaped."""
    return f"({attr}={_escape(value)})"


def _any_key(keys: Sequence[str]) -> str:
    if len(keys) == 1:
        return _eq("mssKey", keys[0])
    return "(|" + "".join(_eq("mssKey", k) for k in keys) + ")"


def _meta_value(name: str, value: str) -> str:
    escaped = name.replace("\\", "\\\\").replace("=", "\\=")
    return f"{escaped}={value}"


def _meta_split(text: str) -> tuple[str, str]:
    name: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            name.append(text[i + 1])
            i += 2
            continue
        if ch == "=":
            return "".join(name), text[i + 1 :]
        name.append(ch)
        i += 1
    return "".join(name), ""


# --- connections --------------------------------------------------------------


@contextlib.contextmanager
def _unavailable_on_failure(what: str) -> Iterator[None]:
    """Turn LDAP, socket and TLS failures into DirectoryUnavailableError."""
    try:
        yield
    except LDAPException as exc:
        msg = f"ldap: {what}: {type(exc).__name__}: {exc}"
        raise DirectoryUnavailableError(msg) from exc
    except OSError as exc:  # sockets, ssl.SSLError, TimeoutError, the password file
        msg = f"ldap: {what}: {type(exc).__name__}: {exc}"
        raise DirectoryUnavailableError(msg) from exc


class _VerifiedTls(ldap3.Tls):
    """ldap3's Tls with our own context: CA file, host name check, TLS >= 1.2.

    ldap3 builds its context without the ssl module's host name check and checks names
    itself; we let the ssl module do both, during the handshake.
    """

    def __init__(self, ca_file: str, host: str) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED, ca_certs_file=ca_file)
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        self._context = context
        self._host = host

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:  # noqa: ANN401 - ldap3's signature
        connection.socket = self._context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=True,
            server_hostname=self._host,
        )


def _parse_uri(uri: str) -> tuple[str, str, int]:
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        msg = f"directory.ldap.uri: {uri!r}: must be ldap://host[:port] or ldaps://host[:port]"
        raise ValueError(msg)
    return scheme, parts.hostname, parts.port or _DEFAULT_PORTS[scheme]


def _server(config: LdapConfig) -> ldap3.Server:
    scheme, host, port = _parse_uri(config.uri)
    return ldap3.Server(
        host,
        port=port,
        use_ssl=scheme == "ldaps",
        tls=_VerifiedTls(str(config.ca_file), host),
        get_info=ldap3.NONE,
        connect_timeout=config.timeout,
    )


def bind(config: LdapConfig, *, server: ldap3.Server | None = None) -> ldap3.Connection:
    """A connection bound as ``config.bind_dn``, over verified TLS.

    ``ldap://``: connect, StartTLS (RFC 4513 §3), then bind; ``ldaps://``: TLS
    from the first byte. The password is read from ``bind_password_file`` (a
    trailing newline is ignored). Used by this module's connection pool.

    Raises:
        ldap3.core.exceptions.LDAPException, OSError: raw; the directory's
            methods translate them (:func:`_unavailable_on_failure`).
    """
    server = server if server is not None else _server(config)
    password = config.bind_password_file.read_text(encoding="utf-8")
    conn = ldap3.Connection(
        server,
        user=config.bind_dn,
        password=password.rstrip("\r\n"),
        auto_bind="NONE",
        client_strategy="SYNC",
        raise_exceptions=True,
        # ldap3 packs it into SO_RCVTIMEO as whole seconds.
        receive_timeout=max(1, math.ceil(config.timeout)),
        auto_referrals=False,
        auto_range=False,
        check_names=False,
        auto_escape=False,
        return_empty_attributes=False,
    )
    try:
        conn.open()
        if not server.ssl:
            conn.start_tls()
        conn.bind()
    except BaseException:
        _drop(conn)
        raise
    return conn


class _Pool:
    """Bound ldap3 connections, each used by one thread at a time."""

    def __init__(self, config: LdapConfig) -> None:
        self._config = config
        self._server = _server(config)
        self._idle: list[ldap3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False

    def _connect(self) -> ldap3.Connection:
        return bind(self._config, server=self._server)

    @contextlib.contextmanager
    def connection(self) -> Iterator[ldap3.Connection]:
        with self._lock:
            if self._closed:
                msg = "ldap: directory is closed"
                raise DirectoryUnavailableError(msg)
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        except BaseException:
            _drop(conn)  # its state is unknown: never reuse it
            raise
        self._give_back(conn)

    def _give_back(self, conn: ldap3.Connection) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(conn)
                return
        _drop(conn)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            _drop(conn)


def _drop(conn: ldap3.Connection) -> None:
    """Close a connection for good, whatever state it is in."""
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()
    sock = getattr(conn, "socket", None)  # left open when open() failed halfway
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()


# --- the directory -------------------------------------------------------------


class LdapDirectory:
    """The :class:`~directory.protocol.Directory` in an OpenLDAP server."""

    def __init__(
        self, config: LdapConfig, *, pool_size: int = DEFAULT_POOL_SIZE
    ) -> None:
        self._config = config
        self._base = config.base_dn
        self._pool_size = pool_size
        self._pool = _Pool(config)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=pool_size, thread_name_prefix="directory-ldap"
        )
        self._closed = False

    @classmethod
    async def open(
        cls, config: LdapConfig, *, pool_size: int = DEFAULT_POOL_SIZE
    ) -> LdapDirectory:
        """Connect, bind, and create the containers that are missing.

        Raises:
            ValueError: the URI is not ``ldap://`` or ``ldaps://``.
            DirectoryUnavailableError: the server cannot be reached, TLS or the
                bind fails, or the base entry does not exist.
        """
        directory = cls(config, pool_size=pool_size)
        try:
            await directory._run("open", directory._ensure_dit)
        except BaseException:
            await directory.close()
            raise
        return directory

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._pool.close)
        self._executor.shutdown(wait=True)

    async def _run(self, what: str, fn: Callable[..., T], *args: object) -> T:
        if self._closed:
            msg = "ldap: directory is closed"
            raise DirectoryUnavailableError(msg)
        loop = asyncio.get_running_loop()
        with _unavailable_on_failure(what):
            return await loop.run_in_executor(self._executor, fn, *args)

    # --- DIT ---------------------------------------------------------------

    def _container(self, kind: Kind) -> str:
        return f"ou={_CONTAINER[kind]},{self._base}"

    def _dn(self, kind: Kind, key: str) -> str:
        return entry_dn(kind, key, self._base)

    @property
    def _meta_dn(self) -> str:
        return f"{META_RDN},{self._base}"

    def _ensure_dit(self) -> None:
        with self._pool.connection() as conn:
            conn.search(
                self._base,
                "(|(objectClass=organizationalUnit)(objectClass=mssMetaStore))",
                search_scope=ldap3.LEVEL,
                attributes=["1.1"],
            )
            present = {r["dn"].lower() for r in _entries_of(conn)}
            for name in _CONTAINER.values():
                dn = f"ou={name},{self._base}"
                if dn.lower() not in present:
                    with contextlib.suppress(LDAPEntryAlreadyExistsResult):
                        _ldap_add(
                            conn,
                            dn,
                            {"objectClass": ["organizationalUnit"], "ou": [name]},
                        )
            if self._meta_dn.lower() not in present:
                with contextlib.suppress(LDAPEntryAlreadyExistsResult):
                    _ldap_add(
                        conn,
                        self._meta_dn,
                        {"objectClass": ["mssMetaStore"], "cn": ["meta"]},
                    )

    # --- searches (worker thread) ---------------------------------------------

    def _search(
        self, kind: Kind, search_filter: str, attributes: Sequence[str] = ("*",)
    ) -> list[dict[str, list[bytes]]]:
        """One-level search in a kind's container (few results expected)."""
        with self._pool.connection() as conn:
            conn.search(
                self._container(kind),
                search_filter,
                search_scope=ldap3.LEVEL,
                attributes=list(attributes),
            )
            return [_raw(r) for r in _entries_of(conn)]

    def _paged(
        self, kind: Kind, search_filter: str, attributes: Sequence[str]
    ) -> list[dict[str, list[bytes]]]:
        """A one-level search over a whole kind, in pages (RFC 2696)."""
        found: list[dict[str, list[bytes]]] = []
        with self._pool.connection() as conn:
            cookie: bytes | None = None
            while True:
                conn.search(
                    self._container(kind),
                    search_filter,
                    search_scope=ldap3.LEVEL,
                    attributes=list(attributes),
                    paged_size=_PAGE_SIZE,
                    paged_cookie=cookie,
                )
                found.extend(_raw(r) for r in _entries_of(conn))
                control = conn.result.get("controls", {}).get("1.2.840.113556.1.4.319")
                cookie = control["value"]["cookie"] if control else None
                if not cookie:
                    return found

    def _keys(self, kind: Kind, search_filter: str) -> list[str]:
        rows = self._paged(kind, search_filter, ["mssKey"])
        return sorted(v.decode("utf-8") for r in rows for v in r.get("msskey", []))

    def _by_keys(self, kind: Kind, keys: Sequence[str]) -> list[Entry]:
        """Entries of these keys (absent ones skipped), in key order."""
        rows: list[dict[str, list[bytes]]] = []
        for i in range(0, len(keys), _KEYS_PER_FILTER):
            rows += self._search(kind, _any_key(keys[i : i + _KEYS_PER_FILTER]))
        entries = [decode(kind, r) for r in rows]
        return sorted(entries, key=key_of)

    def _find(self, kind: Kind, search_filter: str) -> list[Entry]:
        entries = [decode(kind, r) for r in self._search(kind, search_filter)]
        return sorted(entries, key=key_of)

    # --- lookups ---------------------------------------------------------

    async def get(self, kind: Kind, key: str) -> Entry | None:
        found = await self._run(
            "get", self._find, kind, _eq("mssKey", canonical_key(kind, key))
        )
        return found[0] if found else None

    async def practitioner(self, national_id_or_rpps: str) -> Practitioner | None:
        entry = await self.get(Kind.PRACTITIONER, national_id_or_rpps)
        assert entry is None or isinstance(entry, Practitioner)  # noqa: S101 - kind invariant
        return entry

    async def organisation(self, structure_id: str) -> Organisation | None:
        entry = await self.get(Kind.ORGANISATION, structure_id)
        assert entry is None or isinstance(entry, Organisation)  # noqa: S101
        return entry

    async def mailbox(self, address: str) -> Mailbox | None:
        entry = await self.get(Kind.MAILBOX, address)
        assert entry is None or isinstance(entry, Mailbox)  # noqa: S101
        return entry

    async def patient(self, ins: str) -> Patient | None:
        entry = await self.get(Kind.PATIENT, ins)
        assert entry is None or isinstance(entry, Patient)  # noqa: S101
        return entry

    async def operator(self, domain: str) -> Operator | None:
        entry = await self.get(Kind.OPERATOR, domain)
        assert entry is None or isinstance(entry, Operator)  # noqa: S101
        return entry

    def _resolve(self, address: str) -> Mailbox | Patient | None:
        for kind in (Kind.MAILBOX, Kind.PATIENT):
            found = self._find(kind, _eq("mssMail", address))
            if found:
                entry = found[0]
                assert isinstance(entry, Mailbox | Patient)  # noqa: S101
                return entry
        return None

    async def resolve(self, address: str) -> Mailbox | Patient | None:
        return await self._run("resolve", self._resolve, ids.address(address))

    async def operators_for_certificate(self, subject_dn: str) -> list[Operator]:
        dn = ids.distinguished_name(subject_dn, "subject_dn")
        found = await self._run(
            "operators_for_certificate",
            self._find,
            Kind.OPERATOR,
            _eq("mssCertificateSubjectDN", dn),
        )
        return [e for e in found if isinstance(e, Operator)]

    async def mailbox_for_certificate(self, fingerprint: str) -> Mailbox | None:
        fp = ids.sha256_fingerprint(fingerprint)
        found = await self._run(
            "mailbox_for_certificate",
            self._find,
            Kind.MAILBOX,
            _eq("mssCertificateFingerprint", fp),
        )
        return next((e for e in found if isinstance(e, Mailbox)), None)

    async def mailboxes_of(self, owner_id: str) -> list[Mailbox]:
        owner = owner_id.strip().upper()
        if not owner:
            return []
        found = await self._run(
            "mailboxes_of", self._find, Kind.MAILBOX, _eq("mssOwnerId", owner)
        )
        return [e for e in found if isinstance(e, Mailbox)]

    async def patients_with_proxy(self, account: str) -> list[Patient]:
        if not account:
            return []
        found = await self._run(
            "patients_with_proxy",
            self._find,
            Kind.PATIENT,
            _eq("mssProxyAccount", account),
        )
        return [e for e in found if isinstance(e, Patient)]

    async def delegations(
        self, *, account: str | None = None, mailbox: str | None = None
    ) -> list[Delegation]:
        terms = ["(objectClass=mssDelegation)"]
        if account is not None:
            if not account:
                return []
            terms.append(_eq("mssAccount", account))
        if mailbox is not None:
            terms.append(_eq("mssDelegatedMailbox", ids.address(mailbox, "mailbox")))
        found = await self._run(
            "delegations", self._find, Kind.DELEGATION, "(&" + "".join(terms) + ")"
        )
        return [e for e in found if isinstance(e, Delegation)]

    def _text_search(self, text: str, kinds: Sequence[Kind], limit: int) -> list[Entry]:
        needle = text.lower()
        search_filter = (
            f"(mssSearchText=*{_escape(needle)}*)" if needle else "(mssSearchText=*)"
        )
        found: list[Entry] = []
        for kind in kinds:
            keys = self._keys(kind, search_filter)
            if limit >= 0:
                keys = keys[: limit - len(found)]
            found += self._by_keys(kind, keys)
            if 0 <= limit <= len(found):
                break
        return found

    async def search(
        self, text: str, *, kind: Kind | None = None, limit: int = 50
    ) -> list[Entry]:
        if limit == 0:
            return []
        # The sqlite backend orders by kind name, then key.
        kinds = [kind] if kind is not None else sorted(Kind, key=lambda k: k.value)
        return await self._run("search", self._text_search, text, kinds, limit)

    async def entries(self, kind: Kind) -> AsyncIterator[Entry]:
        keys = await self._run("entries", self._keys, kind, "(objectClass=mssEntry)")
        for i in range(0, len(keys), _KEYS_PER_FILTER):
            chunk = keys[i : i + _KEYS_PER_FILTER]
            for entry in await self._run("entries", self._by_keys, kind, chunk):
                yield entry

    def _count(self, kind: Kind) -> int:
        return len(self._paged(kind, "(objectClass=mssEntry)", ["1.1"]))

    async def count(self, kind: Kind) -> int:
        return await self._run("count", self._count, kind)

    # --- changes ---------------------------------------------------------

    def _add_entry(
        self,
        conn: ldap3.Connection,
        entry: Entry,
        digest: str,
        origin: StatusOrigin,
        last_run: str,
    ) -> None:
        kind = kind_of(entry)
        attrs = {k: v for k, v in encode(entry).items() if v}
        attrs["objectClass"] = [_OBJECT_CLASS[kind]]
        attrs["mssDigest"] = [digest]
        attrs["mssStatusOrigin"] = [origin.value]
        if last_run:
            attrs["mssLastRun"] = [last_run]
        _ldap_add(conn, self._dn(kind, key_of(entry)), attrs)

    def _modify_entry(
        self,
        conn: ldap3.Connection,
        entry: Entry,
        digest: str,
        origin: StatusOrigin | None,
        last_run: str | None,
    ) -> None:
        attrs = encode(entry)
        attrs["mssDigest"] = [digest]
        if origin is not None:
            attrs["mssStatusOrigin"] = [origin.value]
        if last_run is not None:
            attrs["mssLastRun"] = [last_run] if last_run else []
        changes: dict[str, list[Change]] = {
            a: [(ldap3.MODIFY_REPLACE, v)] for a, v in attrs.items() if a != "mssKey"
        }
        _ldap_modify(conn, self._dn(kind_of(entry), key_of(entry)), changes)

    def _add(self, entry: Entry) -> None:
        with self._pool.connection() as conn:
            try:
                self._add_entry(
                    conn, entry, content_digest(entry), StatusOrigin.ADMIN, ""
                )
            except LDAPEntryAlreadyExistsResult:
                raise EntryExistsError(kind_of(entry).value, key_of(entry)) from None

    async def add(self, entry: Entry) -> None:
        await self._run("add", self._add, entry)

    def _replace(self, entry: Entry, origin: StatusOrigin | None) -> None:
        kind, key = kind_of(entry), key_of(entry)
        with self._pool.connection() as conn:
            conn.search(
                self._container(kind),
                _eq("mssKey", key),
                search_scope=ldap3.LEVEL,
                attributes=["mssKey", "mssBalType"],
            )
            found = [_raw(r) for r in _entries_of(conn)]
            if not found:
                raise EntryNotFoundError(kind.value, key)
            old_type = _first(found[0], "mssBalType")
            if isinstance(entry, Mailbox) and old_type not in (
                None,
                entry.bal_type.value,
            ):
                raise ImmutableFieldError(kind.value, key, "bal_type")
            try:
                self._modify_entry(conn, entry, content_digest(entry), origin, None)
            except LDAPNoSuchObjectResult:  # deleted by someone else meanwhile
                raise EntryNotFoundError(kind.value, key) from None

    async def replace(self, entry: Entry) -> None:
        await self._run("replace", self._replace, entry, None)

    async def set_status(self, kind: Kind, key: str, status: Status) -> Entry:
        canonical = canonical_key(kind, key)
        entry = await self.get(kind, canonical)
        if entry is None:
            raise EntryNotFoundError(kind.value, canonical)
        updated = with_status(entry, status)
        await self._run("set_status", self._replace, updated, StatusOrigin.ADMIN)
        return updated

    # --- imports ---------------------------------------------------------

    def _states(
        self, kind: Kind, keys: Sequence[str], run_id: str, want_entry: bool
    ) -> dict[str, StoredState]:
        attributes = ["*"] if want_entry else _STATE_ATTRS
        states: dict[str, StoredState] = {}
        for raw in self._search(kind, _any_key(keys), attributes):
            key = _first(raw, "mssKey") or ""
            last_run = _first(raw, "mssLastRun") or ""
            entry = decode(kind, raw) if want_entry and last_run == run_id else None
            states[key] = StoredState(
                digest=_first(raw, "mssDigest") or "",
                status=Status(_first(raw, "mssStatus") or Status.ACTIVE.value),
                status_origin=StatusOrigin(
                    _first(raw, "mssStatusOrigin") or StatusOrigin.ADMIN.value
                ),
                last_run=last_run,
                entry=entry,
            )
        return states

    def _apply(self, ops: Sequence[Callable[[ldap3.Connection], None]]) -> None:
        with self._pool.connection() as conn:
            for op in ops:
                op(conn)

    async def _fan_out(
        self, what: str, ops: Sequence[Callable[[ldap3.Connection], None]]
    ) -> None:
        """Run write operations over the pool's connections, in parallel."""
        if not ops:
            return
        lanes = max(1, min(self._pool_size, len(ops) // _MIN_WRITES_PER_THREAD))
        await asyncio.gather(
            *(self._run(what, self._apply, ops[i::lanes]) for i in range(lanes))
        )

    def _write_op(
        self, write: Write, run_id: str
    ) -> Callable[[ldap3.Connection], None]:
        if write.insert:
            return lambda conn: self._add_entry(
                conn, write.entry, write.digest, write.status_origin, run_id
            )
        return lambda conn: self._modify_entry(
            conn, write.entry, write.digest, write.status_origin, run_id
        )

    def _touch_op(
        self, kind: Kind, key: str, run_id: str
    ) -> Callable[[ldap3.Connection], None]:
        dn = self._dn(kind, key)
        change: dict[str, list[Change]] = {
            "mssLastRun": [(ldap3.MODIFY_REPLACE, [run_id])]
        }
        return lambda conn: _ldap_modify(conn, dn, change)

    async def import_batch(
        self,
        entries: Sequence[Entry],
        run: ImportRun,
        merge: Merge | None = None,
        *,
        contents: Sequence[str] | None = None,
    ) -> BatchCounts:
        if not entries:
            return BatchCounts()
        kind = kind_of(entries[0])
        keys = list(dict.fromkeys(key_of(e) for e in entries))
        chunks = [
            keys[i : i + _KEYS_PER_FILTER]
            for i in range(0, len(keys), _KEYS_PER_FILTER)
        ]
        stored: dict[str, StoredState] = {}
        for part in await asyncio.gather(
            *(
                self._run(
                    "import_batch", self._states, kind, c, run.run_id, merge is not None
                )
                for c in chunks
            )
        ):
            stored.update(part)
        plan = plan_batch(entries, stored, run.run_id, merge, contents)
        ops = [self._write_op(w, run.run_id) for w in plan.writes]
        ops += [self._touch_op(kind, k, run.run_id) for k in plan.touch]
        await self._fan_out("import_batch", ops)
        return plan.counts

    async def suspend_absent(self, kind: Kind, run: ImportRun) -> list[str]:
        search_filter = (
            "(&(objectClass=mssEntry)"
            + _eq("mssSource", run.source)
            + "(!"
            + _eq("mssLastRun", run.run_id)
            + ")"
            + _eq("mssStatus", Status.ACTIVE.value)
            + ")"
        )
        keys = await self._run("suspend_absent", self._keys, kind, search_filter)
        change: dict[str, list[Change]] = {
            "mssStatus": [(ldap3.MODIFY_REPLACE, [Status.SUSPENDED.value])],
            "mssStatusOrigin": [(ldap3.MODIFY_REPLACE, [StatusOrigin.IMPORT.value])],
        }
        ops = [self._suspend_op(self._dn(kind, k), change) for k in keys]
        await self._fan_out("suspend_absent", ops)
        return keys

    @staticmethod
    def _suspend_op(
        dn: str, change: Mapping[str, list[Change]]
    ) -> Callable[[ldap3.Connection], None]:
        return lambda conn: _ldap_modify(conn, dn, change)

    # --- consent ledger ------------------------------------------------------

    def _record_dn(self, ins: str, sequence: int) -> str:
        return f"mssConsentSeq={sequence},{self._dn(Kind.PATIENT, ins)}"

    def _add_record(self, conn: ldap3.Connection, record: ConsentRecord) -> None:
        """Add a ledger record; nothing if it is there already (added once)."""
        attrs = {
            "objectClass": [_CONSENT_CLASS],
            "mssConsentSeq": [str(record.sequence)],
            "mssConsentData": [_json(record.as_json())],
        }
        with contextlib.suppress(LDAPEntryAlreadyExistsResult):
            _ldap_add(conn, self._record_dn(record.ins, record.sequence), attrs)

    def _patient_head(
        self, conn: ldap3.Connection, ins: str
    ) -> tuple[Patient, int, ConsentRecord | None]:
        """The stored patient, its record count, its latest record (pending)."""
        conn.search(
            self._container(Kind.PATIENT),
            _eq("mssKey", ins),
            search_scope=ldap3.LEVEL,
            attributes=["*"],
        )
        found = [_raw(r) for r in _entries_of(conn)]
        if not found:
            raise EntryNotFoundError(Kind.PATIENT.value, ins)
        patient = decode(Kind.PATIENT, found[0])
        assert isinstance(patient, Patient)  # noqa: S101 - kind invariant
        count = int(_first(found[0], "mssConsentSeq") or "0")
        pending_text = _first(found[0], "mssConsentPending")
        pending = (
            ConsentRecord.from_json(json.loads(pending_text)) if pending_text else None
        )
        return patient, count, pending

    def _change_consent(
        self, ins: str, change: ConsentChange, actor: str, now: datetime
    ) -> ConsentOutcome:
        with self._pool.connection() as conn:
            for _ in range(_CONSENT_TRIES):
                patient, count, pending = self._patient_head(conn, ins)
                if pending is not None:  # an earlier change may lack its child
                    self._add_record(conn, pending)
                done = next_record(
                    patient, change, actor=actor, now=now, sequence=count + 1
                )
                if done is None:
                    return ConsentOutcome(patient, None)
                updated, record = done
                changes: dict[str, list[Change]] = {
                    a: [(ldap3.MODIFY_REPLACE, v)]
                    for a, v in encode(updated).items()
                    if a != "mssKey"
                }
                changes["mssDigest"] = [
                    (ldap3.MODIFY_REPLACE, [content_digest(updated)])
                ]
                # Compare-and-set of the count: deleting a value that is not
                # there fails, and so does adding a second value.
                changes["mssConsentSeq"] = [
                    *([(ldap3.MODIFY_DELETE, [str(count)])] if count else []),
                    (ldap3.MODIFY_ADD, [str(record.sequence)]),
                ]
                changes["mssConsentPending"] = [
                    (ldap3.MODIFY_REPLACE, [_json(record.as_json())])
                ]
                try:
                    _ldap_modify(conn, self._dn(Kind.PATIENT, ins), changes)
                except (
                    LDAPNoSuchAttributeResult,
                    LDAPAttributeOrValueExistsResult,
                    LDAPConstraintViolationResult,
                ):
                    continue  # another writer moved the count: compute again
                self._add_record(conn, record)
                return ConsentOutcome(updated, record)
        msg = f"ldap: consent change of {ins}: other writers kept overtaking it"
        raise DirectoryUnavailableError(msg)

    async def change_consent(
        self, ins: str, change: ConsentChange, *, actor: str, now: datetime
    ) -> ConsentOutcome:
        canonical = canonical_key(Kind.PATIENT, ins)
        return await self._run(
            "change_consent", self._change_consent, canonical, change, actor, now
        )

    def _consent_history(self, ins: str) -> list[ConsentRecord]:
        with self._pool.connection() as conn:
            _, _, pending = self._patient_head(conn, ins)
            if pending is not None:
                self._add_record(conn, pending)
            conn.search(
                self._dn(Kind.PATIENT, ins),
                f"(objectClass={_CONSENT_CLASS})",
                search_scope=ldap3.LEVEL,
                attributes=["mssConsentData"],
            )
            texts = [_first(_raw(r), "mssConsentData") for r in _entries_of(conn)]
        records = [ConsentRecord.from_json(json.loads(t)) for t in texts if t]
        return sorted(records, key=lambda r: r.sequence)

    async def consent_history(self, ins: str) -> list[ConsentRecord]:
        canonical = canonical_key(Kind.PATIENT, ins)
        try:
            return await self._run("consent_history", self._consent_history, canonical)
        except EntryNotFoundError:
            return []

    # --- meta --------------------------------------------------------------

    def _meta_values(self, conn: ldap3.Connection, name: str) -> list[str]:
        conn.search(
            self._meta_dn,
            "(objectClass=*)",
            search_scope=ldap3.BASE,
            attributes=["mssMeta"],
        )
        values: list[str] = []
        for r in _entries_of(conn):
            for raw in _raw(r).get("mssmeta", []):
                text = raw.decode("utf-8")
                if _meta_split(text)[0] == name:
                    values.append(text)
        return values

    def _get_meta(self, name: str) -> str | None:
        with self._pool.connection() as conn:
            values = self._meta_values(conn, name)
        return _meta_split(values[0])[1] if values else None

    async def get_meta(self, name: str) -> str | None:
        return await self._run("get_meta", self._get_meta, name)

    def _set_meta(self, name: str, value: str) -> None:
        with self._pool.connection() as conn:
            old = self._meta_values(conn, name)
            new = _meta_value(name, value)
            changes: list[Change] = []
            if old:
                changes.append((ldap3.MODIFY_DELETE, old))
            changes.append((ldap3.MODIFY_ADD, [new]))
            _ldap_modify(conn, self._meta_dn, {"mssMeta": changes})

    async def set_meta(self, name: str, value: str) -> None:
        await self._run("set_meta", self._set_meta, name, value)


def _ldap_add(
    conn: ldap3.Connection, dn: str, attributes: Mapping[str, list[str]]
) -> None:
    conn.add(dn, attributes=dict(attributes))  # type: ignore[no-untyped-call]  # untyped in types-ldap3


def _ldap_modify(
    conn: ldap3.Connection, dn: str, changes: Mapping[str, list[Change]]
) -> None:
    conn.modify(dn, dict(changes))  # type: ignore[no-untyped-call]  # untyped in types-ldap3


def _entries_of(conn: ldap3.Connection) -> list[dict[str, Any]]:
    return [r for r in conn.response or [] if r.get("type") == "searchResEntry"]
