"""The only module of the library that opens sockets and TLS.

Owns: TLS contexts built from :class:`~mssante._config.TLSConfig`, the SMTP
connection (asyncio streams feeding the sans-IO :mod:`mssante.proto.smtp`),
and the translation of lower-level failures into the library's errors, in
one place (:func:`translated`): ``OSError`` becomes :class:`ConnectError`,
``ssl`` failures :class:`TLSVerificationError`, timeouts
:class:`ResponseTimeoutError`, always ``from`` the original.

What must stay true: certificate and host name verification are always on
(there is no option to turn them off); the strict MSSanté profile allows TLS
1.2 with the four MSSanté suites only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import TYPE_CHECKING, Final

from mssante._errors import (
    ConnectError,
    ResponseTimeoutError,
    TLSVerificationError,
    TransportError,
)
from mssante.proto.smtp import Reply, ReplyReader

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from mssante._config import Timeouts, TLSConfig

# DESIGN §6: the TLS 1.2 suites of the MSSanté trust space.
MSSANTE_TLS12_CIPHERS: Final = ":".join(
    [
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES256-SHA384",
        "ECDHE-RSA-AES128-SHA256",
    ]
)
_READ_SIZE: Final = 65536


def tls_context(config: TLSConfig) -> ssl.SSLContext:
    """A verifying client context for ``config``."""
    if config.mssante_strict:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=config.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers(MSSANTE_TLS12_CIPHERS)
    else:
        ctx = ssl.create_default_context(
            cafile=str(config.ca_file) if config.ca_file else None
        )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.client_cert is not None:
        ctx.load_cert_chain(config.client_cert, config.client_key)
    return ctx


@contextlib.contextmanager
def translated(what: str) -> Iterator[None]:
    """Turn OS, TLS and timeout errors into the library's, naming ``what``."""
    try:
        yield
    except ssl.SSLCertVerificationError as exc:
        raise TLSVerificationError(
            f"{what}: certificate refused: {exc.verify_message}"
        ) from exc
    except ssl.SSLError as exc:
        raise TLSVerificationError(f"{what}: TLS failed: {exc.reason or exc}") from exc
    except TimeoutError as exc:
        raise ResponseTimeoutError(f"{what}: no answer in time") from exc
    except asyncio.IncompleteReadError as exc:
        raise ConnectError(f"{what}: the server closed the connection") from exc
    except OSError as exc:
        raise ConnectError(f"{what}: {exc.strerror or exc}") from exc


class SmtpConnection:
    """One SMTP session: write commands, read replies (pipelined if asked)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        timeouts: Timeouts,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host
        self._timeouts = timeouts
        self._replies = ReplyReader()

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        timeouts: Timeouts,
        server_name: str | None = None,
    ) -> tuple[SmtpConnection, Reply]:
        """Connect (implicit TLS when ``tls`` is given) and read the greeting.

        ``server_name``: the name the certificate must carry, when ``host``
        is an address resolved elsewhere (an MX host's, by the relay).
        """
        name = server_name or host
        with translated(f"connect to {name}:{port}"):
            async with asyncio.timeout(timeouts.connect):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=name if tls else None
                )
        conn = cls(reader, writer, name, timeouts)
        greeting = await conn.read_reply()
        return conn, greeting

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        obj: ssl.SSLObject | None = self._writer.get_extra_info("ssl_object")
        return obj

    @property
    def tls_version(self) -> str | None:
        obj = self.ssl_object
        return obj.version() if obj is not None else None

    async def read_reply(self, within: float | None = None) -> Reply:
        with translated(f"read from {self._host}"):
            async with asyncio.timeout(within or self._timeouts.command):
                while (reply := self._replies.next_reply()) is None:
                    data = await self._reader.read(_READ_SIZE)
                    if not data:
                        raise ConnectError(
                            f"{self._host}: connection closed by the server"
                        )
                    self._replies.feed(data)
        return reply

    async def read_final_reply(self) -> Reply:
        """The reply after the data (RFC 5321 §4.5.3.2.6: allow 10 minutes)."""
        return await self.read_reply(self._timeouts.data)

    async def send(self, data: bytes) -> None:
        with translated(f"write to {self._host}"):
            self._writer.write(data)
            async with asyncio.timeout(self._timeouts.data):
                await self._writer.drain()

    async def command(self, line: bytes, within: float | None = None) -> Reply:
        await self.send(line)
        return await self.read_reply(within)

    async def pipeline(self, lines: Sequence[bytes]) -> list[Reply]:
        """Send several commands at once (RFC 2920) and read their replies in order."""
        await self.send(b"".join(lines))
        return [await self.read_reply() for _ in lines]

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        with translated(f"STARTTLS with {self._host}"):
            async with asyncio.timeout(self._timeouts.connect):
                await self._writer.start_tls(ctx, server_hostname=self._host)
        self._replies = ReplyReader()

    async def close(self) -> None:
        with contextlib.suppress(OSError, TransportError, ssl.SSLError, TimeoutError):
            self._writer.close()
            async with asyncio.timeout(5):
                await self._writer.wait_closed()
