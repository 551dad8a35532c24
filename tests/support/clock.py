"""A relay clock that tests move forward (expiries, throttles, sessions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta


@dataclass
class MovingClock:
    """Now, plus an offset the test moves."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset
