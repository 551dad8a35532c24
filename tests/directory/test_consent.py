"""The consent ledger and consent changes, against both backends (contract),
and the pure change rules."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from directory.consent import (
    Block,
    GrantProxy,
    OpenBreakGlass,
    OptIn,
    OptOut,
    RevokeProxy,
    SetContact,
    SetTreatingDoctor,
    Unblock,
    canonical_party,
)
from directory.errors import EntryNotFoundError, InvalidFieldError
from directory.model import (
    BreakGlassGrant,
    CareKind,
    ConsentAction,
    ConsentRecord,
    ProxyScope,
)
from directory.sqlite import SqliteDirectory
from tests.directory import samples

if TYPE_CHECKING:
    from directory.consent import ConsentChange
    from directory.protocol import Directory

NOW = samples.T0
PATIENT = samples.patient(blocked_senders=(), proxies=())
DOCTOR = "zoe.moreau@medecin.mssante.fr"


async def test_each_change_is_applied_and_recorded_in_order(
    directory: Directory,
) -> None:
    await directory.add(PATIENT)
    ins = PATIENT.ins
    changes: list[ConsentChange] = [
        OptOut(),
        OptIn(),
        Block("8" + samples.RPPS_2),
        Block("1" + samples.FINESS_1),
        Unblock("8" + samples.RPPS_2),
        GrantProxy("aidant-2", ProxyScope.READ_REPLY, NOW + timedelta(days=30)),
        RevokeProxy("aidant-2"),
        SetContact(email="Patient@Example.org", phone="+33612345678"),
        SetTreatingDoctor(DOCTOR),
        OpenBreakGlass("admin-1", "appel du patient", NOW + timedelta(hours=1)),
    ]
    for n, change in enumerate(changes):
        outcome = await directory.change_consent(
            ins, change, actor=f"guichet-{n}", now=NOW + timedelta(minutes=n)
        )
        assert outcome.record is not None
        assert outcome.record.sequence == n + 1
        assert await directory.patient(ins) == outcome.patient
    history = await directory.consent_history(ins)
    assert [r.action for r in history] == [
        ConsentAction.OPT_OUT,
        ConsentAction.OPT_IN,
        ConsentAction.BLOCK,
        ConsentAction.BLOCK,
        ConsentAction.UNBLOCK,
        ConsentAction.PROXY_GRANTED,
        ConsentAction.PROXY_REVOKED,
        ConsentAction.CONTACT_CHANGED,
        ConsentAction.TREATING_DOCTOR_SET,
        ConsentAction.BREAK_GLASS_OPENED,
    ]
    assert [r.sequence for r in history] == list(range(1, 11))
    assert history[3].details == {"party": "1" + samples.FINESS_1}
    assert history[5].details == {
        "account": "aidant-2",
        "scope": "read-reply",
        "until": (NOW + timedelta(days=30)).isoformat(),
    }
    # Which contact changed, not the contact itself.
    assert history[7].details == {"email": "set", "phone": "set"}
    assert history[0].actor == "guichet-0"
    assert history[0].time == NOW
    final = await directory.patient(ins)
    assert final is not None
    assert final.blocked_senders == ("1" + samples.FINESS_1,)
    assert final.contact_email == "Patient@example.org"
    assert [
        r.party for r in final.care_relationships if r.kind is CareKind.TREATING
    ] == [DOCTOR]
    assert [g.account for g in final.break_glass] == ["admin-1"]
    assert final.break_glass[0].reason == "appel du patient"
    assert final.proxies == ()


async def test_a_change_that_changes_nothing_leaves_no_record(
    directory: Directory,
) -> None:
    await directory.add(PATIENT)
    outcome = await directory.change_consent(PATIENT.ins, OptIn(), actor="cli", now=NOW)
    assert outcome.record is None
    assert outcome.patient == PATIENT
    assert await directory.consent_history(PATIENT.ins) == []


async def test_refused_change_stores_nothing(directory: Directory) -> None:
    await directory.add(PATIENT)
    with pytest.raises(EntryNotFoundError):
        await directory.change_consent(
            PATIENT.ins, RevokeProxy("nobody"), actor="cli", now=NOW
        )
    with pytest.raises(EntryNotFoundError):
        await directory.change_consent(samples.INS_2, OptOut(), actor="cli", now=NOW)
    assert await directory.consent_history(PATIENT.ins) == []
    assert await directory.consent_history(samples.INS_2) == []
    assert await directory.patient(PATIENT.ins) == PATIENT


async def test_concurrent_changes_are_all_applied_and_numbered_once(
    directory: Directory,
) -> None:
    await directory.add(PATIENT)
    parties = [
        "8" + samples.RPPS_1,
        "8" + samples.RPPS_2,
        "1" + samples.FINESS_1,
        "paul.durand@medecin.mssante.fr",
    ]
    await asyncio.gather(
        *(
            directory.change_consent(PATIENT.ins, Block(p), actor="cli", now=NOW)
            for p in parties
        )
    )
    history = await directory.consent_history(PATIENT.ins)
    assert [r.sequence for r in history] == [1, 2, 3, 4]
    assert sorted(r.details["party"] for r in history) == sorted(parties)
    stored = await directory.patient(PATIENT.ins)
    assert stored is not None
    assert stored.blocked_senders == tuple(sorted(parties))


async def test_ledger_rows_cannot_be_changed_or_deleted_in_sqlite(
    tmp_path: object,
) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    path = tmp_path / "d.sqlite3"
    d = await SqliteDirectory.open(path)
    try:
        await d.add(PATIENT)
        await d.change_consent(PATIENT.ins, OptOut(), actor="cli", now=NOW)
    finally:
        await d.close()
    db = sqlite3.connect(path)
    try:
        for sql in (
            "UPDATE consent_ledger SET record='{}'",
            "DELETE FROM consent_ledger",
            "INSERT OR REPLACE INTO consent_ledger VALUES (?, 1, '{}')",
        ):
            args = (PATIENT.ins,) if "?" in sql else ()
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                db.execute(sql, args)
    finally:
        db.close()


def test_record_detail_takes_identifiers_only() -> None:
    with pytest.raises(InvalidFieldError, match="detail"):
        ConsentRecord(
            ins=PATIENT.ins,
            sequence=1,
            time=NOW,
            actor="cli",
            action=ConsentAction.BLOCK,
            detail=(("note", "diabète"),),
        )
    with pytest.raises(InvalidFieldError, match=r"detail\.party"):
        ConsentRecord(
            ins=PATIENT.ins,
            sequence=1,
            time=NOW,
            actor="cli",
            action=ConsentAction.BLOCK,
            detail=(("party", "a\nb"),),
        )


def test_record_json_round_trips() -> None:
    record = ConsentRecord(
        ins=PATIENT.ins,
        sequence=3,
        time=NOW,
        actor="cli",
        action=ConsentAction.PROXY_GRANTED,
        detail=(("scope", "read"), ("account", "aidant-1")),
    )
    assert ConsentRecord.from_json(record.as_json()) == record


def test_blocked_party_is_canonical_and_checked() -> None:
    assert canonical_party(" 8" + samples.RPPS_1) == "8" + samples.RPPS_1
    assert canonical_party("Zoe@Medecin.MSSante.fr") == "Zoe@medecin.mssante.fr"
    with pytest.raises(InvalidFieldError, match="party"):
        canonical_party("8123")
    with pytest.raises(InvalidFieldError, match="party"):
        canonical_party("dr house")


def test_break_glass_needs_a_reason_and_lasts_at_most_a_day() -> None:
    with pytest.raises(InvalidFieldError, match="reason"):
        BreakGlassGrant(
            account="admin", reason=" ", opened_at=NOW, expires=NOW + timedelta(hours=1)
        )
    with pytest.raises(InvalidFieldError, match="expires"):
        BreakGlassGrant(
            account="admin",
            reason="r",
            opened_at=NOW,
            expires=NOW + timedelta(hours=25),
        )


def test_break_glass_drops_expired_grants_and_needs_a_mailbox() -> None:
    old = BreakGlassGrant(
        account="admin-0",
        reason="r",
        opened_at=NOW - timedelta(days=2),
        expires=NOW - timedelta(days=1),
    )
    patient = dataclasses.replace(PATIENT, break_glass=(old,))
    applied = OpenBreakGlass("admin-1", "r", NOW + timedelta(hours=2)).apply(
        patient, NOW
    )
    assert applied is not None
    assert [g.account for g in applied[0].break_glass] == ["admin-1"]
    unqualified = samples.patient(samples.INS_2, qualified=False)
    with pytest.raises(InvalidFieldError, match="no mailbox"):
        OpenBreakGlass("admin-1", "r", NOW + timedelta(hours=2)).apply(unqualified, NOW)


def test_one_treating_doctor_replaces_the_previous() -> None:
    first = SetTreatingDoctor(DOCTOR).apply(PATIENT, NOW)
    assert first is not None
    second = SetTreatingDoctor("paul.durand@medecin.mssante.fr").apply(first[0], NOW)
    assert second is not None
    patient, _, detail = second
    treating = [r for r in patient.care_relationships if r.kind is CareKind.TREATING]
    assert [r.party for r in treating] == ["paul.durand@medecin.mssante.fr"]
    assert dict(detail)["replaced"] == DOCTOR
    # Other relationships stay.
    assert len(patient.care_relationships) == len(PATIENT.care_relationships) + 1


def test_proxy_expiry_in_the_past_is_refused() -> None:
    with pytest.raises(InvalidFieldError, match="until"):
        GrantProxy("aidant-2", ProxyScope.READ, NOW - timedelta(days=1)).apply(
            PATIENT, NOW
        )
