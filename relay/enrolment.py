"""Patient enrolment, account activation and password recovery (issue 10).

Owns: the life of a patient account before and beside its password: the
enrolment that creates it from a qualified INS with a one-time activation
code; the activation that sets the first password; recovery of a lost
password by a code sent to the declared ordinary contact or put in a
caregiver's own secure mailbox; the report of accounts never activated,
never used or unused for long. :mod:`relay.web` is its HTTPS face and
:mod:`cli.enrolment` its admin face; both only parse and render.

What must stay true:

- **No admin ever reads a password, nor a code meant for someone else.** A
  code goes to the patient's contact (:class:`relay.contact.ContactNotifier`),
  into the caregiver's mailbox, or, only at enrolment and only when asked
  (``print``), to the admin's screen for a postal letter handed to the
  patient; re-enrolment of an activated account is refused, so ``print``
  can never take an account over.
- **Nothing secret in the audit trail or the logs**: codes and passwords are
  never passed to either; records name the login, the peer, the decision.
- **The web answers reveal no account.** A recovery request gets the same
  answer, at once, whether the login exists or not (the work is done after
  the reply); a wrong code, an expired one, a used one and an unknown login
  are one refusal; a new password is hashed before any lookup.
- Wrong codes are counted per code (:meth:`AccountStore.redeem_code` voids
  it at the limit) and per peer address; recovery requests per login and per
  address. Past a limit the request is refused and the refusal audited.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from directory import identifiers as ids
from directory.errors import DirectoryError, EntryNotFoundError, InvalidFieldError
from directory.model import Kind, Patient
from relay import generated
from relay.accounts import (
    AccountError,
    AccountExistsError,
    AccountKind,
    AccountNotFoundError,
    CodePurpose,
    CodeResult,
    LoginThrottle,
    ThrottleVerdict,
    check_password_policy,
)
from relay.audit import AuditEvent
from relay.contact import ContactError, ContactNotice
from relay.notify import Notifier, texts

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from directory.protocol import Directory
    from relay.accounts import AccountStore, AccountUsage
    from relay.audit import AuditTrail
    from relay.config import Config, EnrolmentSettings, WebSettings
    from relay.contact import ContactNotifier

# Where codes are redeemed (the paths of relay.web).
ACTIVATE_PATH: Final = "/activate"
RESET_PATH: Final = "/reset"
# How the protocol field of auth records names this face.
PROTOCOL: Final = "https"
# Dates in notices are shown in the patients' time zone.
try:
    _TZ = ZoneInfo("Europe/Paris")
except ZoneInfoNotFoundError:  # a machine without tzdata: UTC, said so
    _TZ = ZoneInfo("UTC")
# A recovery request waits at most this long for the contact channel.
NOTIFY_TIMEOUT: Final = 60.0


class EnrolmentError(AccountError):
    """Root of enrolment and recovery errors; the message names the field."""


class NotEnrollableError(EnrolmentError):
    """The patient cannot have an account (absent, INS not qualified, no box)."""


class AlreadyActivatedError(EnrolmentError, AccountExistsError):
    """The account has a password: recovery, not enrolment, is the way."""


class CaregiverError(EnrolmentError):
    """The caregiver named holds no active proxy grant, or has no mailbox."""


class CodeRefusedError(EnrolmentError):
    """A wrong, expired, used or voided code, or no such login: one answer."""


class ThrottledError(EnrolmentError):
    """Too many tries from this login or address: wait ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoticeFailedError(EnrolmentError):
    """No channel of the patient's contact took the code (it is void)."""


class Delivery(enum.StrEnum):
    """How an activation code reaches the patient."""

    CONTACT = "contact"  # by the notifier: the admin never sees it
    PRINT = "print"  # on the admin's screen once, for a postal letter


class Via(enum.StrEnum):
    """Where a recovery code goes."""

    CONTACT = "contact"
    CAREGIVER = "caregiver"


@dataclass(frozen=True, slots=True, kw_only=True)
class Enrolled:
    login: str
    expires: datetime
    delivery: Delivery
    channels: tuple[str, ...] = ()  # CONTACT: the channels that took the notice
    created: bool = True  # False: re-enrolment (a new code, the old one void)
    code: str | None = field(default=None, repr=False)  # PRINT only


@dataclass(frozen=True, slots=True, kw_only=True)
class RecoverySent:
    login: str
    via: Via
    expires: datetime
    channels: tuple[str, ...] = ()  # CONTACT
    caregiver: str | None = None  # CAREGIVER: the account, its mailbox, the queue id
    mailbox: str | None = None
    queue_id: str | None = None


# -- what the patient and the caregiver read ------------------------------------


def _when(at: datetime) -> str:
    local = at.astimezone(_TZ)
    suffix = "" if _TZ.key != "UTC" else " (UTC)"
    return local.strftime("%d/%m/%Y à %H:%M") + suffix


def caregiver_message(
    *,
    login: str,
    code: str,
    expires: datetime,
    site: str,
    sender: str,
    caregiver_mailbox: str,
    hostname: str,
    now: datetime,
) -> bytes:
    """The recovery code for a caregiver's own secure INBOX, CRLF line ends."""
    return generated.compose(
        sender=("Messagerie sécurisée", sender),
        to=caregiver_mailbox,
        subject="Code de récupération d'un compte dont vous êtes aidant",
        text=(
            "Bonjour,\n\n"
            "Vous êtes déclaré(e) aidant(e) du titulaire du compte de messagerie\n"
            f"sécurisée {login}. Un code de récupération de son mot de passe a été\n"
            "émis à sa demande :\n\n"
            f"    {code}\n\n"
            f"Transmettez-le-lui. Il permet de choisir un nouveau mot de passe sur\n"
            f"{site}{RESET_PATH}, une seule fois, jusqu'au {_when(expires)}.\n"
            "Si cette demande ne vient pas de lui ou d'elle, ne faites rien : son mot\n"
            "de passe actuel reste valable.\n"
        ),
        hostname=hostname,
        now=now,
        id_left="recovery",
    )


# -- the contact channel until one is configured ----------------------------------


class NoContactChannel:
    """The notifier of a relay with no contact channel: every notice fails."""

    async def notify(self, patient: Patient, notice: ContactNotice) -> list[str]:
        del patient, notice
        raise ContactError("no channel is configured for the ordinary contact")


def site_url(cfg: Config) -> str:
    """Where patients activate and recover: ``[web] public_url``, or the
    relay's host name and the web port."""
    if cfg.web.public_url:
        return cfg.web.public_url
    port = cfg.web.listener.port
    suffix = "" if port in (0, 443) else f":{port}"
    return f"https://{cfg.relay.hostname}{suffix}"


def notifier_for(cfg: Config) -> ContactNotifier:
    """The contact channels of ``cfg`` (e-mail, SMS: :mod:`relay.notify`).

    Raises :class:`~relay.notify.NoticeSetupError` (a :class:`ContactError`)
    when a secret file of ``[notices]`` cannot be read.
    """
    notifier = Notifier.for_config(cfg)
    return notifier if notifier.configured else NoContactChannel()


# -- the inactive report (pure) ---------------------------------------------------------


class InactiveState(enum.StrEnum):
    NEVER_ACTIVATED = "never-activated"  # enrolled, no password ever set
    NEVER_USED = "never-used"  # activated, never logged in since
    UNUSED = "unused"  # last login too long ago


@dataclass(frozen=True, slots=True, kw_only=True)
class Inactive:
    login: str
    state: InactiveState
    created: datetime
    activated: datetime | None
    last_login: datetime | None
    locked: bool


def _at(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


def inactive_accounts(
    usages: Sequence[AccountUsage], *, now: datetime, days: int
) -> list[Inactive]:
    """Accounts to report for closure: quiet for ``days`` since they were
    created (never activated), activated (never used) or last used."""
    cutoff = (now - timedelta(days=days)).timestamp()
    out: list[Inactive] = []
    for u in usages:
        if u.activated is None:
            state, since = InactiveState.NEVER_ACTIVATED, u.created
        elif u.last_login is None:
            state, since = InactiveState.NEVER_USED, u.activated
        else:
            state, since = InactiveState.UNUSED, u.last_login
        if since > cutoff:
            continue
        out.append(
            Inactive(
                login=u.login,
                state=state,
                created=datetime.fromtimestamp(u.created, UTC),
                activated=_at(u.activated),
                last_login=_at(u.last_login),
                locked=u.locked,
            )
        )
    return out


# -- the service --------------------------------------------------------------------------


class Enrolment:
    """Enrolment, activation and recovery of patient accounts.

    One instance per process: the relay's serves :mod:`relay.web`; each admin
    command makes its own. The throttles live in memory, like the login
    throttle's; the per-code failure count lives in the account store.
    """

    def __init__(
        self,
        *,
        accounts: AccountStore,
        directory: Directory,
        audit: AuditTrail,
        notifier: ContactNotifier,
        settings: EnrolmentSettings,
        web: WebSettings,
        patient_domain: str,
        site: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.accounts = accounts
        self._directory = directory
        self._audit = audit
        self._notifier = notifier
        self._settings = settings
        self._patient_domain = patient_domain
        self.site = site.rstrip("/")
        self._clock = clock
        # Wrong codes: per peer address (the per-code count is in the store;
        # this per-login bound only backs it up).
        self._codes = LoginThrottle(
            max_failures=settings.max_code_failures * 2,
            max_failures_per_peer=web.code_failures_per_peer,
            lockout=web.code_lockout,
            clock=monotonic,
        )
        # Recovery requests: each counts, whatever becomes of it.
        self._requests = LoginThrottle(
            max_failures=web.recover_per_login,
            max_failures_per_peer=web.recover_per_peer,
            lockout=web.recover_window,
            clock=monotonic,
        )
        self._lockouts = (web.code_lockout, web.recover_window)
        self._tasks: set[asyncio.Task[None]] = set()

    async def close(self, *, within: float = 10.0) -> None:
        """Let the recovery requests in progress finish (bounded)."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=within)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def now(self) -> datetime:
        return self._clock()

    def login_of(self, text: str) -> str:
        """A login as typed: a patient's address, or their INS matricule."""
        value = text.strip()
        if "@" not in value and len(value.replace(" ", "")) == ids.INS_LENGTH:
            with contextlib.suppress(InvalidFieldError):
                return f"{ids.ins(value)}@{self._patient_domain}"
        with contextlib.suppress(InvalidFieldError):
            return ids.address(value)
        return value

    # -- enrolment (admin) ------------------------------------------------------------

    async def _patient(self, ins: str) -> Patient:
        patient = await self._directory.patient(ids.ins(ins))
        if patient is None:
            raise EntryNotFoundError(Kind.PATIENT.value, ids.ins(ins))
        if not patient.qualified:
            raise NotEnrollableError(
                f"qualified: patient {patient.ins} has no qualified INS"
            )
        if patient.address is None:
            raise NotEnrollableError(f"address: patient {patient.ins} has no mailbox")
        return patient

    async def enrol(
        self, ins: str, delivery: Delivery, *, actor: str = "cli"
    ) -> Enrolled:
        """Create the patient's account (or re-issue its code) with a new code.

        Raises:
            EntryNotFoundError: no such patient.
            NotEnrollableError: the INS is not qualified or there is no mailbox.
            AlreadyActivatedError: the account has a password.
            AccountExistsError: the login belongs to an account of another kind.
            NoticeFailedError: ``CONTACT`` and no channel took it (code void).
        """
        patient = await self._patient(ins)
        login = patient.address
        assert login is not None  # noqa: S101 - checked by _patient
        account = self.accounts.get(login)
        created = account is None
        if account is None:
            account = self.accounts.create(
                login, AccountKind.PATIENT, None, [login], check_policy=False
            )
        elif account.kind is not AccountKind.PATIENT:
            raise AccountExistsError(
                f"login: {login!r} is a {account.kind.value} account"
            )
        elif self.accounts.is_activated(login):
            raise AlreadyActivatedError(
                f"login: {login!r} is already activated; use 'patient recover'"
            )
        now = self._clock()
        expires = now + timedelta(days=self._settings.activation_code_days)
        issued = self.accounts.issue_code(
            login, CodePurpose.ACTIVATION, expires=expires.timestamp()
        )
        channels: tuple[str, ...] = ()
        if delivery is Delivery.CONTACT:
            notice = texts.activation_code(
                issued.code,
                valid_for=(expires - now).total_seconds(),
                url=f"{self.site}{ACTIVATE_PATH}",
            )
            channels = await self._notify(
                patient, notice, login, CodePurpose.ACTIVATION
            )
        self._audit.emit(
            AuditEvent.PATIENT_ENROLLED,
            actor=actor,
            target=login,
            mailbox=login,
            action="enrolled" if created else "code re-issued",
            delivery=delivery.value,
            channels=list(channels),
            expires=expires.isoformat(),
        )
        return Enrolled(
            login=login,
            expires=expires,
            delivery=delivery,
            channels=channels,
            created=created,
            code=issued.code if delivery is Delivery.PRINT else None,
        )

    async def _notify(
        self, patient: Patient, notice: ContactNotice, login: str, purpose: CodePurpose
    ) -> tuple[str, ...]:
        """Send ``notice``; on failure the code is voided and the error raised."""
        try:
            async with asyncio.timeout(NOTIFY_TIMEOUT):
                channels = await self._notifier.notify(patient, notice)
        except (ContactError, TimeoutError) as exc:
            await asyncio.to_thread(self.accounts.void_code, login, purpose)
            raise NoticeFailedError(
                f"contact: the code could not be sent ({str(exc) or 'timed out'});"
                " it is void"
            ) from None
        if not channels:
            await asyncio.to_thread(self.accounts.void_code, login, purpose)
            raise NoticeFailedError(
                f"contact: patient {patient.ins} declared no e-mail nor phone;"
                " the code is void"
            )
        return tuple(channels)

    # -- codes (web) -------------------------------------------------------------------

    async def activate(
        self, login: str, code: str, password: str, *, peer: str, cid: str
    ) -> None:
        """Set the first password with the activation code.

        Raises:
            WeakPasswordError: the password fails the policy (the code stays).
            CodeRefusedError, ThrottledError.
        """
        await self._redeem(
            CodePurpose.ACTIVATION,
            AuditEvent.ACCOUNT_ACTIVATED,
            self.login_of(login),
            code,
            password,
            peer=peer,
            cid=cid,
        )

    async def reset(
        self, login: str, code: str, password: str, *, peer: str, cid: str
    ) -> None:
        """Replace a lost password with the recovery code (same errors)."""
        await self._redeem(
            CodePurpose.RECOVERY,
            AuditEvent.ACCOUNT_RECOVERED,
            self.login_of(login),
            code,
            password,
            peer=peer,
            cid=cid,
        )

    async def _redeem(
        self,
        purpose: CodePurpose,
        event: AuditEvent,
        login: str,
        code: str,
        password: str,
        *,
        peer: str,
        cid: str,
    ) -> None:
        mechanism = f"{purpose.value}-code"

        def audit(event: AuditEvent, reason: str) -> None:
            self._audit.emit(
                event,
                cid=cid,
                actor=login,
                peer=peer,
                protocol=PROTOCOL,
                mechanism=mechanism,
                reason=reason,
            )

        verdict = self._codes.check(login, peer)
        if verdict is not ThrottleVerdict.ALLOWED:
            audit(AuditEvent.AUTH_LOCKED, verdict.value)
            raise ThrottledError("too many wrong codes: try later", self._lockouts[0])
        check_password_policy(login, password)
        result = await asyncio.to_thread(
            self.accounts.redeem_code,
            login,
            purpose,
            code,
            password,
            now=self._clock().timestamp(),
            max_failures=self._settings.max_code_failures,
        )
        if result is CodeResult.REDEEMED:
            self._codes.succeeded(login)
            self._audit.emit(event, cid=cid, actor=login, peer=peer, protocol=PROTOCOL)
            return
        verdict = self._codes.failed(login, peer)
        audit(AuditEvent.AUTH_FAILED, f"code {result.value}")
        if verdict is not ThrottleVerdict.ALLOWED:
            audit(AuditEvent.AUTH_LOCKED, verdict.value)
        raise CodeRefusedError("code: wrong, expired or already used")

    # -- recovery ---------------------------------------------------------------------

    def request_recovery(self, login: str, *, peer: str, cid: str) -> None:
        """A recovery request from the web: counted, then handled after the
        reply (the caller answers the same whatever becomes of it).

        Raises:
            ThrottledError: too many requests for this login or from this peer.
        """
        login = self.login_of(login)
        verdict = self._requests.check(login, peer)
        if verdict is not ThrottleVerdict.ALLOWED:
            self._audit.emit(
                AuditEvent.AUTH_LOCKED,
                cid=cid,
                actor=login,
                peer=peer,
                protocol=PROTOCOL,
                mechanism="recovery-request",
                reason=verdict.value,
            )
            raise ThrottledError("too many requests: try later", self._lockouts[1])
        self._requests.failed(login, peer)
        task = asyncio.create_task(self._recover_in_background(login, peer, cid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recover_in_background(self, login: str, peer: str, cid: str) -> None:
        fields: dict[str, object] = {"cid": cid, "actor": login, "peer": peer}
        try:
            sent = await self._recover_by_contact(login)
        except (AccountError, DirectoryError) as exc:
            self._audit.emit(
                AuditEvent.ACCOUNT_RECOVERY_REQUESTED,
                **fields,
                via=Via.CONTACT.value,
                decision="not sent",
                reason=str(exc),
            )
            return
        self._audit.emit(
            AuditEvent.ACCOUNT_RECOVERY_REQUESTED,
            **fields,
            via=Via.CONTACT.value,
            decision="sent",
            channels=list(sent.channels),
            expires=sent.expires.isoformat(),
        )

    async def _recoverable(self, login: str) -> Patient:
        """The patient behind an activated, unlocked patient account."""
        account = self.accounts.get(login)
        if account is None or account.kind is not AccountKind.PATIENT:
            raise AccountNotFoundError(f"login: no patient account {login!r}")
        if account.locked:
            raise EnrolmentError(f"login: {login!r} is locked")
        if not self.accounts.is_activated(login):
            raise EnrolmentError(
                f"login: {login!r} was never activated; use 'patient enrol'"
            )
        entry = await self._directory.resolve(login)
        if not isinstance(entry, Patient):
            raise NotEnrollableError(f"login: {login!r} names no patient")
        return entry

    async def _recover_by_contact(self, login: str) -> RecoverySent:
        patient = await self._recoverable(login)
        now = self._clock()
        expires = now + timedelta(hours=self._settings.recovery_code_hours)
        issued = await asyncio.to_thread(
            self.accounts.issue_code,
            login,
            CodePurpose.RECOVERY,
            expires=expires.timestamp(),
        )
        notice = texts.recovery_code(
            issued.code,
            valid_for=(expires - now).total_seconds(),
            url=f"{self.site}{RESET_PATH}",
        )
        channels = await self._notify(patient, notice, login, CodePurpose.RECOVERY)
        return RecoverySent(
            login=login, via=Via.CONTACT, expires=expires, channels=channels
        )

    async def recover_via_contact(
        self, ins: str, *, actor: str = "cli"
    ) -> RecoverySent:
        """An admin sends a recovery code to the patient's contact.

        Raises:
            EntryNotFoundError, NotEnrollableError, AccountNotFoundError,
            EnrolmentError (never activated, locked), NoticeFailedError.
        """
        patient = await self._patient(ins)
        assert patient.address is not None  # noqa: S101 - checked by _patient
        sent = await self._recover_by_contact(patient.address)
        self._audit.emit(
            AuditEvent.ACCOUNT_RECOVERY_REQUESTED,
            actor=actor,
            target=sent.login,
            via=Via.CONTACT.value,
            decision="sent",
            channels=list(sent.channels),
            expires=sent.expires.isoformat(),
        )
        return sent

    async def recover_via_caregiver(
        self,
        ins: str,
        caregiver: str,
        deliver: Callable[[str, bytes], str],
        *,
        sender: str,
        hostname: str,
        is_local: Callable[[str], bool],
        actor: str = "cli",
    ) -> RecoverySent:
        """An admin has a recovery code put in the caregiver's own INBOX.

        ``deliver(mailbox, message)`` stores the message (the spool) and
        returns its queue id. The caregiver must hold a proxy grant of the
        patient that is active now, and own a mailbox hosted here other than
        the patient's.

        Raises:
            CaregiverError, and as :meth:`recover_via_contact`.
        """
        patient = await self._patient(ins)
        login = patient.address
        assert login is not None  # noqa: S101 - checked by _patient
        await self._recoverable(login)
        now = self._clock()
        if not any(
            g.account == caregiver and g.active_at(now) for g in patient.proxies
        ):
            raise CaregiverError(
                f"caregiver: {caregiver!r} holds no active proxy grant"
                f" of patient {patient.ins}"
            )
        account = self.accounts.get(caregiver)
        if account is None or account.locked:
            raise CaregiverError(f"caregiver: no unlocked account {caregiver!r}")
        boxes = [m for m in account.mailboxes if m != login and is_local(m)]
        if not boxes:
            raise CaregiverError(
                f"caregiver: {caregiver!r} owns no mailbox of its own hosted here"
            )
        mailbox = boxes[0]
        expires = now + timedelta(hours=self._settings.recovery_code_hours)
        issued = self.accounts.issue_code(
            login, CodePurpose.RECOVERY, expires=expires.timestamp()
        )
        message = caregiver_message(
            login=login,
            code=issued.code,
            expires=expires,
            site=self.site,
            sender=sender,
            caregiver_mailbox=mailbox,
            hostname=hostname,
            now=now,
        )
        try:
            queue_id = await asyncio.to_thread(deliver, mailbox, message)
        except BaseException:
            self.accounts.void_code(login, CodePurpose.RECOVERY)
            raise
        self._audit.emit(
            AuditEvent.ACCOUNT_RECOVERY_REQUESTED,
            actor=actor,
            target=login,
            via=Via.CAREGIVER.value,
            caregiver=caregiver,
            mailbox=mailbox,
            queue_id=queue_id,
            decision="sent",
            expires=expires.isoformat(),
        )
        return RecoverySent(
            login=login,
            via=Via.CAREGIVER,
            expires=expires,
            caregiver=caregiver,
            mailbox=mailbox,
            queue_id=queue_id,
        )

    # -- the inactive report ------------------------------------------------------------

    def inactive(self, days: int | None = None) -> list[Inactive]:
        """Patient accounts to report for closure (``[enrolment] inactive_days``)."""
        return inactive_accounts(
            self.accounts.usage(AccountKind.PATIENT),
            now=self._clock(),
            days=self._settings.inactive_days if days is None else days,
        )


def new_cid() -> str:
    """A connection id for one web request (audit correlation)."""
    return "web-" + secrets.token_hex(6)
