"""The contract every Directory backend passes (run against sqlite and slapd)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import pytest

from directory.errors import (
    EntryExistsError,
    EntryNotFoundError,
    ImmutableFieldError,
    InvalidFieldError,
)
from directory.model import (
    BalType,
    Entry,
    Kind,
    Mailbox,
    Patient,
    Practitioner,
    Status,
    key_of,
    with_status,
)
from directory.protocol import Directory, ImportRun
from tests.directory import samples

if TYPE_CHECKING:
    from collections.abc import Sequence


def all_samples() -> list[Entry]:
    return [
        samples.practitioner(),
        samples.organisation(),
        samples.organisation(samples.FINESS_CORSICA, name="CH AJACCIO"),
        samples.mailbox(certificates=(samples.certificate(),)),
        samples.org_mailbox(published=False),
        samples.patient(),
        samples.patient(samples.INS_2, qualified=False),
        samples.operator(),
        samples.delegation(),
    ]


async def test_backend_satisfies_protocol(directory: Directory) -> None:
    assert isinstance(directory, Directory)


@pytest.mark.parametrize("entry", all_samples(), ids=lambda e: type(e).__name__)
async def test_added_entry_round_trips_equal(
    directory: Directory, entry: Entry
) -> None:
    await directory.add(entry)
    kind = type(entry).__name__.lower()
    assert await directory.get(Kind(kind), key_of(entry)) == entry


async def test_get_returns_none_for_absent_key(directory: Directory) -> None:
    assert await directory.get(Kind.MAILBOX, "nobody@medecin.mssante.fr") is None
    assert await directory.practitioner(samples.RPPS_2) is None
    assert await directory.patient(samples.INS_2) is None
    assert await directory.operator("nowhere.example") is None
    assert await directory.resolve("nobody@medecin.mssante.fr") is None


async def test_lookup_with_malformed_key_names_the_field(directory: Directory) -> None:
    with pytest.raises(InvalidFieldError, match="address"):
        await directory.mailbox("not-an-address")
    with pytest.raises(InvalidFieldError, match="RPPS key"):
        await directory.practitioner("10285900312")


async def test_add_twice_is_refused(directory: Directory) -> None:
    await directory.add(samples.mailbox())
    with pytest.raises(EntryExistsError):
        await directory.add(samples.mailbox(display_name="other"))
    mailbox = await directory.mailbox("zoe.moreau@medecin.mssante.fr")
    assert mailbox is not None
    assert mailbox.display_name == "DR MOREAU Zoé"


async def test_practitioner_found_by_rpps_and_by_national_id(
    directory: Directory,
) -> None:
    await directory.add(samples.practitioner())
    by_rpps = await directory.practitioner(samples.RPPS_1)
    by_id = await directory.practitioner("8" + samples.RPPS_1)
    assert by_rpps is not None
    assert by_rpps == by_id
    assert by_rpps.rpps == samples.RPPS_1


async def test_mailbox_domain_is_case_insensitive_local_part_exact(
    directory: Directory,
) -> None:
    await directory.add(samples.mailbox("Zoe.Moreau@medecin.mssante.fr"))
    found = await directory.mailbox("Zoe.Moreau@MEDECIN.mssante.FR")
    assert found is not None
    assert found.address == "Zoe.Moreau@medecin.mssante.fr"
    assert await directory.mailbox("zoe.moreau@medecin.mssante.fr") is None


async def test_resolve_finds_mailbox_and_patient(directory: Directory) -> None:
    await directory.add(samples.mailbox())
    await directory.add(samples.patient())
    mailbox = await directory.resolve("zoe.moreau@medecin.mssante.fr")
    assert isinstance(mailbox, Mailbox)
    patient = await directory.resolve(f"{samples.INS_1}@PATIENT.mssante.example")
    assert isinstance(patient, Patient)
    assert patient.ins == samples.INS_1


async def test_unqualified_patient_has_no_address_to_resolve(
    directory: Directory,
) -> None:
    await directory.add(samples.patient(samples.INS_2, qualified=False))
    assert await directory.resolve(f"{samples.INS_2}@patient.mssante.example") is None
    assert await directory.patient(samples.INS_2) is not None


async def test_operator_found_by_each_certificate_dn(directory: Directory) -> None:
    await directory.add(samples.operator())
    await directory.add(samples.operator("clinique-c.example"))
    found = await directory.operators_for_certificate(
        "cn=mx2.hopital-b.example, o=Hopital B, c=FR"
    )
    assert [o.domain for o in found] == ["clinique-c.example", "hopital-b.example"]
    assert await directory.operators_for_certificate("CN=other,C=FR") == []


async def test_operator_certificate_list_replaced_on_update(
    directory: Directory,
) -> None:
    op = samples.operator()
    await directory.add(op)
    await directory.replace(dataclasses.replace(op, certificates=op.certificates[:1]))
    assert (
        await directory.operators_for_certificate(op.certificates[1].subject_dn) == []
    )
    assert (
        len(await directory.operators_for_certificate(op.certificates[0].subject_dn))
        == 1
    )


async def test_mailbox_found_by_certificate_fingerprint(directory: Directory) -> None:
    cert = samples.certificate()
    await directory.add(samples.mailbox(certificates=(cert,)))
    found = await directory.mailbox_for_certificate(cert.fingerprint.upper())
    assert found is not None
    assert found.address == "zoe.moreau@medecin.mssante.fr"
    assert await directory.mailbox_for_certificate("00" * 32) is None


async def test_mailboxes_of_owner(directory: Directory) -> None:
    await directory.add(samples.mailbox())
    await directory.add(
        samples.mailbox("z.moreau@cabinet.mssante.fr", bal_type=BalType.CAB)
    )
    await directory.add(samples.org_mailbox())
    mine = await directory.mailboxes_of("8" + samples.RPPS_1)
    assert [m.address for m in mine] == [
        "z.moreau@cabinet.mssante.fr",
        "zoe.moreau@medecin.mssante.fr",
    ]
    org = await directory.mailboxes_of("1" + samples.FINESS_1)
    assert [m.address for m in org] == ["urgences@ch-paris-1.mssante.fr"]


async def test_patients_with_proxy_follow_adds_and_replacements(
    directory: Directory,
) -> None:
    import dataclasses

    from directory.model import ProxyGrant, ProxyScope

    first = samples.patient()  # grants aidant-1 a read proxy
    second = samples.patient(
        samples.INS_2,
        proxies=(
            ProxyGrant(
                account="aidant-1", scope=ProxyScope.READ_REPLY, granted_at=samples.T0
            ),
            ProxyGrant(
                account="aidant-2", scope=ProxyScope.READ, granted_at=samples.T0
            ),
        ),
    )
    await directory.add(first)
    await directory.add(second)
    assert [p.ins for p in await directory.patients_with_proxy("aidant-1")] == sorted(
        [first.ins, second.ins]
    )
    assert [p.ins for p in await directory.patients_with_proxy("aidant-2")] == [
        second.ins
    ]
    await directory.replace(dataclasses.replace(second, proxies=()))
    assert [p.ins for p in await directory.patients_with_proxy("aidant-1")] == [
        first.ins
    ]
    assert await directory.patients_with_proxy("aidant-2") == []
    assert await directory.patients_with_proxy("") == []


async def test_delegations_by_account_and_by_mailbox(directory: Directory) -> None:
    await directory.add(samples.delegation())
    await directory.add(samples.delegation("secretaire-2"))
    await directory.add(samples.delegation(mailbox="urgences@ch-paris-1.mssante.fr"))
    by_account = await directory.delegations(account="secretaire-1")
    assert sorted(d.mailbox for d in by_account) == [
        "urgences@ch-paris-1.mssante.fr",
        "zoe.moreau@medecin.mssante.fr",
    ]
    by_mailbox = await directory.delegations(mailbox="zoe.moreau@medecin.mssante.fr")
    assert sorted(d.account for d in by_mailbox) == ["secretaire-1", "secretaire-2"]


async def test_search_matches_names_and_keys_case_insensitively(
    directory: Directory,
) -> None:
    for entry in all_samples():
        await directory.add(entry)
    found = await directory.search("moreau")
    assert {key_of(e) for e in found} >= {
        "8" + samples.RPPS_1,
        "zoe.moreau@medecin.mssante.fr",
    }
    only = await directory.search("MOREAU", kind=Kind.PRACTITIONER)
    assert [key_of(e) for e in only] == ["8" + samples.RPPS_1]
    assert await directory.search("zzz-nothing") == []
    assert len(await directory.search("a", limit=2)) == 2


async def test_search_treats_wildcards_literally(directory: Directory) -> None:
    await directory.add(samples.practitioner())
    assert await directory.search("%") == []
    assert await directory.search("*") == []
    assert await directory.search("_") == []


async def test_entries_streams_each_entry_once_in_key_order(
    directory: Directory,
) -> None:
    rpps_numbers = [samples.luhn_complete(f"1000000{i:03d}") for i in range(25)]
    for rpps in rpps_numbers:
        await directory.add(samples.practitioner(rpps))
    streamed = [key_of(e) async for e in directory.entries(Kind.PRACTITIONER)]
    assert streamed == sorted("8" + r for r in rpps_numbers)
    assert await directory.count(Kind.PRACTITIONER) == 25
    assert await directory.count(Kind.MAILBOX) == 0


async def test_replace_updates_and_requires_existing(directory: Directory) -> None:
    with pytest.raises(EntryNotFoundError):
        await directory.replace(samples.mailbox())
    await directory.add(samples.mailbox())
    await directory.replace(
        samples.mailbox(display_name="Dr Zoé MOREAU", published=False)
    )
    found = await directory.mailbox("zoe.moreau@medecin.mssante.fr")
    assert found is not None
    assert found.display_name == "Dr Zoé MOREAU"
    assert found.published is False


async def test_bal_type_never_changes(directory: Directory) -> None:
    await directory.add(samples.mailbox())
    with pytest.raises(ImmutableFieldError, match="bal_type"):
        await directory.replace(samples.mailbox(bal_type=BalType.CAB))


async def test_set_status_suspends_and_reactivates(directory: Directory) -> None:
    await directory.add(samples.mailbox())
    suspended = await directory.set_status(
        Kind.MAILBOX, "zoe.moreau@MEDECIN.mssante.fr", Status.SUSPENDED
    )
    assert suspended.status is Status.SUSPENDED
    found = await directory.resolve("zoe.moreau@medecin.mssante.fr")
    assert found is not None
    assert found.status is Status.SUSPENDED
    await directory.set_status(
        Kind.MAILBOX, "zoe.moreau@medecin.mssante.fr", Status.ACTIVE
    )
    again = await directory.mailbox("zoe.moreau@medecin.mssante.fr")
    assert again is not None
    assert again.status is Status.ACTIVE


async def test_set_status_of_absent_entry_is_refused(directory: Directory) -> None:
    with pytest.raises(EntryNotFoundError):
        await directory.set_status(Kind.PATIENT, samples.INS_1, Status.REVOKED)


async def test_meta_values(directory: Directory) -> None:
    assert await directory.get_meta("whitelist.generated") is None
    await directory.set_meta("whitelist.generated", "2026-11-22T03:00:00")
    await directory.set_meta("whitelist.generated", "2026-11-23T03:00:00")
    assert await directory.get_meta("whitelist.generated") == "2026-11-23T03:00:00"


# --- imports ---------------------------------------------------------------


def imported(entries: Sequence[Mailbox]) -> list[Mailbox]:
    return [dataclasses.replace(m, source="mssante") for m in entries]


def boxes(*names: str, **kw: object) -> list[Mailbox]:
    return imported([samples.mailbox(f"{n}@medecin.mssante.fr", **kw) for n in names])


async def test_import_counts_added_unchanged_updated(directory: Directory) -> None:
    first = await directory.import_batch(
        boxes("a", "b", "c"), ImportRun("mssante", "r1")
    )
    assert (first.added, first.updated, first.unchanged) == (3, 0, 0)
    second = await directory.import_batch(
        [*boxes("a", "b"), *boxes("c", display_name="changed")],
        ImportRun("mssante", "r2"),
    )
    assert (second.added, second.updated, second.unchanged) == (0, 1, 2)
    found = await directory.mailbox("c@medecin.mssante.fr")
    assert found is not None
    assert found.display_name == "changed"


async def test_import_duplicate_key_in_one_run_is_counted_once(
    directory: Directory,
) -> None:
    run = ImportRun("mssante", "r1")
    counts = await directory.import_batch(boxes("a", "a"), run)
    assert (counts.added, counts.duplicates) == (1, 1)
    later = await directory.import_batch(boxes("a"), run)
    assert (later.added, later.unchanged, later.duplicates) == (0, 0, 1)


async def test_import_merge_combines_rows_of_one_key(directory: Directory) -> None:
    def merge(a: Entry, b: Entry) -> Entry:
        assert isinstance(a, Practitioner)
        assert isinstance(b, Practitioner)
        return dataclasses.replace(a, activities=a.activities + b.activities)

    run = ImportRun("rpps", "r1")
    p = dataclasses.replace(samples.practitioner(), source="rpps")
    counts = await directory.import_batch([p, p], run, merge)
    assert counts.added == 1
    await directory.import_batch([p], run, merge)
    stored = await directory.practitioner(samples.RPPS_1)
    assert stored is not None
    assert len(stored.activities) == 3


async def test_absent_entries_are_suspended_never_deleted(directory: Directory) -> None:
    await directory.import_batch(boxes("a", "b"), ImportRun("mssante", "r1"))
    await directory.add(samples.mailbox("manual@medecin.mssante.fr"))
    run2 = ImportRun("mssante", "r2")
    await directory.import_batch(boxes("a"), run2)
    assert await directory.suspend_absent(Kind.MAILBOX, run2) == [
        "b@medecin.mssante.fr"
    ]
    b = await directory.mailbox("b@medecin.mssante.fr")
    assert b is not None
    assert b.status is Status.SUSPENDED
    manual = await directory.mailbox("manual@medecin.mssante.fr")
    assert manual is not None
    assert manual.status is Status.ACTIVE
    # a second pass has nothing left to suspend
    assert await directory.suspend_absent(Kind.MAILBOX, run2) == []


async def test_reappearing_entry_is_reactivated(directory: Directory) -> None:
    await directory.import_batch(boxes("a", "b"), ImportRun("mssante", "r1"))
    run2 = ImportRun("mssante", "r2")
    await directory.import_batch(boxes("a"), run2)
    await directory.suspend_absent(Kind.MAILBOX, run2)
    counts = await directory.import_batch(boxes("a", "b"), ImportRun("mssante", "r3"))
    assert (counts.updated, counts.unchanged) == (1, 1)
    b = await directory.mailbox("b@medecin.mssante.fr")
    assert b is not None
    assert b.status is Status.ACTIVE


async def test_import_keeps_status_set_by_admin(directory: Directory) -> None:
    await directory.import_batch(boxes("a", "b"), ImportRun("mssante", "r1"))
    await directory.set_status(Kind.MAILBOX, "a@medecin.mssante.fr", Status.REVOKED)
    await directory.set_status(Kind.MAILBOX, "b@medecin.mssante.fr", Status.SUSPENDED)
    await directory.import_batch(
        [*boxes("a", display_name="new"), *boxes("b")], ImportRun("mssante", "r2")
    )
    a = await directory.mailbox("a@medecin.mssante.fr")
    b = await directory.mailbox("b@medecin.mssante.fr")
    assert a is not None
    assert b is not None
    assert (a.status, a.display_name) == (Status.REVOKED, "new")
    assert b.status is Status.SUSPENDED


async def test_import_batch_is_atomic(directory: Directory) -> None:
    class BoomError(Exception):
        pass

    def explode(a: Entry, b: Entry) -> Entry:
        raise BoomError

    p = dataclasses.replace(samples.practitioner(), source="rpps")
    q = dataclasses.replace(samples.practitioner(samples.RPPS_2), source="rpps")
    with pytest.raises(BoomError):
        await directory.import_batch([q, p, p], ImportRun("rpps", "r1"), explode)
    assert await directory.count(Kind.PRACTITIONER) == 0


async def test_revoked_entry_is_not_resurrected_by_suspend_pass(
    directory: Directory,
) -> None:
    await directory.import_batch(boxes("a"), ImportRun("mssante", "r1"))
    await directory.set_status(Kind.MAILBOX, "a@medecin.mssante.fr", Status.REVOKED)
    run2 = ImportRun("mssante", "r2")
    assert await directory.suspend_absent(Kind.MAILBOX, run2) == []
    a = await directory.mailbox("a@medecin.mssante.fr")
    assert a is not None
    assert a.status is Status.REVOKED
    assert with_status(a, Status.ACTIVE).status is Status.ACTIVE
