"""Reaching a patient outside the trust space: the ordinary contact.

Owns: what the relay may say to a patient's declared ordinary contact (the
``contact_email`` and ``contact_phone`` of their directory entry) and the
interface every channel implements. Channels (e-mail through a smarthost, an
SMS gateway) live in :mod:`relay.notify`; this module is what callers
(delivery, enrolment, recovery, break-glass) depend on.

What must stay true:

- **No health data leaves the trust space.** A :class:`ContactNotice` is
  built only from the fixed texts of its :class:`NoticeKind` and, for codes,
  a one-time code: never a sender, a subject, a document type or any content.
  Its constructor is the only way to make one.
- A channel failure never loses mail nor blocks delivery; it is audited and
  retried by the channel's own rules.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from directory.model import Patient


class NoticeKind(enum.StrEnum):
    """Why the ordinary contact is written to."""

    NEW_MESSAGE = "new-message"  # a secure message waits
    ACTIVATION_CODE = "activation-code"  # the one-time code that opens the account
    RECOVERY_CODE = "recovery-code"  # the one-time code that resets the password
    BREAK_GLASS = "break-glass"  # an administrator opened the mailbox


class ContactError(Exception):
    """A channel could not take the notice (temporary unless stated)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactNotice:
    """One notice to the ordinary contact: fixed French text, nothing else.

    ``subject`` and ``text`` are for e-mail; ``short`` is the SMS text (at
    most 160 GSM characters).
    """

    kind: NoticeKind
    subject: str
    text: str
    short: str


class ContactNotifier(Protocol):
    """Sends a notice to a patient's ordinary contact, by every channel the
    patient declared (e-mail, SMS). Returns the channels that took it (names
    such as ``"email"``, ``"sms"``); empty when the patient declared no
    contact. Raises :class:`ContactError` when none could take it."""

    async def notify(self, patient: Patient, notice: ContactNotice) -> list[str]: ...
