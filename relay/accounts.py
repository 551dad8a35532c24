"""Accounts: who may log in to the relay, with what secret, for which mailboxes.

Owns: ``<data_dir>/accounts.sqlite3`` (logins, argon2id password hashes,
per-device app passwords, the external id a bearer token names, the
mailboxes each login owns, lock state), the in-memory login throttle, the
mechanisms each account kind may use (:class:`MechanismPolicy`) and the
:class:`Authenticator` that SMTP AUTH and IMAP LOGIN/AUTHENTICATE share.

What must stay true:

- A password is stored only as an argon2id hash (RFC 9106, argon2-cffi's
  defaults); it is never logged, never returned, never compared in clear.
- :meth:`AccountStore.authenticate` takes the same time whether the login
  exists or not (an unknown login is checked against a dummy hash), so the
  reply timing does not reveal which logins exist. Only a login and
  password verified in the last minutes answer faster (the verification
  cache), which tells nothing to someone who does not hold the password.
- An account owns mailboxes (its own PER box, a patient's box, an APP box).
  What else it may send as (delegations, proxy grants) lives in the trust
  directory and is decided by :mod:`relay.policy`.
- Every write is one transaction. The store is safe from several threads.
- The throttle counts failures per login and per peer address; past the limit
  the login or the address is refused for ``lockout`` seconds, whatever the
  password (Postfix's anvil and Dovecot's auth penalty do the same). Each
  failure waits ``base_delay * 2**(n-1)`` seconds (n: recent failures, capped
  at ``max_delay``) before its reply; tests set the base to 0.
- An app password is generated (never chosen), shown once, stored as an
  argon2id hash under a device name; it works wherever the account kind
  allows :attr:`Mechanism.APP_PASSWORD`, even where the main password is
  forbidden, and revoking it ends its use at once (also for cached logins).
- Every authentication decision, whatever the mechanism and protocol, is one
  ``auth.succeeded`` / ``auth.failed`` record (plus ``auth.locked`` when a
  lockout starts or refuses), written by :class:`Authenticator`.
- A one-time code (enrolment activation, password recovery) is stored only as
  a SHA-256 digest bound to its login and purpose; it is 80 random bits, so a
  fast hash suffices (argon2 protects guessable human passwords). At most one
  code per login and purpose lives at a time: issuing one voids the previous
  one. It works once, before its expiry, and ``max_failures`` wrong tries void
  it. Checking it and setting the new password are one transaction.
- The last successful login of an account is written at most once per
  account per UTC day (an in-memory note of who was written today, and an
  ``UPDATE`` that changes nothing when another process already wrote).
"""

from __future__ import annotations

import asyncio
import collections
import enum
import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from directory.errors import DirectoryError
from directory.model import BalType, Status
from relay.audit import AuditEvent
from relay.oauth import (
    KeysUnavailableError,
    TokenProblem,
    TokenRefusedError,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from pathlib import Path

    from directory.protocol import Directory
    from relay.audit import AuditTrail
    from relay.config import Config
    from relay.oauth import BearerResponse, TokenVerifier
    from relay.tls import PeerCertificate

ACCOUNTS_FILE_NAME: Final = "accounts.sqlite3"
# The seed policy (issue 6 refines it): 12 characters mixing letters, digits
# and symbols, not containing the login.
MIN_PASSWORD_LENGTH: Final = 12
# Dovecot's auth_cache_ttl defaults to one hour; we keep verified logins for
# 15 minutes, for at most this many logins.
DEFAULT_AUTH_CACHE_TTL: Final = 900.0
DEFAULT_AUTH_CACHE_SIZE: Final = 10_000
# App passwords: 16 characters from 32 letters and digits (80 bits), shown in
# groups of four; a device list stays short.
APP_PASSWORD_GROUPS: Final = 4
APP_PASSWORD_ALPHABET: Final = "abcdefghijkmnpqrstuvwxyz23456789"  # noqa: S105
MAX_APP_PASSWORDS: Final = 20
# The longest wait before a failed login's reply, however many failures.
DEFAULT_MAX_FAILURE_DELAY: Final = 30.0
# One-time codes: 16 symbols of Crockford's base32 (80 bits), shown in groups
# of four: no I, L, O or U to misread; typed in any case, with or without
# dashes (https://www.crockford.com/base32.html).
CODE_ALPHABET: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
CODE_LENGTH: Final = 16
CODE_GROUP: Final = 4
# Wrong tries before a code is void (then a new one must be issued).
DEFAULT_MAX_CODE_FAILURES: Final = 5
_DAY: Final = 86_400


class AccountError(Exception):
    """Root of account errors; the message names the field."""


class AccountExistsError(AccountError):
    pass


class AccountNotFoundError(AccountError):
    pass


class WeakPasswordError(AccountError):
    pass


class AppPasswordError(AccountError):
    """No such app password, a duplicate device name, or too many."""


class CodePurpose(enum.StrEnum):
    """What a one-time code opens."""

    ACTIVATION = "activation"  # sets the first password of an enrolled account
    RECOVERY = "recovery"  # replaces a lost password


class CodeResult(enum.Enum):
    """What checking a one-time code did."""

    REDEEMED = "redeemed"  # right: the password is set, the code consumed
    WRONG = "wrong"  # a wrong try, counted
    VOIDED = "voided"  # a wrong try that reached the limit: the code is gone
    EXPIRED = "expired"  # past its expiry: the code is gone
    ABSENT = "absent"  # no such code (never issued, used, voided; or no account)


@dataclass(frozen=True, slots=True, kw_only=True)
class OneTimeCode:
    """A code just issued: shown or sent once, never stored in clear."""

    login: str
    purpose: CodePurpose
    code: str = field(repr=False)
    expires: float


@dataclass(frozen=True, slots=True, kw_only=True)
class AccountUsage:
    """When an account was made, opened and last used (epoch seconds)."""

    login: str
    kind: AccountKind
    created: float
    activated: float | None  # first password set; None: never activated
    last_login: float | None  # None: never logged in (since recorded)
    locked: bool


class AccountKind(enum.StrEnum):
    PRACTITIONER = "practitioner"
    STAFF = "staff"  # non-RPPS staff using mailboxes by delegation
    PATIENT = "patient"
    PROXY = "proxy"  # a patient's caregiver or legal representative
    APPLICATION = "application"  # practice software with an APP mailbox


class Mechanism(enum.StrEnum):
    """How an account proves who it is (SASL names in :data:`SASL_MECHANISMS`)."""

    PASSWORD = "password"  # noqa: S105 - the main password: PLAIN, LOGIN, IMAP LOGIN
    APP_PASSWORD = "app-password"  # noqa: S105 - a per-device password, same commands
    OAUTH = "oauth"  # a bearer token: OAUTHBEARER (RFC 7628), XOAUTH2
    EXTERNAL = "external"  # the TLS client certificate: SASL EXTERNAL


SASL_MECHANISMS: Final = {
    Mechanism.PASSWORD: ("PLAIN", "LOGIN"),
    Mechanism.APP_PASSWORD: ("PLAIN", "LOGIN"),
    Mechanism.OAUTH: ("OAUTHBEARER", "XOAUTH2"),
    Mechanism.EXTERNAL: ("EXTERNAL",),
}

_ALL_SECRETS: Final = frozenset(
    {Mechanism.PASSWORD, Mechanism.APP_PASSWORD, Mechanism.OAUTH}
)


@dataclass(frozen=True, slots=True)
class MechanismPolicy:
    """Which mechanisms each account kind may use (``[auth.mechanisms]``)."""

    allowed: tuple[tuple[AccountKind, frozenset[Mechanism]], ...]

    @classmethod
    def of(cls, table: Mapping[AccountKind, Iterable[Mechanism]]) -> MechanismPolicy:
        return cls(tuple((k, frozenset(table.get(k, ()))) for k in AccountKind))

    def for_kind(self, kind: AccountKind) -> frozenset[Mechanism]:
        for k, mechanisms in self.allowed:
            if k is kind:
                return mechanisms
        return frozenset()

    def allows(self, kind: AccountKind, mechanism: Mechanism) -> bool:
        return mechanism in self.for_kind(kind)

    @property
    def uses(self) -> frozenset[Mechanism]:
        """The mechanisms some account kind may use."""
        return frozenset().union(*(m for _, m in self.allowed))

    def replace(
        self, overrides: Mapping[AccountKind, Iterable[Mechanism]]
    ) -> MechanismPolicy:
        table = {k: overrides.get(k, m) for k, m in self.allowed}
        return MechanismPolicy.of(table)

    def describe(self) -> dict[str, list[str]]:
        return {k.value: sorted(m.value for m in ms) for k, ms in self.allowed}


# The local, demo-grade mode: passwords for everyone, as the seeds use them.
# EXTERNAL is opt-in here (``[auth.mechanisms] application``): it makes the
# submission and IMAP listeners ask for client certificates.
DEMO_MECHANISMS: Final = MechanismPolicy.of(
    {
        AccountKind.PRACTITIONER: _ALL_SECRETS,
        AccountKind.STAFF: _ALL_SECRETS,
        AccountKind.PATIENT: _ALL_SECRETS,
        AccountKind.PROXY: _ALL_SECRETS,
        AccountKind.APPLICATION: _ALL_SECRETS,
    }
)
# DESIGN §4, issue 6: in production people sign in through the national
# OpenID Connect provider and applications with their certificate; no main
# password for practitioner and organisation (staff, application) mailboxes;
# app passwords keep desktop clients working without the main secret.
PRODUCTION_MECHANISMS: Final = MechanismPolicy.of(
    {
        AccountKind.PRACTITIONER: {Mechanism.OAUTH, Mechanism.APP_PASSWORD},
        AccountKind.STAFF: {Mechanism.OAUTH, Mechanism.APP_PASSWORD},
        AccountKind.PATIENT: _ALL_SECRETS,
        AccountKind.PROXY: _ALL_SECRETS,
        AccountKind.APPLICATION: {Mechanism.EXTERNAL, Mechanism.OAUTH},
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    login: str
    kind: AccountKind
    mailboxes: tuple[str, ...] = ()
    locked: bool = False
    # The identity a bearer token names (``[auth.oauth] claim``): the national
    # id 8<RPPS> of a practitioner, a patient identifier.
    external_id: str | None = None
    password_hash: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class AppPassword:
    """One device's app password (the secret itself is never kept)."""

    login: str
    name: str
    created: float
    last_used: float | None = None


@dataclass(frozen=True, slots=True)
class Verified:
    """A password that matched: which account, and which of its secrets."""

    account: Account
    mechanism: Mechanism  # PASSWORD or APP_PASSWORD
    device: str | None = None  # the app password's name


_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS accounts (
    login TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    locked INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS account_mailboxes (
    login TEXT NOT NULL REFERENCES accounts(login) ON DELETE CASCADE,
    address TEXT NOT NULL,
    PRIMARY KEY (login, address)
);
CREATE INDEX IF NOT EXISTS account_mailboxes_address ON account_mailboxes(address);
CREATE TABLE IF NOT EXISTS one_time_codes (
    login TEXT NOT NULL REFERENCES accounts(login) ON DELETE CASCADE,
    purpose TEXT NOT NULL,
    digest TEXT NOT NULL,
    expires REAL NOT NULL,
    failures INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (login, purpose)
);
CREATE TABLE IF NOT EXISTS app_passwords (
    login TEXT NOT NULL REFERENCES accounts(login) ON DELETE CASCADE,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    created REAL NOT NULL,
    last_used REAL,
    PRIMARY KEY (login, name)
);
"""
# Added after the first release: applied to older files at open.
_MIGRATIONS: Final = (
    ("accounts", "external_id", "ALTER TABLE accounts ADD COLUMN external_id TEXT"),
    ("accounts", "activated", "ALTER TABLE accounts ADD COLUMN activated REAL"),
    ("accounts", "last_login", "ALTER TABLE accounts ADD COLUMN last_login REAL"),
)
_INDEXES: Final = """
CREATE UNIQUE INDEX IF NOT EXISTS accounts_external_id ON accounts(external_id)
    WHERE external_id IS NOT NULL;
"""
# Stored instead of a hash for an account without a main password (an APP
# account using its certificate): no password ever verifies against it.
NO_PASSWORD: Final = "!"  # noqa: S105 - not a hash: matches nothing


def new_code() -> str:
    """A fresh one-time code, ``XXXX-XXXX-XXXX-XXXX``."""
    symbols = "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(
        symbols[i : i + CODE_GROUP] for i in range(0, CODE_LENGTH, CODE_GROUP)
    )


def normalize_code(text: str) -> str:
    """A typed code in canonical form: Crockford's decoding (any case, I and L
    read as 1, O as 0), dashes and spaces dropped."""
    table = str.maketrans({"I": "1", "L": "1", "O": "0", "-": None, " ": None})
    return text.strip().upper().translate(table)


def _code_digest(login: str, purpose: CodePurpose, code: str) -> str:
    material = f"mssante one-time code v1\0{purpose.value}\0{login}\0{code}"
    return hashlib.sha256(material.encode()).hexdigest()


def check_password_policy(login: str, password: str) -> None:
    """Raise :class:`WeakPasswordError` naming what the password lacks."""
    problems = []
    if len(password) < MIN_PASSWORD_LENGTH:
        problems.append(f"at least {MIN_PASSWORD_LENGTH} characters")
    if not any(c.isalpha() for c in password):
        problems.append("a letter")
    if not any(c.isdigit() for c in password):
        problems.append("a digit")
    if all(c.isalnum() for c in password):
        problems.append("a symbol")
    local = login.split("@", 1)[0].lower()
    if local and local in password.lower():
        problems.append("not the login")
    if problems:
        raise WeakPasswordError("password: needs " + ", ".join(problems))


class AccountStore:
    """The account database of one data directory."""

    def __init__(
        self,
        path: Path,
        hasher: PasswordHasher | None = None,
        *,
        cache_ttl: float = DEFAULT_AUTH_CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.executescript(_SCHEMA)
        for table, column, statement in _MIGRATIONS:
            columns = {r[1] for r in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in columns:
                self._db.execute(statement)
        self._db.executescript(_INDEXES)
        self._lock = threading.Lock()
        self._hasher = hasher or PasswordHasher()
        self._dummy_hash = self._hasher.hash("not a real password: timing only")
        self._verified = _VerifiedCache(cache_ttl, DEFAULT_AUTH_CACHE_SIZE, clock)
        self._now = wall_clock
        # The UTC day and the logins whose last login was written that day.
        self._login_day = -1
        self._logged_today: set[str] = set()

    @classmethod
    def open(cls, data_dir: Path, hasher: PasswordHasher | None = None) -> AccountStore:
        return cls(data_dir / ACCOUNTS_FILE_NAME, hasher)

    @classmethod
    def for_config(cls, cfg: Config) -> AccountStore:
        """The store of ``cfg``'s data directory, hashing with its argon2 costs."""
        auth = cfg.auth
        hasher = PasswordHasher(
            time_cost=auth.argon2_time_cost,
            memory_cost=auth.argon2_memory_kib,
            parallelism=auth.argon2_parallelism,
        )
        return cls.open(cfg.relay.data_dir, hasher)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def create(
        self,
        login: str,
        kind: AccountKind,
        password: str | None,
        mailboxes: Sequence[str] = (),
        *,
        check_policy: bool = True,
        external_id: str | None = None,
    ) -> Account:
        """A new account; ``password=None`` makes one without a main password."""
        if not login or any(c.isspace() for c in login):
            raise AccountError(f"login: {login!r} is empty or contains spaces")
        if password is not None and check_policy:
            check_password_policy(login, password)
        if external_id is not None and not external_id.strip():
            raise AccountError("external_id: empty")
        password_hash = NO_PASSWORD if password is None else self._hasher.hash(password)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO accounts(login, kind, password_hash, created,"
                    " external_id) VALUES (?, ?, ?, ?, ?)",
                    (login, kind.value, password_hash, self._now(), external_id),
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO account_mailboxes(login, address)"
                    " VALUES (?, ?)",
                    [(login, address) for address in mailboxes],
                )
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError as exc:
                self._db.execute("ROLLBACK")
                if "external_id" in str(exc):
                    raise AccountExistsError(
                        f"external_id: {external_id!r} belongs to another account"
                    ) from None
                raise AccountExistsError(f"login: {login!r} already exists") from None
        return Account(
            login=login,
            kind=kind,
            mailboxes=tuple(mailboxes),
            external_id=external_id,
            password_hash=password_hash,
        )

    def get(self, login: str) -> Account | None:
        with self._lock:
            row = self._db.execute(
                "SELECT kind, password_hash, locked, external_id FROM accounts"
                " WHERE login = ?",
                (login,),
            ).fetchone()
            if row is None:
                return None
            boxes = self._db.execute(
                "SELECT address FROM account_mailboxes WHERE login = ? ORDER BY address",
                (login,),
            ).fetchall()
        return Account(
            login=login,
            kind=AccountKind(row[0]),
            password_hash=row[1],
            locked=bool(row[2]),
            external_id=row[3],
            mailboxes=tuple(b[0] for b in boxes),
        )

    def require(self, login: str) -> Account:
        account = self.get(login)
        if account is None:
            raise AccountNotFoundError(f"login: no account {login!r}")
        return account

    def by_external_id(self, external_id: str) -> Account | None:
        """The account a bearer token's identity claim names."""
        with self._lock:
            row = self._db.execute(
                "SELECT login FROM accounts WHERE external_id = ?", (external_id,)
            ).fetchone()
        return self.get(row[0]) if row is not None else None

    def set_external_id(self, login: str, external_id: str | None) -> None:
        if external_id is not None and not external_id.strip():
            raise AccountError("external_id: empty")
        try:
            self._update(login, "external_id = ?", (external_id,))
        except sqlite3.IntegrityError:
            raise AccountExistsError(
                f"external_id: {external_id!r} belongs to another account"
            ) from None

    def all(self) -> list[Account]:
        with self._lock:
            logins = [r[0] for r in self._db.execute("SELECT login FROM accounts")]
        return [a for a in (self.get(login) for login in sorted(logins)) if a]

    def owners_of(self, address: str) -> list[str]:
        """Logins that own ``address``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT login FROM account_mailboxes WHERE address = ?", (address,)
            ).fetchall()
        return sorted(r[0] for r in rows)

    def set_password(
        self, login: str, password: str, *, check_policy: bool = True
    ) -> None:
        if check_policy:
            check_password_policy(login, password)
        self._update(login, "password_hash = ?", (self._hasher.hash(password),))

    def set_locked(self, login: str, locked: bool) -> None:
        self._update(login, "locked = ?", (int(locked),))

    def add_mailbox(self, login: str, address: str) -> None:
        self.require(login)
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO account_mailboxes(login, address) VALUES (?, ?)",
                (login, address),
            )

    def delete(self, login: str) -> None:
        with self._lock:
            cursor = self._db.execute("DELETE FROM accounts WHERE login = ?", (login,))
        if cursor.rowcount == 0:
            raise AccountNotFoundError(f"login: no account {login!r}")

    # -- one-time codes --------------------------------------------------------

    def issue_code(
        self, login: str, purpose: CodePurpose, *, expires: float
    ) -> OneTimeCode:
        """A new code for ``login`` (the previous one of that purpose is void)."""
        code = new_code()
        digest = _code_digest(login, purpose, normalize_code(code))
        with self._lock:
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO one_time_codes(login, purpose, digest,"
                    " expires, failures) VALUES (?, ?, ?, ?, 0)",
                    (login, purpose.value, digest, expires),
                )
            except sqlite3.IntegrityError:
                raise AccountNotFoundError(f"login: no account {login!r}") from None
        return OneTimeCode(login=login, purpose=purpose, code=code, expires=expires)

    def code_expiry(self, login: str, purpose: CodePurpose) -> float | None:
        """When the live code of ``login`` expires; None: there is none."""
        with self._lock:
            row = self._db.execute(
                "SELECT expires FROM one_time_codes WHERE login = ? AND purpose = ?",
                (login, purpose.value),
            ).fetchone()
        return None if row is None else float(row[0])

    def void_code(self, login: str, purpose: CodePurpose) -> None:
        with self._lock:
            self._db.execute(
                "DELETE FROM one_time_codes WHERE login = ? AND purpose = ?",
                (login, purpose.value),
            )

    def redeem_code(
        self,
        login: str,
        purpose: CodePurpose,
        code: str,
        password: str,
        *,
        now: float,
        max_failures: int = DEFAULT_MAX_CODE_FAILURES,
    ) -> CodeResult:
        """Check ``code`` and, when right, set ``password``: one transaction.

        Blocking (argon2): call it through ``asyncio.to_thread``. The new
        password is hashed before the code is looked at, so a wrong code, an
        unknown login and a right code take the same time.

        Raises:
            WeakPasswordError: ``password`` fails the policy (nothing counted).
        """
        check_password_policy(login, password)
        password_hash = self._hasher.hash(password)
        digest = _code_digest(login, purpose, normalize_code(code))
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = self._redeem(
                    login, purpose, digest, password_hash, now, max_failures
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return result

    def _redeem(
        self,
        login: str,
        purpose: CodePurpose,
        digest: str,
        password_hash: str,
        now: float,
        max_failures: int,
    ) -> CodeResult:
        """The body of :meth:`redeem_code`, inside its transaction."""
        row = self._db.execute(
            "SELECT c.digest, c.expires, c.failures, a.locked FROM one_time_codes c"
            " JOIN accounts a ON a.login = c.login"
            " WHERE c.login = ? AND c.purpose = ?",
            (login, purpose.value),
        ).fetchone()
        if row is None or row[3]:
            return CodeResult.ABSENT
        stored, expires, failures, _ = row
        where = (login, purpose.value)
        if now >= expires:
            self._db.execute(
                "DELETE FROM one_time_codes WHERE login = ? AND purpose = ?", where
            )
            return CodeResult.EXPIRED
        if not hmac.compare_digest(stored, digest):
            if failures + 1 >= max_failures:
                self._db.execute(
                    "DELETE FROM one_time_codes WHERE login = ? AND purpose = ?", where
                )
                return CodeResult.VOIDED
            self._db.execute(
                "UPDATE one_time_codes SET failures = failures + 1"
                " WHERE login = ? AND purpose = ?",
                where,
            )
            return CodeResult.WRONG
        # A new password makes every code of the account useless.
        self._db.execute("DELETE FROM one_time_codes WHERE login = ?", (login,))
        self._db.execute(
            "UPDATE accounts SET password_hash = ?, activated = coalesce(activated, ?)"
            " WHERE login = ?",
            (password_hash, now, login),
        )
        return CodeResult.REDEEMED

    # -- use ----------------------------------------------------------------------

    def login_recorded_today(self, login: str) -> bool:
        """Whether this process already wrote ``login``'s last login today
        (memory only: the async caller skips the thread hop)."""
        with self._lock:
            return self._login_day == int(self._now() // _DAY) and (
                login in self._logged_today
            )

    def record_login(self, login: str) -> None:
        """Note a successful login: at most one write per account per UTC day."""
        now = self._now()
        day = int(now // _DAY)
        with self._lock:
            if day != self._login_day:
                self._login_day = day
                self._logged_today = set()
            if login in self._logged_today:
                return
            self._db.execute(
                "UPDATE accounts SET last_login = ? WHERE login = ?"
                " AND (last_login IS NULL OR last_login < ?)",
                (now, login, day * _DAY),
            )
            self._logged_today.add(login)

    def usage_of(self, login: str) -> AccountUsage | None:
        """Creation, activation and last login of one account."""
        found = self._usage(" WHERE login = ?", (login,))
        return found[0] if found else None

    def is_activated(self, login: str) -> bool:
        """Whether ``login`` set its own password (enrolment's activation)."""
        usage = self.usage_of(login)
        return usage is not None and usage.activated is not None

    def usage(self, kind: AccountKind | None = None) -> list[AccountUsage]:
        """Creation, activation and last login of every account (of ``kind``).

        An account created with a password counts as activated when created.
        """
        if kind is None:
            return self._usage("", ())
        return self._usage(" WHERE kind = ?", (kind.value,))

    def _usage(self, where: str, args: tuple[str, ...]) -> list[AccountUsage]:
        # ``where`` is one of the fixed texts above.
        query = (
            "SELECT login, kind, created, activated, last_login, locked,"  # noqa: S608
            " password_hash FROM accounts" + where
        )
        with self._lock:
            rows = self._db.execute(query + " ORDER BY login", args).fetchall()
        return [
            AccountUsage(
                login=r[0],
                kind=AccountKind(r[1]),
                created=r[2],
                activated=r[3] if r[3] is not None or r[6] == NO_PASSWORD else r[2],
                last_login=r[4],
                locked=bool(r[5]),
            )
            for r in rows
        ]

    def _update(self, login: str, assignment: str, values: tuple[object, ...]) -> None:
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE accounts SET {assignment} WHERE login = ?",  # noqa: S608 - fixed text
                (*values, login),
            )
        if cursor.rowcount == 0:
            raise AccountNotFoundError(f"login: no account {login!r}")

    # -- app passwords ---------------------------------------------------------

    def add_app_password(self, login: str, name: str) -> str:
        """Generate an app password for device ``name``; returned once, never again."""
        if not name.strip() or len(name) > 100:
            raise AppPasswordError("name: empty or longer than 100 characters")
        self.require(login)
        chars = [secrets.choice(APP_PASSWORD_ALPHABET) for _ in range(16)]
        password = "-".join(
            "".join(chars[i : i + 4]) for i in range(0, 16, 16 // APP_PASSWORD_GROUPS)
        )
        hashed = self._hasher.hash(password)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                (count,) = self._db.execute(
                    "SELECT count(*) FROM app_passwords WHERE login = ?", (login,)
                ).fetchone()
                if count >= MAX_APP_PASSWORDS:
                    raise AppPasswordError(
                        f"name: {login!r} already has {MAX_APP_PASSWORDS} app passwords"
                    )
                self._db.execute(
                    "INSERT INTO app_passwords(login, name, hash, created)"
                    " VALUES (?, ?, ?, ?)",
                    (login, name, hashed, self._now()),
                )
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                raise AppPasswordError(
                    f"name: {login!r} already has an app password named {name!r}"
                ) from None
            except AppPasswordError:
                self._db.execute("ROLLBACK")
                raise
        return password

    def app_passwords(self, login: str) -> list[AppPassword]:
        self.require(login)
        with self._lock:
            rows = self._db.execute(
                "SELECT name, created, last_used FROM app_passwords WHERE login = ?"
                " ORDER BY created, name",
                (login,),
            ).fetchall()
        return [
            AppPassword(login=login, name=r[0], created=r[1], last_used=r[2])
            for r in rows
        ]

    def revoke_app_password(self, login: str, name: str) -> None:
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM app_passwords WHERE login = ? AND name = ?", (login, name)
            )
        if cursor.rowcount == 0:
            raise AppPasswordError(f"name: {login!r} has no app password {name!r}")

    def _app_hashes(self, login: str) -> dict[str, str]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, hash FROM app_passwords WHERE login = ?", (login,)
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    # -- verification ----------------------------------------------------------

    def authenticate(self, login: str, password: str) -> Account | None:
        """The account if ``password`` (main or app password) is right.

        Blocking: see :meth:`verify_password`.
        """
        verified = self.verify_password(login, password)
        return verified.account if verified is not None else None

    def verify_password(self, login: str, password: str) -> Verified | None:
        """Which secret of an unlocked account ``password`` is, if any.

        Blocking (argon2 is deliberately slow): call it through
        ``asyncio.to_thread``. The main password is checked first, then each
        app password. A secret verified in the last ``cache_ttl`` seconds is
        checked against the verification cache instead (see
        :class:`_VerifiedCache`).
        """
        account = self.get(login)
        if account is not None and not account.locked:
            apps = self._app_hashes(login)
            hit = self._verified.hit(login, password)
            if hit is not None:
                device, stored = hit
                current = account.password_hash if device is None else apps.get(device)
                if current == stored:
                    return _verified(account, device)
        stored = account.password_hash if account else self._dummy_hash
        if stored == NO_PASSWORD:
            stored = self._dummy_hash
        if self._matches(stored, password):
            if account is None or account.locked or stored == self._dummy_hash:
                return None
            if self._hasher.check_needs_rehash(stored):
                stored = self._hasher.hash(password)
                self._update(login, "password_hash = ?", (stored,))
                account = self.get(login) or account
            self._verified.remember(login, password, None, stored)
            return _verified(account, None)
        if account is None or account.locked:
            return None
        for device, app_hash in self._app_hashes(login).items():
            if self._matches(app_hash, password):
                with self._lock:
                    self._db.execute(
                        "UPDATE app_passwords SET last_used = ?"
                        " WHERE login = ? AND name = ?",
                        (self._now(), login, device),
                    )
                self._verified.remember(login, password, device, app_hash)
                return _verified(account, device)
        return None

    def _matches(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False


def _verified(account: Account, device: str | None) -> Verified:
    if device is None:
        return Verified(account, Mechanism.PASSWORD)
    return Verified(account, Mechanism.APP_PASSWORD, device)


class _VerifiedCache:
    """Recently verified secrets, so that argon2 runs once per secret.

    Dovecot's ``auth_cache`` does the same: a client that opens a session per
    message (practice software often does) would otherwise pay a deliberately
    slow hash every time. An entry is keyed by an HMAC of the login and the
    password under a per-process random key (never the password) and holds
    the secret it matched (``None``: the main password, else the app
    password's device name), the stored hash it was verified against, and
    its time. It counts only while that stored hash is unchanged (a password
    change or an app password revoked, even by another process, invalidates
    it), the account is unlocked (checked by the caller), and for ``ttl``
    seconds.
    """

    def __init__(self, ttl: float, size: int, clock: Callable[[], float]) -> None:
        self._key = secrets.token_bytes(32)
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._entries: collections.OrderedDict[bytes, tuple[str | None, str, float]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def _mac(self, login: str, password: str) -> bytes:
        return hmac.new(
            self._key, f"{login}\0{password}".encode(), hashlib.sha256
        ).digest()

    def hit(self, login: str, password: str) -> tuple[str | None, str] | None:
        """The (device, stored hash) this pair was verified against, if fresh."""
        if self._ttl <= 0:
            return None
        with self._lock:
            entry = self._entries.get(self._mac(login, password))
        if entry is None:
            return None
        device, stored_hash, at = entry
        if self._clock() - at >= self._ttl:
            return None
        return device, stored_hash

    def remember(
        self, login: str, password: str, device: str | None, stored_hash: str
    ) -> None:
        if self._ttl <= 0:
            return
        mac = self._mac(login, password)
        with self._lock:
            self._entries[mac] = (device, stored_hash, self._clock())
            self._entries.move_to_end(mac)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


class ThrottleVerdict(enum.Enum):
    ALLOWED = "allowed"
    LOGIN_LOCKED = "login locked out"
    PEER_LOCKED = "peer locked out"


class LoginThrottle:
    """Failed-login counters per login and per peer address, with lockout."""

    def __init__(
        self,
        *,
        max_failures: int,
        max_failures_per_peer: int,
        lockout: float,
        base_delay: float = 0.0,
        max_delay: float = DEFAULT_MAX_FAILURE_DELAY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._max_peer = max_failures_per_peer
        self._lockout = lockout
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._clock = clock
        self._failures: dict[str, list[float]] = {}

    def _recent(self, key: str) -> list[float]:
        now = self._clock()
        times = [t for t in self._failures.get(key, []) if now - t < self._lockout]
        if times:
            self._failures[key] = times
        else:
            self._failures.pop(key, None)
        return times

    def check(self, login: str, peer: str) -> ThrottleVerdict:
        if len(self._recent("peer:" + peer)) >= self._max_peer:
            return ThrottleVerdict.PEER_LOCKED
        if len(self._recent("login:" + login)) >= self._max:
            return ThrottleVerdict.LOGIN_LOCKED
        return ThrottleVerdict.ALLOWED

    def failed(self, login: str, peer: str) -> ThrottleVerdict:
        """Count one failure; the verdict says whether it just locked something."""
        now = self._clock()
        for key in ("peer:" + peer, "login:" + login):
            self._failures.setdefault(key, []).append(now)
        return self.check(login, peer)

    def delay(self, login: str, peer: str) -> float:
        """How long to wait before refusing: doubles with each recent failure."""
        if self._base_delay <= 0:
            return 0.0
        n = max(len(self._recent("login:" + login)), len(self._recent("peer:" + peer)))
        if n <= 1:
            return min(self._base_delay, self._max_delay)
        # Past 2**10 the cap has long been reached; keep the float small.
        return min(self._base_delay * 2.0 ** min(n - 1, 10), self._max_delay)

    def succeeded(self, login: str) -> None:
        self._failures.pop("login:" + login, None)


# -- the authenticator shared by SMTP and IMAP -----------------------------------


class Refusal(enum.Enum):
    """How a refused authentication is answered."""

    INVALID = "invalid"  # SMTP 535 5.7.8, IMAP NO [AUTHENTICATIONFAILED]
    LOCKED = "locked"  # SMTP 454 4.7.0, IMAP NO [UNAVAILABLE]
    UNAVAILABLE = (
        "unavailable"  # our side failed: SMTP 454 4.7.0, IMAP NO [UNAVAILABLE]
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Attempt:
    """The facts of one authentication exchange, for the throttle and audit."""

    protocol: str  # "smtp" or "imap"
    sasl: str  # the SASL mechanism or command: PLAIN, LOGIN, OAUTHBEARER, ...
    cid: str
    peer: str
    tls: str = ""


@dataclass(frozen=True, slots=True)
class Outcome:
    """The account, or why not (``token_problem`` for the RFC 7628 challenge)."""

    account: Account | None = None
    mechanism: Mechanism | None = None
    refusal: Refusal | None = None
    token_problem: TokenProblem | None = None

    @property
    def succeeded(self) -> bool:
        return self.account is not None


class Authenticator:
    """One decision per authentication exchange: throttle, verify, policy, audit.

    Protocol code parses the exchange and writes the reply; everything in
    between is here, so SMTP and IMAP refuse and audit alike.
    """

    def __init__(
        self,
        *,
        accounts: AccountStore,
        throttle: LoginThrottle,
        audit: AuditTrail,
        directory: Directory,
        mechanisms: MechanismPolicy = DEMO_MECHANISMS,
        tokens: TokenVerifier | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.accounts = accounts
        self.throttle = throttle
        self.mechanisms = mechanisms
        self.tokens = tokens
        self._audit = audit
        self._directory = directory
        self._clock = clock

    def offers(self, mechanism: Mechanism) -> bool:
        """Whether some account kind may use ``mechanism`` (and it is set up)."""
        if mechanism is Mechanism.OAUTH and self.tokens is None:
            return False
        return mechanism in self.mechanisms.uses

    def sasl_names(self) -> list[str]:
        """The SASL mechanisms to advertise after TLS."""
        names: list[str] = []
        for mechanism, sasl in SASL_MECHANISMS.items():
            if self.offers(mechanism):
                names += [n for n in sasl if n not in names]
        return names

    # -- passwords ---------------------------------------------------------------

    async def password(self, attempt: Attempt, login: str, password: str) -> Outcome:
        """PLAIN, LOGIN, IMAP LOGIN: the main password or an app password."""
        locked = await self._locked(attempt, login)
        if locked is not None:
            return locked
        verified = await asyncio.to_thread(
            self.accounts.verify_password, login, password
        )
        if verified is None:
            return await self._fail(attempt, login, "bad credentials or locked account")
        account = verified.account
        if not self.mechanisms.allows(account.kind, verified.mechanism):
            return await self._fail(
                attempt,
                login,
                f"{verified.mechanism.value} not allowed for {account.kind.value}",
            )
        return await self._succeed(
            attempt, account, verified.mechanism, device=verified.device
        )

    # -- bearer tokens -------------------------------------------------------------

    async def bearer(self, attempt: Attempt, response: BearerResponse) -> Outcome:
        """OAUTHBEARER, XOAUTH2: the token's identity claim names the account."""
        key = response.authzid or "(token)"
        locked = await self._locked(attempt, key)
        if locked is not None:
            return locked
        if self.tokens is None:
            return await self._fail(attempt, key, "no token issuer configured")
        try:
            verified = await asyncio.to_thread(
                self.tokens.verify, response.token, now=self._clock()
            )
        except TokenRefusedError as exc:
            return await self._fail(
                attempt, key, f"token {exc.problem.value}", problem=exc.problem
            )
        except KeysUnavailableError as exc:
            self._audit.emit(
                AuditEvent.AUTH_FAILED,
                cid=attempt.cid,
                actor=key,
                peer=attempt.peer,
                protocol=attempt.protocol,
                mechanism=attempt.sasl,
                reason=f"issuer keys unavailable: {exc}",
            )
            return Outcome(refusal=Refusal.UNAVAILABLE)
        account = await asyncio.to_thread(
            self.accounts.by_external_id, verified.identity
        )
        if account is None or account.locked:
            return await self._fail(
                attempt,
                key,
                "token names no unlocked account",
                problem=TokenProblem.UNKNOWN_ACCOUNT,
            )
        if response.authzid and response.authzid not in (
            account.login,
            *account.mailboxes,
        ):
            return await self._fail(
                attempt, key, "authorization identity differs from the token's"
            )
        if not self.mechanisms.allows(account.kind, Mechanism.OAUTH):
            return await self._fail(
                attempt, account.login, f"oauth not allowed for {account.kind.value}"
            )
        return await self._succeed(attempt, account, Mechanism.OAUTH)

    # -- client certificates ---------------------------------------------------------

    async def certificate(
        self, attempt: Attempt, cert: PeerCertificate | None, authzid: str | None
    ) -> Outcome:
        """SASL EXTERNAL: the verified TLS client certificate of an APP mailbox."""
        key = authzid or (cert.fingerprint if cert is not None else "(no certificate)")
        locked = await self._locked(attempt, key)
        if locked is not None:
            return locked
        if cert is None:
            return await self._fail(attempt, key, "no client certificate")
        try:
            # The TLS layer verified the chain to the trust anchors
            # (CERT_OPTIONAL: an untrusted certificate fails the handshake).
            mailbox = await self._directory.mailbox_for_certificate(cert.fingerprint)
        except DirectoryError as exc:
            self._audit.emit(
                AuditEvent.DIRECTORY_LOOKUP_FAILED,
                cid=attempt.cid,
                actor=key,
                reason=type(exc).__name__,
            )
            return Outcome(refusal=Refusal.UNAVAILABLE)
        if mailbox is None:
            return await self._fail(attempt, key, "certificate not in the directory")
        if mailbox.bal_type is not BalType.APP or mailbox.status is not Status.ACTIVE:
            return await self._fail(
                attempt, key, "certificate of a mailbox that is not an active APP one"
            )
        owners = await asyncio.to_thread(self.accounts.owners_of, mailbox.address)
        candidates = [
            a
            for a in [self.accounts.get(login) for login in owners]
            if a is not None and a.kind is AccountKind.APPLICATION and not a.locked
        ]
        if authzid:
            candidates = [
                a for a in candidates if authzid in (a.login, mailbox.address)
            ]
        if len(candidates) != 1:
            return await self._fail(
                attempt,
                key,
                "no application account for the mailbox"
                if not candidates
                else "several application accounts: name one (authzid)",
            )
        account = candidates[0]
        if not self.mechanisms.allows(account.kind, Mechanism.EXTERNAL):
            return await self._fail(
                attempt, account.login, f"external not allowed for {account.kind.value}"
            )
        return await self._succeed(attempt, account, Mechanism.EXTERNAL)

    # -- shared steps ------------------------------------------------------------------

    async def refuse(self, attempt: Attempt, login: str, reason: str) -> Outcome:
        """A refusal decided by the protocol code (a malformed exchange)."""
        return await self._fail(attempt, login, reason)

    async def _locked(self, attempt: Attempt, login: str) -> Outcome | None:
        verdict = self.throttle.check(login, attempt.peer)
        if verdict is ThrottleVerdict.ALLOWED:
            return None
        self._record(AuditEvent.AUTH_LOCKED, attempt, login, reason=verdict.value)
        await asyncio.sleep(self.throttle.delay(login, attempt.peer))
        return Outcome(refusal=Refusal.LOCKED)

    async def _fail(
        self,
        attempt: Attempt,
        login: str,
        reason: str,
        *,
        problem: TokenProblem | None = None,
    ) -> Outcome:
        verdict = self.throttle.failed(login, attempt.peer)
        self._record(AuditEvent.AUTH_FAILED, attempt, login, reason=reason)
        if verdict is not ThrottleVerdict.ALLOWED:
            self._record(AuditEvent.AUTH_LOCKED, attempt, login, reason=verdict.value)
        await asyncio.sleep(self.throttle.delay(login, attempt.peer))
        return Outcome(refusal=Refusal.INVALID, token_problem=problem)

    async def _succeed(
        self,
        attempt: Attempt,
        account: Account,
        mechanism: Mechanism,
        *,
        device: str | None = None,
    ) -> Outcome:
        self.throttle.succeeded(account.login)
        # Last use (inactive-account reports): one write per account and day.
        if not self.accounts.login_recorded_today(account.login):
            await asyncio.to_thread(self.accounts.record_login, account.login)
        self._record(
            AuditEvent.AUTH_SUCCEEDED,
            attempt,
            account.login,
            credential=mechanism.value,
            device=device,
            tls=attempt.tls,
        )
        return Outcome(account=account, mechanism=mechanism)

    def _record(
        self, event: AuditEvent, attempt: Attempt, login: str, **fields: object
    ) -> None:
        """One auth audit record: who, from where, how, and ``fields``."""
        self._audit.emit(
            event,
            cid=attempt.cid,
            actor=login,
            peer=attempt.peer,
            protocol=attempt.protocol,
            mechanism=attempt.sasl,
            **fields,
        )
