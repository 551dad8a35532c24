"""The ``[notices]`` settings: pure, frozen, validated by :mod:`relay.config`.

Owns: what the notices to a patient's ordinary contact need to know: whether
they are sent, how often at most, how long a notice is tried, the smarthost
that carries e-mail notices, the SMS gateway, and the "how to read" pointers
the texts give.

What must stay true:

- Secrets (the smarthost password, the SMS gateway token) are file paths,
  never inline values, and are not in any ``repr``.
- TLS to the smarthost and to the SMS gateway is always verified; the only
  choice is which anchors (``ca_file``, default: the system's).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pathlib import Path

# Consumer services send "you have new messages" about once an hour.
DEFAULT_MIN_INTERVAL: Final = 3600.0
# A notice not sent within a day says nothing useful any more.
DEFAULT_EXPIRY: Final = 24 * 3600.0
# Retries of a failed notice: one minute, doubling, up to an hour.
DEFAULT_MINIMAL_BACKOFF: Final = 60.0
DEFAULT_MAXIMAL_BACKOFF: Final = 3600.0
# RFC 6409 §3.1: message submission is port 587.
DEFAULT_SMARTHOST_PORT: Final = 587
DEFAULT_CHANNEL_TIMEOUT: Final = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class SmarthostSettings:
    """``[notices.smarthost]``: where e-mail notices are submitted."""

    host: str
    port: int = DEFAULT_SMARTHOST_PORT
    # RFC 3207: STARTTLS before anything else; False only for a smarthost on
    # the same machine (warned at start, and then no AUTH).
    starttls: bool = True
    ca_file: Path | None = None  # anchors for the smarthost; default: the system's
    username: str = ""  # AUTH PLAIN (RFC 4616) when set, after TLS only
    password_file: Path | None = field(default=None, repr=False)
    from_address: str  # the From: of the notices ("ne-pas-repondre@...")
    envelope_from: str = ""  # MAIL FROM; default: from_address
    timeout: float = DEFAULT_CHANNEL_TIMEOUT

    @property
    def mail_from(self) -> str:
        return self.envelope_from or self.from_address


@dataclass(frozen=True, slots=True, kw_only=True)
class SmsSettings:
    """``[notices.sms]``: an HTTPS SMS gateway taking JSON."""

    url: str  # https:// only
    token_file: Path = field(repr=False)  # the bearer token (RFC 6750 §2.1)
    ca_file: Path | None = None
    sender: str = ""  # the sender name shown on the phone, when the gateway allows
    timeout: float = DEFAULT_CHANNEL_TIMEOUT


@dataclass(frozen=True, slots=True, kw_only=True)
class NoticeSettings:
    """The ``[notices]`` table. Without it, no notice is sent."""

    enabled: bool = False
    min_interval: float = (
        DEFAULT_MIN_INTERVAL  # at most one new-message notice per patient
    )
    expiry: float = DEFAULT_EXPIRY
    minimal_backoff: float = DEFAULT_MINIMAL_BACKOFF
    maximal_backoff: float = DEFAULT_MAXIMAL_BACKOFF
    # How to read: a web address, or else the IMAP server's host name.
    read_url: str = ""
    imap_host: str = ""
    # Where a patient sees why an administrator opened the mailbox (break-glass);
    # default: the access report in their secure mailbox.
    access_report_url: str = ""
    smarthost: SmarthostSettings | None = None
    sms: SmsSettings | None = None

    @property
    def active(self) -> bool:
        return self.enabled and (self.smarthost is not None or self.sms is not None)
