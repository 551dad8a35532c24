"""Delivery status notifications the relay itself writes (RFC 3461, RFC 3464).

Owns: turning a spooled envelope and the recipients just delivered into a
"delivered" DSN for the sender, for the recipients that asked for one with
``NOTIFY=SUCCESS`` (RFC 3461 §4.1); and composing the relayed, delayed and
failed notices of outbound delivery (:func:`compose_notice`). The MIME layout is the client library's
(``mssante.message.compose_dsn``): one composer for the relay and for tests.

What must stay true:

- The DSN carries the original's headers only, unless the sender asked
  ``RET=FULL`` (RFC 3461 §4.3); ``ENVID`` and ``ORCPT`` come back as given.
- A DSN is never sent about a DSN (null sender): RFC 3461 §6.2.
"""

from __future__ import annotations

import email.utils
from typing import TYPE_CHECKING

from mssante.message import Action, RecipientStatus, compose_dsn

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from relay.queue.spool import Envelope

# RFC 3463: X.0.0 "other undefined status" is what a successful final
# delivery reports.
DELIVERED_STATUS = "2.0.0"


def success_notices(
    hostname: str, clock: Callable[[], datetime]
) -> Callable[[Envelope, list[str], bytes], bytes | None]:
    """A builder for :class:`relay.queue.deliver.LocalDelivery`."""

    def build(envelope: Envelope, delivered: list[str], message: bytes) -> bytes | None:
        if not envelope.sender or not delivered:
            return None
        orcpt = {r.address: r.orcpt for r in envelope.recipients}
        recipients = [
            RecipientStatus(
                final_recipient=address,
                action=Action.DELIVERED,
                status=DELIVERED_STATUS,
                original_recipient=orcpt_address(orcpt.get(address)),
            )
            for address in delivered
        ]
        return compose_notice(
            hostname=hostname,
            sender=envelope.sender,
            envid=envelope.envid,
            ret=envelope.ret,
            received_at=envelope.received_at,
            statuses=recipients,
            original=message,
            now=clock(),
        )

    return build


def compose_notice(
    *,
    hostname: str,
    sender: str,
    envid: str | None,
    ret: str | None,
    received_at: datetime,
    statuses: list[RecipientStatus],
    original: bytes,
    now: datetime,
) -> bytes:
    """A DSN from this relay to ``sender`` (delivered, relayed, delayed or failed)."""
    return compose_dsn(
        reporting_mta=hostname,
        original_envelope_id=envid,
        arrival_date=received_at,
        recipients=statuses,
        original=original,
        return_full=ret == "FULL",
        notify_to=sender,
        message_id=email.utils.make_msgid("dsn", domain=hostname),
        now=now,
    )


def orcpt_address(orcpt: str | None) -> str | None:
    # The spool keeps ORCPT as "type;address" (xtext decoded).
    if orcpt is None:
        return None
    addr_type, _, address = orcpt.partition(";")
    return address if addr_type.lower() == "rfc822" and address else None
