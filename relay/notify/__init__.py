"""Notices to a patient's ordinary contact (issue 10): texts, channels, outbox.

Owns: the channels behind :class:`relay.contact.ContactNotifier` (e-mail
through a smarthost, :mod:`relay.notify.smarthost`; an SMS gateway,
:mod:`relay.notify.sms`), the texts (:mod:`relay.notify.texts`), and the
new-message notices: queued durably when mail lands
(:mod:`relay.notify.outbox`), sent, retried and audited by a task
(:mod:`relay.notify.dispatch`). See ``docs/notices.md``.

What must stay true: nothing of a message (sender, subject, content) ever
reaches a notice; a notice never delays nor loses mail.
"""

from __future__ import annotations

from relay.notify.dispatch import NoticeDispatcher
from relay.notify.errors import ChannelError, OutboxError
from relay.notify.notifier import NoticeSetupError, Notifier, Outcome
from relay.notify.outbox import NoticeOutbox
from relay.notify.settings import NoticeSettings, SmarthostSettings, SmsSettings
from relay.notify.smarthost import SmarthostChannel
from relay.notify.sms import HttpsSmsGateway, SmsGateway

__all__ = [
    "ChannelError",
    "HttpsSmsGateway",
    "NoticeDispatcher",
    "NoticeOutbox",
    "NoticeSettings",
    "NoticeSetupError",
    "Notifier",
    "OutboxError",
    "Outcome",
    "SmarthostChannel",
    "SmarthostSettings",
    "SmsGateway",
    "SmsSettings",
]
