"""Segment files: many messages per file, one writer per segment, freed
records deallocated at once."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from typing import TYPE_CHECKING

import pytest

from relay.store import FlagMode, MailStore, MessageNotFoundError, NewDelivery
from relay.store import _segments as segments
from tests.relay.store.conftest import ALICE, BOB, WHEN, make_message
from tests.support.store_layout import freed, records, segment_files

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path


def _expunge(store: MailStore, address: str, uid: int) -> None:
    store.store_flags(address, "INBOX", [uid], ["\\Deleted"], FlagMode.ADD)
    assert store.expunge(address, "INBOX") == [uid]


def test_a_batch_for_several_mailboxes_goes_into_one_segment(
    store: MailStore, store_root: Path
) -> None:
    store.ensure_mailbox(BOB)
    messages = [make_message(subject=f"m{n}") for n in range(4)]
    store.deliver_batch(
        [
            NewDelivery(
                address=ALICE if n % 2 else BOB,
                message=m,
                delivery_key=f"q{n}",
                internal_date=WHEN,
            )
            for n, m in enumerate(messages)
        ]
    )
    live = records(store_root)
    assert len(live) == 4
    assert len({r.segment for r in live}) == 1
    # Back to back after the header, in the batch's order.
    assert live[0].offset == len(segments.HEADER)
    for a, b in itertools.pairwise(live):
        assert b.offset == a.offset + a.length
    assert store.fetch(ALICE, "INBOX", 1) == messages[1]
    assert store.fetch(BOB, "INBOX", 2) == messages[2]


def test_a_full_segment_takes_no_more_records(
    store: MailStore, store_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "MAX_SEGMENT_BYTES", 100)
    for n in range(3):
        store.deliver(ALICE, make_message(), delivery_key=f"k{n}", internal_date=WHEN)
    # Each message takes its segment past 100 bytes: three segments.
    assert len({r.segment for r in records(store_root)}) == 3
    assert len(segment_files(store_root)) == 3
    # A full segment whose records are all freed is removed at once.
    before = records(store_root)
    _expunge(store, ALICE, 1)
    [gone] = [r for r in before if r not in records(store_root)]
    assert not gone.path(store_root).exists()
    assert len(segment_files(store_root)) == 2
    assert [m.uid for m in store.messages(ALICE, "INBOX")] == [2, 3]


def test_concurrent_batches_write_to_segments_of_their_own(
    store: MailStore, store_root: Path
) -> None:
    barrier = threading.Barrier(4)

    def worker(n: int) -> None:
        barrier.wait()
        for k in range(5):
            store.deliver(
                ALICE,
                make_message(subject=f"w{n}-{k}"),
                delivery_key=f"w{n}-{k}",
                internal_date=WHEN,
            )

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    live = records(store_root)
    assert len(live) == 20
    # No two records overlap, whichever segment they share.
    by_segment: dict[int, list[tuple[int, int]]] = {}
    for r in live:
        by_segment.setdefault(r.segment, []).append((r.offset, r.offset + r.length))
    for spans in by_segment.values():
        spans.sort()
        assert all(a[1] <= b[0] for a, b in itertools.pairwise(spans))
    fetched = store.fetch_many(ALICE, "INBOX", range(1, 21))
    assert len(fetched) == 20


def test_where_holes_cannot_be_punched_a_freed_record_is_zeroed(
    store: MailStore, store_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(segments, "_fallocate", None)
    store.deliver(ALICE, make_message(), delivery_key="a", internal_date=WHEN)
    store.deliver(ALICE, make_message(), delivery_key="b", internal_date=WHEN)
    first, second = records(store_root)
    _expunge(store, ALICE, 1)
    assert first.read(store_root) == bytes(first.length)
    assert not freed(store_root, second)
    assert store.fetch(ALICE, "INBOX", 2) == make_message()


def test_a_punched_record_gives_its_space_back(
    store: MailStore, store_root: Path
) -> None:
    probe = store_root / "probe"
    probe.write_bytes(bytes(65536))
    fd = os.open(probe, os.O_WRONLY)
    try:
        if not segments._punch(fd, 0, 4096):
            pytest.skip("this file system cannot punch holes (zeros instead)")
    finally:
        os.close(fd)
    big = make_message(body="x" * 400_000)
    store.deliver(ALICE, big, delivery_key="big", internal_date=WHEN)
    store.deliver(ALICE, make_message(), delivery_key="small", internal_date=WHEN)
    [segment] = segment_files(store_root)
    before = segment.stat().st_blocks
    _expunge(store, ALICE, 1)
    # The file keeps its size; the blocks under the freed range are gone.
    assert segment.stat().st_blocks * 512 < before * 512 - 300_000
    assert store.fetch(ALICE, "INBOX", 2) == make_message()


def test_a_message_expunged_between_index_and_record_reads_is_not_found(
    store: MailStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.deliver(ALICE, make_message(), delivery_key="a", internal_date=WHEN)
    store.deliver(ALICE, make_message(), delivery_key="b", internal_date=WHEN)
    reader = store._segments.reader
    monkeypatch.setattr(store._segments, "reader", expunge_first_of(store, reader, 1))
    with pytest.raises(MessageNotFoundError):
        store.fetch(ALICE, "INBOX", 1)
    monkeypatch.setattr(store._segments, "reader", reader)
    store.deliver(ALICE, make_message(), delivery_key="c", internal_date=WHEN)
    monkeypatch.setattr(store._segments, "reader", expunge_first_of(store, reader, 2))
    assert store.fetch_many(ALICE, "INBOX", [2, 3]) == {3: make_message()}


def expunge_first_of(
    store: MailStore,
    reader: Callable[[], contextlib.AbstractContextManager[segments.Reader]],
    uid: int,
) -> Callable[[], contextlib.AbstractContextManager[segments.Reader]]:
    """``reader`` after another session's EXPUNGE of ``uid`` has committed
    and freed its record: between a read's index look-up and its record
    read."""

    @contextlib.contextmanager
    def wrapped() -> Iterator[segments.Reader]:
        _expunge(store, ALICE, uid)
        with reader() as r:
            yield r

    return wrapped
