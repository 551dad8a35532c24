"""The SMS channel: the :class:`SmsGateway` interface and an HTTPS gateway.

Owns: what an SMS gateway must do (:class:`SmsGateway`: send a short text to
an E.164 number, or raise :class:`relay.notify.errors.ChannelError`) and one
implementation, :class:`HttpsSmsGateway`, which POSTs JSON to the operator's
gateway with a bearer token (RFC 6750 §2.1) through aiohttp.

What must stay true:

- Only ``https://`` URLs (the config refuses others), verified against
  ``ca_file`` or the system's anchors; the token is read from a file and
  never logged.
- The body is ``{"to": "+33...", "text": "...", "sender": "..."}``; a 2xx
  reply means the gateway took it. A 4xx other than 408/429 is permanent
  (retrying the same request will not help); anything else is temporary.
- A failure's ``reason`` names the HTTP status only, never the body (it may
  echo the number).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, Protocol

import aiohttp

from relay.notify.errors import ChannelError
from relay.notify.smarthost import tls_context

if TYPE_CHECKING:
    from relay.notify.settings import SmsSettings

CHANNEL: Final = "sms"
# RFC 9110 §15.5.9 and RFC 6585 §4: worth trying again later.
_RETRYABLE_4XX: Final = frozenset({408, 429})


class SmsGateway(Protocol):
    """Sends one SMS; raises :class:`ChannelError` when the gateway does not take it."""

    async def send(self, phone: str, text: str) -> None: ...


class HttpsSmsGateway:
    """An SMS gateway reached by an HTTPS POST of JSON with a bearer token."""

    def __init__(self, settings: SmsSettings, *, token: str) -> None:
        """``token``: the content of ``settings.token_file`` (read by the caller)."""
        self._settings = settings
        self._token = token
        self._tls = tls_context(settings.ca_file)

    async def send(self, phone: str, text: str) -> None:
        s = self._settings
        body: dict[str, str] = {"to": phone, "text": text}
        if s.sender:
            body["sender"] = s.sender
        timeout = aiohttp.ClientTimeout(total=s.timeout)
        connector = aiohttp.TCPConnector(ssl=self._tls)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout, connector=connector) as http,
                http.post(
                    s.url,
                    json=body,
                    headers={"Authorization": f"Bearer {self._token}"},
                    allow_redirects=False,
                ) as response,
            ):
                status = response.status
                await response.read()
        except aiohttp.ClientSSLError as exc:
            raise ChannelError("tls") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ChannelError("unreachable") from exc
        if 200 <= status < 300:
            return
        permanent = 400 <= status < 500 and status not in _RETRYABLE_4XX
        raise ChannelError(f"http-{status}", permanent=permanent)
