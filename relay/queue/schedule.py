"""When to try an outbound recipient again, and what a reply means: pure rules.

Owns: the retry schedule (exponential backoff with jitter between a
minimal and a maximal delay, Postfix's ``minimal_backoff_time``,
``maximal_backoff_time`` and ``maximal_queue_lifetime``), the delay-notice
rule, and the reading of an SMTP reply as delivered, deferred or bounced
for one recipient. No I/O, no clock: times and random draws come in.

What must stay true:

- A 2xx reply delivers, 4xx defers, 5xx bounces (RFC 5321 §4.2.1); a
  deferral past the queue lifetime bounces with the last reason.
- The delay between attempts doubles from ``minimal_backoff`` up to
  ``maximal_backoff`` and is spread by ``jitter`` so that a queue of
  deferred messages does not retry all at once.
- A delay notice (RFC 3461 §4.1 ``NOTIFY=DELAY``) goes at most once per
  recipient, only when asked for explicitly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

# Postfix defaults (postconf(5)).
DEFAULT_MINIMAL_BACKOFF: Final = 300.0
DEFAULT_MAXIMAL_BACKOFF: Final = 4000.0
DEFAULT_QUEUE_LIFETIME: Final = 5 * 24 * 3600.0
# Postfix's delay_warning_time is off by default; a delay notice is only
# sent to who asked NOTIFY=DELAY, after four hours (as Exim and Sendmail).
DEFAULT_DELAY_WARNING: Final = 4 * 3600.0
DEFAULT_JITTER: Final = 0.2


class Verdict(enum.StrEnum):
    DELIVERED = "delivered"
    DEFERRED = "deferred"
    BOUNCED = "bounced"


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    minimal_backoff: float = DEFAULT_MINIMAL_BACKOFF
    maximal_backoff: float = DEFAULT_MAXIMAL_BACKOFF
    lifetime: float = DEFAULT_QUEUE_LIFETIME
    delay_warning: float = DEFAULT_DELAY_WARNING
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter: must be in [0, 1)")
        if self.maximal_backoff < self.minimal_backoff:
            raise ValueError("maximal_backoff: must not be below minimal_backoff")

    def backoff(self, attempts: int, draw: float) -> float:
        """Seconds before the next try after ``attempts`` failed ones.

        ``draw`` is a uniform random number in [0, 1): the jitter's share.
        """
        base: float = self.minimal_backoff * 2.0 ** max(attempts - 1, 0)
        base = min(base, self.maximal_backoff)
        return base * (1 - self.jitter + 2 * self.jitter * draw)

    def next_attempt(self, attempts: int, now: datetime, draw: float) -> datetime:
        return now + timedelta(seconds=self.backoff(attempts, draw))

    def expired(self, queued_at: datetime, now: datetime) -> bool:
        return (now - queued_at).total_seconds() >= self.lifetime

    def give_up_at(self, queued_at: datetime) -> datetime:
        return queued_at + timedelta(seconds=self.lifetime)

    def wants_delay_notice(
        self,
        queued_at: datetime,
        now: datetime,
        notify: tuple[str, ...],
        *,
        already_sent: bool,
    ) -> bool:
        # RFC 3461 §4.1: DELAY only when asked (an empty NOTIFY leaves it to
        # the MTA; we send failures only, as Postfix does by default).
        return (
            not already_sent
            and "DELAY" in notify
            and (now - queued_at).total_seconds() >= self.delay_warning
        )


def verdict(code: int) -> Verdict:
    """RFC 5321 §4.2.1: the first digit says it all."""
    if 200 <= code < 300:
        return Verdict.DELIVERED
    if 400 <= code < 500:
        return Verdict.DEFERRED
    return Verdict.BOUNCED


def wants_failure_notice(sender: str, notify: tuple[str, ...]) -> bool:
    """RFC 3461 §4.1 and §6.2: FAILURE (or no NOTIFY), never for a null sender."""
    return (
        bool(sender) and "NEVER" not in notify and (not notify or "FAILURE" in notify)
    )


def wants_success_notice(sender: str, notify: tuple[str, ...]) -> bool:
    return bool(sender) and "SUCCESS" in notify
