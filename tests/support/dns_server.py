"""The loopback DNS server of the outbound delivery tests (it lives in ``bench``,
which the delivery benchmark shares; ``tests`` is no import root of ``bench``)."""

from bench.dns_server import LoopbackDns

__all__ = ["LoopbackDns"]
