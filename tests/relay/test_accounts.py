"""The account store and the login throttle."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from argon2 import PasswordHasher

from relay.accounts import (
    AccountError,
    AccountExistsError,
    AccountKind,
    AccountNotFoundError,
    AccountStore,
    LoginThrottle,
    ThrottleVerdict,
    WeakPasswordError,
    check_password_policy,
)

if TYPE_CHECKING:
    from pathlib import Path

FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
PW = "Correct-horse-42!"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store(tmp_path: Path, clock: Clock | None = None) -> AccountStore:
    return AccountStore(tmp_path / "accounts.sqlite3", FAST, clock=clock or Clock())


def test_create_get_authenticate(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.create("zoe", AccountKind.PRACTITIONER, PW, ["zoe@medecin.mssante.fr"])
    account = s.authenticate("zoe", PW)
    assert account is not None
    assert account.mailboxes == ("zoe@medecin.mssante.fr",)
    assert "password_hash" not in repr(account)
    assert s.authenticate("zoe", "Wrong-horse-42!") is None
    assert s.authenticate("nobody", PW) is None
    assert s.owners_of("zoe@medecin.mssante.fr") == ["zoe"]
    with pytest.raises(AccountExistsError, match="login: 'zoe' already exists"):
        s.create("zoe", AccountKind.PRACTITIONER, PW)


def test_locked_account_cannot_log_in_even_when_cached(tmp_path: Path) -> None:
    s = store(tmp_path)
    s.create("zoe", AccountKind.PRACTITIONER, PW)
    assert s.authenticate("zoe", PW) is not None
    s.set_locked("zoe", True)
    assert s.authenticate("zoe", PW) is None
    s.set_locked("zoe", False)
    assert s.authenticate("zoe", PW) is not None


def test_password_change_elsewhere_invalidates_the_cache(tmp_path: Path) -> None:
    relay_side = store(tmp_path)
    relay_side.create("zoe", AccountKind.PRACTITIONER, PW)
    assert relay_side.authenticate("zoe", PW) is not None  # now cached
    admin_side = store(tmp_path)  # another process: the CLI
    admin_side.set_password("zoe", "Another-horse-43!")
    assert relay_side.authenticate("zoe", PW) is None
    assert relay_side.authenticate("zoe", "Another-horse-43!") is not None


def test_cache_expires(tmp_path: Path) -> None:
    clock = Clock()
    s = AccountStore(tmp_path / "a.sqlite3", FAST, clock=clock, cache_ttl=10)
    s.create("zoe", AccountKind.PRACTITIONER, PW)
    assert s.authenticate("zoe", PW) is not None
    clock.now += 11
    assert s.authenticate("zoe", PW) is not None  # verified again with argon2
    assert s.authenticate("zoe", "Wrong-horse-42!") is None


def test_weak_hashes_are_upgraded_at_login(tmp_path: Path) -> None:
    weak = AccountStore(
        tmp_path / "a.sqlite3",
        PasswordHasher(time_cost=1, memory_cost=512, parallelism=1),
    )
    weak.create("zoe", AccountKind.PRACTITIONER, PW)
    strong = AccountStore(tmp_path / "a.sqlite3", FAST)
    before = strong.require("zoe").password_hash
    assert strong.authenticate("zoe", PW) is not None
    assert strong.require("zoe").password_hash != before
    assert "m=1024" in strong.require("zoe").password_hash


@pytest.mark.parametrize(
    ("password", "needs"),
    [
        ("short-1!", "at least 12 characters"),
        ("no-digits-here!", "a digit"),
        ("1234567890123!", "a letter"),
        ("NoSymbols12345", "a symbol"),
        ("zoe-is-my-pw-123", "not the login"),
    ],
)
def test_password_policy(password: str, needs: str) -> None:
    with pytest.raises(WeakPasswordError, match=needs):
        check_password_policy("zoe@medecin.mssante.fr", password)


def test_unknown_logins_and_bad_logins(tmp_path: Path) -> None:
    s = store(tmp_path)
    with pytest.raises(AccountNotFoundError):
        s.set_locked("ghost", True)
    with pytest.raises(AccountNotFoundError):
        s.delete("ghost")
    with pytest.raises(AccountNotFoundError):
        s.add_mailbox("ghost", "a@b.example")
    with pytest.raises(AccountError, match="login"):
        s.create("two words", AccountKind.PATIENT, PW)
    s.create("zoe", AccountKind.PRACTITIONER, PW)
    s.add_mailbox("zoe", "z@b.example")
    assert [a.login for a in s.all()] == ["zoe"]
    s.delete("zoe")
    assert s.all() == []


def test_throttle_locks_login_then_peer_and_forgets() -> None:
    clock = Clock()
    t = LoginThrottle(max_failures=2, max_failures_per_peer=3, lockout=60, clock=clock)
    assert t.failed("a", "1.2.3.4") is ThrottleVerdict.ALLOWED
    assert t.failed("a", "1.2.3.4") is ThrottleVerdict.LOGIN_LOCKED
    assert t.check("b", "5.6.7.8") is ThrottleVerdict.ALLOWED
    assert t.failed("b", "1.2.3.4") is ThrottleVerdict.PEER_LOCKED
    clock.now += 61
    assert t.check("a", "1.2.3.4") is ThrottleVerdict.ALLOWED
    t.failed("c", "9.9.9.9")
    t.succeeded("c")
    assert t.check("c", "9.9.9.9") is ThrottleVerdict.ALLOWED
