"""``[notices]``: defaults, and every wrong key named in the error."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

from relay.config import ConfigError, parse

if TYPE_CHECKING:
    from pathlib import Path

RELAY = {"data_dir": "data", "domain": "mssante.example", "hostname": "mx.example"}
SMARTHOST = {"host": "smtp.example", "from_address": "ne-pas-repondre@mssante.example"}


def notices(tmp_path: Path, table: dict[str, Any] | None) -> Any:  # noqa: ANN401
    data: dict[str, Any] = {"relay": RELAY}
    if table is not None:
        data["notices"] = table
    return parse(data, tmp_path).notices


def test_no_table_sends_no_notice(tmp_path: Path) -> None:
    settings = notices(tmp_path, None)
    assert not settings.active


def test_defaults_are_hourly_coalescing_starttls_and_the_relay_host(
    tmp_path: Path,
) -> None:
    settings = notices(tmp_path, {"smarthost": SMARTHOST})
    assert settings.active
    assert settings.min_interval == 3600.0
    assert settings.expiry == 86400.0
    assert settings.imap_host == "mx.example"
    assert settings.smarthost.port == 587
    assert settings.smarthost.starttls
    assert settings.smarthost.mail_from == SMARTHOST["from_address"]


def test_secret_files_are_not_in_the_repr(tmp_path: Path) -> None:
    settings = notices(
        tmp_path,
        {
            "smarthost": {**SMARTHOST, "username": "u", "password_file": "pw"},
            "sms": {"url": "https://sms.example/send", "token_file": "token"},
        },
    )
    assert "password_file" not in repr(settings.smarthost)
    assert "token_file" not in repr(settings.sms)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({}, r"notices\.smarthost: notices need a channel"),
        ({"smarthost": SMARTHOST, "color": 1}, r"notices\.color: unknown key"),
        ({"smarthost": {**SMARTHOST, "colour": 1}}, r"notices\.smarthost\.colour"),
        ({"smarthost": {"host": "h"}}, r"notices\.smarthost\.from_address: missing"),
        (
            {"smarthost": {**SMARTHOST, "from_address": "nobody"}},
            r"notices\.smarthost\.from_address: 'nobody' is not a mail address",
        ),
        ({"smarthost": {**SMARTHOST, "port": 70000}}, r"notices\.smarthost\.port"),
        (
            {"smarthost": {**SMARTHOST, "username": "u"}},
            r"notices\.smarthost\.password_file: username and password_file",
        ),
        (
            {
                "smarthost": {
                    **SMARTHOST,
                    "username": "u",
                    "password_file": "pw",
                    "starttls": False,
                }
            },
            r"notices\.smarthost\.starttls: AUTH is only sent over TLS",
        ),
        (
            {"sms": {"url": "http://sms.example", "token_file": "t"}},
            r"notices\.sms\.url: must be an https:// address",
        ),
        ({"sms": {"url": "https://sms.example"}}, r"notices\.sms\.token_file: missing"),
        (
            {"smarthost": SMARTHOST, "min_interval": "1h"},
            r"notices\.min_interval: expected float",
        ),
        (
            {"smarthost": SMARTHOST, "min_interval": 7200.0, "expiry": 3600.0},
            r"notices\.expiry: must be longer than min_interval",
        ),
        (
            {"smarthost": SMARTHOST, "read_url": "https://x.example/" + "a" * 150},
            r"notices\.read_url: .*longer than 160",
        ),
        (
            {"smarthost": SMARTHOST, "access_report_url": "ftp://x"},
            r"notices\.access_report_url: must be an https:// address",
        ),
    ],
)
def test_invalid_notices_config_names_the_key(
    tmp_path: Path, table: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        notices(tmp_path, table)


def test_disabled_notices_need_no_channel(tmp_path: Path) -> None:
    assert not notices(tmp_path, {"enabled": False}).active
