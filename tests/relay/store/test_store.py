"""The mailbox store with real files: delivery, IMAP metadata, folders, changes."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING

import pytest

from relay.store import (
    Change,
    ChangeKind,
    FlagMode,
    FolderExistsError,
    FolderNotAllowedError,
    FolderNotFoundError,
    InvalidFlagError,
    MailboxNotFoundError,
    MailStore,
    MessageNotFoundError,
    SpecialUse,
    StoreError,
    StoreLockedError,
)
from tests.relay.store.conftest import ALICE, BOB, WHEN, make_message
from tests.support.store_layout import freed, records

if TYPE_CHECKING:
    from pathlib import Path

    from relay.store import MasterKey


def deliver(
    store: MailStore, key: str, message: bytes | None = None, **kw: object
) -> int:
    d = store.deliver(
        ALICE,
        message if message is not None else make_message(subject=key),
        delivery_key=key,
        internal_date=WHEN,
        **kw,  # type: ignore[arg-type]
    )
    return d.uid


# --- mailboxes and delivery ------------------------------------------------


def test_new_mailbox_has_the_five_folders_with_special_use_roles(
    store: MailStore,
) -> None:
    folders = {f.name: f for f in store.folders(ALICE)}
    assert list(folders) == ["INBOX", "Archive", "Drafts", "Sent", "Trash"]
    assert folders["INBOX"].special_use is None
    assert folders["Sent"].special_use is SpecialUse.SENT
    assert folders["Drafts"].special_use is SpecialUse.DRAFTS
    assert folders["Trash"].special_use is SpecialUse.TRASH
    assert folders["Archive"].special_use is SpecialUse.ARCHIVE
    assert all(
        f.subscribed and f.uidnext == 1 and f.exists == 0 for f in folders.values()
    )
    assert len({f.uidvalidity for f in folders.values()}) == 5


def test_ensure_mailbox_is_idempotent_and_domain_case_insensitive(
    store: MailStore,
) -> None:
    before = store.folders(ALICE)
    store.ensure_mailbox(ALICE)
    store.ensure_mailbox(ALICE.upper().replace("ALICE.MARTIN", "alice.martin"))
    assert store.folders(ALICE) == before
    assert store.mailboxes() == [ALICE]


def test_delivered_message_round_trips_byte_for_byte(store: MailStore) -> None:
    message = make_message(attachment_name="cr.pdf") + b"\xff\x00 binary tail\r\n"
    d = store.deliver(ALICE, message, delivery_key="q1:0", internal_date=WHEN)
    assert (d.folder, d.uid, d.size, d.duplicate) == ("INBOX", 1, len(message), False)
    assert store.fetch(ALICE, "INBOX", 1) == message
    [info] = store.messages(ALICE, "INBOX")
    assert info.uid == 1
    assert info.size == len(message)
    assert info.internal_date == WHEN
    assert info.flags == frozenset()
    assert info.recent


def test_internal_date_keeps_its_zone(store: MailStore) -> None:
    paris = datetime(2026, 3, 1, 10, 30, tzinfo=timezone(timedelta(hours=1)))
    store.deliver(ALICE, make_message(), delivery_key="k", internal_date=paris)
    got = store.message(ALICE, "INBOX", 1).internal_date
    assert got == paris
    assert got.utcoffset() == timedelta(hours=1)


def test_naive_internal_date_is_a_caller_bug(store: MailStore) -> None:
    with pytest.raises(ValueError, match="timezone"):
        store.deliver(
            ALICE,
            b"x",
            delivery_key="k",
            internal_date=datetime(2026, 1, 1),  # noqa: DTZ001
        )


def test_second_delivery_with_the_same_key_stores_nothing(store: MailStore) -> None:
    first = store.deliver(
        ALICE, make_message(), delivery_key="q7:alice", internal_date=WHEN
    )
    again = store.deliver(
        ALICE, make_message(), delivery_key="q7:alice", internal_date=WHEN
    )
    assert again.duplicate
    assert (again.folder, again.uid, again.uidvalidity) == (
        first.folder,
        first.uid,
        first.uidvalidity,
    )
    assert len(store.messages(ALICE, "INBOX")) == 1
    assert store.has_delivered("q7:alice")
    assert not store.has_delivered("q8:alice")


def test_duplicate_delivery_is_remembered_across_reopen(
    store_root: Path, master_key: MasterKey
) -> None:
    with MailStore.open(store_root, master_key, sanity_checks=True) as s:
        s.ensure_mailbox(ALICE)
        s.deliver(ALICE, make_message(), delivery_key="q1", internal_date=WHEN)
    with MailStore.open(store_root, master_key, sanity_checks=True) as s:
        assert s.deliver(
            ALICE, make_message(), delivery_key="q1", internal_date=WHEN
        ).duplicate
        assert len(s.messages(ALICE, "INBOX")) == 1


def test_delivery_to_sent_by_role_with_flags(store: MailStore) -> None:
    d = store.deliver(
        ALICE,
        make_message(),
        delivery_key="sent:1",
        internal_date=WHEN,
        folder=SpecialUse.SENT,
        flags=["\\Seen"],
    )
    assert d.folder == "Sent"
    assert store.message(ALICE, "Sent", d.uid).flags == {"\\Seen"}


def test_delivery_to_unknown_mailbox_or_folder_is_refused(store: MailStore) -> None:
    with pytest.raises(MailboxNotFoundError):
        store.deliver(BOB, make_message(), delivery_key="k", internal_date=WHEN)
    with pytest.raises(FolderNotFoundError):
        store.deliver(
            ALICE, make_message(), delivery_key="k", internal_date=WHEN, folder="Nope"
        )
    assert not store.has_delivered("k")


def test_unknown_uid_is_message_not_found(store: MailStore) -> None:
    with pytest.raises(MessageNotFoundError):
        store.fetch(ALICE, "INBOX", 99)
    with pytest.raises(MessageNotFoundError):
        store.structure(ALICE, "INBOX", 99)


def test_store_open_twice_is_refused(
    store_root: Path, master_key: MasterKey, store: MailStore
) -> None:
    with pytest.raises(StoreLockedError):
        MailStore.open(store_root, master_key)


def test_structure_is_cached_at_delivery(store: MailStore) -> None:
    message = make_message(subject="Résultats", attachment_name="bilan.pdf")
    deliver(store, "k", message)
    st = store.structure(ALICE, "INBOX", 1)
    assert st.envelope.message_id == "<1234@clinique.example>"
    assert st.envelope.from_[0].host == "clinique.example"
    assert (st.body.type, st.body.subtype) == ("multipart", "mixed")
    pdf = st.part((2,))
    assert pdf.disposition == ("attachment", (("filename", "bilan.pdf"),))
    assert message[: st.body.body_start] == st.header


# --- UIDs, flags, MODSEQ ------------------------------------------------------


def test_uids_ascend_and_are_never_reused_after_expunge(store: MailStore) -> None:
    uids = [deliver(store, f"k{i}") for i in range(3)]
    assert uids == [1, 2, 3]
    store.store_flags(ALICE, "INBOX", [3], ["\\Deleted"], FlagMode.ADD)
    assert store.expunge(ALICE, "INBOX") == [3]
    assert deliver(store, "k3") == 4
    assert store.folder(ALICE, "INBOX").uidnext == 5


def test_recreated_folder_gets_a_new_uidvalidity(store: MailStore) -> None:
    first = store.create_folder(ALICE, "Projets").uidvalidity
    store.delete_folder(ALICE, "Projets")
    second = store.create_folder(ALICE, "Projets").uidvalidity
    assert second != first
    assert second > first


def test_uidvalidity_survives_reopen(store_root: Path, master_key: MasterKey) -> None:
    with MailStore.open(store_root, master_key) as s:
        s.ensure_mailbox(ALICE)
        before = {f.name: f.uidvalidity for f in s.folders(ALICE)}
    with MailStore.open(store_root, master_key) as s:
        assert {f.name: f.uidvalidity for f in s.folders(ALICE)} == before
        s.ensure_mailbox(BOB)
        assert not set(before.values()) & {f.uidvalidity for f in s.folders(BOB)}


def test_flags_add_remove_replace_with_keywords(store: MailStore) -> None:
    deliver(store, "k")
    [m] = store.store_flags(
        ALICE, "INBOX", [1], ["\\seen", "$Label1", "NonJunk"], FlagMode.ADD
    )
    assert m.flags == {"\\Seen", "$Label1", "NonJunk"}
    [m] = store.store_flags(ALICE, "INBOX", [1], ["$label1"], FlagMode.REMOVE)
    assert m.flags == {"\\Seen", "NonJunk"}
    [m] = store.store_flags(
        ALICE, "INBOX", [1], ["\\Flagged", "\\Answered"], FlagMode.REPLACE
    )
    assert m.flags == {"\\Flagged", "\\Answered"}
    assert store.message(ALICE, "INBOX", 1).flags == {"\\Flagged", "\\Answered"}


@pytest.mark.parametrize(
    "flag", ["\\Recent", "\\Unknown", "two words", "bad(", "", "é"]
)
def test_invalid_flags_are_refused(store: MailStore, flag: str) -> None:
    deliver(store, "k")
    with pytest.raises(InvalidFlagError):
        store.store_flags(ALICE, "INBOX", [1], [flag], FlagMode.ADD)
    assert store.message(ALICE, "INBOX", 1).flags == frozenset()


def test_modseq_rises_only_for_messages_whose_flags_change(store: MailStore) -> None:
    deliver(store, "a")
    deliver(store, "b")
    before = {m.uid: m.modseq for m in store.messages(ALICE, "INBOX")}
    assert before[2] > before[1]
    store.store_flags(ALICE, "INBOX", [1], ["\\Seen"], FlagMode.ADD)
    after = {m.uid: m.modseq for m in store.messages(ALICE, "INBOX")}
    assert after[1] > before[2]
    assert after[2] == before[2]
    assert store.folder(ALICE, "INBOX").highest_modseq == after[1]
    store.store_flags(ALICE, "INBOX", [1], ["\\Seen"], FlagMode.ADD)
    assert store.message(ALICE, "INBOX", 1).modseq == after[1]


def test_folder_counts_unseen_and_recent(store: MailStore) -> None:
    for k in "abc":
        deliver(store, k)
    store.store_flags(ALICE, "INBOX", [2], ["\\Seen"], FlagMode.ADD)
    info = store.folder(ALICE, "inbox")
    assert (info.exists, info.unseen, info.recent) == (3, 2, 3)
    assert store.claim_recent(ALICE, "INBOX") == {1, 2, 3}
    assert store.claim_recent(ALICE, "INBOX") == frozenset()
    assert store.folder(ALICE, "INBOX").recent == 0


def test_store_flags_ignores_missing_uids(store: MailStore) -> None:
    deliver(store, "a")
    out = store.store_flags(ALICE, "INBOX", [1, 5, 9], ["\\Seen"], FlagMode.ADD)
    assert [m.uid for m in out] == [1]


# --- copy, move, expunge ----------------------------------------------------


def test_copy_keeps_flags_and_date_and_shares_the_file(
    store: MailStore, store_root: Path
) -> None:
    message = make_message()
    deliver(store, "a", message)
    store.store_flags(ALICE, "INBOX", [1], ["\\Seen", "$Work"], FlagMode.ADD)
    res = store.copy(ALICE, "INBOX", [1, 42], "Archive")
    assert (res.folder, res.source_uids, res.dest_uids) == ("Archive", (1,), (1,))
    assert res.uidvalidity == store.folder(ALICE, "Archive").uidvalidity
    copy = store.message(ALICE, "Archive", 1)
    assert copy.flags == {"\\Seen", "$Work"}
    assert copy.internal_date == WHEN
    assert copy.recent
    assert store.fetch(ALICE, "Archive", 1) == message
    [record] = records(store_root)
    # The record stays while one copy refers to it.
    store.store_flags(ALICE, "INBOX", [1], ["\\Deleted"], FlagMode.ADD)
    store.expunge(ALICE, "INBOX")
    assert store.fetch(ALICE, "Archive", 1) == message
    assert not freed(store_root, record)
    store.store_flags(ALICE, "Archive", [1], ["\\Deleted"], FlagMode.ADD)
    store.expunge(ALICE, "Archive")
    assert records(store_root) == []
    assert freed(store_root, record)


def test_move_assigns_new_uids_and_empties_the_source(store: MailStore) -> None:
    for k in "abc":
        deliver(store, k)
    res = store.move(ALICE, "INBOX", [1, 3], "Trash")
    assert (res.source_uids, res.dest_uids) == ((1, 3), (1, 2))
    assert [m.uid for m in store.messages(ALICE, "INBOX")] == [2]
    assert [m.uid for m in store.messages(ALICE, "Trash")] == [1, 2]
    assert store.structure(ALICE, "Trash", 2).envelope.subject == "c"
    assert store.fetch(ALICE, "Trash", 2) == make_message(subject="c")


def test_expunge_removes_only_deleted_and_only_given_uids(store: MailStore) -> None:
    for k in "abcd":
        deliver(store, k)
    store.store_flags(ALICE, "INBOX", [1, 2, 3], ["\\Deleted"], FlagMode.ADD)
    assert store.expunge(ALICE, "INBOX", uids=[2, 3, 4]) == [2, 3]
    assert [m.uid for m in store.messages(ALICE, "INBOX")] == [1, 4]
    assert store.expunge(ALICE, "INBOX") == [1]


# --- folders ------------------------------------------------------------------


def test_create_folder_creates_missing_parents(store: MailStore) -> None:
    store.create_folder(ALICE, "Patients/2026/Mars/")
    names = [f.name for f in store.folders(ALICE)]
    assert {"Patients", "Patients/2026", "Patients/2026/Mars"} <= set(names)
    with pytest.raises(FolderExistsError):
        store.create_folder(ALICE, "Patients/2026")
    with pytest.raises(FolderExistsError):
        store.create_folder(ALICE, "inbox")


@pytest.mark.parametrize("name", ["", "/", "a//b", "a\x00b", "a*", "%"])
def test_malformed_folder_names_are_refused(store: MailStore, name: str) -> None:
    with pytest.raises(FolderNotAllowedError):
        store.create_folder(ALICE, name)


def test_rename_moves_children_and_keeps_uids(store: MailStore) -> None:
    store.create_folder(ALICE, "Projets/A")
    uidvalidity = store.folder(ALICE, "Projets/A").uidvalidity
    store.deliver(
        ALICE, make_message(), delivery_key="k", internal_date=WHEN, folder="Projets/A"
    )
    store.rename_folder(ALICE, "Projets", "Travail/Projets")
    names = {f.name for f in store.folders(ALICE)}
    assert {"Travail", "Travail/Projets", "Travail/Projets/A"} <= names
    assert "Projets" not in names
    assert store.folder(ALICE, "Travail/Projets/A").uidvalidity == uidvalidity
    assert store.fetch(ALICE, "Travail/Projets/A", 1) == make_message()
    with pytest.raises(FolderExistsError):
        store.rename_folder(ALICE, "Travail", "Sent")
    with pytest.raises(FolderNotAllowedError):
        store.rename_folder(ALICE, "Travail", "Travail/Sub")


def test_rename_inbox_moves_its_messages_and_leaves_it_empty(store: MailStore) -> None:
    deliver(store, "a")
    deliver(store, "b")
    store.rename_folder(ALICE, "INBOX", "Old")
    assert store.messages(ALICE, "INBOX") == []
    assert [m.uid for m in store.messages(ALICE, "Old")] == [1, 2]
    assert deliver(store, "c") == 3


def test_delete_folder_rules(store: MailStore) -> None:
    with pytest.raises(FolderNotAllowedError):
        store.delete_folder(ALICE, "inbox")
    store.create_folder(ALICE, "A/B")
    with pytest.raises(FolderNotAllowedError, match="sub-folders"):
        store.delete_folder(ALICE, "A")
    store.deliver(
        ALICE, make_message(), delivery_key="k", internal_date=WHEN, folder="A/B"
    )
    store.delete_folder(ALICE, "A/B")
    store.delete_folder(ALICE, "A")
    with pytest.raises(FolderNotFoundError):
        store.messages(ALICE, "A/B")


def test_subscribe_and_unsubscribe(store: MailStore) -> None:
    store.create_folder(ALICE, "Lab")
    assert not store.folder(ALICE, "Lab").subscribed
    store.subscribe(ALICE, "Lab")
    assert store.folder(ALICE, "Lab").subscribed
    store.subscribe(ALICE, "Lab", subscribed=False)
    assert not store.folder(ALICE, "Lab").subscribed


def test_append_returns_appenduid(store: MailStore) -> None:
    res = store.append(
        ALICE, "Drafts", make_message(), internal_date=WHEN, flags=["\\Draft"]
    )
    assert (res.folder, res.uid) == ("Drafts", 1)
    assert res.uidvalidity == store.folder(ALICE, SpecialUse.DRAFTS).uidvalidity
    assert store.message(ALICE, "Drafts", 1).flags == {"\\Draft"}


# --- change notifications -----------------------------------------------------


def test_subscribers_see_exists_flags_and_expunge_in_commit_order(
    store: MailStore,
) -> None:
    seen: list[Change] = []
    handle = store.subscribe_changes(seen.append, address=ALICE)
    other: list[Change] = []
    store.subscribe_changes(other.append, address=BOB)
    deliver(store, "a")
    store.store_flags(ALICE, "INBOX", [1], ["\\Deleted"], FlagMode.ADD)
    store.expunge(ALICE, "INBOX")
    store.move(ALICE, "Sent", [], "Trash")
    assert [(c.kind, c.folder, c.uids) for c in seen] == [
        (ChangeKind.EXISTS, "INBOX", (1,)),
        (ChangeKind.FLAGS, "INBOX", (1,)),
        (ChangeKind.EXPUNGE, "INBOX", (1,)),
    ]
    assert seen[1].messages[0].flags == {"\\Deleted"}
    assert seen[0].modseq < seen[1].modseq < seen[2].modseq
    assert other == []
    store.unsubscribe(handle)
    deliver(store, "b")
    assert len(seen) == 3


def test_move_notifies_exists_in_dest_and_expunge_in_source(store: MailStore) -> None:
    deliver(store, "a")
    seen: list[Change] = []
    store.subscribe_changes(seen.append)
    store.move(ALICE, "INBOX", [1], "Archive")
    assert [(c.kind, c.folder) for c in seen] == [
        (ChangeKind.EXISTS, "Archive"),
        (ChangeKind.EXPUNGE, "INBOX"),
    ]


def test_duplicate_delivery_notifies_nobody(store: MailStore) -> None:
    deliver(store, "a")
    seen: list[Change] = []
    store.subscribe_changes(seen.append)
    deliver(store, "a")
    assert seen == []


# --- concurrency ---------------------------------------------------------------


def test_concurrent_deliveries_from_threads_get_distinct_ascending_uids(
    store: MailStore,
) -> None:
    store.ensure_mailbox(BOB)
    results: list[tuple[str, int]] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(15):
            addr = ALICE if i % 2 else BOB
            d = store.deliver(
                addr,
                make_message(subject=f"{n}-{i}"),
                delivery_key=f"{n}-{i}",
                internal_date=WHEN,
            )
            # Half the workers replay the same keys: exactly once regardless.
            store.deliver(
                addr,
                make_message(subject=f"{n}-{i}"),
                delivery_key=f"{n}-{i}",
                internal_date=WHEN,
            )
            with lock:
                results.append((addr, d.uid))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for addr in (ALICE, BOB):
        uids = sorted(u for a, u in results if a == addr)
        assert uids == list(range(1, len(uids) + 1))
        assert [m.uid for m in store.messages(addr, "INBOX")] == uids
    assert len(results) == 90


def test_same_key_delivered_concurrently_is_stored_once(
    store: MailStore, store_root: Path
) -> None:
    barrier = threading.Barrier(4)
    out: list[bool] = []

    def worker() -> None:
        barrier.wait()
        d = store.deliver(
            ALICE, make_message(), delivery_key="same", internal_date=WHEN
        )
        out.append(d.duplicate)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == [False, True, True, True]
    assert len(store.messages(ALICE, "INBOX")) == 1
    assert len(records(store_root)) == 1


def test_closed_store_refuses_calls(store_root: Path, master_key: MasterKey) -> None:
    s = MailStore.open(store_root, master_key)
    s.close()
    s.close()
    with pytest.raises(StoreError, match="closed"):
        s.ensure_mailbox(ALICE)


def test_message_without_mime_headers_round_trips(store: MailStore) -> None:
    when = datetime(2026, 6, 1, tzinfo=UTC)
    store.deliver(
        ALICE, b"Subject: x\r\n\r\nbody\r\n", delivery_key="u", internal_date=when
    )
    assert store.message(ALICE, "INBOX", 1).internal_date == when
    assert store.fetch(ALICE, "INBOX", 1) == b"Subject: x\r\n\r\nbody\r\n"


def test_refused_delivery_in_a_concurrent_batch_leaves_the_others_stored(
    store: MailStore, store_root: Path
) -> None:
    barrier = threading.Barrier(6)
    errors: list[Exception] = []

    def worker(n: int) -> None:
        barrier.wait()
        folder = "Missing" if n == 0 else "INBOX"
        try:
            store.deliver(
                ALICE,
                make_message(),
                delivery_key=f"k{n}",
                internal_date=WHEN,
                folder=folder,
            )
        except FolderNotFoundError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 1
    assert [m.uid for m in store.messages(ALICE, "INBOX")] == [1, 2, 3, 4, 5]
    assert not store.has_delivered("k0")
    assert len(records(store_root)) == 5


def test_mailbox_listing_decrypts_addresses(store: MailStore) -> None:
    store.ensure_mailbox("Patient.X@Patient.Example")
    assert store.mailboxes() == sorted([ALICE, "Patient.X@patient.example"])
    assert store.has_mailbox("Patient.X@PATIENT.example")
    assert not store.has_mailbox("patient.x@patient.example")
