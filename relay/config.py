"""The relay's configuration: ``conf/relay.toml`` into frozen dataclasses.

Rules:

- Every key is known: an unknown key, a missing required key or a value of the
  wrong type stops the start with :class:`ConfigError` naming the dotted key
  (``directory.ldap.bind_password_file``) and what was expected.
- Relative paths are resolved against the directory of the config file, so the
  relay behaves the same whatever the working directory.
- Secrets (key files, the LDAP bind password, the master key) are file paths,
  never inline values.
- ``[smime]`` is optional: without it the relay neither verifies, seals nor
  encrypts messages (``relay.started`` says so). Its per-peer tables
  (``[smime.peers."<domain>"]``) override the defaults for one domain; a
  leading dot matches every subdomain.
"""

from __future__ import annotations

import enum
import tomllib
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from directory.config import Backend, DirectoryConfig, LdapConfig
from relay.accounts import (
    DEFAULT_MAX_CODE_FAILURES,
    DEFAULT_MAX_FAILURE_DELAY,
    DEMO_MECHANISMS,
    PRODUCTION_MECHANISMS,
    AccountKind,
    Mechanism,
    MechanismPolicy,
)
from relay.notify import settings as notice
from relay.notify import texts as notice_texts
from relay.notify.settings import NoticeSettings, SmarthostSettings, SmsSettings
from relay.oauth import (
    DEFAULT_ALGORITHMS,
    DEFAULT_CLOCK_SKEW,
    DEFAULT_JWKS_CACHE_TTL,
    TokenRules,
)
from relay.patients import EmergencyNotice, PatientSettings
from relay.policy import SignatureAction
from relay.queue.schedule import (
    DEFAULT_DELAY_WARNING,
    DEFAULT_MAXIMAL_BACKOFF,
    DEFAULT_MINIMAL_BACKOFF,
    DEFAULT_QUEUE_LIFETIME,
    RetryPolicy,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

DEFAULT_CONFIG_PATH: Final = Path("conf/relay.toml")


class ConfigError(Exception):
    """The configuration is invalid; the message names the key."""


# DESIGN §4: 25 MB per message by default (the MSSanté patient limit).
DEFAULT_MAX_MESSAGE_SIZE: Final = 25 * 1024 * 1024
# Postfix's smtpd_timeout is 300 s; RFC 5321 §4.5.3.2 asks at least 5 minutes.
DEFAULT_SMTP_TIMEOUT: Final = 300.0
# A failed login waits this long before its reply (Postfix's smtpd_error_sleep_time
# is 1 s); tests set it to 0.
DEFAULT_AUTH_FAILURE_DELAY: Final = 1.0
# Failures before an account or an address is locked out for a while.
DEFAULT_AUTH_MAX_FAILURES: Final = 5
DEFAULT_AUTH_MAX_FAILURES_PER_PEER: Final = 20
DEFAULT_AUTH_LOCKOUT: Final = 900.0


@dataclass(frozen=True, slots=True, kw_only=True)
class RelaySettings:
    """The ``[relay]`` table."""

    data_dir: Path  # all state: directory file, spool, mailboxes, audit trail
    domain: str  # the operator's own mail domain (patients: patient.<domain>)
    # Mail domains whose mailboxes this relay holds; defaults to the domain and
    # patient.<domain>.
    local_domains: tuple[str, ...] = ()
    hostname: str = "localhost"  # announced in the greeting and Received headers
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    master_key_file: Path | None = field(default=None, repr=False)

    @property
    def patient_domain(self) -> str:
        return f"patient.{self.domain}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Listener:
    """One TCP listener; port 0 binds an ephemeral port (tests)."""

    host: str
    port: int
    enabled: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSettings:
    """The ``[tls]`` table: the relay's certificate and the anchors it trusts."""

    cert_file: Path  # PEM chain: the server certificate first
    key_file: Path = field(repr=False)
    # Anchors for operator client certificates on the MX port (IGC-Santé roots).
    trust_anchors_file: Path | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OAuthSettings:
    """The ``[auth.oauth]`` table: the OpenID Connect issuer of bearer tokens."""

    issuer: str
    audience: str
    claim: str = "sub"  # the claim matched against an account's external id
    clock_skew: float = DEFAULT_CLOCK_SKEW
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    jwks_file: Path | None = None  # exactly one of jwks_file, jwks_url
    jwks_url: str | None = None
    jwks_cache_ttl: float = DEFAULT_JWKS_CACHE_TTL

    @property
    def rules(self) -> TokenRules:
        return TokenRules(
            issuer=self.issuer,
            audience=self.audience,
            claim=self.claim,
            clock_skew=self.clock_skew,
            algorithms=self.algorithms,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthSettings:
    """The ``[auth]`` table: mechanisms per account kind, tokens, throttling."""

    # Production defaults forbid the main password for practitioner and
    # organisation accounts (relay.accounts.PRODUCTION_MECHANISMS); follows
    # ``[directory] production`` unless set.
    production: bool = False
    mechanisms: MechanismPolicy = DEMO_MECHANISMS
    oauth: OAuthSettings | None = None
    # The first failure waits failure_delay, each further one twice as long,
    # up to max_failure_delay.
    failure_delay: float = DEFAULT_AUTH_FAILURE_DELAY
    max_failure_delay: float = DEFAULT_MAX_FAILURE_DELAY
    max_failures: int = DEFAULT_AUTH_MAX_FAILURES
    max_failures_per_peer: int = DEFAULT_AUTH_MAX_FAILURES_PER_PEER
    lockout: float = DEFAULT_AUTH_LOCKOUT
    # argon2id cost of new password hashes (RFC 9106 §4 second recommended
    # option is t=3, m=64 MiB, p=4: argon2-cffi's defaults). Existing hashes
    # are upgraded at the next successful login.
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65536
    argon2_parallelism: int = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class SmtpSettings:
    """The ``[smtp]`` table: the three SMTP listeners."""

    submission: Listener = field(
        default_factory=lambda: Listener(host="127.0.0.1", port=587)
    )
    submissions: Listener = field(
        default_factory=lambda: Listener(host="127.0.0.1", port=465)
    )
    mx: Listener = field(default_factory=lambda: Listener(host="127.0.0.1", port=25))
    timeout: float = DEFAULT_SMTP_TIMEOUT
    # Processes accepting SMTP on the same ports (SO_REUSEPORT): the relay
    # itself and processes - 1 acceptors (relay.acceptor). One Python
    # process uses one core for its Python code; more processes use more.
    processes: int = 1


MAX_SMTP_PROCESSES: Final = 64

# RFC 3501 §5.4: an IMAP autologout timer is at least 30 minutes.
DEFAULT_IMAP_TIMEOUT: Final = 30 * 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ImapSettings:
    """The ``[imap]`` table: STARTTLS (143) and implicit TLS (993) listeners."""

    plain: Listener = field(
        default_factory=lambda: Listener(host="127.0.0.1", port=143)
    )
    implicit: Listener = field(
        default_factory=lambda: Listener(host="127.0.0.1", port=993)
    )
    timeout: float = DEFAULT_IMAP_TIMEOUT

    @classmethod
    def disabled(cls) -> ImapSettings:
        """No ``[imap]`` table: IMAP is not served (an SMTP-only relay)."""
        return cls(
            plain=Listener(host="127.0.0.1", port=143, enabled=False),
            implicit=Listener(host="127.0.0.1", port=993, enabled=False),
        )


class PatientReadReceipts(enum.StrEnum):
    """Who decides the MDN a patient's reading sends (RFC 8098 §2.1)."""

    ALWAYS = "always"  # the national patient space's behaviour
    PATIENT_CHOICE = "patient-choice"


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliverySettings:
    """The ``[delivery]`` table: outbound SMTP to other operators (issue 9).

    The client certificate and trust anchors default to ``[tls]``'s: an
    operator presents the certificate its MX serves.
    """

    enabled: bool = True
    port: int = 25  # the peers' MX port (RFC 5321 §4.5.4: 25)
    nameservers: tuple[str, ...] = ()  # empty: the system resolver
    dns_port: int = 53
    client_cert_file: Path | None = None
    client_key_file: Path | None = field(default=None, repr=False)
    trust_anchors_file: Path | None = None
    crl_files: tuple[Path, ...] = ()  # peers' certificates are checked against them
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    concurrency: int = 50
    destination_concurrency: int = 10
    connect_timeout: float = 30.0
    # RFC 5321 §4.5.3.2: minutes per command, 10 for the final reply.
    command_timeout: float = 300.0
    patient_read_receipts: PatientReadReceipts = PatientReadReceipts.ALWAYS


class EncryptionProfile(enum.StrEnum):
    """Key transport offered to a domain's recipients (DESIGN §6)."""

    MODERN = "modern"  # RSA-OAEP-SHA-256, AES-256-GCM
    COMPAT = "compat"  # RSA PKCS#1 v1.5, AES-256-CBC (older peer software)


class RevocationMode(enum.StrEnum):
    """pyhanko-certvalidator's revocation modes."""

    HARD_FAIL = "hard-fail"  # a certificate naming a CRL needs a current CRL
    SOFT_FAIL = "soft-fail"  # missing revocation data is accepted
    REQUIRE = "require"  # every certificate needs revocation data


@dataclass(frozen=True, slots=True, kw_only=True)
class SmimePeer:
    """What the relay does for one peer domain (or, as defaults, for all)."""

    seal_unsigned: bool
    encrypt: bool = True
    profile: EncryptionProfile = EncryptionProfile.MODERN
    invalid_signature: SignatureAction = SignatureAction.REFUSE


@dataclass(frozen=True, slots=True, kw_only=True)
class SmimeSettings:
    """The ``[smime]`` table: end-to-end protection applied by the relay."""

    trust_anchors_file: Path  # IGC-Santé roots and intermediates, PEM
    crl_files: tuple[Path, ...] = ()  # DER or PEM CRLs, re-read when they change
    revocation: RevocationMode = RevocationMode.HARD_FAIL
    seal_cert_file: Path | None = None  # the operator's S/MIME certificate (+ chain)
    seal_key_file: Path | None = field(default=None, repr=False)
    defaults: SmimePeer
    # (domain, settings); a domain starting with "." matches its subdomains.
    peers: tuple[tuple[str, SmimePeer], ...] = ()

    def for_address(self, address: str) -> SmimePeer:
        """The settings for the domain of ``address`` (or a bare domain)."""
        domain = address.rpartition("@")[2].lower()
        best: tuple[int, SmimePeer] | None = None
        for name, peer in self.peers:
            if name == domain:
                return peer
            longer = best is None or len(name) > best[0]
            if name.startswith(".") and domain.endswith(name) and longer:
                best = (len(name), peer)
        return best[1] if best is not None else self.defaults

    def describe(self) -> dict[str, object]:
        """What the ``relay.started`` audit record says about S/MIME."""
        return {
            "verify": True,
            "invalid_signature": self.defaults.invalid_signature.value,
            "seal_unsigned": self.defaults.seal_unsigned,
            "encrypt": self.defaults.encrypt,
            "profile": self.defaults.profile.value,
            "revocation": self.revocation.value,
            "peers": sorted(name for name, _ in self.peers),
        }


# DESIGN §7: traces kept 6 months (recommended); 183 days covers any 6 months.
DEFAULT_AUDIT_RETENTION_DAYS: Final = 183
# The monthly patient reports go out on this day of the month, from this hour
# (local time of audit.timezone), for the month before.
DEFAULT_REPORT_DAY: Final = 1
DEFAULT_REPORT_HOUR: Final = 6
# The monthly task looks at the clock (and at on-demand requests) this often.
DEFAULT_REPORT_CHECK_INTERVAL: Final = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditSettings:
    """The ``[audit]`` table: retention of the trail, the patients' reports."""

    # ``mssante audit purge`` removes records older than this by default.
    retention_days: int = DEFAULT_AUDIT_RETENTION_DAYS
    # Send every patient with a mailbox the previous month's activity report
    # (from the month of the trail's first record on).
    monthly_reports: bool = True
    report_day: int = DEFAULT_REPORT_DAY  # 1-28: every month has it
    report_hour: int = DEFAULT_REPORT_HOUR  # 0-23
    # Months, dates and hours in the reports are of this zone (IANA name).
    timezone: str = "Europe/Paris"
    check_interval: float = DEFAULT_REPORT_CHECK_INTERVAL


# Enrolment and recovery (issue 10): an activation code lives 14 days (a
# postal letter's delay and then some), a recovery code one day; an account
# unused for a year is reported for closure.
DEFAULT_ACTIVATION_CODE_DAYS: Final = 14.0
DEFAULT_RECOVERY_CODE_HOURS: Final = 24.0
DEFAULT_INACTIVE_DAYS: Final = 365
# Recovery requests: per login and per address within the window.
DEFAULT_RECOVER_PER_LOGIN: Final = 3
DEFAULT_RECOVER_PER_PEER: Final = 20
DEFAULT_RECOVER_WINDOW: Final = 3600.0
# Wrong codes from one address before it is refused for code_lockout seconds.
DEFAULT_CODE_FAILURES_PER_PEER: Final = 20
DEFAULT_CODE_LOCKOUT: Final = 900.0


@dataclass(frozen=True, slots=True, kw_only=True)
class EnrolmentSettings:
    """The ``[enrolment]`` table: one-time codes and the inactive report."""

    activation_code_days: float = DEFAULT_ACTIVATION_CODE_DAYS
    recovery_code_hours: float = DEFAULT_RECOVERY_CODE_HOURS
    max_code_failures: int = DEFAULT_MAX_CODE_FAILURES
    inactive_days: int = DEFAULT_INACTIVE_DAYS


@dataclass(frozen=True, slots=True, kw_only=True)
class WebSettings:
    """The ``[web]`` table: the HTTPS listener for activation and recovery.

    TLS comes from ``[tls]`` (the relay's certificate, the relay's versions
    and suites). No table: not served.
    """

    listener: Listener = field(
        default_factory=lambda: Listener(host="127.0.0.1", port=443, enabled=False)
    )
    # The address patients are told to visit; default https://<hostname>[:port].
    public_url: str = ""
    recover_per_login: int = DEFAULT_RECOVER_PER_LOGIN
    recover_per_peer: int = DEFAULT_RECOVER_PER_PEER
    recover_window: float = DEFAULT_RECOVER_WINDOW
    code_failures_per_peer: int = DEFAULT_CODE_FAILURES_PER_PEER
    code_lockout: float = DEFAULT_CODE_LOCKOUT


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    relay: RelaySettings
    directory: DirectoryConfig = field(default_factory=DirectoryConfig)
    tls: TlsSettings | None = None  # required by ``serve``, not by admin commands
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    imap: ImapSettings = field(default_factory=ImapSettings.disabled)
    auth: AuthSettings = field(default_factory=AuthSettings)
    smime: SmimeSettings | None = None  # None: no verification, sealing, encryption
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    patients: PatientSettings = field(default_factory=PatientSettings)
    audit: AuditSettings = field(default_factory=AuditSettings)
    notices: NoticeSettings = field(default_factory=NoticeSettings)
    enrolment: EnrolmentSettings = field(default_factory=EnrolmentSettings)
    web: WebSettings = field(default_factory=WebSettings)
    source: Path | None = None  # the file it was read from

    @property
    def master_key_file(self) -> Path:
        return self.relay.master_key_file or self.relay.data_dir / "master.key"


class _Table:
    """Typed, key-checked access to one TOML table."""

    def __init__(self, name: str, data: Mapping[str, Any], base: Path) -> None:
        self.name = name
        self._data = data
        self._base = base
        self._used: set[str] = set()

    def _key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def _get(self, key: str, kind: type[Any], default: Any) -> Any:  # noqa: ANN401
        self._used.add(key)
        if key not in self._data:
            if default is _REQUIRED:
                raise ConfigError(f"{self._key(key)}: missing (required)")
            return default
        value = self._data[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(
                f"{self._key(key)}: expected {kind.__name__}, got {type(value).__name__} {value!r}"
            )
        return value

    def text(self, key: str, default: Any = None) -> str:  # noqa: ANN401
        value: str = self._get(key, str, _REQUIRED if default is None else default)
        return value

    def flag(self, key: str, default: bool) -> bool:
        value: bool = self._get(key, bool, default)
        return value

    def number(self, key: str, default: float) -> float:
        value: float = self._get(key, float, default)
        if value < 0:
            raise ConfigError(f"{self._key(key)}: must not be negative")
        return value

    def integer(self, key: str, default: int, *, minimum: int = 0) -> int:
        value: int = self._get(key, int, default)
        if value < minimum:
            raise ConfigError(f"{self._key(key)}: must be at least {minimum}")
        return value

    def texts(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self._get(key, list, list(default))
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{self._key(key)}: expected a list of strings")
        return tuple(value)

    def optional_path(self, key: str) -> Path | None:
        if key not in self._data:
            self._used.add(key)
            return None
        return self.path(key)

    def path(self, key: str, default: Path | None = None) -> Path:
        raw: str = self._get(key, str, _REQUIRED if default is None else str(default))
        p = Path(raw).expanduser()
        return p if p.is_absolute() else (self._base / p).resolve()

    def choice(self, key: str, choices: type[_E], default: _E) -> _E:
        raw = self.text(key, default.value)
        try:
            return choices(raw)
        except ValueError:
            allowed = ", ".join(c.value for c in choices)
            raise ConfigError(
                f"{self._key(key)}: {raw!r} is not one of {allowed}"
            ) from None

    def paths(self, key: str) -> tuple[Path, ...]:
        return tuple(
            p
            if (p := Path(raw).expanduser()).is_absolute()
            else (self._base / p).resolve()
            for raw in self.texts(key, ())
        )

    def names(self) -> list[str]:
        return list(self._data)

    def table(self, key: str, *, required: bool = False) -> _Table | None:
        self._used.add(key)
        if key not in self._data:
            if required:
                raise ConfigError(f"{self._key(key)}: missing table (required)")
            return None
        value = self._data[key]
        if not isinstance(value, dict):
            raise ConfigError(f"{self._key(key)}: expected a table")
        return _Table(self._key(key), value, self._base)

    def done(self) -> None:
        unknown = sorted(set(self._data) - self._used)
        if unknown:
            raise ConfigError(f"{self._key(unknown[0])}: unknown key")


_REQUIRED: Final[Any] = object()
_E = TypeVar("_E", bound=enum.StrEnum)


def _ldap(t: _Table) -> LdapConfig:
    uri = t.text("uri")
    if not uri.startswith(("ldap://", "ldaps://")):
        raise ConfigError(
            f"{t.name}.uri: must start with ldap:// (StartTLS) or ldaps://"
        )
    cfg = LdapConfig(
        uri=uri,
        base_dn=t.text("base_dn"),
        bind_dn=t.text("bind_dn"),
        bind_password_file=t.path("bind_password_file"),
        ca_file=t.path("ca_file"),
        timeout=t.number("timeout", 5.0),
    )
    t.done()
    return cfg


def _directory(t: _Table | None, data_dir: Path) -> DirectoryConfig:
    if t is None:
        return DirectoryConfig(sqlite_path=data_dir / "directory.sqlite3")
    backend = t.choice("backend", Backend, Backend.SQLITE)
    sqlite_path = t.path("sqlite_path", data_dir / "directory.sqlite3")
    production = t.flag("production", False)
    ldap_table = t.table("ldap", required=backend is Backend.LDAP)
    ldap = _ldap(ldap_table) if ldap_table is not None else None
    t.done()
    return DirectoryConfig(
        backend=backend, sqlite_path=sqlite_path, ldap=ldap, production=production
    )


def _relay(t: _Table) -> RelaySettings:
    domain = t.text("domain").lower()
    local = t.texts("local_domains", (domain, f"patient.{domain}"))
    settings = RelaySettings(
        data_dir=t.path("data_dir"),
        domain=domain,
        local_domains=tuple(d.lower() for d in local),
        hostname=t.text("hostname", "localhost"),
        max_message_size=t.integer(
            "max_message_size", DEFAULT_MAX_MESSAGE_SIZE, minimum=1024
        ),
        master_key_file=t.optional_path("master_key_file"),
    )
    t.done()
    return settings


def _tls(t: _Table | None) -> TlsSettings | None:
    if t is None:
        return None
    settings = TlsSettings(
        cert_file=t.path("cert_file"),
        key_file=t.path("key_file"),
        trust_anchors_file=t.optional_path("trust_anchors_file"),
    )
    t.done()
    return settings


def _listener(t: _Table | None, default: Listener) -> Listener:
    if t is None:
        return default
    listener = Listener(
        host=t.text("host", default.host),
        port=t.integer("port", default.port),
        enabled=t.flag("enabled", default.enabled),
    )
    if listener.port > 65535:
        raise ConfigError(f"{t.name}.port: {listener.port} is not a TCP port")
    t.done()
    return listener


def _smtp(t: _Table | None) -> SmtpSettings:
    default = SmtpSettings()
    if t is None:
        return default
    settings = SmtpSettings(
        submission=_listener(t.table("submission"), default.submission),
        submissions=_listener(t.table("submissions"), default.submissions),
        mx=_listener(t.table("mx"), default.mx),
        timeout=t.number("timeout", DEFAULT_SMTP_TIMEOUT),
        processes=t.integer("processes", 1, minimum=1),
    )
    if settings.processes > MAX_SMTP_PROCESSES:
        raise ConfigError(f"smtp.processes: at most {MAX_SMTP_PROCESSES}")
    t.done()
    return settings


def _imap(t: _Table | None) -> ImapSettings:
    if t is None:
        return ImapSettings.disabled()
    default = ImapSettings()
    settings = ImapSettings(
        plain=_listener(t.table("plain"), default.plain),
        implicit=_listener(t.table("implicit"), default.implicit),
        timeout=t.number("timeout", DEFAULT_IMAP_TIMEOUT),
    )
    t.done()
    return settings


_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)


def _oauth(t: _Table | None) -> OAuthSettings | None:
    if t is None:
        return None
    algorithms = t.texts("algorithms", DEFAULT_ALGORITHMS)
    bad = [a for a in algorithms if a not in _ALGORITHMS]
    if bad or not algorithms:
        raise ConfigError(
            f"{t.name}.algorithms: {bad[0] if bad else 'empty'!r} is not an"
            f" asymmetric JWS algorithm ({', '.join(sorted(_ALGORITHMS))})"
        )
    jwks_file = t.optional_path("jwks_file")
    jwks_url = t.text("jwks_url", "") or None
    if (jwks_file is None) == (jwks_url is None):
        raise ConfigError(
            f"{t.name}.jwks_file: give exactly one of jwks_file, jwks_url"
        )
    if jwks_url is not None and not jwks_url.startswith("https://"):
        raise ConfigError(f"{t.name}.jwks_url: must start with https://")
    settings = OAuthSettings(
        issuer=t.text("issuer"),
        audience=t.text("audience"),
        claim=t.text("claim", "sub"),
        clock_skew=t.number("clock_skew", DEFAULT_CLOCK_SKEW),
        algorithms=algorithms,
        jwks_file=jwks_file,
        jwks_url=jwks_url,
        jwks_cache_ttl=t.number("jwks_cache_ttl", DEFAULT_JWKS_CACHE_TTL),
    )
    t.done()
    return settings


def _mechanisms(t: _Table | None, default: MechanismPolicy) -> MechanismPolicy:
    if t is None:
        return default
    overrides: dict[AccountKind, list[Mechanism]] = {}
    for kind in AccountKind:
        if kind.value not in t.names():
            continue
        names = t.texts(kind.value, ())
        try:
            overrides[kind] = [Mechanism(n) for n in names]
        except ValueError:
            allowed = ", ".join(m.value for m in Mechanism)
            raise ConfigError(
                f"{t.name}.{kind.value}: mechanisms are among {allowed}"
            ) from None
    t.done()
    return default.replace(overrides)


def _auth(t: _Table | None, *, directory_production: bool) -> AuthSettings:
    if t is None:
        return AuthSettings(
            production=directory_production,
            mechanisms=PRODUCTION_MECHANISMS
            if directory_production
            else DEMO_MECHANISMS,
        )
    production = t.flag("production", directory_production)
    settings = AuthSettings(
        production=production,
        mechanisms=_mechanisms(
            t.table("mechanisms"),
            PRODUCTION_MECHANISMS if production else DEMO_MECHANISMS,
        ),
        oauth=_oauth(t.table("oauth")),
        failure_delay=t.number("failure_delay", DEFAULT_AUTH_FAILURE_DELAY),
        max_failure_delay=t.number("max_failure_delay", DEFAULT_MAX_FAILURE_DELAY),
        max_failures=t.integer("max_failures", DEFAULT_AUTH_MAX_FAILURES, minimum=1),
        max_failures_per_peer=t.integer(
            "max_failures_per_peer", DEFAULT_AUTH_MAX_FAILURES_PER_PEER, minimum=1
        ),
        lockout=t.number("lockout", DEFAULT_AUTH_LOCKOUT),
        argon2_time_cost=t.integer("argon2_time_cost", 3, minimum=1),
        argon2_memory_kib=t.integer("argon2_memory_kib", 65536, minimum=8),
        argon2_parallelism=t.integer("argon2_parallelism", 4, minimum=1),
    )
    t.done()
    return settings


def _smime_peer(t: _Table, defaults: SmimePeer) -> SmimePeer:
    peer = SmimePeer(
        seal_unsigned=t.flag("seal_unsigned", defaults.seal_unsigned),
        encrypt=t.flag("encrypt", defaults.encrypt),
        profile=t.choice("profile", EncryptionProfile, defaults.profile),
        invalid_signature=t.choice(
            "invalid_signature", SignatureAction, defaults.invalid_signature
        ),
    )
    t.done()
    return peer


def _smime(t: _Table | None) -> SmimeSettings | None:
    if t is None:
        return None
    seal_cert = t.optional_path("seal_cert_file")
    seal_key = t.optional_path("seal_key_file")
    if (seal_cert is None) != (seal_key is None):
        missing = "seal_key_file" if seal_key is None else "seal_cert_file"
        raise ConfigError(f"{t.name}.{missing}: missing (the seal needs both files)")
    defaults = SmimePeer(
        # Sealing is on by default once the operator's credential is configured.
        seal_unsigned=t.flag("seal_unsigned", seal_cert is not None),
        encrypt=t.flag("encrypt", True),
        profile=t.choice("profile", EncryptionProfile, EncryptionProfile.MODERN),
        invalid_signature=t.choice(
            "invalid_signature", SignatureAction, SignatureAction.REFUSE
        ),
    )
    peers: list[tuple[str, SmimePeer]] = []
    peers_table = t.table("peers")
    if peers_table is not None:
        for domain in peers_table.names():
            peer_table = peers_table.table(domain)
            assert peer_table is not None  # noqa: S101 - the key exists
            if not domain or "@" in domain or domain != domain.strip():
                raise ConfigError(f"{peer_table.name}: not a mail domain")
            peers.append((domain.lower(), _smime_peer(peer_table, defaults)))
        peers_table.done()
    settings = SmimeSettings(
        trust_anchors_file=t.path("trust_anchors_file"),
        crl_files=t.paths("crl_files"),
        revocation=t.choice("revocation", RevocationMode, RevocationMode.HARD_FAIL),
        seal_cert_file=seal_cert,
        seal_key_file=seal_key,
        defaults=defaults,
        peers=tuple(peers),
    )
    sealing = [name for name, p in peers if p.seal_unsigned]
    if seal_cert is None and (defaults.seal_unsigned or sealing):
        where = (
            f"{t.name}.seal_unsigned"
            if defaults.seal_unsigned
            else f'{t.name}.peers."{sealing[0]}".seal_unsigned'
        )
        raise ConfigError(f"{where}: sealing needs seal_cert_file and seal_key_file")
    t.done()
    return settings


def _delivery(t: _Table | None) -> DeliverySettings:
    if t is None:
        return DeliverySettings()
    try:
        retry = RetryPolicy(
            minimal_backoff=t.number("minimal_backoff", DEFAULT_MINIMAL_BACKOFF),
            maximal_backoff=t.number("maximal_backoff", DEFAULT_MAXIMAL_BACKOFF),
            lifetime=t.number("queue_lifetime", DEFAULT_QUEUE_LIFETIME),
            delay_warning=t.number("delay_warning", DEFAULT_DELAY_WARNING),
        )
    except ValueError as exc:
        raise ConfigError(f"{t.name}.{exc}") from None
    settings = DeliverySettings(
        enabled=t.flag("enabled", True),
        port=t.integer("port", 25, minimum=1),
        nameservers=t.texts("nameservers", ()),
        dns_port=t.integer("dns_port", 53, minimum=1),
        client_cert_file=t.optional_path("client_cert_file"),
        client_key_file=t.optional_path("client_key_file"),
        trust_anchors_file=t.optional_path("trust_anchors_file"),
        crl_files=t.paths("crl_files"),
        retry=retry,
        concurrency=t.integer("concurrency", 50, minimum=1),
        destination_concurrency=t.integer("destination_concurrency", 10, minimum=1),
        connect_timeout=t.number("connect_timeout", 30.0),
        command_timeout=t.number("command_timeout", 300.0),
        patient_read_receipts=t.choice(
            "patient_read_receipts", PatientReadReceipts, PatientReadReceipts.ALWAYS
        ),
    )
    for key, port in (("port", settings.port), ("dns_port", settings.dns_port)):
        if port > 65535:
            raise ConfigError(f"{t.name}.{key}: {port} is not a port")
    if (settings.client_cert_file is None) != (settings.client_key_file is None):
        raise ConfigError(
            f"{t.name}.client_key_file: client_cert_file and client_key_file go together"
        )
    t.done()
    return settings


def _emergency(t: _Table, default: EmergencyNotice) -> EmergencyNotice:
    enabled = t.flag("emergency_notice", default.enabled)
    path = t.optional_path("emergency_notice_file")
    if path is None:
        return EmergencyNotice(enabled=enabled, text=default.text)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{t.name}.emergency_notice_file: cannot read {path}: {exc}"
        ) from None
    if not text.strip():
        raise ConfigError(f"{t.name}.emergency_notice_file: {path} is empty")
    return EmergencyNotice(enabled=enabled, text=text)


def _patients(t: _Table | None) -> PatientSettings:
    if t is None:
        return PatientSettings()
    emergency = _emergency(t, EmergencyNotice())
    overrides: list[tuple[str, EmergencyNotice]] = []
    table = t.table("overrides")
    if table is not None:
        for key in table.names():
            entry = table.table(key)
            assert entry is not None  # noqa: S101 - the key exists
            overrides.append((key, _emergency(entry, emergency)))
            entry.done()
        table.done()
    t.done()
    return PatientSettings(emergency=emergency, overrides=tuple(overrides))


def _audit(t: _Table | None) -> AuditSettings:
    if t is None:
        return AuditSettings()
    settings = AuditSettings(
        retention_days=t.integer(
            "retention_days", DEFAULT_AUDIT_RETENTION_DAYS, minimum=1
        ),
        monthly_reports=t.flag("monthly_reports", True),
        report_day=t.integer("report_day", DEFAULT_REPORT_DAY, minimum=1),
        report_hour=t.integer("report_hour", DEFAULT_REPORT_HOUR),
        timezone=t.text("timezone", "Europe/Paris"),
        check_interval=t.number("check_interval", DEFAULT_REPORT_CHECK_INTERVAL),
    )
    if settings.report_day > 28:
        raise ConfigError(f"{t.name}.report_day: must be 1 to 28 (every month has it)")
    if settings.report_hour > 23:
        raise ConfigError(f"{t.name}.report_hour: must be 0 to 23")
    if settings.check_interval <= 0:
        raise ConfigError(f"{t.name}.check_interval: must be positive")
    try:
        zoneinfo.ZoneInfo(settings.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"{t.name}.timezone: {settings.timezone!r} is not a known time zone"
        ) from None
    t.done()
    return settings


def _enrolment(t: _Table | None) -> EnrolmentSettings:
    if t is None:
        return EnrolmentSettings()
    settings = EnrolmentSettings(
        activation_code_days=t.number(
            "activation_code_days", DEFAULT_ACTIVATION_CODE_DAYS
        ),
        recovery_code_hours=t.number(
            "recovery_code_hours", DEFAULT_RECOVERY_CODE_HOURS
        ),
        max_code_failures=t.integer(
            "max_code_failures", DEFAULT_MAX_CODE_FAILURES, minimum=1
        ),
        inactive_days=t.integer("inactive_days", DEFAULT_INACTIVE_DAYS, minimum=1),
    )
    for key in ("activation_code_days", "recovery_code_hours"):
        if getattr(settings, key) <= 0:
            raise ConfigError(f"{t.name}.{key}: must be positive")
    t.done()
    return settings


def _port(t: _Table, default: int) -> int:
    port = t.integer("port", default, minimum=1)
    if port > 65535:
        raise ConfigError(f"{t.name}.port: {port} is not a TCP port")
    return port


def _https_url(t: _Table, key: str, *, required: bool) -> str:
    url = t.text(key) if required else t.text(key, "")
    if url and (not url.startswith("https://") or any(c.isspace() for c in url)):
        raise ConfigError(f"{t.name}.{key}: must be an https:// address")
    return url


def _smarthost(t: _Table | None) -> SmarthostSettings | None:
    if t is None:
        return None
    settings = SmarthostSettings(
        host=t.text("host"),
        port=_port(t, notice.DEFAULT_SMARTHOST_PORT),
        starttls=t.flag("starttls", True),
        ca_file=t.optional_path("ca_file"),
        username=t.text("username", ""),
        password_file=t.optional_path("password_file"),
        from_address=t.text("from_address"),
        envelope_from=t.text("envelope_from", ""),
        timeout=t.number("timeout", notice.DEFAULT_CHANNEL_TIMEOUT),
    )
    for key in ("from_address", "envelope_from"):
        value = getattr(settings, key)
        if value and (value.count("@") != 1 or any(c in value for c in " <>\r\n")):
            raise ConfigError(f"{t.name}.{key}: {value!r} is not a mail address")
    if bool(settings.username) != (settings.password_file is not None):
        raise ConfigError(
            f"{t.name}.password_file: username and password_file go together"
        )
    if settings.username and not settings.starttls:
        # DESIGN §6: no plaintext AUTH.
        raise ConfigError(f"{t.name}.starttls: AUTH is only sent over TLS")
    t.done()
    return settings


def _sms(t: _Table | None) -> SmsSettings | None:
    if t is None:
        return None
    settings = SmsSettings(
        url=_https_url(t, "url", required=True),
        token_file=t.path("token_file"),
        ca_file=t.optional_path("ca_file"),
        sender=t.text("sender", ""),
        timeout=t.number("timeout", notice.DEFAULT_CHANNEL_TIMEOUT),
    )
    t.done()
    return settings


def _notices(t: _Table | None, relay: RelaySettings) -> NoticeSettings:
    if t is None:
        return NoticeSettings()
    settings = NoticeSettings(
        enabled=t.flag("enabled", True),
        min_interval=t.number("min_interval", notice.DEFAULT_MIN_INTERVAL),
        expiry=t.number("expiry", notice.DEFAULT_EXPIRY),
        minimal_backoff=t.number("minimal_backoff", notice.DEFAULT_MINIMAL_BACKOFF),
        maximal_backoff=t.number("maximal_backoff", notice.DEFAULT_MAXIMAL_BACKOFF),
        read_url=_https_url(t, "read_url", required=False),
        imap_host=t.text("imap_host", relay.hostname),
        access_report_url=_https_url(t, "access_report_url", required=False),
        smarthost=_smarthost(t.table("smarthost")),
        sms=_sms(t.table("sms")),
    )
    if settings.expiry <= settings.min_interval:
        raise ConfigError(f"{t.name}.expiry: must be longer than min_interval")
    if settings.maximal_backoff < settings.minimal_backoff:
        raise ConfigError(f"{t.name}.maximal_backoff: less than minimal_backoff")
    if settings.enabled and settings.smarthost is None and settings.sms is None:
        raise ConfigError(
            f"{t.name}.smarthost: notices need a channel ([notices.smarthost]"
            " or [notices.sms]), or enabled = false"
        )
    # The fixed texts are built once here: an SMS that would not fit fails now.
    try:
        notice_texts.new_message(
            read_url=settings.read_url, imap_host=settings.imap_host
        )
    except ValueError as exc:
        raise ConfigError(f"{t.name}.read_url: {exc}") from None
    try:
        notice_texts.break_glass(access_report_url=settings.access_report_url)
    except ValueError as exc:
        raise ConfigError(f"{t.name}.access_report_url: {exc}") from None
    t.done()
    return settings


def _web(t: _Table | None) -> WebSettings:
    if t is None:
        return WebSettings()
    listener = Listener(
        host=t.text("host", "127.0.0.1"),
        port=t.integer("port", 443),
        enabled=t.flag("enabled", True),
    )
    if listener.port > 65535:
        raise ConfigError(f"{t.name}.port: {listener.port} is not a TCP port")
    public_url = t.text("public_url", "") or ""
    if public_url and not public_url.startswith("https://"):
        raise ConfigError(f"{t.name}.public_url: must start with https://")
    settings = WebSettings(
        listener=listener,
        public_url=public_url.rstrip("/"),
        recover_per_login=t.integer(
            "recover_per_login", DEFAULT_RECOVER_PER_LOGIN, minimum=1
        ),
        recover_per_peer=t.integer(
            "recover_per_peer", DEFAULT_RECOVER_PER_PEER, minimum=1
        ),
        recover_window=t.number("recover_window", DEFAULT_RECOVER_WINDOW),
        code_failures_per_peer=t.integer(
            "code_failures_per_peer", DEFAULT_CODE_FAILURES_PER_PEER, minimum=1
        ),
        code_lockout=t.number("code_lockout", DEFAULT_CODE_LOCKOUT),
    )
    t.done()
    return settings


def parse(data: Mapping[str, Any], base: Path, source: Path | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML; paths relative to ``base``."""
    root = _Table("", data, base)
    relay_table = root.table("relay", required=True)
    assert relay_table is not None  # noqa: S101 - required=True
    relay = _relay(relay_table)
    directory = _directory(root.table("directory"), relay.data_dir)
    tls = _tls(root.table("tls"))
    smtp = _smtp(root.table("smtp"))
    imap = _imap(root.table("imap"))
    auth = _auth(root.table("auth"), directory_production=directory.production)
    smime = _smime(root.table("smime"))
    delivery = _delivery(root.table("delivery"))
    patients = _patients(root.table("patients"))
    audit = _audit(root.table("audit"))
    notices = _notices(root.table("notices"), relay)
    enrolment = _enrolment(root.table("enrolment"))
    web = _web(root.table("web"))
    root.done()
    return Config(
        relay=relay,
        directory=directory,
        tls=tls,
        smtp=smtp,
        imap=imap,
        auth=auth,
        smime=smime,
        delivery=delivery,
        patients=patients,
        audit=audit,
        notices=notices,
        enrolment=enrolment,
        web=web,
        source=source,
    )


def load(path: Path) -> Config:
    """Read and validate a config file."""
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse(data, path.resolve().parent, source=path)
