"""Account store: app passwords, external ids, mechanism policy, failure delay."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from argon2 import PasswordHasher

from relay.accounts import (
    DEMO_MECHANISMS,
    PRODUCTION_MECHANISMS,
    AccountExistsError,
    AccountKind,
    AccountStore,
    AppPasswordError,
    LoginThrottle,
    Mechanism,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

PASSWORD = "Main-secret-42!"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AccountStore]:
    s = AccountStore(
        tmp_path / "accounts.sqlite3",
        PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1),
    )
    s.create("zoe", AccountKind.PRACTITIONER, PASSWORD, ["zoe@example.test"])
    yield s
    s.close()


def test_main_password_and_app_password_are_told_apart(store: AccountStore) -> None:
    secret = store.add_app_password("zoe", "laptop")
    main = store.verify_password("zoe", PASSWORD)
    app = store.verify_password("zoe", secret)
    assert main is not None
    assert main.mechanism is Mechanism.PASSWORD
    assert app is not None
    assert (app.mechanism, app.device) == (Mechanism.APP_PASSWORD, "laptop")
    assert store.verify_password("zoe", "laptop") is None


def test_revoked_app_password_stops_at_once_even_when_cached(
    store: AccountStore,
) -> None:
    secret = store.add_app_password("zoe", "phone")
    assert store.verify_password("zoe", secret) is not None  # now cached
    store.revoke_app_password("zoe", "phone")
    assert store.verify_password("zoe", secret) is None


def test_app_password_names_are_unique_per_login(store: AccountStore) -> None:
    store.add_app_password("zoe", "phone")
    with pytest.raises(AppPasswordError):
        store.add_app_password("zoe", "phone")
    with pytest.raises(AppPasswordError):
        store.revoke_app_password("zoe", "tablet")


def test_account_without_main_password_matches_no_password(
    store: AccountStore,
) -> None:
    store.create("lps", AccountKind.APPLICATION, None, ["lps@example.test"])
    assert store.verify_password("lps", "") is None
    assert store.verify_password("lps", "!") is None
    assert store.verify_password("lps", "not a real password: timing only") is None


def test_external_id_maps_to_one_account(store: AccountStore) -> None:
    store.set_external_id("zoe", "810003456789")
    found = store.by_external_id("810003456789")
    assert found is not None
    assert found.login == "zoe"
    with pytest.raises(AccountExistsError):
        store.create(
            "other", AccountKind.PRACTITIONER, None, external_id="810003456789"
        )


def test_production_mechanisms_forbid_main_passwords_for_practitioners() -> None:
    assert DEMO_MECHANISMS.allows(AccountKind.PRACTITIONER, Mechanism.PASSWORD)
    assert not PRODUCTION_MECHANISMS.allows(
        AccountKind.PRACTITIONER, Mechanism.PASSWORD
    )
    assert not PRODUCTION_MECHANISMS.allows(AccountKind.STAFF, Mechanism.PASSWORD)
    assert PRODUCTION_MECHANISMS.allows(
        AccountKind.PRACTITIONER, Mechanism.APP_PASSWORD
    )
    assert PRODUCTION_MECHANISMS.allows(AccountKind.APPLICATION, Mechanism.EXTERNAL)
    assert PRODUCTION_MECHANISMS.allows(AccountKind.PATIENT, Mechanism.PASSWORD)


def test_failure_delay_doubles_up_to_the_cap() -> None:
    now = [0.0]
    throttle = LoginThrottle(
        max_failures=100,
        max_failures_per_peer=100,
        lockout=600,
        base_delay=1.0,
        max_delay=5.0,
        clock=lambda: now[0],
    )
    delays = []
    for _ in range(5):
        throttle.failed("zoe", "192.0.2.1")
        delays.append(throttle.delay("zoe", "192.0.2.1"))
    assert delays == [1.0, 2.0, 4.0, 5.0, 5.0]
    assert (
        LoginThrottle(max_failures=1, max_failures_per_peer=1, lockout=1).delay(
            "zoe", "192.0.2.1"
        )
        == 0.0
    )
