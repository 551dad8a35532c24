"""The pure retry and reply rules of outbound delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from relay.queue.schedule import (
    RetryPolicy,
    Verdict,
    verdict,
    wants_failure_notice,
    wants_success_notice,
)

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def test_backoff_doubles_up_to_the_maximum_without_jitter() -> None:
    policy = RetryPolicy(minimal_backoff=300, maximal_backoff=4000, jitter=0)
    assert [policy.backoff(n, 0.5) for n in range(1, 7)] == [
        300,
        600,
        1200,
        2400,
        4000,
        4000,
    ]


def test_jitter_spreads_the_delay_both_ways() -> None:
    policy = RetryPolicy(minimal_backoff=100, maximal_backoff=100, jitter=0.2)
    assert policy.backoff(1, 0.0) == pytest.approx(80)
    assert policy.backoff(1, 0.999999) == pytest.approx(120, rel=1e-4)
    assert policy.next_attempt(1, T0, 0.5) == T0 + timedelta(seconds=100)


def test_the_lifetime_ends_retries() -> None:
    policy = RetryPolicy()  # Postfix: five days
    assert not policy.expired(T0, T0 + timedelta(days=4, hours=23))
    assert policy.expired(T0, T0 + timedelta(days=5))
    assert policy.give_up_at(T0) == T0 + timedelta(days=5)


def test_a_delay_notice_only_when_asked_once_and_late_enough() -> None:
    policy = RetryPolicy(delay_warning=3600)
    late = T0 + timedelta(hours=2)
    assert policy.wants_delay_notice(T0, late, ("DELAY",), already_sent=False)
    assert not policy.wants_delay_notice(T0, late, ("DELAY",), already_sent=True)
    assert not policy.wants_delay_notice(T0, late, ("FAILURE",), already_sent=False)
    assert not policy.wants_delay_notice(T0, late, (), already_sent=False)
    early = T0 + timedelta(minutes=10)
    assert not policy.wants_delay_notice(T0, early, ("DELAY",), already_sent=False)


@pytest.mark.parametrize(
    ("code", "expected"),
    [(250, Verdict.DELIVERED), (451, Verdict.DEFERRED), (550, Verdict.BOUNCED)],
)
def test_the_first_digit_decides(code: int, expected: Verdict) -> None:
    assert verdict(code) is expected


def test_notices_follow_notify_and_never_answer_a_null_sender() -> None:
    assert wants_failure_notice("a@x.example", ())  # RFC 3461 §4.1 default
    assert wants_failure_notice("a@x.example", ("FAILURE", "DELAY"))
    assert not wants_failure_notice("a@x.example", ("NEVER",))
    assert not wants_failure_notice("a@x.example", ("SUCCESS",))
    assert not wants_failure_notice("", ())
    assert wants_success_notice("a@x.example", ("SUCCESS",))
    assert not wants_success_notice("", ("SUCCESS",))


def test_a_policy_that_cannot_work_is_refused() -> None:
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.0)
    with pytest.raises(ValueError, match="maximal_backoff"):
        RetryPolicy(minimal_backoff=10, maximal_backoff=5)
