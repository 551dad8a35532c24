"""A synchronous facade over :class:`~mssante.Client`, for software that is not async.

Each ``SyncClient`` owns a private event loop (``asyncio.Runner``) on which
its calls run one at a time; it must not be used from inside a running event
loop (use :class:`~mssante.Client` there). It takes the same arguments as
:meth:`Client.connect`, raises the same errors, and closes the session on
``close()`` or at the end of a ``with`` block.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from mssante._client import Client, SentMessage

if TYPE_CHECKING:
    from collections.abc import Sequence
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

    from mssante.message import Report


class SyncClient:
    """``with SyncClient(host, port, login=..., password=..., tls=...) as c: c.send(report)``."""

    def __init__(self, host: str, port: int = 587, **options: Any) -> None:  # noqa: ANN401 - Client.connect's keywords
        self._runner = asyncio.Runner()
        self._session: AbstractAsyncContextManager[Client] = Client.connect(
            host, port, **options
        )
        try:
            self._client = self._runner.run(self._session.__aenter__())
        except BaseException:
            self._runner.close()
            raise

    def send(self, report: Report) -> SentMessage:
        return self._runner.run(self._client.send(report))

    def submit(
        self, message: bytes, *, sender: str, recipients: Sequence[str]
    ) -> SentMessage:
        return self._runner.run(
            self._client.submit(message, sender=sender, recipients=recipients)
        )

    def close(self) -> None:
        try:
            self._runner.run(self._session.__aexit__(None, None, None))
        finally:
            self._runner.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
