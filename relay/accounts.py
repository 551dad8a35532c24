"""Accounts: who may log in to the relay, with what secret, for which mailboxes.

Owns: ``<data_dir>/accounts.sqlite3`` (logins, argon2id password hashes, the
mailboxes each login owns, lock state) and the in-memory login throttle.

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
  password (Postfix's anvil and Dovecot's auth penalty do the same).
"""

from __future__ import annotations

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

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from relay.config import Config

ACCOUNTS_FILE_NAME: Final = "accounts.sqlite3"
# The seed policy (issue 6 refines it): 12 characters mixing letters, digits
# and symbols, not containing the login.
MIN_PASSWORD_LENGTH: Final = 12
# Dovecot's auth_cache_ttl defaults to one hour; we keep verified logins for
# 15 minutes, for at most this many logins.
DEFAULT_AUTH_CACHE_TTL: Final = 900.0
DEFAULT_AUTH_CACHE_SIZE: Final = 10_000


class AccountError(Exception):
    """Root of account errors; the message names the field."""


class AccountExistsError(AccountError):
    pass


class AccountNotFoundError(AccountError):
    pass


class WeakPasswordError(AccountError):
    pass


class AccountKind(enum.StrEnum):
    PRACTITIONER = "practitioner"
    STAFF = "staff"  # non-RPPS staff using mailboxes by delegation
    PATIENT = "patient"
    PROXY = "proxy"  # a patient's caregiver or legal representative
    APPLICATION = "application"  # practice software with an APP mailbox


@dataclass(frozen=True, slots=True, kw_only=True)
class Account:
    login: str
    kind: AccountKind
    mailboxes: tuple[str, ...] = ()
    locked: bool = False
    password_hash: str = field(default="", repr=False)


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
"""


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
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._hasher = hasher or PasswordHasher()
        self._dummy_hash = self._hasher.hash("not a real password: timing only")
        self._verified = _VerifiedCache(cache_ttl, DEFAULT_AUTH_CACHE_SIZE, clock)

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
        password: str,
        mailboxes: Sequence[str] = (),
        *,
        check_policy: bool = True,
    ) -> Account:
        if not login or any(c.isspace() for c in login):
            raise AccountError(f"login: {login!r} is empty or contains spaces")
        if check_policy:
            check_password_policy(login, password)
        password_hash = self._hasher.hash(password)
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute(
                    "INSERT INTO accounts(login, kind, password_hash, created)"
                    " VALUES (?, ?, ?, ?)",
                    (login, kind.value, password_hash, time.time()),
                )
                self._db.executemany(
                    "INSERT OR IGNORE INTO account_mailboxes(login, address)"
                    " VALUES (?, ?)",
                    [(login, address) for address in mailboxes],
                )
                self._db.execute("COMMIT")
            except sqlite3.IntegrityError:
                self._db.execute("ROLLBACK")
                raise AccountExistsError(f"login: {login!r} already exists") from None
        return Account(
            login=login,
            kind=kind,
            mailboxes=tuple(mailboxes),
            password_hash=password_hash,
        )

    def get(self, login: str) -> Account | None:
        with self._lock:
            row = self._db.execute(
                "SELECT kind, password_hash, locked FROM accounts WHERE login = ?",
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
            mailboxes=tuple(b[0] for b in boxes),
        )

    def require(self, login: str) -> Account:
        account = self.get(login)
        if account is None:
            raise AccountNotFoundError(f"login: no account {login!r}")
        return account

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

    def _update(self, login: str, assignment: str, values: tuple[object, ...]) -> None:
        with self._lock:
            cursor = self._db.execute(
                f"UPDATE accounts SET {assignment} WHERE login = ?",  # noqa: S608 - fixed text
                (*values, login),
            )
        if cursor.rowcount == 0:
            raise AccountNotFoundError(f"login: no account {login!r}")

    def authenticate(self, login: str, password: str) -> Account | None:
        """The account if ``password`` is right and the account unlocked.

        Blocking (argon2 is deliberately slow): call it through
        ``asyncio.to_thread``. A login verified in the last
        ``cache_ttl`` seconds is checked against the verification cache
        instead (see :class:`_VerifiedCache`).
        """
        account = self.get(login)
        if (
            account is not None
            and not account.locked
            and self._verified.hit(login, password, account.password_hash)
        ):
            return account
        stored = account.password_hash if account else self._dummy_hash
        try:
            self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return None
        if account is None or account.locked:
            return None
        if self._hasher.check_needs_rehash(stored):
            self._update(login, "password_hash = ?", (self._hasher.hash(password),))
            account = self.get(login) or account
        self._verified.remember(login, password, account.password_hash)
        return account


class _VerifiedCache:
    """Recently verified (login, password) pairs, so that argon2 runs once per login.

    Dovecot's ``auth_cache`` does the same: a client that opens a session per
    message (practice software often does) would otherwise pay a deliberately
    slow hash every time. An entry holds an HMAC of the password under a
    per-process random key (never the password), the stored hash it was
    verified against, and its time. It counts only while the account's
    stored hash is unchanged (a password change, even by another process,
    invalidates it), the account is unlocked (checked by the caller), and
    for ``ttl`` seconds.
    """

    def __init__(self, ttl: float, size: int, clock: Callable[[], float]) -> None:
        self._key = secrets.token_bytes(32)
        self._ttl = ttl
        self._size = size
        self._clock = clock
        self._entries: collections.OrderedDict[str, tuple[bytes, str, float]] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()

    def _mac(self, login: str, password: str) -> bytes:
        return hmac.new(
            self._key, f"{login}\0{password}".encode(), hashlib.sha256
        ).digest()

    def hit(self, login: str, password: str, stored_hash: str) -> bool:
        if self._ttl <= 0:
            return False
        with self._lock:
            entry = self._entries.get(login)
        if entry is None:
            return False
        mac, verified_hash, at = entry
        return (
            verified_hash == stored_hash
            and self._clock() - at < self._ttl
            and hmac.compare_digest(mac, self._mac(login, password))
        )

    def remember(self, login: str, password: str, stored_hash: str) -> None:
        if self._ttl <= 0:
            return
        with self._lock:
            self._entries[login] = (
                self._mac(login, password),
                stored_hash,
                self._clock(),
            )
            self._entries.move_to_end(login)
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
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._max_peer = max_failures_per_peer
        self._lockout = lockout
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

    def succeeded(self, login: str) -> None:
        self._failures.pop("login:" + login, None)
