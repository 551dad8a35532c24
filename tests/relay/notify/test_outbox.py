"""The notice outbox: coalescing, retries, never a code stored."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from relay.contact import NoticeKind
from relay.notify.outbox import NoticeOutbox

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

A = "180017512345678@patient.mssante.example"
B = "280027512345678@patient.mssante.example"
HOUR = 3600.0
NEW = NoticeKind.NEW_MESSAGE


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[NoticeOutbox]:
    box = NoticeOutbox.open(tmp_path)
    yield box
    box.close()


def test_messages_while_a_notice_waits_are_coalesced_into_it(
    outbox: NoticeOutbox,
) -> None:
    assert outbox.enqueue([A, A, B], NEW, now=100.0, min_interval=HOUR) == 2
    assert outbox.enqueue([A], NEW, now=101.0, min_interval=HOUR) == 0
    assert [p.mailbox for p in outbox.due(101.0)] == [A, B]


def test_a_message_soon_after_a_notice_waits_for_the_interval(
    outbox: NoticeOutbox,
) -> None:
    outbox.enqueue([A], NEW, now=100.0, min_interval=HOUR)
    [first] = outbox.due(100.0)
    outbox.sent(first, now=100.0)
    outbox.enqueue([A], NEW, now=200.0, min_interval=HOUR)
    assert outbox.due(200.0) == []
    assert outbox.next_due() == 100.0 + HOUR
    [later] = outbox.due(100.0 + HOUR)
    assert later.created_at == 200.0


def test_a_message_after_the_interval_is_notified_at_once(outbox: NoticeOutbox) -> None:
    outbox.enqueue([A], NEW, now=100.0, min_interval=HOUR)
    outbox.sent(outbox.due(100.0)[0], now=100.0)
    outbox.enqueue([A], NEW, now=100.0 + 2 * HOUR, min_interval=HOUR)
    assert [p.mailbox for p in outbox.due(100.0 + 2 * HOUR)] == [A]


def test_a_retry_counts_the_attempt_and_remembers_the_channels_done(
    outbox: NoticeOutbox,
) -> None:
    outbox.enqueue([A], NEW, now=100.0, min_interval=HOUR)
    [p] = outbox.due(100.0)
    outbox.retry(p, due_at=160.0, done=frozenset({"sms"}))
    assert outbox.due(159.0) == []
    [again] = outbox.due(160.0)
    assert again.attempts == 1
    assert again.done == frozenset({"sms"})
    outbox.drop(again)
    assert outbox.next_due() is None


def test_the_outbox_survives_a_restart(tmp_path: Path) -> None:
    box = NoticeOutbox.open(tmp_path)
    box.enqueue([A], NEW, now=100.0, min_interval=HOUR)
    box.close()
    reopened = NoticeOutbox.open(tmp_path)
    try:
        assert [p.mailbox for p in reopened.due(100.0)] == [A]
    finally:
        reopened.close()


@pytest.mark.parametrize("kind", [NoticeKind.ACTIVATION_CODE, NoticeKind.RECOVERY_CODE])
def test_notices_carrying_a_code_are_never_stored(
    outbox: NoticeOutbox, kind: NoticeKind
) -> None:
    with pytest.raises(ValueError, match="never queued"):
        outbox.enqueue([A], kind, now=100.0, min_interval=HOUR)
