"""Where mail for a domain goes: MX lookup with the A/AAAA fallback (RFC 5321 §5.1).

Owns: the :class:`Resolver` protocol the outbound delivery asks, and
:class:`DnsResolver`, its dnspython implementation (the only module that
queries DNS). Tests answer through a real DNS server on loopback, the same
code path as production.

What must stay true:

- Hosts come back in MX preference order, equal preferences shuffled
  (RFC 5321 §5.1: "randomize them to spread the load").
- A domain without MX records is its own mail exchanger (the implicit MX,
  RFC 5321 §5.1) when it has an address record.
- A null MX (RFC 7505: one record ``0 .``) and a domain that does not exist
  are permanent failures; a server that cannot answer is a temporary one.
  Delivery never guesses past a temporary failure.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Final, Protocol

import dns.asyncresolver
import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

DEFAULT_DNS_TIMEOUT: Final = 5.0


class ResolveError(Exception):
    """A destination cannot be resolved; ``permanent`` says whether to give up."""

    def __init__(self, message: str, *, permanent: bool, status: str) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.status = status  # RFC 3463 enhanced status code for the DSN


@dataclass(frozen=True, slots=True)
class MailHost:
    """One mail exchanger: its name (checked against its certificate) and addresses."""

    name: str
    preference: int
    addresses: tuple[str, ...]


class Resolver(Protocol):
    """What the outbound delivery asks DNS."""

    async def mail_hosts(self, domain: str) -> list[MailHost]:
        """The hosts to try for ``domain``, in order; :class:`ResolveError` if none."""
        ...


class DnsResolver:
    """:class:`Resolver` over dnspython's asyncio resolver."""

    def __init__(
        self,
        nameservers: tuple[str, ...] = (),
        *,
        port: int = 53,
        timeout: float = DEFAULT_DNS_TIMEOUT,
        rng: random.Random | None = None,
    ) -> None:
        # No nameservers: the system's (/etc/resolv.conf). A machine without
        # one gets a resolver with none: every lookup is then a temporary
        # failure (mail waits in the queue), not a relay that cannot start.
        try:
            self._resolver = dns.asyncresolver.Resolver(configure=not nameservers)
        except dns.resolver.NoResolverConfiguration:
            self._resolver = dns.asyncresolver.Resolver(configure=False)
        self._resolver.nameservers = list(nameservers or self._resolver.nameservers)
        self._resolver.port = port
        self._resolver.lifetime = timeout
        self._rng = rng or random.Random()  # noqa: S311 - load spreading, not secrecy

    async def mail_hosts(self, domain: str) -> list[MailHost]:
        records = await self._query(domain, "MX", domain)
        if records is None:
            # RFC 5321 §5.1: no MX, so the domain itself is the implicit MX.
            addresses = await self._addresses(domain, domain)
            if not addresses:
                raise ResolveError(
                    f"{domain}: no MX and no address record",
                    permanent=True,
                    status="5.1.2",
                )
            return [MailHost(domain, 0, addresses)]
        exchanges: list[tuple[int, str]] = []
        for record in records:
            target = record.exchange.to_text(omit_final_dot=True).lower()
            exchanges.append((int(record.preference), target))
        # RFC 7505 §3: "0 ." says the domain accepts no mail.
        if any(name in ("", ".") for _, name in exchanges):
            raise ResolveError(
                f"{domain}: null MX, the domain accepts no mail",
                permanent=True,
                status="5.1.10",
            )
        self._rng.shuffle(exchanges)
        exchanges.sort(
            key=lambda pair: pair[0]
        )  # stable: equal preferences stay shuffled
        hosts = []
        temporary: ResolveError | None = None
        for preference, name in exchanges:
            try:
                addresses = await self._addresses(name, domain)
            except ResolveError as exc:
                if exc.permanent:
                    continue
                temporary = exc
                continue
            if addresses:
                hosts.append(MailHost(name, preference, addresses))
        if not hosts:
            if temporary is not None:
                raise temporary
            raise ResolveError(
                f"{domain}: no MX host has an address",
                permanent=True,
                status="5.1.2",
            )
        return hosts

    async def _addresses(self, host: str, domain: str) -> tuple[str, ...]:
        found: list[str] = []
        for rdtype in ("A", "AAAA"):
            records = await self._query(host, rdtype, domain)
            if records is not None:
                found.extend(r.address for r in records)
        return tuple(found)

    async def _query(
        self, name: str, rdtype: str, domain: str
    ) -> dns.resolver.Answer | None:
        """The answer, None when the name has no such record; raises otherwise."""
        try:
            return await self._resolver.resolve(
                dns.name.from_text(name), rdtype, search=False
            )
        except dns.resolver.NoAnswer:
            return None
        except dns.resolver.NXDOMAIN as exc:
            raise ResolveError(
                f"{domain}: {name} does not exist", permanent=True, status="5.1.2"
            ) from exc
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise ResolveError(
                f"{domain}: DNS did not answer for {name} {rdtype}",
                permanent=False,
                status="4.4.3",
            ) from exc
        except dns.exception.DNSException as exc:
            raise ResolveError(
                f"{domain}: DNS failed for {name} {rdtype}: {type(exc).__name__}",
                permanent=False,
                status="4.4.3",
            ) from exc
