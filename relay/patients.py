"""What the relay tells patients on professionals' behalf: pure settings and text.

Owns: the "not an emergency channel" automatic answer (issue 10): when a
patient starts a conversation (a message that answers nothing: no
``In-Reply-To``, no ``References``) with a professional or an organisation,
the patient receives, in their secure mailbox, an answer saying that this
messaging is not watched continuously and that an emergency is a call to
15 or 112. Who answers and with what text is configurable per professional
or organisation (``[patients]`` in the relay config).

What must stay true:

- The answer is an automatic reply in RFC 3834's sense: ``Auto-Submitted:
  auto-replied``, a null return path (no reply loops, no DSN), threaded to
  the patient's message; never sent for a reply within a thread.
- It carries no content of the patient's message, not even its subject.
"""

from __future__ import annotations

import email.utils
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from datetime import datetime

    from directory.model import Mailbox

DEFAULT_EMERGENCY_TEXT: Final = (
    "Bonjour,\n"
    "\n"
    "Votre message a bien été transmis à {name}.\n"
    "\n"
    "Cette messagerie n'est pas un service d'urgence : les messages n'y sont"
    " pas lus en continu.\n"
    "En cas d'urgence, appelez le 15 (SAMU) ou le 112.\n"
    "\n"
    "Ceci est une réponse automatique.\n"
)
EMERGENCY_SUBJECT: Final = "Réponse automatique : ce n'est pas un service d'urgence"


@dataclass(frozen=True, slots=True, kw_only=True)
class EmergencyNotice:
    enabled: bool = True
    text: str = DEFAULT_EMERGENCY_TEXT  # "{name}": the professional's display name


@dataclass(frozen=True, slots=True, kw_only=True)
class PatientSettings:
    """The ``[patients]`` table."""

    emergency: EmergencyNotice = field(default_factory=EmergencyNotice)
    # Per professional or organisation: a mailbox address, a practitioner's
    # national id (8 + RPPS) or an organisation's structure id.
    overrides: tuple[tuple[str, EmergencyNotice], ...] = ()

    def emergency_for(self, mailbox: Mailbox) -> EmergencyNotice:
        """The most specific setting: the mailbox, its owner, its structure."""
        table = dict(self.overrides)
        for key in (mailbox.address, mailbox.owner_id, mailbox.structure_id):
            if key and key in table:
                return table[key]
        return self.emergency


def patient_initiated(references: list[str]) -> bool:
    """A message that answers nothing starts a conversation."""
    return not references


def compose_emergency_notice(
    *,
    professional: Mailbox,
    patient: str,
    original_id: str,
    notice: EmergencyNotice,
    hostname: str,
    now: datetime,
) -> bytes:
    """The automatic answer, CRLF line ends, ready for the spool."""
    name = professional.display_name or professional.address
    message = EmailMessage(policy=SMTP)
    message["From"] = email.utils.formataddr((name, professional.address))
    message["To"] = patient
    message["Subject"] = EMERGENCY_SUBJECT
    message["Date"] = email.utils.format_datetime(now)
    message["Message-ID"] = email.utils.make_msgid("auto", domain=hostname)
    if original_id:
        message["In-Reply-To"] = original_id
        message["References"] = original_id
    # RFC 3834 §5.1: an automatic answer to one message.
    message["Auto-Submitted"] = "auto-replied"
    message.set_content(notice.text.replace("{name}", name))
    return message.as_bytes()
