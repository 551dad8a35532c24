"""The relay's event loop: uvloop where it is installed, asyncio's own loop
otherwise.

Owns: the choice of loop for the processes that serve (``mssante serve``,
the acceptor processes) and the CLI commands.

Why uvloop: the relay spends most of its event-loop time in loop and
transport machinery (callbacks, timers, socket reads and writes of many
small SMTP replies) rather than in its own code. uvloop runs that machinery
in C on libuv, behind the same ``asyncio`` API: nothing in the relay knows
which loop it runs on. Measured with ``python -m bench smtp`` (ours only,
four alternated pairs): 100 KB messages 491 to 507 → 527 to 536 msg/s, relay CPU
per run 6.8 → 6.5 s (``docs/bench-smtp.md``, fifth round).

What must stay true:

- The relay behaves the same on both loops; the test suite runs relays
  started as subprocesses (uvloop) and in-process relays under pytest's own
  loop (asyncio).
- ``MSSANTE_EVENT_LOOP=asyncio`` forces asyncio's loop (to compare, or to
  rule uvloop out when diagnosing); any other value is refused by name.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Final, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from typing import Any

_T = TypeVar("_T")

ENV_VAR: Final = "MSSANTE_EVENT_LOOP"
CHOICES: Final = ("uvloop", "asyncio")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory of the loop to run on; None: asyncio's default loop.

    Raises:
        ValueError: ``MSSANTE_EVENT_LOOP`` names no known loop.
    """
    wanted = os.environ.get(ENV_VAR, "")
    if wanted and wanted not in CHOICES:
        raise ValueError(f"{ENV_VAR}={wanted!r}: expected one of {', '.join(CHOICES)}")
    if wanted == "asyncio":
        return None
    try:
        import uvloop  # optional: absent where it does not build
    except ImportError:
        if wanted == "uvloop":
            raise ValueError(f"{ENV_VAR}=uvloop: uvloop is not installed") from None
        return None
    new_loop: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return new_loop


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(main)`` on the relay's loop.

    Raises:
        ValueError: ``MSSANTE_EVENT_LOOP`` names no usable loop (``main`` is
            closed, never run).
    """
    try:
        factory = loop_factory()
    except ValueError:
        main.close()
        raise
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
