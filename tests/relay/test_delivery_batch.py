"""Batched delivery into the store: one sync round and one index commit for
many copies, each still stored exactly once per delivery key."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from relay.store import (
    Delivered,
    MailboxNotFoundError,
    MailStore,
    MasterKey,
    NewDelivery,
)
from tests.support.store_layout import records

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

AT = datetime(2026, 11, 23, 10, 30, tzinfo=UTC)
A = "a@ch-paris-1.mssante.fr"
B = "b@medecin.mssante.fr"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[MailStore]:
    master = MasterKey.generate(tmp_path / "master.key")
    with MailStore.open(tmp_path / "mail", master, sanity_checks=True) as s:
        s.ensure_mailbox(A)
        s.ensure_mailbox(B)
        yield s


def copy(
    address: str, key: str, body: bytes = b"Subject: x\r\n\r\nbody\r\n"
) -> NewDelivery:
    return NewDelivery(
        address=address, message=body, delivery_key=key, internal_date=AT
    )


def test_batch_stores_every_copy_with_its_own_uid(store: MailStore) -> None:
    results = store.deliver_batch(
        [copy(A, "q1:a"), copy(A, "q2:a"), copy(B, "q1:sent")]
    )
    assert all(isinstance(r, Delivered) and not r.duplicate for r in results)
    assert [m.uid for m in store.messages(A, "INBOX")] == [1, 2]
    assert len(store.messages(B, "INBOX")) == 1
    assert store.fetch(A, "INBOX", 2) == b"Subject: x\r\n\r\nbody\r\n"


def test_replayed_batch_stores_nothing_twice(store: MailStore) -> None:
    batch = [copy(A, "q1:a"), copy(B, "q1:sent")]
    first = store.deliver_batch(batch)
    again = store.deliver_batch(batch)
    assert [r.duplicate for r in again if isinstance(r, Delivered)] == [True, True]
    assert [(r.folder, r.uid) for r in again if isinstance(r, Delivered)] == [
        (r.folder, r.uid) for r in first if isinstance(r, Delivered)
    ]
    assert len(store.messages(A, "INBOX")) == 1


def test_same_key_twice_in_one_batch_is_stored_once(store: MailStore) -> None:
    results = store.deliver_batch([copy(A, "q1:a"), copy(A, "q1:a")])
    assert [r.duplicate for r in results if isinstance(r, Delivered)] == [False, True]
    assert len(store.messages(A, "INBOX")) == 1


def test_one_refused_copy_does_not_stop_the_others(store: MailStore) -> None:
    results = store.deliver_batch(
        [copy(A, "q1:a"), copy("nobody@ch-paris-1.mssante.fr", "q1:x"), copy(B, "q1:b")]
    )
    assert isinstance(results[0], Delivered)
    assert isinstance(results[1], MailboxNotFoundError)
    assert isinstance(results[2], Delivered)
    assert store.has_delivered("q1:a")
    assert not store.has_delivered("q1:x")


def test_batch_leaves_no_file_without_its_row(store: MailStore, tmp_path: Path) -> None:
    store.deliver_batch([copy(A, f"q{n}:a") for n in range(5)])
    assert len(records(tmp_path / "mail")) == 5
    assert len(store.messages(A, "INBOX")) == 5
