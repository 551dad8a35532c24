"""Errors of the notice channels, under :class:`relay.contact.ContactError`.

::

    ContactError                 (relay.contact) a notice could not be sent
    └── ChannelError             one channel failed; ``reason`` says how
        └── OutboxError          the notice outbox cannot be read or written

What must stay true: ``reason`` is short and names no address, phone number
or reply text (a smarthost's reply may quote the contact address); it goes to
the audit trail as it is.
"""

from __future__ import annotations

from relay.contact import ContactError


class ChannelError(ContactError):
    """A channel did not take a notice.

    ``reason``: a short word for the audit trail (``"unreachable"``,
    ``"tls"``, ``"smtp-451"``, ``"http-503"``); ``permanent``: trying again
    will not help (the smarthost refused the address with a 5xx reply).
    """

    def __init__(self, reason: str, *, permanent: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.permanent = permanent


class OutboxError(ChannelError):
    """The outbox database failed (the delivered mail is not affected)."""

    def __init__(self, reason: str = "outbox") -> None:
        super().__init__(reason)
