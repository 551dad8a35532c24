"""MX resolution through a real DNS server on loopback (RFC 5321 §5.1, RFC 7505)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from relay.queue.resolve import DnsResolver, MailHost, ResolveError
from tests.support.dns_server import LoopbackDns

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def dns_server() -> Iterator[LoopbackDns]:
    with LoopbackDns() as server:
        yield server


def _resolver(server: LoopbackDns) -> DnsResolver:
    return DnsResolver((server.host,), port=server.port, timeout=2.0)


async def test_mx_hosts_come_in_preference_order(dns_server: LoopbackDns) -> None:
    dns_server.add("b.example", "MX", "20 mx2.b.example.", "10 mx1.b.example.")
    dns_server.add("mx1.b.example", "A", "127.0.0.3")
    dns_server.add("mx2.b.example", "A", "127.0.0.4")
    hosts = await _resolver(dns_server).mail_hosts("b.example")
    assert hosts == [
        MailHost("mx1.b.example", 10, ("127.0.0.3",)),
        MailHost("mx2.b.example", 20, ("127.0.0.4",)),
    ]


async def test_a_domain_without_mx_is_its_own_mail_host(
    dns_server: LoopbackDns,
) -> None:
    dns_server.add("c.example", "A", "127.0.0.5")
    hosts = await _resolver(dns_server).mail_hosts("c.example")
    assert hosts == [MailHost("c.example", 0, ("127.0.0.5",))]


async def test_a_host_without_address_is_skipped(dns_server: LoopbackDns) -> None:
    dns_server.add("d.example", "MX", "10 gone.d.example.", "20 mx.d.example.")
    dns_server.add("mx.d.example", "A", "127.0.0.6")
    hosts = await _resolver(dns_server).mail_hosts("d.example")
    assert [h.name for h in hosts] == ["mx.d.example"]


@pytest.mark.parametrize(
    ("setup", "permanent", "status"),
    [
        # RFC 7505: "0 ." means the domain takes no mail.
        (lambda s: s.add("e.example", "MX", "0 ."), True, "5.1.10"),
        (lambda s: None, True, "5.1.2"),  # NXDOMAIN
        (lambda s: s.fail("e.example"), False, "4.4.3"),  # SERVFAIL
        (lambda s: s.add("e.example", "TXT", '"no mail here"'), True, "5.1.2"),
    ],
    ids=["null MX", "no such domain", "server failure", "no MX, no address"],
)
async def test_unresolvable_domains(
    dns_server: LoopbackDns, setup: object, permanent: bool, status: str
) -> None:
    assert callable(setup)
    setup(dns_server)
    with pytest.raises(ResolveError) as caught:
        await _resolver(dns_server).mail_hosts("e.example")
    assert caught.value.permanent is permanent
    assert caught.value.status == status
