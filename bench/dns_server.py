"""A small authoritative DNS server on loopback, for outbound delivery runs.

Owns the DNS answers of the outbound delivery tests (through its re-export
``tests.support.dns_server``) and of ``python -m bench delivery``. Public
DNS is the one boundary they cannot run; this server answers real DNS
queries (UDP, dnspython wire format) from a table the caller fills, so the
relay's resolver runs its production code path. Names it does not
know get NXDOMAIN; a known name without the asked type gets an empty
NOERROR answer; a name marked failing gets SERVFAIL.
"""

from __future__ import annotations

import socket
import threading
from typing import Self

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


class LoopbackDns:
    """``with LoopbackDns() as dns_server:`` then ``dns_server.add(...)``."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str], list[str]] = {}
        self._failing: set[str] = set()
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.host, self.port = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.queries: list[tuple[str, str]] = []

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sock.close()

    def add(self, name: str, rdtype: str, *values: str) -> None:
        """``add("b.example", "MX", "10 mx.b.example.")``, ``add(host, "A", ip)``."""
        with self._lock:
            self._records.setdefault((name.lower(), rdtype.upper()), []).extend(values)

    def remove(self, name: str) -> None:
        with self._lock:
            for key in [k for k in self._records if k[0] == name.lower()]:
                del self._records[key]

    def fail(self, name: str) -> None:
        with self._lock:
            self._failing.add(name.lower())

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self._sock.recvfrom(4096)
            except TimeoutError:
                continue
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                continue
            self._sock.sendto(self._answer(query).to_wire(), peer)

    def _answer(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append((name, rdtype))
            values = self._records.get((name, rdtype))
            known = any(key[0] == name for key in self._records)
            failing = name in self._failing
        if failing:
            response.set_rcode(dns.rcode.SERVFAIL)
        elif values:
            response.answer.append(
                dns.rrset.from_text_list(question.name, 60, "IN", rdtype, values)
            )
        elif not known:
            response.set_rcode(dns.rcode.NXDOMAIN)
        return response
