"""The :class:`relay.contact.ContactNotifier` over the configured channels.

Owns: choosing the channels for one patient (e-mail when they declared an
address and a smarthost is configured, SMS when they declared a phone and a
gateway is configured) and sending a notice through each; building all of
it from the config (:meth:`Notifier.for_config`), so that the relay and the
CLI commands (activation, recovery, break-glass) send the same way.

What must stay true: the notice is the only content sent; channel failures
come back as :class:`relay.notify.errors.ChannelError` per channel, so that a
caller retries only the channels that failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from relay.contact import ContactError, ContactNotice, NoticeKind
from relay.notify import texts
from relay.notify.errors import ChannelError
from relay.notify.smarthost import CHANNEL as EMAIL
from relay.notify.smarthost import SmarthostChannel
from relay.notify.sms import CHANNEL as SMS
from relay.notify.sms import HttpsSmsGateway

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from directory.model import Patient
    from relay.config import Config
    from relay.notify.settings import NoticeSettings
    from relay.notify.sms import SmsGateway


class NoticeSetupError(ContactError):
    """A secret file of ``[notices]`` cannot be read; the message names the key."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What each channel did with one notice."""

    sent: tuple[str, ...] = ()
    failed: tuple[tuple[str, ChannelError], ...] = ()


def fixed_notices(settings: NoticeSettings) -> dict[NoticeKind, ContactNotice]:
    """The notices without a code, built once from the settings."""
    return {
        NoticeKind.NEW_MESSAGE: texts.new_message(
            read_url=settings.read_url, imap_host=settings.imap_host
        ),
        NoticeKind.BREAK_GLASS: texts.break_glass(
            access_report_url=settings.access_report_url
        ),
    }


def _secret(path: Path, key: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise NoticeSetupError(f"{key}: cannot read {path}: {exc}") from None
    if not value:
        raise NoticeSetupError(f"{key}: {path} is empty")
    return value


def _now() -> datetime:
    return datetime.now(UTC)


class Notifier:
    """Sends notices to a patient's ordinary contact by every usable channel."""

    def __init__(
        self,
        *,
        email: SmarthostChannel | None = None,
        sms: SmsGateway | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._email = email
        self._sms = sms
        self._clock = clock

    @classmethod
    def for_config(cls, cfg: Config) -> Notifier:
        """The channels ``[notices]`` configures (none when it is disabled).

        Raises :class:`NoticeSetupError` when a password or token file
        cannot be read.
        """
        settings = cfg.notices
        email = sms = None
        if settings.enabled and settings.smarthost is not None:
            s = settings.smarthost
            password = (
                _secret(s.password_file, "notices.smarthost.password_file")
                if s.password_file is not None
                else ""
            )
            email = SmarthostChannel(s, hostname=cfg.relay.hostname, password=password)
        if settings.enabled and settings.sms is not None:
            token = _secret(settings.sms.token_file, "notices.sms.token_file")
            sms = HttpsSmsGateway(settings.sms, token=token)
        return cls(email=email, sms=sms)

    @property
    def configured(self) -> bool:
        return self._email is not None or self._sms is not None

    def channels_for(self, patient: Patient) -> list[str]:
        """The channels that can reach this patient's declared contact."""
        out = []
        if patient.contact_email and self._email is not None:
            out.append(EMAIL)
        if patient.contact_phone and self._sms is not None:
            out.append(SMS)
        return out

    async def send(
        self,
        patient: Patient,
        notice: ContactNotice,
        *,
        skip: frozenset[str] = frozenset(),
    ) -> Outcome:
        """Send through each channel for ``patient`` but those in ``skip``."""
        sent: list[str] = []
        failed: list[tuple[str, ChannelError]] = []
        for channel in self.channels_for(patient):
            if channel in skip:
                continue
            try:
                if channel == EMAIL:
                    assert self._email is not None  # noqa: S101 - channels_for
                    await self._email.send(
                        patient.contact_email, notice, now=self._clock()
                    )
                else:
                    assert self._sms is not None  # noqa: S101 - channels_for
                    await self._sms.send(patient.contact_phone, notice.short)
            except ChannelError as exc:
                failed.append((channel, exc))
            else:
                sent.append(channel)
        return Outcome(sent=tuple(sent), failed=tuple(failed))

    async def notify(self, patient: Patient, notice: ContactNotice) -> list[str]:
        """:class:`relay.contact.ContactNotifier`: the channels that took it.

        Raises the first channel's :class:`ChannelError` when none took it.
        """
        outcome = await self.send(patient, notice)
        if outcome.failed and not outcome.sent:
            raise outcome.failed[0][1]
        return list(outcome.sent)
