"""DSN (RFC 3464) and MDN (RFC 8098): compose, parse, round trips."""

from __future__ import annotations

import datetime as dt
import email.policy
from email.parser import BytesParser

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mssante.message import (
    Action,
    ActionMode,
    Disposition,
    DispositionType,
    IntegrationError,
    IntegrationErrorCode,
    InvalidFieldError,
    MalformedMessageError,
    MalformedReceiptError,
    RecipientStatus,
    SendingMode,
    compose_dsn,
    compose_mdn,
    compose_message,
    parse_dsn,
    parse_mdn,
)
from tests.message import samples

NOW = dt.datetime(2025, 3, 14, 10, 0, 5, tzinfo=dt.UTC)
ORIGINAL = (
    b"From: a@b.example\r\nTo: c@d.example\r\nSubject: hi\r\n"
    b"Message-ID: <orig@b.example>\r\nDisposition-Notification-To: a@b.example\r\n"
    b"\r\nbody line\r\n"
)
FAILED = RecipientStatus(
    final_recipient="c@d.example",
    original_recipient="c@d.example",
    action=Action.FAILED,
    status="5.1.1",
    remote_mta="mx.d.example",
    diagnostic_code="550 5.1.1 <c@d.example>: Recipient address rejected",
    last_attempt_date=NOW,
)
DELAYED = RecipientStatus(
    final_recipient="e@d.example",
    action=Action.DELAYED,
    status="4.4.3",
    will_retry_until=NOW + dt.timedelta(days=5),
)


def _dsn(recipients: tuple[RecipientStatus, ...], *, full: bool = False) -> bytes:
    return compose_dsn(
        reporting_mta="relay.mssante.example",
        original_envelope_id="ENV-42",
        arrival_date=NOW - dt.timedelta(minutes=5),
        recipients=recipients,
        original=ORIGINAL,
        return_full=full,
        notify_to="a@b.example",
        message_id="<dsn-1@relay.mssante.example>",
        now=NOW,
    )


def test_dsn_round_trip_keeps_every_field() -> None:
    dsn = parse_dsn(_dsn((FAILED, DELAYED)))
    assert dsn.recipients == (FAILED, DELAYED)
    assert dsn.reporting_mta == "relay.mssante.example"
    assert dsn.original_envelope_id == "ENV-42"
    assert dsn.arrival_date == NOW - dt.timedelta(minutes=5)
    assert dsn.original_message_id == "<orig@b.example>"
    assert dsn.message_id == "<dsn-1@relay.mssante.example>"
    assert "failed (5.1.1)" in dsn.text


def test_dsn_ret_hdrs_returns_headers_only() -> None:
    data = _dsn((FAILED,))
    msg = BytesParser(policy=email.policy.default).parsebytes(data)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert [p.get_content_type() for p in msg.iter_parts()] == [
        "text/plain",
        "message/delivery-status",
        "text/rfc822-headers",
    ]
    assert b"body line" not in data
    assert (
        parse_dsn(data).returned_headers == ORIGINAL.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    )


def test_dsn_ret_full_returns_the_message() -> None:
    data = _dsn((FAILED,), full=True)
    assert b"body line" in data
    assert parse_dsn(data).original_message_id == "<orig@b.example>"


def test_dsn_is_deterministic_and_auto_submitted() -> None:
    assert _dsn((FAILED,)) == _dsn((FAILED,))
    msg = BytesParser(policy=email.policy.default).parsebytes(_dsn((FAILED,)))
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["From"] == "MAILER-DAEMON@relay.mssante.example"


@pytest.mark.parametrize(
    ("action", "status"),
    [(Action.FAILED, "4.4.1"), (Action.DELIVERED, "5.0.0"), (Action.DELAYED, "2.0.0")],
)
def test_status_class_must_match_action(action: Action, status: str) -> None:
    with pytest.raises(InvalidFieldError, match="status"):
        RecipientStatus(final_recipient="x@y.example", action=action, status=status)


@pytest.mark.parametrize("status", ["5.1", "6.0.0", "5.1.1000", "5.a.1"])
def test_malformed_status_code_is_refused(status: str) -> None:
    with pytest.raises(InvalidFieldError, match="RFC 3463"):
        RecipientStatus(
            final_recipient="x@y.example", action=Action.FAILED, status=status
        )


# A DSN written the way RFC 3464 Appendix examples are (other MTA, LF ends,
# comments, upper-case keywords), not produced by our composer.
FOREIGN_DSN = b"""\
From: Mail Delivery Subsystem <MAILER-DAEMON@mx.other.example>
To: <a@b.example>
Subject: Returned mail: User unknown
Message-Id: <199407072116.RAA14128@mx.other.example>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
    boundary="RAA14128.773615765/mx.other.example"

--RAA14128.773615765/mx.other.example

The original message was received at Thu, 7 Jul 1994 17:15:49 -0400

--RAA14128.773615765/mx.other.example
content-type: message/delivery-status

Reporting-MTA: dns; mx.other.example
Arrival-Date: Thu, 7 Jul 1994 17:15:49 -0400

Final-Recipient: RFC822; nobody@other.example
Action: FAILED
Status: 5.1.1 (user unknown)
Diagnostic-Code: smtp;
  550 <nobody@other.example>... User unknown

--RAA14128.773615765/mx.other.example
Content-Type: message/rfc822

From: a@b.example
Message-ID: <orig-1994@b.example>
Subject: test

body
--RAA14128.773615765/mx.other.example--
"""


def test_foreign_dsn_is_parsed() -> None:
    dsn = parse_dsn(FOREIGN_DSN)
    (recipient,) = dsn.recipients
    assert recipient.final_recipient == "nobody@other.example"
    assert recipient.action is Action.FAILED
    assert recipient.status == "5.1.1"
    assert recipient.diagnostic_code == "550 <nobody@other.example>... User unknown"
    assert dsn.original_message_id == "<orig-1994@b.example>"
    assert dsn.arrival_date is not None
    assert dsn.arrival_date.utcoffset() == dt.timedelta(hours=-4)


def test_dsn_parse_refuses_other_reports() -> None:
    with pytest.raises(MalformedReceiptError, match="report-type"):
        parse_dsn(FOREIGN_DSN.replace(b"report-type=delivery-status", b"report-type=x"))
    with pytest.raises(MalformedReceiptError, match="multipart/report"):
        parse_dsn(ORIGINAL)


def test_dsn_parse_refuses_unknown_action() -> None:
    with pytest.raises(MalformedReceiptError, match="Action"):
        parse_dsn(FOREIGN_DSN.replace(b"Action: FAILED", b"Action: lost"))


_address = st.from_regex(r"[a-z][a-z0-9.]{0,10}@[a-z]{1,8}\.example", fullmatch=True)
_moment = st.datetimes(
    min_value=dt.datetime(2000, 1, 1),  # noqa: DTZ001 - hypothesis bounds are naive
    max_value=dt.datetime(2099, 1, 1),  # noqa: DTZ001
    timezones=st.just(dt.UTC),
).map(lambda d: d.replace(microsecond=0))


@st.composite
def _recipient(draw: st.DrawFn) -> RecipientStatus:
    action = draw(st.sampled_from(Action))
    klass = {"failed": "5", "delayed": "4"}.get(action.value, "2")
    detail = draw(st.tuples(st.integers(0, 999), st.integers(0, 999)))
    return RecipientStatus(
        final_recipient=draw(_address),
        original_recipient=draw(st.none() | _address),
        action=action,
        status=f"{klass}.{detail[0]}.{detail[1]}",
        remote_mta=draw(st.none() | st.just("mx.peer.example")),
        diagnostic_code=draw(
            st.none() | st.from_regex(r"[245][0-9]{2} [ -~]{0,60}[!-~]", fullmatch=True)
        ),
        last_attempt_date=draw(st.none() | _moment),
        will_retry_until=draw(_moment) if action is Action.DELAYED else None,
    )


@settings(max_examples=40, deadline=None)
@given(st.lists(_recipient(), min_size=1, max_size=4))
def test_dsn_compose_parse_round_trip(recipients: list[RecipientStatus]) -> None:
    assert parse_dsn(_dsn(tuple(recipients))).recipients == tuple(recipients)


def _report_message() -> bytes:
    return compose_message(
        samples.report(read_receipt=True),
        software=samples.SOFTWARE,
        now=samples.NOW,
        message_id=samples.MESSAGE_ID,
        uid=samples.UID,
    )


def _mdn(disposition: Disposition, original: bytes | None = None) -> bytes:
    return compose_mdn(
        original=original if original is not None else _report_message(),
        final_recipient=samples.COLLEAGUE,
        disposition=disposition,
        reporting_ua="LPS-Exemple 2.1",
        from_address=samples.COLLEAGUE,
        message_id="<mdn-1@cabinet.mssante.example>",
        now=NOW,
    )


def test_mdn_integration_error_has_mssante_form() -> None:
    ko = Disposition(
        type=DispositionType.PROCESSED,
        error=IntegrationError.of(IntegrationErrorCode.E902_UNKNOWN_PATIENT),
    )
    data = _mdn(ko)
    msg = BytesParser(policy=email.policy.default).parsebytes(data)
    assert msg["To"] == samples.SENDER
    assert msg["Subject"].startswith("[KO Intégration système !][902] XDM/1.0/DDM+")
    assert (
        b"Disposition: automatic-action/MDN-sent-automatically; "
        b"processed/Error: 902^Patient inconnu" in data.replace(b"\r\n ", b" ")
    )


@pytest.mark.parametrize("code", list(IntegrationErrorCode))
def test_mdn_round_trip_for_every_integration_error(code: IntegrationErrorCode) -> None:
    ko = Disposition(type=DispositionType.PROCESSED, error=IntegrationError.of(code))
    mdn = parse_mdn(_mdn(ko))
    assert mdn.disposition == ko
    assert mdn.original_message_id == samples.MESSAGE_ID
    assert mdn.final_recipient == samples.COLLEAGUE
    assert mdn.reporting_ua == "LPS-Exemple 2.1"
    assert mdn.subject.startswith(f"[KO Intégration système !][{code.value}]")
    assert mdn.returned_headers is not None
    assert b"X-MSS-NIL" in mdn.returned_headers


@pytest.mark.parametrize("kind", list(DispositionType))
def test_mdn_round_trip_for_every_disposition(kind: DispositionType) -> None:
    disposition = Disposition(
        type=kind, action_mode=ActionMode.MANUAL, sending_mode=SendingMode.MANUAL
    )
    assert parse_mdn(_mdn(disposition)).disposition == disposition


def test_mdn_refused_when_original_asked_none() -> None:
    original = ORIGINAL.replace(b"Disposition-Notification-To: a@b.example\r\n", b"")
    with pytest.raises(MalformedMessageError, match="Disposition-Notification-To"):
        _mdn(Disposition(type=DispositionType.DISPLAYED), original)


def test_error_only_with_processed() -> None:
    with pytest.raises(InvalidFieldError, match="processed"):
        Disposition(
            type=DispositionType.DISPLAYED,
            error=IntegrationError.of(IntegrationErrorCode.E906_OTHER),
        )


@pytest.mark.parametrize(
    "value",
    [
        "automatic-action; processed",
        "automatic-action/MDN-sent-automatically; read",
        "automatic-action/MDN-sent-automatically; processed/Error: 999^Inconnu",
        "automatic-action/MDN-sent-automatically; processed/Error: 902",
    ],
)
def test_malformed_disposition_is_refused(value: str) -> None:
    with pytest.raises(MalformedReceiptError):
        Disposition.parse(value)


def test_disposition_parse_is_case_insensitive() -> None:
    parsed = Disposition.parse("Automatic-Action/MDN-Sent-Automatically; Processed")
    assert parsed == Disposition(type=DispositionType.PROCESSED)


def test_mdn_parse_refuses_a_dsn() -> None:
    with pytest.raises(MalformedReceiptError, match="report-type"):
        parse_mdn(_dsn((FAILED,)))
