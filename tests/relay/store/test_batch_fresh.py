"""``deliver_batch(fresh=True)`` skips the early duplicate look-up, never the
exactly-once guarantee: the commit still checks every delivery key."""

from __future__ import annotations

from typing import TYPE_CHECKING

from relay.store import Delivered, MailStore, MasterKey
from tests.relay.test_delivery_batch import A, copy
from tests.support.store_layout import records

if TYPE_CHECKING:
    from pathlib import Path


def test_fresh_batch_with_a_key_seen_before_stores_nothing_twice(
    tmp_path: Path,
) -> None:
    master = MasterKey.generate(tmp_path / "master.key")
    with MailStore.open(tmp_path / "mail", master, sanity_checks=True) as store:
        store.ensure_mailbox(A)
        [first] = store.deliver_batch([copy(A, "q1:a")])
        again = store.deliver_batch([copy(A, "q1:a"), copy(A, "q2:a")], fresh=True)
        assert isinstance(first, Delivered)
        assert [r.duplicate for r in again if isinstance(r, Delivered)] == [True, False]
        assert isinstance(again[0], Delivered)
        assert again[0].uid == first.uid
        assert [m.uid for m in store.messages(A, "INBOX")] == [1, 2]
        # The duplicate's record was freed: one record per message.
        live = records(tmp_path / "mail")
        assert len(live) == 2
        [segment] = {r.path(tmp_path / "mail") for r in live}
        assert segment.stat().st_blocks * 512 < 3 * live[0].length + 4096
