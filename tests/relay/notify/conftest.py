"""A relay with ``[notices]`` whose smarthost is a real aiosmtpd on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import TYPE_CHECKING, Any

import pytest

from tests.support.relay_fixtures import (
    PATIENT,
    Harness,
    TlsFiles,
    relay_config,
    started,
)
from tests.support.smarthost import Smarthost, smarthost

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from pathlib import Path

CONTACT_EMAIL = "marie.dupont@courriel.example"
CONTACT_PHONE = "+33612345678"
NOTICE_FROM = "ne-pas-repondre@mssante.example"


def notices_table(tls: Path, port: int, **settings: Any) -> dict[str, Any]:  # noqa: ANN401
    """A ``[notices]`` table with the smarthost on ``port``; quick retries."""
    return {
        "min_interval": 3600.0,
        "minimal_backoff": 0.2,
        "maximal_backoff": 0.4,
        "read_url": "https://patient.mssante.example/lire",
        **settings,
        "smarthost": {
            "host": "127.0.0.1",
            "port": port,
            "ca_file": str(tls / "ca.pem"),
            "from_address": NOTICE_FROM,
            "timeout": 5.0,
        },
    }


async def with_contact(
    h: Harness, *, email: str = CONTACT_EMAIL, phone: str = ""
) -> None:
    """Give the test patient an ordinary contact in the running relay's directory."""
    await h.running.directory.replace(
        dataclasses.replace(PATIENT, contact_email=email, contact_phone=phone)
    )


async def eventually(check: Callable[[], bool], *, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not check():  # noqa: ASYNC110 - polls the smarthost and the trail
            await asyncio.sleep(0.02)


@pytest.fixture
async def notice_smarthost(tls_files: TlsFiles) -> AsyncIterator[Smarthost]:
    async with smarthost(tls_files.directory) as host:
        yield host


@pytest.fixture
async def notice_relay(
    tmp_path: Path, tls_files: TlsFiles, notice_smarthost: Smarthost
) -> AsyncIterator[Harness]:
    tls = tls_files.directory
    cfg = relay_config(
        tmp_path,
        tls,
        None,
        extra={"notices": notices_table(tls, notice_smarthost.port)},
    )
    async with started(tls_files, cfg) as harness:
        await with_contact(harness)
        yield harness
