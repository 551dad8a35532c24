"""SMS for the notice tests: an in-memory gateway and a real HTTPS gateway.

:class:`RecordingSmsGateway` is the test double of
:class:`relay.notify.sms.SmsGateway` (a boundary we cannot run: an operator's
SMS service): it records each text, or fails as told. :func:`https_gateway`
is a real HTTPS server on loopback (stdlib ``http.server`` in a thread, the
test PKI's certificate) that records the JSON bodies and the Authorization
header :class:`relay.notify.sms.HttpsSmsGateway` sends, and answers with a
status the test chooses.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from relay.notify.errors import ChannelError


@dataclass
class RecordingSmsGateway:
    """Records (phone, text); raises ``fail`` when set."""

    sent: list[tuple[str, str]] = field(default_factory=list)
    fail: ChannelError | None = None

    async def send(self, phone: str, text: str) -> None:
        if self.fail is not None:
            raise self.fail
        self.sent.append((phone, text))


@dataclass
class GatewayServer:
    url: str
    requests: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    status: int = 202


@contextlib.contextmanager
def https_gateway(tls_dir: Path) -> Iterator[GatewayServer]:
    """A JSON-over-HTTPS SMS gateway on 127.0.0.1."""
    state = GatewayServer(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = json.loads(self.rfile.read(length))
            state.requests.append((dict(self.headers.items()), body))
            self.send_response(state.status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ANN401
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls_dir / "server.pem", tls_dir / "server.key")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    state.url = f"https://127.0.0.1:{server.server_address[1]}/v1/sms"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
