"""The pure trust policy: every rule, each refusal with its reply and reason."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from directory.model import (
    CareKind,
    CareRelationship,
    DelegationScope,
    OperatorCertificate,
    ProxyGrant,
    ProxyScope,
    Status,
)
from mssante.crypto import Reason
from relay import policy
from relay.policy import (
    AccountFacts,
    Channel,
    LocalDomains,
    Role,
    SenderFacts,
    SessionFacts,
    ThreadFacts,
    ThreadRef,
)
from tests.directory import samples

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
LOCAL = LocalDomains(
    domains=frozenset(
        {
            "medecin.mssante.fr",
            "ch-paris-1.mssante.fr",
            "mssante.example",
            "patient.mssante.example",
        }
    ),
    patient_domain="patient.mssante.example",
)
DOCTOR = samples.mailbox()
URGENCES = samples.org_mailbox()
PATIENT = samples.patient()
PATIENT_2 = samples.patient(samples.INS_2)
ACCOUNT = AccountFacts(login="zoe", owned=frozenset({DOCTOR.address}))
SUBMISSION = SessionFacts(channel=Channel.SUBMISSION, account=ACCOUNT)


def professional(mailbox: object = DOCTOR) -> SenderFacts:
    assert isinstance(mailbox, type(DOCTOR))
    return SenderFacts(
        address=mailbox.address,
        role=Role.PROFESSIONAL,
        entry=mailbox,
        identities=policy.sender_identities(mailbox.address, mailbox),
    )


def patient_sender(entry: object = PATIENT) -> SenderFacts:
    assert isinstance(entry, type(PATIENT))
    assert entry.address is not None
    return SenderFacts(
        address=entry.address,
        role=Role.PATIENT,
        entry=entry,
        identities=frozenset({entry.address}),
    )


# -- reply constants ----------------------------------------------------------


def test_reply_constant_names_match_their_codes() -> None:
    for name in dir(policy):
        value = getattr(policy, name)
        if isinstance(value, policy.Reply) and name[0] == "R" and name[1:4].isdigit():
            assert name[1:4] == str(value.code), name
            assert value.status[0] == str(value.code)[0], name


def test_patient_refusals_share_one_reply() -> None:
    assert str(policy.R550_PATIENT_UNAVAILABLE) == str(policy.R550_MAILBOX_UNKNOWN)


# -- submission sender --------------------------------------------------------


def test_owner_may_send_as_its_mailbox() -> None:
    decision = policy.check_submission_sender(
        SUBMISSION, DOCTOR.address, DOCTOR, [], LOCAL, NOW
    )
    assert decision.accepted
    assert decision.reason == "sender allowed (owner)"


def test_sender_refused_without_authentication() -> None:
    session = SessionFacts(channel=Channel.SUBMISSION)
    decision = policy.check_submission_sender(
        session, DOCTOR.address, DOCTOR, [], LOCAL, NOW
    )
    assert str(decision.reply).startswith("530 5.7.0")


def test_sender_refused_when_not_owned() -> None:
    decision = policy.check_submission_sender(
        SUBMISSION, URGENCES.address, URGENCES, [], LOCAL, NOW
    )
    assert str(decision.reply).startswith("553 5.7.1")


def test_null_sender_refused_on_submission() -> None:
    decision = policy.check_submission_sender(SUBMISSION, "", None, [], LOCAL, NOW)
    assert decision.reply.code == 553


def test_active_read_send_delegation_allows_sending() -> None:
    staff = SessionFacts(
        channel=Channel.SUBMISSION,
        account=AccountFacts(login="secretaire-1", owned=frozenset()),
    )
    delegation = samples.delegation()
    decision = policy.check_submission_sender(
        staff, DOCTOR.address, DOCTOR, [delegation], LOCAL, NOW
    )
    assert decision.accepted
    assert "delegation" in decision.reason


@pytest.mark.parametrize(
    "change",
    [
        {"scope": DelegationScope.READ},
        {"expires": NOW - timedelta(seconds=1)},
        {"status": Status.SUSPENDED},
        {"account": "someone-else"},
    ],
)
def test_unusable_delegation_does_not_allow_sending(change: dict[str, object]) -> None:
    staff = SessionFacts(
        channel=Channel.SUBMISSION,
        account=AccountFacts(login="secretaire-1", owned=frozenset()),
    )
    fields: dict[str, object] = {"account": "secretaire-1", **change}
    delegation = samples.delegation(**fields)  # type: ignore[arg-type]
    decision = policy.check_submission_sender(
        staff, DOCTOR.address, DOCTOR, [delegation], LOCAL, NOW
    )
    assert decision.reply.code == 553


def test_proxy_with_reply_scope_may_send_for_the_patient() -> None:
    assert PATIENT.address is not None
    entry = samples.patient(
        proxies=(
            ProxyGrant(account="aidant-2", scope=ProxyScope.READ_REPLY, granted_at=NOW),
        )
    )
    session = SessionFacts(
        channel=Channel.SUBMISSION,
        account=AccountFacts(login="aidant-2", owned=frozenset()),
    )
    decision = policy.check_submission_sender(
        session, PATIENT.address, entry, [], LOCAL, NOW
    )
    assert decision.accepted
    assert "proxy" in decision.reason


def test_proxy_with_read_scope_may_not_send() -> None:
    assert PATIENT.address is not None
    session = SessionFacts(
        channel=Channel.SUBMISSION,
        account=AccountFacts(login="aidant-1", owned=frozenset()),
    )
    decision = policy.check_submission_sender(
        session, PATIENT.address, PATIENT, [], LOCAL, NOW
    )
    assert decision.reply.code == 553


def test_sender_must_be_local() -> None:
    account = AccountFacts(login="x", owned=frozenset({"a@elsewhere.example"}))
    session = SessionFacts(channel=Channel.SUBMISSION, account=account)
    decision = policy.check_submission_sender(
        session, "a@elsewhere.example", None, [], LOCAL, NOW
    )
    assert decision.reply.code == 553
    assert decision.reason == "sender domain is not local"


def test_unlisted_local_sender_refused() -> None:
    account = AccountFacts(login="x", owned=frozenset({"ghost@medecin.mssante.fr"}))
    session = SessionFacts(channel=Channel.SUBMISSION, account=account)
    decision = policy.check_submission_sender(
        session, "ghost@medecin.mssante.fr", None, [], LOCAL, NOW
    )
    assert str(decision.reply).startswith("550 5.7.1")


def test_suspended_sender_refused() -> None:
    suspended = samples.mailbox(status=Status.SUSPENDED)
    decision = policy.check_submission_sender(
        SUBMISSION, DOCTOR.address, suspended, [], LOCAL, NOW
    )
    assert decision.reply == policy.R550_SENDER_SUSPENDED
    assert decision.reason == "sender suspended"


def test_unqualified_patient_cannot_send() -> None:
    entry = samples.patient(qualified=False)
    address = f"{entry.ins}@patient.mssante.example"
    session = SessionFacts(
        channel=Channel.SUBMISSION,
        account=AccountFacts(login="p", owned=frozenset({address})),
    )
    decision = policy.check_submission_sender(session, address, entry, [], LOCAL, NOW)
    assert not decision.accepted


# -- MX sender ------------------------------------------------------------------


def mx(domains: frozenset[str] = frozenset({"hopital-b.example"})) -> SessionFacts:
    return SessionFacts(
        channel=Channel.MX, operator_domains=domains, has_client_certificate=True
    )


def test_mx_requires_a_client_certificate() -> None:
    session = SessionFacts(channel=Channel.MX)
    decision = policy.check_mx_sender(session, "a@hopital-b.example", None, LOCAL)
    assert decision.reply == policy.R530_CERTIFICATE_REQUIRED


def test_mx_certificate_not_whitelisted_refused() -> None:
    decision = policy.check_mx_sender(
        mx(frozenset()), "a@hopital-b.example", None, LOCAL
    )
    assert decision.reply == policy.R550_OPERATOR_NOT_AUTHORISED


def test_mx_operator_vouches_for_unlisted_sender_of_its_domain() -> None:
    decision = policy.check_mx_sender(mx(), "new.doctor@hopital-b.example", None, LOCAL)
    assert decision.accepted


def test_mx_sender_of_another_domain_refused() -> None:
    decision = policy.check_mx_sender(mx(), "a@hopital-c.example", None, LOCAL)
    assert decision.reply == policy.R550_OPERATOR_NOT_AUTHORISED


def test_mx_suspended_sender_refused() -> None:
    entry = samples.mailbox("dr@hopital-b.example", status=Status.REVOKED)
    decision = policy.check_mx_sender(mx(), "dr@hopital-b.example", entry, LOCAL)
    assert decision.reply == policy.R550_SENDER_SUSPENDED


def test_mx_may_not_use_our_domains() -> None:
    session = mx(frozenset({"medecin.mssante.fr"}))
    decision = policy.check_mx_sender(session, DOCTOR.address, DOCTOR, LOCAL)
    assert decision.reason == "remote use of a local domain"


def test_mx_null_sender_from_whitelisted_operator_accepted() -> None:
    assert policy.check_mx_sender(mx(), "", None, LOCAL).accepted


def test_whitelisted_domains_match_subject_issuer_and_pin() -> None:
    pinned = samples.operator(
        "pinned.example",
        certificates=(
            OperatorCertificate(
                subject_dn="CN=mx,O=B,C=FR",
                issuer_dn="CN=CA,O=B",
                fingerprint="ab" * 32,
            ),
        ),
    )
    plain = samples.operator(
        "plain.example",
        certificates=(OperatorCertificate(subject_dn="CN=mx,O=B,C=FR"),),
    )
    suspended = samples.operator(
        "gone.example",
        certificates=(OperatorCertificate(subject_dn="CN=mx,O=B,C=FR"),),
        status=Status.SUSPENDED,
    )
    ops = [pinned, plain, suspended]
    assert policy.whitelisted_domains(ops, "CN=CA, O=B", "ab" * 32) == {
        "pinned.example",
        "plain.example",
    }
    assert policy.whitelisted_domains(ops, "CN=Other", "ab" * 32) == {"plain.example"}
    assert policy.whitelisted_domains(ops, "CN=CA,O=B", "cd" * 32) == {"plain.example"}


# -- recipients -------------------------------------------------------------------


def test_professional_to_professional_allowed() -> None:
    decision = policy.check_recipient(
        professional(), URGENCES.address, URGENCES, LOCAL, 0, NOW
    )
    assert decision.accepted


def test_recipient_outside_local_domains_is_relay_denied() -> None:
    remote = samples.mailbox("dr@hopital-b.example")
    decision = policy.check_recipient(
        professional(), remote.address, remote, LOCAL, 0, NOW
    )
    assert decision.reply == policy.R554_RELAY_DENIED


REMOTE_B = policy.RemoteDomain(
    domain="hopital-b.example", operator=samples.operator("hopital-b.example")
)


def test_a_whitelisted_operators_address_is_accepted_listed_or_not() -> None:
    listed = samples.mailbox("dr@hopital-b.example")
    for entry in (listed, None):
        decision = policy.check_recipient(
            professional(), "dr@hopital-b.example", entry, LOCAL, 0, NOW, REMOTE_B
        )
        assert decision.accepted, decision.reason


@pytest.mark.parametrize(
    ("remote", "entry", "reply"),
    [
        (
            policy.RemoteDomain(domain="gmail.example", operator=None),
            None,
            policy.R550_DOMAIN_NOT_TRUSTED,
        ),
        (
            policy.RemoteDomain(
                domain="hopital-b.example",
                operator=samples.operator("hopital-b.example", status=Status.SUSPENDED),
            ),
            None,
            policy.R550_DOMAIN_NOT_TRUSTED,
        ),
        (
            REMOTE_B,
            samples.mailbox("dr@hopital-b.example", status=Status.REVOKED),
            policy.R550_MAILBOX_DISABLED,
        ),
    ],
    ids=["no operator", "operator suspended", "listed and revoked"],
)
def test_remote_recipients_outside_the_trust_space_are_refused(
    remote: policy.RemoteDomain, entry: object, reply: policy.Reply
) -> None:
    assert entry is None or isinstance(entry, type(DOCTOR))
    decision = policy.check_recipient(
        professional(), "dr@" + remote.domain, entry, LOCAL, 0, NOW, remote
    )
    assert decision.reply == reply


def test_a_patient_writes_to_another_operator_only_under_the_patient_rules() -> None:
    listed = samples.mailbox("dr@hopital-b.example")
    decision = policy.check_recipient(
        patient_sender(), listed.address, listed, LOCAL, 0, NOW, REMOTE_B
    )
    assert decision.accepted
    assert decision.needs_thread  # checked at DATA like a local professional
    unlisted = policy.check_recipient(
        patient_sender(), "x@hopital-b.example", None, LOCAL, 0, NOW, REMOTE_B
    )
    assert unlisted.reply == policy.R550_MAILBOX_UNKNOWN


def test_unknown_recipient_550_511() -> None:
    decision = policy.check_recipient(
        professional(), "nobody@medecin.mssante.fr", None, LOCAL, 0, NOW
    )
    assert str(decision.reply).startswith("550 5.1.1")


@pytest.mark.parametrize("status", [Status.SUSPENDED, Status.REVOKED])
def test_inactive_recipient_550_521(status: Status) -> None:
    entry = samples.org_mailbox(status=status)
    decision = policy.check_recipient(
        professional(), entry.address, entry, LOCAL, 0, NOW
    )
    assert str(decision.reply).startswith("550 5.2.1")


def test_professional_to_patient_allowed() -> None:
    assert PATIENT.address is not None
    decision = policy.check_recipient(
        professional(), PATIENT.address, PATIENT, LOCAL, 0, NOW
    )
    assert decision.accepted


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (None, "patient unknown"),
        (samples.patient(opted_out=True), "patient opted out"),
        (samples.patient(status=Status.SUSPENDED), "patient suspended"),
        (
            samples.patient(blocked_senders=(DOCTOR.address,)),
            "patient blocked the sender",
        ),
        (
            samples.patient(blocked_senders=("1" + samples.FINESS_1,)),
            "patient blocked the sender",
        ),
    ],
)
def test_patient_refusals_are_indistinguishable(entry: object, reason: str) -> None:
    assert PATIENT.address is not None
    decision = policy.check_recipient(
        professional(),
        PATIENT.address,
        entry,  # type: ignore[arg-type]
        LOCAL,
        0,
        NOW,
    )
    assert decision.reply is policy.R550_PATIENT_UNAVAILABLE
    assert decision.reason == reason


def test_second_patient_in_one_message_deferred() -> None:
    assert PATIENT_2.address is not None
    decision = policy.check_recipient(
        professional(), PATIENT_2.address, PATIENT_2, LOCAL, 1, NOW
    )
    assert str(decision.reply).startswith("452 4.5.3")


def test_patient_to_patient_refused() -> None:
    assert PATIENT_2.address is not None
    decision = policy.check_recipient(
        patient_sender(), PATIENT_2.address, PATIENT_2, LOCAL, 0, NOW
    )
    assert decision.reply == policy.R550_PATIENT_TO_PATIENT


def test_patient_to_professional_deferred_to_data() -> None:
    decision = policy.check_recipient(
        patient_sender(), URGENCES.address, URGENCES, LOCAL, 0, NOW
    )
    assert decision.accepted
    assert decision.needs_thread


# -- patient messages (DATA) ------------------------------------------------------


def test_patient_first_contact_refused() -> None:
    decision = policy.check_patient_message(PATIENT, URGENCES, ThreadFacts(), NOW)
    assert decision.reply == policy.R550_PATIENT_FIRST_CONTACT


def test_patient_reply_to_designated_address_allowed() -> None:
    thread = ThreadFacts(
        replied_to=(ThreadRef(reply_addresses=frozenset({URGENCES.address})),)
    )
    decision = policy.check_patient_message(PATIENT, URGENCES, thread, NOW)
    assert decision.accepted
    assert decision.reason == "patient reply in thread"


def test_patient_reply_to_closed_thread_refused() -> None:
    thread = ThreadFacts(
        replied_to=(
            ThreadRef(reply_addresses=frozenset({DOCTOR.address}), closed=True),
        ),
        wrote_before=frozenset({DOCTOR.address}),
    )
    decision = policy.check_patient_message(PATIENT, DOCTOR, thread, NOW)
    assert decision.reply == policy.R550_THREAD_CLOSED


def test_patient_reply_to_another_address_than_designated_refused() -> None:
    thread = ThreadFacts(
        replied_to=(
            ThreadRef(reply_addresses=frozenset({"secretariat@medecin.mssante.fr"})),
        )
    )
    other = samples.org_mailbox(
        "autre@ch-paris-1.mssante.fr", owner_id="1" + "755623022"
    )
    assert not policy.check_patient_message(None, other, thread, NOW).accepted


def test_new_conversation_with_professional_who_wrote_before() -> None:
    thread = ThreadFacts(wrote_before=frozenset({"8" + samples.RPPS_1}))
    decision = policy.check_patient_message(None, DOCTOR, thread, NOW)
    assert decision.accepted
    assert decision.reason == "patient to a professional who wrote first"


def test_pharmacy_that_dispensed_within_a_year_may_be_written_first() -> None:
    pharmacy = samples.org_mailbox("officine@ch-paris-1.mssante.fr")
    recent = samples.patient(
        care_relationships=(
            CareRelationship(
                party=pharmacy.address,
                kind=CareKind.DISPENSED,
                since=NOW - timedelta(days=30),
            ),
        )
    )
    old = samples.patient(
        care_relationships=(
            CareRelationship(
                party=pharmacy.address,
                kind=CareKind.DISPENSED,
                since=NOW - timedelta(days=400),
            ),
        )
    )
    assert policy.check_patient_message(recent, pharmacy, ThreadFacts(), NOW).accepted
    assert not policy.check_patient_message(old, pharmacy, ThreadFacts(), NOW).accepted


# -- headers ------------------------------------------------------------------------


def test_from_header_owned_accepted() -> None:
    checked = policy.check_from_header(ACCOUNT, DOCTOR.address, [DOCTOR.address], None)
    assert checked.decision.accepted
    assert checked.add_sender == ""


def test_from_header_naming_another_mailbox_refused() -> None:
    checked = policy.check_from_header(
        ACCOUNT, DOCTOR.address, [URGENCES.address], None
    )
    assert checked.decision.reply == policy.R550_FROM_NOT_OWNED


def test_delegate_gets_a_sender_header() -> None:
    staff = AccountFacts(login="secretaire-1", owned=frozenset())
    checked = policy.check_from_header(staff, DOCTOR.address, [DOCTOR.address], None)
    assert checked.decision.accepted
    assert checked.add_sender == "secretaire-1"
    wrong = policy.check_from_header(staff, DOCTOR.address, [DOCTOR.address], "other")
    assert wrong.decision.reply == policy.R550_SENDER_HEADER_MISMATCH


@pytest.mark.parametrize(
    ("subject", "mes", "closes"),
    [
        ("Résultats", None, False),
        ("[FIN] Résultats", None, True),
        ("Re: résultats [fin]", None, True),
        ("Résultats", "FIN", True),
        ("Résultats", " fin ", True),
        (None, None, False),
    ],
)
def test_fin_closes_a_thread(
    subject: str | None, mes: str | None, closes: bool
) -> None:
    assert policy.closes_thread(subject, mes) is closes


# -- S/MIME signature at DATA --------------------------------------------------


def test_verified_signature_is_accepted() -> None:
    decision = policy.check_signature(Reason.VALID, policy.SignatureAction.REFUSE)
    assert decision.accepted
    assert decision.reason == "signature verified"


def test_altered_message_is_refused_as_an_integrity_failure() -> None:
    decision = policy.check_signature(
        Reason.BAD_SIGNATURE, policy.SignatureAction.REFUSE
    )
    assert decision.reply == policy.R550_SIGNATURE_INVALID
    assert str(decision.reply).startswith("550 5.7.7 ")


@pytest.mark.parametrize(
    "reason",
    [
        Reason.UNTRUSTED,
        Reason.EXPIRED,
        Reason.REVOKED,
        Reason.WRONG_USAGE,
        Reason.ADDRESS_MISMATCH,
        Reason.MALFORMED,
    ],
)
def test_signer_that_cannot_be_trusted_is_refused_as_a_cryptographic_failure(
    reason: Reason,
) -> None:
    decision = policy.check_signature(reason, policy.SignatureAction.REFUSE)
    assert decision.reply == policy.R550_SIGNER_NOT_TRUSTED
    assert decision.reply.status == "5.7.5"
    assert reason.value in decision.reason


@pytest.mark.parametrize("reason", [Reason.BAD_SIGNATURE, Reason.REVOKED])
def test_warn_mode_accepts_an_invalid_signature(reason: Reason) -> None:
    decision = policy.check_signature(reason, policy.SignatureAction.WARN)
    assert decision.accepted
    assert "warning" in decision.reason


@pytest.mark.parametrize("action", list(policy.SignatureAction))
@pytest.mark.parametrize("reason", [Reason.REVOCATION_UNKNOWN, None])
def test_unknown_revocation_or_failed_check_is_temporary_whatever_the_mode(
    reason: Reason | None, action: policy.SignatureAction
) -> None:
    decision = policy.check_signature(reason, action)
    assert decision.reply == policy.R451_SIGNATURE_UNCHECKED
    assert str(decision.reply).startswith("451 4.7.5 ")


@pytest.mark.parametrize(
    ("value", "asks"),
    [
        ("yes", True),
        (" Oui ", True),
        ("1", True),
        ("no", False),
        ("", False),
        (None, False),
    ],
)
def test_the_treating_doctor_copy_is_asked_only_by_a_yes(
    value: str | None, asks: bool
) -> None:
    assert policy.asks_treating_copy(value) is asks


def test_the_latest_treating_doctor_declaration_wins() -> None:
    older = CareRelationship(
        party="old@medecin.mssante.fr",
        kind=CareKind.TREATING,
        since=datetime(2020, 1, 1, tzinfo=UTC),
    )
    newer = CareRelationship(
        party="8" + samples.RPPS_2,
        kind=CareKind.TREATING,
        since=datetime(2024, 1, 1, tzinfo=UTC),
    )
    other = CareRelationship(
        party="pharma@officine.mssante.fr",
        kind=CareKind.DISPENSED,
        since=datetime(2025, 1, 1, tzinfo=UTC),
    )
    patient = samples.patient(care_relationships=(older, other, newer))
    assert policy.treating_doctor(patient) == "8" + samples.RPPS_2
    assert policy.treating_doctor(samples.patient(care_relationships=(other,))) == ""
