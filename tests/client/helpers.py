"""Connecting the client library to the test relay."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mssante import Client, TLSConfig
from tests.support.relay_fixtures import DOCTOR, PASSWORD

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from tests.support.relay_fixtures import Harness


def connect(
    relay: Harness,
    login: str = DOCTOR.address,
    *,
    password: str = PASSWORD,
    listener: str = "submission",
    tls: TLSConfig | None = None,
    **options: Any,  # noqa: ANN401 - Client.connect's keywords
) -> AbstractAsyncContextManager[Client]:
    """``Client.connect`` to the relay's ``listener``, with IMAP on its imaps port."""
    host, port = relay.address(listener)
    return Client.connect(
        host,
        port,
        login=login,
        password=password,
        tls=tls or TLSConfig(ca_file=relay.ca_file),
        implicit_tls=listener == "submissions",
        imap_port=relay.address("imaps")[1],
        **options,
    )
