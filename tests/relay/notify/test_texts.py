"""The notice texts: fixed French, no health data, SMS-sized."""

from __future__ import annotations

import pytest

from relay.contact import NoticeKind
from relay.notify import texts


def test_new_message_says_a_message_waits_and_where_to_read_it() -> None:
    notice = texts.new_message(read_url="https://patient.example/lire")
    assert notice.kind is NoticeKind.NEW_MESSAGE
    assert "nouveau message sécurisé vous attend" in notice.text
    assert "https://patient.example/lire" in notice.text
    assert "https://patient.example/lire" in notice.short


def test_new_message_names_the_imap_server_without_a_read_url() -> None:
    notice = texts.new_message(imap_host="imap.mssante.example")
    assert "serveur imap.mssante.example" in notice.text
    assert "imap.mssante.example" in notice.short


def test_new_message_needs_a_way_to_read() -> None:
    with pytest.raises(ValueError, match="read_url or imap_host"):
        texts.new_message()


@pytest.mark.parametrize(
    "notice",
    [
        texts.new_message(imap_host="imap.mssante.example"),
        texts.activation_code("4821-7730", valid_for=900),
        texts.recovery_code("K7Q2M9", valid_for=3600),
        texts.break_glass(),
        texts.break_glass(access_report_url="https://patient.example/acces"),
    ],
    ids=lambda n: n.kind.value,
)
def test_every_sms_text_fits_one_gsm_message(notice: object) -> None:
    short = getattr(notice, "short")  # noqa: B009 - the parametrised notice
    assert texts.gsm7_septets(short) <= texts.SMS_MAX_SEPTETS


def test_codes_carry_only_the_code_and_its_validity() -> None:
    notice = texts.activation_code("4821-7730", valid_for=900)
    assert notice.kind is NoticeKind.ACTIVATION_CODE
    assert "4821-7730" in notice.text
    assert "4821-7730" in notice.short
    assert "15 minutes" in notice.text
    recovery = texts.recovery_code("K7Q2M9", valid_for=86400)
    assert recovery.kind is NoticeKind.RECOVERY_CODE
    assert "K7Q2M9" in recovery.short
    assert "1 jour" in recovery.text


@pytest.mark.parametrize("code", ["", "123", "abc123", "1234 DUPONT", "12345678901234"])
def test_a_code_that_could_carry_words_is_refused(code: str) -> None:
    with pytest.raises(ValueError, match="one-time code"):
        texts.activation_code(code, valid_for=900)


def test_break_glass_says_where_the_reason_is_shown() -> None:
    default = texts.break_glass()
    assert "administrateur" in default.text
    assert "relevé des accès" in default.text
    linked = texts.break_glass(access_report_url="https://patient.example/acces")
    assert "https://patient.example/acces" in linked.text


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (60, "1 minute"),
        (900, "15 minutes"),
        (3600, "1 heure"),
        (7200, "2 heures"),
        (86400, "1 jour"),
        (172800, "2 jours"),
    ],
)
def test_validity_reads_in_plain_french(seconds: float, words: str) -> None:
    assert texts.validity(seconds) == words


def test_a_read_url_too_long_for_an_sms_is_refused() -> None:
    with pytest.raises(ValueError, match="longer than 160"):
        texts.new_message(read_url="https://patient.example/" + "x" * 120)


def test_characters_outside_the_gsm_alphabet_are_refused() -> None:
    with pytest.raises(ValueError, match="GSM"):
        texts.gsm7_septets("forêt")
    assert texts.gsm7_septets("a€") == 3
