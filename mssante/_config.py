"""Client configuration: TLS profile and timeouts, as frozen dataclasses.

Defaults come with where their number comes from. Nothing here opens a
socket; :mod:`mssante._transport` turns a :class:`TLSConfig` into an
``ssl.SSLContext``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pathlib import Path

# RFC 5321 §4.5.3.2: a client waits 5 minutes for the greeting and for
# MAIL/RCPT replies, 2 for DATA's 354, 3 per data block, 10 for the final
# reply. We keep those, and 30 s to connect.
DEFAULT_CONNECT_TIMEOUT: Final = 30.0
DEFAULT_COMMAND_TIMEOUT: Final = 300.0
DEFAULT_DATA_TIMEOUT: Final = 600.0
# Client-side traces are kept six months (MSSanté obligations of practice
# software).
DEFAULT_TRACE_RETENTION_DAYS: Final = 183


@dataclass(frozen=True, slots=True, kw_only=True)
class TLSConfig:
    """How the client verifies the relay. Verification is never disabled.

    ``mssante_strict``: TLS 1.2 only with the four MSSanté suites, and only the
    anchors in ``ca_file`` (the IGC-Santé roots), not the system store.
    """

    ca_file: Path | None = None  # None: the system trust store
    client_cert: Path | None = None  # PEM chain for certificate authentication
    client_key: Path | None = field(default=None, repr=False)
    mssante_strict: bool = False

    def __post_init__(self) -> None:
        if self.mssante_strict and self.ca_file is None:
            raise ValueError(
                "ca_file: the strict MSSanté profile needs its own anchors"
            )
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("client_cert/client_key: give both or neither")


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeouts:
    connect: float = DEFAULT_CONNECT_TIMEOUT
    command: float = DEFAULT_COMMAND_TIMEOUT
    data: float = DEFAULT_DATA_TIMEOUT
