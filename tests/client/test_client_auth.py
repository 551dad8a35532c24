"""The client library's other credentials: a bearer token (OAUTHBEARER) and
the TLS client certificate alone (EXTERNAL), against the relay."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import pytest

from mssante import AuthenticationError, Client, TLSConfig
from tests.relay.test_auth_issuer import app_tls, auth_relay, issuer
from tests.support.relay_fixtures import DOCTOR

if TYPE_CHECKING:
    from tests.relay.test_auth_issuer import AuthRelay

__all__ = ["app_tls", "auth_relay", "issuer"]  # fixtures, used by name


def _national_id(r: AuthRelay) -> str:
    found = next(
        a.external_id
        for a in r.harness.running.accounts.all()
        if a.login == DOCTOR.address
    )
    assert found is not None
    return found


async def test_client_logs_in_with_a_bearer_token(auth_relay: AuthRelay) -> None:
    token = auth_relay.issuer.token(_national_id(auth_relay), now=time.time(), key="ec")
    host, port = auth_relay.harness.address("submission")
    async with Client.connect(
        host, port, token=token, tls=TLSConfig(ca_file=auth_relay.harness.ca_file)
    ) as client:
        assert client.capabilities.has("AUTH")
    [ok] = [
        e for e in auth_relay.harness.audit_events() if e["event"] == "auth.succeeded"
    ]
    assert (ok["actor"], ok["credential"]) == (DOCTOR.address, "oauth")


async def test_client_reports_a_refused_token(auth_relay: AuthRelay) -> None:
    token = auth_relay.issuer.token(
        _national_id(auth_relay), now=time.time() - 3600, key="ec"
    )
    host, port = auth_relay.harness.address("submission")
    with pytest.raises(AuthenticationError, match="invalid_token"):
        async with Client.connect(
            host, port, token=token, tls=TLSConfig(ca_file=auth_relay.harness.ca_file)
        ):
            pass


async def test_app_mailbox_logs_in_with_its_certificate(auth_relay: AuthRelay) -> None:
    host, port = auth_relay.harness.address("submission")
    tls = TLSConfig(
        ca_file=auth_relay.harness.ca_file,
        client_cert=auth_relay.app_cert,
        client_key=auth_relay.app_key,
    )
    async with Client.connect(host, port, tls=tls) as client:
        assert client.capabilities.has("AUTH")
    [ok] = [
        e for e in auth_relay.harness.audit_events() if e["event"] == "auth.succeeded"
    ]
    assert ok["credential"] == "external"
