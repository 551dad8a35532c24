"""The SQLite outbound queue: idempotent enqueue, leases, outcomes, admin changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from relay.queue.outbound import (
    OutboundError,
    Outcome,
    SqliteOutboundQueue,
    State,
    UnknownQueueIdError,
)
from relay.queue.spool import Envelope, Recipient

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
KEY = bytes(range(32))


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[SqliteOutboundQueue]:
    q = SqliteOutboundQueue.open(tmp_path, KEY)
    yield q
    q.close()


def _envelope(queue_id: str = "q1") -> Envelope:
    return Envelope(
        sender="a@op-a.example",
        recipients=(
            Recipient(address="b1@op-b.example", notify=("SUCCESS", "FAILURE")),
            Recipient(address="b2@op-b.example", orcpt="rfc822;b2@op-b.example"),
            Recipient(address="c@op-c.example"),
        ),
        received_at=T0,
        channel="submission",
        envid="env",
        ret="HDRS",
        queue_id=queue_id,
    )


def test_enqueue_is_idempotent_and_claims_group_by_domain(
    queue: SqliteOutboundQueue,
) -> None:
    env = _envelope()
    assert queue.enqueue(env, b"body", env.recipients, now=T0)
    assert not queue.enqueue(env, b"body", env.recipients, now=T0)
    assert queue.due(T0) == {"op-b.example": 2, "op-c.example": 1}
    [claimed] = queue.claim("op-b.example", T0, limit=10)
    assert claimed.content == b"body"
    assert [r.address for r in claimed.recipients] == [
        "b1@op-b.example",
        "b2@op-b.example",
    ]
    assert claimed.recipients[0].notify == ("SUCCESS", "FAILURE")
    assert claimed.recipients[1].orcpt == "rfc822;b2@op-b.example"
    # Leased: not due again, not claimable twice.
    assert queue.due(T0) == {"op-c.example": 1}
    assert queue.claim("op-b.example", T0, limit=10) == []


def test_an_expired_lease_makes_the_recipient_claimable_again(
    queue: SqliteOutboundQueue,
) -> None:
    env = _envelope()
    queue.enqueue(env, b"body", env.recipients, now=T0)
    queue.claim("op-c.example", T0, limit=10, lease=60)
    later = T0 + timedelta(seconds=61)
    assert [c.message.id for c in queue.claim("op-c.example", later, limit=10)] == [
        "q1"
    ]


def test_outcomes_remove_the_message_when_every_recipient_is_done(
    queue: SqliteOutboundQueue,
) -> None:
    env = _envelope()
    queue.enqueue(env, b"body", env.recipients, now=T0)
    retry_at = T0 + timedelta(minutes=5)
    queue.record(
        [
            Outcome(
                message_id="q1",
                address="b1@op-b.example",
                state=State.DELIVERED,
                reply="250 ok",
            ),
            Outcome(
                message_id="q1",
                address="b2@op-b.example",
                state=State.BOUNCED,
                reply="550 5.1.1 unknown",
            ),
            Outcome(
                message_id="q1",
                address="c@op-c.example",
                state=State.QUEUED,
                reply="451 4.4.1 down",
                next_attempt=retry_at,
                delay_notified=True,
            ),
        ]
    )
    assert queue.next_due() == retry_at
    _, recipients = queue.message("q1")
    assert [(r.state, r.attempts, r.delay_notified) for r in recipients] == [
        (State.DELIVERED, 1, False),
        (State.BOUNCED, 1, False),
        (State.QUEUED, 1, True),
    ]
    assert queue.due(T0) == {}
    assert queue.due(retry_at) == {"op-c.example": 1}
    queue.record(
        [
            Outcome(
                message_id="q1",
                address="c@op-c.example",
                state=State.DELIVERED,
                reply="250 ok",
            )
        ]
    )
    assert queue.messages() == []
    assert queue.next_due() is None


def test_a_deferral_needs_its_next_attempt() -> None:
    with pytest.raises(ValueError, match="next_attempt"):
        Outcome(
            message_id="q1", address="c@op-c.example", state=State.QUEUED, reply="451"
        )


def test_a_batch_enqueues_in_one_go_and_skips_what_is_known(
    queue: SqliteOutboundQueue,
) -> None:
    first, second = _envelope("q1"), _envelope("q2")
    assert queue.enqueue_many(
        [(first, b"one", first.recipients), (second, b"two", second.recipients[:1])],
        now=T0,
    ) == [True, True]
    assert queue.enqueue_many([(first, b"one", first.recipients)], now=T0) == [False]
    assert [m.id for m, _ in queue.messages()] == ["q1", "q2"]


def test_held_messages_wait_and_admin_changes_name_unknown_ids(
    queue: SqliteOutboundQueue,
) -> None:
    env = _envelope()
    queue.enqueue(env, b"body", env.recipients, now=T0)
    queue.hold("q1")
    assert queue.due(T0) == {}
    assert queue.messages()[0][0].held
    queue.hold("q1", held=False)
    assert queue.retry(None, T0) == 3
    for change in (
        lambda: queue.hold("nope"),
        lambda: queue.retry("nope", T0),
        lambda: queue.delete("nope"),
        lambda: queue.message("nope"),
    ):
        with pytest.raises(UnknownQueueIdError, match="nope"):
            change()
    queue.delete("q1")
    assert queue.messages() == []


def test_the_content_is_sealed_at_rest(tmp_path: Path) -> None:
    queue = SqliteOutboundQueue.open(tmp_path, KEY)
    env = _envelope()
    queue.enqueue(env, b"Compte rendu confidentiel", env.recipients, now=T0)
    queue.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert b"Compte rendu confidentiel" not in raw
    assert (tmp_path / "outbound.sqlite3").stat().st_mode & 0o777 == 0o600
    other = SqliteOutboundQueue.open(tmp_path, bytes(32))
    try:
        with pytest.raises(OutboundError, match="integrity"):
            other.claim("op-b.example", T0, limit=1)
    finally:
        other.close()
