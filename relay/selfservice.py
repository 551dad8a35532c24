"""The patient's self-service: sign-in, sessions and consent changes (issue 10).

Owns: what a patient may do for themselves on the relay's HTTPS listener,
without an administrator: sign in with their address and password; see the
state of their mailbox (open or closed, blocked parties, proxies, contact,
treating doctor) and their consent history; close and reopen it, block and
unblock a party, grant and revoke a proxy, change the ordinary contact,
declare the treating doctor, ask for this month's activity report.
:mod:`relay.web` is its HTTP face and only parses and renders; every
decision is here, with no HTTP in it.

What must stay true:

- **One authentication path.** The password is checked by the account store
  and counted by the login throttle that SMTP and IMAP use, so failures on
  any of the three lock all three alike; failures go through
  :meth:`relay.accounts.Authenticator.refuse` (``auth.failed``, then
  ``auth.locked`` at the limit) with ``protocol: https``. Only the main
  password of an activated, unlocked account of kind patient whose patient
  is in the directory signs in; every other case (wrong password, unknown
  login, a professional, staff or proxy account, an app password, a locked
  or never activated account) gets one and the same refusal. The reason is
  in the audit trail only.
- **Sessions live in memory only**, keyed by the SHA-256 of a 256-bit random
  token: the token itself is kept nowhere but in the patient's cookie. A
  session ends after :data:`SESSION_IDLE` without a request, after
  :data:`SESSION_MAX` in all, at sign-out, and as soon as its account is
  locked or gone (looked up at every request). A restart ends them all.
- **Every change needs the session's CSRF token** (compared in constant
  time) and goes through :meth:`directory.protocol.Directory.change_consent`
  with the patient's own address as ``actor``: the ledger shows that the
  patient did it. It is then audited ``patient.consent.changed`` (actor,
  patient, action, sequence, the record's identifiers; ``protocol: https``).
- **Nothing secret reaches the audit trail or a log**: no password, no
  session or CSRF token, no contact value (the ledger says ``set`` or
  ``cleared``).
- **Errors name the field in French** (:class:`FieldError`); a directory
  that does not answer is :class:`UnavailableError`, never an accepted
  change.
- Names shown for blocked parties and search results come from the
  directory as any professional sees them; an unlisted mailbox (*liste
  rouge*) is shown by its address only and never found by a search.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import secrets
import zoneinfo
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Final

from directory import identifiers as ids
from directory.consent import (
    Block,
    GrantProxy,
    OptIn,
    OptOut,
    RevokeProxy,
    SetContact,
    SetTreatingDoctor,
    Unblock,
    canonical_party,
    find_party,
    party_kind,
)
from directory.errors import DirectoryError, EntryNotFoundError, InvalidFieldError
from directory.model import (
    BalType,
    CareKind,
    ConsentAction,
    Kind,
    Mailbox,
    Organisation,
    Patient,
    Practitioner,
    ProxyScope,
    Status,
)
from relay.accounts import AccountKind, Attempt, Mechanism, ThrottleVerdict
from relay.audit import AuditEvent
from relay.audit_query import consent_fields
from relay.audit_report import Month, ReportError, gather, on_demand_key, send_report

if TYPE_CHECKING:
    from collections.abc import Callable

    from directory.consent import ConsentChange
    from directory.model import ConsentRecord
    from directory.protocol import Directory
    from relay.accounts import Authenticator
    from relay.audit import AuditTrail
    from relay.audit_report import ReportContext

# How the protocol and mechanism fields of auth records name this face.
PROTOCOL: Final = "https"
SIGN_IN_MECHANISM: Final = "form"
# A browser left open ends its session after a quarter of an hour of
# silence; a session in use, after a working day (sign in again).
SESSION_IDLE: Final = timedelta(minutes=15)
SESSION_MAX: Final = timedelta(hours=8)
# Bounds the memory sessions take; past it the oldest session ends.
MAX_SESSIONS: Final = 10_000
# 256-bit tokens (session and CSRF), as secrets.token_urlsafe(32) gives.
TOKEN_BYTES: Final = 32
# A proxy grant ends at most this far ahead (issue 10: time-limited).
PROXY_MAX_YEARS: Final = 1
# One on-demand report per patient per minute: each one is a pass over the
# audit trail.
REPORT_INTERVAL: Final = timedelta(minutes=1)
SEARCH_MIN_LENGTH: Final = 3
SEARCH_LIMIT: Final = 20
SIGN_IN_REFUSED: Final = "identifiant ou mot de passe incorrect"


class SelfServiceError(Exception):
    """Root of this module's errors; the message is French, for the patient."""


class FieldError(SelfServiceError):
    """A field's value cannot be used; ``field`` is the wire name."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


class SignInRefusedError(SelfServiceError):
    """Wrong password, unknown login, or an account that may not sign in here:
    one refusal for all."""


class ThrottledError(SelfServiceError):
    """Too many tries: wait ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoSessionError(SelfServiceError):
    """No session, an expired one, or one whose account is locked."""


class CsrfError(SelfServiceError):
    """The form's CSRF token is missing or is not the session's."""


class UnavailableError(SelfServiceError):
    """The directory or the mail store did not answer: try again later."""


# -- sessions ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Session:
    """One signed-in patient. The token that names it is not kept."""

    login: str  # the patient's address, the account's login
    ins: str
    csrf: str
    created: datetime
    last_seen: datetime


@dataclass(frozen=True, slots=True)
class SignedIn:
    token: str  # for the cookie only
    session: Session


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def tokens_match(given: str, expected: str) -> bool:
    """Constant-time comparison of two tokens (``False`` when one is empty)."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


# -- what the patient sees --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartyView:
    party: str
    kind: str  # mailbox, practitioner, organisation
    name: str  # "" when the directory has none to show


@dataclass(frozen=True, slots=True)
class ProxyView:
    account: str
    scope: ProxyScope
    granted_at: datetime
    expires: datetime | None
    active: bool


@dataclass(frozen=True, slots=True)
class HistoryView:
    """One ledger record as the patient sees it: by them or by the
    administration (an administrator's name or login is not shown, as in
    the break-glass notice)."""

    sequence: int
    time: datetime
    by_patient: bool
    action: ConsentAction
    detail: tuple[tuple[str, str], ...]


def history_view(record: ConsentRecord, login: str) -> HistoryView:
    detail = record.detail
    if record.action is ConsentAction.BREAK_GLASS_OPENED:
        detail = tuple((k, v) for k, v in detail if k != "account")
    return HistoryView(
        record.sequence, record.time, record.actor == login, record.action, detail
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class MailboxState:
    address: str
    ins: str
    opted_out: bool
    blocked: tuple[PartyView, ...]
    proxies: tuple[ProxyView, ...]
    contact_email: str
    contact_phone: str
    treating_doctor: PartyView | None
    history: tuple[HistoryView, ...]


@dataclass(frozen=True, slots=True)
class Changed:
    """What one action did: ``record`` is ``None`` when nothing changed."""

    record: ConsentRecord | None


@dataclass(frozen=True, slots=True)
class ReportSent:
    month: Month


def _person(p: Practitioner) -> str:
    return " ".join(x for x in (p.civility, p.first_name, p.last_name) if x)


def _add_year(day: date) -> date:
    try:
        return day.replace(year=day.year + PROXY_MAX_YEARS)
    except ValueError:  # 29 February
        return day.replace(year=day.year + PROXY_MAX_YEARS, day=28)


class SelfService:
    """The patient's own actions, for :mod:`relay.web`.

    One instance per relay process (sessions are in its memory). ``clock``
    is the relay's: tests move it to expire sessions.
    """

    def __init__(
        self,
        *,
        authenticator: Authenticator,
        directory: Directory,
        audit: AuditTrail,
        patient_domain: str,
        reports: ReportContext | None = None,
        zone: zoneinfo.ZoneInfo | None = None,
        lockout: float = 900.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._auth = authenticator
        self._accounts = authenticator.accounts
        self._directory = directory
        self._audit = audit
        self._patient_domain = patient_domain.lower()
        self._reports = reports
        self._zone = zone or (
            reports.zone if reports is not None else zoneinfo.ZoneInfo("UTC")
        )
        self._lockout_seconds = lockout  # [auth] lockout: Retry-After when locked
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._last_report: dict[str, datetime] = {}

    def now(self) -> datetime:
        return self._clock()

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        """The patients' time zone (dates shown and grant ends)."""
        return self._zone

    def login_of(self, text: str) -> str:
        """A login as typed: the patient's address (or their INS matricule)."""
        value = text.strip()
        if "@" not in value and len(value.replace(" ", "")) == ids.INS_LENGTH:
            with contextlib.suppress(InvalidFieldError):
                return f"{ids.ins(value)}@{self._patient_domain}"
        with contextlib.suppress(InvalidFieldError):
            return ids.address(value)
        return value

    # -- sign-in, sessions, sign-out ------------------------------------------------

    async def sign_in(
        self, login_text: str, password: str, *, peer: str, cid: str
    ) -> SignedIn:
        """Check the password as SMTP and IMAP do; a new session.

        Raises:
            ThrottledError: the login or the peer is locked out (audited).
            SignInRefusedError: anything else that is not a patient's right
                password (audited ``auth.failed`` with the reason).
            UnavailableError: the directory did not answer.
        """
        login = self.login_of(login_text)
        attempt = Attempt(protocol=PROTOCOL, sasl=SIGN_IN_MECHANISM, cid=cid, peer=peer)
        throttle = self._auth.throttle
        verdict = throttle.check(login, peer)
        if verdict is not ThrottleVerdict.ALLOWED:
            self._auth_record(AuditEvent.AUTH_LOCKED, attempt, login, verdict.value)
            await asyncio.sleep(throttle.delay(login, peer))
            raise ThrottledError(
                "trop de tentatives : réessayez plus tard", self._lockout()
            )
        verified = await asyncio.to_thread(
            self._accounts.verify_password, login, password
        )
        reason = ""
        patient: Patient | None = None
        if verified is None:
            reason = "bad credentials or locked account"
        elif verified.mechanism is not Mechanism.PASSWORD:
            reason = "app password not accepted for the web"
        elif verified.account.kind is not AccountKind.PATIENT:
            reason = f"{verified.account.kind.value} account may not sign in here"
        elif not self._auth.mechanisms.allows(AccountKind.PATIENT, Mechanism.PASSWORD):
            reason = "password not allowed for patient"
        elif not self._accounts.is_activated(login):
            reason = "account never activated"
        else:
            patient = await self._patient_of(login)
            if patient is None or patient.status is not Status.ACTIVE:
                reason = "no active patient for the account"
        if reason or patient is None:
            # Counted, audited (auth.failed, auth.locked at the limit) and
            # delayed exactly as a failed SMTP AUTH or IMAP LOGIN.
            await self._auth.refuse(attempt, login, reason)
            raise SignInRefusedError(SIGN_IN_REFUSED)
        throttle.succeeded(login)
        if not self._accounts.login_recorded_today(login):
            await asyncio.to_thread(self._accounts.record_login, login)
        self._audit.emit(
            AuditEvent.AUTH_SUCCEEDED,
            cid=cid,
            actor=login,
            peer=peer,
            protocol=PROTOCOL,
            mechanism=SIGN_IN_MECHANISM,
            credential=Mechanism.PASSWORD.value,
        )
        now = self._clock()
        session = Session(
            login=login, ins=patient.ins, csrf=new_token(), created=now, last_seen=now
        )
        token = new_token()
        self._make_room(now)
        self._sessions[_digest(token)] = session
        return SignedIn(token, session)

    def _lockout(self) -> float:
        return self._lockout_seconds

    def _auth_record(
        self, event: AuditEvent, attempt: Attempt, login: str, reason: str
    ) -> None:
        self._audit.emit(
            event,
            cid=attempt.cid,
            actor=login,
            peer=attempt.peer,
            protocol=attempt.protocol,
            mechanism=attempt.sasl,
            reason=reason,
        )

    async def _patient_of(self, login: str) -> Patient | None:
        try:
            entry = await self._directory.resolve(login)
        except DirectoryError as exc:
            raise UnavailableError(
                "annuaire momentanément indisponible : réessayez"
            ) from exc
        return entry if isinstance(entry, Patient) else None

    def _make_room(self, now: datetime) -> None:
        for key, s in list(self._sessions.items()):
            if self._expired(s, now):
                del self._sessions[key]
        while len(self._sessions) >= MAX_SESSIONS:
            oldest = min(self._sessions, key=lambda k: self._sessions[k].created)
            del self._sessions[oldest]

    @staticmethod
    def _expired(s: Session, now: datetime) -> bool:
        return now - s.last_seen >= SESSION_IDLE or now - s.created >= SESSION_MAX

    def session(self, token: str | None) -> Session:
        """The live session ``token`` names, its idle time restarted.

        Raises:
            NoSessionError: none, expired, or its account is locked or gone.
        """
        if not token:
            raise NoSessionError("connectez-vous")
        key = _digest(token)
        found = self._sessions.get(key)
        now = self._clock()
        if found is None:
            raise NoSessionError("session absente ou expirée : connectez-vous")
        account = self._accounts.get(found.login)
        if self._expired(found, now) or account is None or account.locked:
            del self._sessions[key]
            raise NoSessionError("session absente ou expirée : connectez-vous")
        touched = replace(found, last_seen=now)
        self._sessions[key] = touched
        return touched

    def sign_out(self, token: str | None) -> None:
        if token:
            self._sessions.pop(_digest(token), None)

    def check_csrf(self, session: Session, given: str) -> None:
        """Raises :class:`CsrfError` unless ``given`` is the session's token."""
        if not tokens_match(given, session.csrf):
            raise CsrfError(
                "jeton de formulaire absent ou invalide : rechargez la page"
            )

    # -- reading ---------------------------------------------------------------------

    async def _patient(self, session: Session) -> Patient:
        try:
            patient = await self._directory.patient(session.ins)
        except DirectoryError as exc:
            raise UnavailableError(
                "annuaire momentanément indisponible : réessayez"
            ) from exc
        if patient is None:
            raise NoSessionError("session absente ou expirée : connectez-vous")
        return patient

    async def state(self, session: Session) -> MailboxState:
        """The mailbox as the patient controls it, and the consent history."""
        patient = await self._patient(session)
        now = self._clock()
        try:
            blocked = tuple(
                [await self._party_view(p) for p in patient.blocked_senders]
            )
            treating = next(
                (
                    r.party
                    for r in patient.care_relationships
                    if r.kind is CareKind.TREATING
                ),
                None,
            )
            doctor = await self._party_view(treating) if treating else None
            history = await self._directory.consent_history(patient.ins)
        except DirectoryError as exc:
            raise UnavailableError(
                "annuaire momentanément indisponible : réessayez"
            ) from exc
        return MailboxState(
            address=session.login,
            ins=patient.ins,
            opted_out=patient.opted_out,
            blocked=blocked,
            proxies=tuple(
                ProxyView(g.account, g.scope, g.granted_at, g.expires, g.active_at(now))
                for g in patient.proxies
            ),
            contact_email=patient.contact_email,
            contact_phone=patient.contact_phone,
            treating_doctor=doctor,
            history=tuple(history_view(r, session.login) for r in history),
        )

    async def _party_view(self, party: str) -> PartyView:
        try:
            kind = party_kind(party)
        except InvalidFieldError:
            return PartyView(party, "", "")
        name = ""
        match await find_party(self._directory, party):
            case Mailbox() as mailbox if mailbox.published:
                name = mailbox.display_name
            case Practitioner() as practitioner:
                name = _person(practitioner)
            case Organisation() as organisation:
                name = organisation.name
        return PartyView(party, kind, name)

    async def search(self, session: Session, text: str) -> list[PartyView]:
        """Published, active professional mailboxes and organisations whose
        names contain ``text``, to block. Unlisted mailboxes never appear."""
        del session
        text = text.strip()
        if len(text) < SEARCH_MIN_LENGTH:
            raise FieldError(
                "q", f"recherche : au moins {SEARCH_MIN_LENGTH} caractères"
            )
        try:
            mailboxes = await self._directory.search(text, kind=Kind.MAILBOX)
            organisations = await self._directory.search(text, kind=Kind.ORGANISATION)
        except DirectoryError as exc:
            raise UnavailableError(
                "annuaire momentanément indisponible : réessayez"
            ) from exc
        found = [
            PartyView(m.address, "mailbox", m.display_name)
            for m in mailboxes
            if isinstance(m, Mailbox) and m.published and m.status is Status.ACTIVE
        ][:SEARCH_LIMIT]
        found += [
            PartyView(o.structure_id, "organisation", o.name)
            for o in organisations
            if isinstance(o, Organisation) and o.status is Status.ACTIVE
        ][:SEARCH_LIMIT]
        return found

    # -- changes -----------------------------------------------------------------------

    async def _change(
        self, session: Session, change: ConsentChange, *, peer: str, cid: str
    ) -> Changed:
        try:
            outcome = await self._directory.change_consent(
                session.ins, change, actor=session.login, now=self._clock()
            )
        except (InvalidFieldError, EntryNotFoundError):
            raise  # the caller names the field
        except DirectoryError as exc:
            raise UnavailableError(
                "annuaire momentanément indisponible : rien n'a changé, réessayez"
            ) from exc
        record = outcome.record
        if record is not None:
            self._audit.emit(
                AuditEvent.PATIENT_CONSENT_CHANGED,
                cid=cid,
                peer=peer,
                protocol=PROTOCOL,
                **consent_fields(record),
            )
        return Changed(record)

    async def close_mailbox(self, session: Session, *, peer: str, cid: str) -> Changed:
        """Opt-out: new mail is refused as for an unknown address."""
        return await self._change(session, OptOut(), peer=peer, cid=cid)

    async def reopen_mailbox(self, session: Session, *, peer: str, cid: str) -> Changed:
        return await self._change(session, OptIn(), peer=peer, cid=cid)

    async def block(
        self, session: Session, party: str, *, peer: str, cid: str
    ) -> Changed:
        """Block a mailbox address, a practitioner (8+RPPS, 0+ADELI) or an
        organisation (1+FINESS, 3+SIRET).

        A practitioner or organisation must be in the directory (the public
        registers). A mailbox address is taken as given, known or not, so
        that the answer never tells whether an unlisted address exists.
        """
        canonical = _party(party)
        kind = party_kind(canonical)
        if kind == "mailbox":
            found = True  # never tell whether an unlisted address exists
        else:
            try:
                found = await find_party(self._directory, canonical) is not None
            except DirectoryError as exc:
                raise UnavailableError(
                    "annuaire momentanément indisponible : rien n'a changé, réessayez"
                ) from exc
        if not found:
            what = "professionnel" if kind == "practitioner" else "structure"
            raise FieldError(
                "party",
                f"expéditeur : aucun(e) {what} de cet identifiant dans l'annuaire",
            )
        return await self._change(session, Block(canonical), peer=peer, cid=cid)

    async def unblock(
        self, session: Session, party: str, *, peer: str, cid: str
    ) -> Changed:
        canonical = _party(party)
        try:
            return await self._change(session, Unblock(canonical), peer=peer, cid=cid)
        except EntryNotFoundError:
            raise FieldError("party", "expéditeur : n'est pas bloqué") from None

    def proxy_until(self, text: str) -> datetime:
        """A grant's end from a date (``AAAA-MM-JJ``): the end of that day in
        the patient's time zone, from today to a year ahead.

        Raises:
            FieldError: missing, not a date, past, or more than a year ahead.
        """
        value = text.strip()
        if not value:
            raise FieldError(
                "until", "fin : obligatoire (une date, au plus dans un an)"
            )
        try:
            day = date.fromisoformat(value[:10]) if len(value) >= 10 else None
        except ValueError:
            day = None
        if day is None or len(value) != 10:
            raise FieldError("until", "fin : une date est attendue (AAAA-MM-JJ)")
        today = self._clock().astimezone(self._zone).date()
        if day < today:
            raise FieldError("until", "fin : la date est passée")
        if day > _add_year(today):
            raise FieldError("until", "fin : au plus un an après aujourd'hui")
        end = datetime.combine(day + timedelta(days=1), time(0), tzinfo=self._zone)
        return end.astimezone(UTC)

    async def grant_proxy(
        self,
        session: Session,
        account: str,
        scope: str,
        until: str,
        *,
        peer: str,
        cid: str,
    ) -> Changed:
        """Let a person with their own proxy account read (``read``) or read
        and answer (``read-reply``) until ``until``."""
        login = account.strip()
        try:
            proxy_scope = ProxyScope(scope.strip())
        except ValueError:
            raise FieldError(
                "scope",
                "portée : « read » (lecture) ou « read-reply » (lecture et réponse)",
            ) from None
        end = self.proxy_until(until)
        found = self._accounts.get(login) if login else None
        if found is None or found.kind is not AccountKind.PROXY or found.locked:
            raise FieldError("account", "compte : aucun compte d'aidant de ce nom")
        return await self._change(
            session, GrantProxy(login, proxy_scope, end), peer=peer, cid=cid
        )

    async def revoke_proxy(
        self, session: Session, account: str, *, peer: str, cid: str
    ) -> Changed:
        try:
            return await self._change(
                session, RevokeProxy(account.strip()), peer=peer, cid=cid
            )
        except EntryNotFoundError:
            raise FieldError(
                "account", "compte : n'a pas d'accès à votre messagerie"
            ) from None

    async def set_contact(
        self,
        session: Session,
        email: str | None,
        phone: str | None,
        *,
        peer: str,
        cid: str,
    ) -> Changed:
        """Change the ordinary contact; ``None`` keeps a field, ``""`` clears it."""
        email = None if email is None else email.strip()
        phone = None if phone is None else phone.strip().replace(" ", "")
        if email:
            try:
                ids.address(email, "email")
            except InvalidFieldError:
                raise FieldError("email", "courriel : adresse invalide") from None
        if phone:
            try:
                ids.phone(phone, "phone")
            except InvalidFieldError:
                raise FieldError(
                    "phone", "téléphone : numéro invalide (format +33612345678)"
                ) from None
        if email is None and phone is None:
            raise FieldError(
                "email", "courriel : donnez un courriel, un téléphone ou les deux"
            )
        return await self._change(
            session, SetContact(email=email, phone=phone), peer=peer, cid=cid
        )

    async def set_treating_doctor(
        self, session: Session, address: str, *, peer: str, cid: str
    ) -> Changed:
        """Declare the treating doctor: a professional's mailbox (PER or CAB)
        in the directory."""
        try:
            canonical = ids.address(address, "doctor")
        except InvalidFieldError:
            raise FieldError("doctor", "médecin traitant : adresse invalide") from None
        try:
            mailbox = await self._directory.mailbox(canonical)
        except DirectoryError as exc:
            raise UnavailableError(
                "annuaire momentanément indisponible : rien n'a changé, réessayez"
            ) from exc
        if (
            mailbox is None
            or mailbox.status is not Status.ACTIVE
            or mailbox.bal_type not in (BalType.PER, BalType.CAB)
        ):
            raise FieldError(
                "doctor",
                "médecin traitant : aucune messagerie de professionnel à cette"
                " adresse dans l'annuaire",
            )
        return await self._change(
            session, SetTreatingDoctor(mailbox.address), peer=peer, cid=cid
        )

    async def request_report(self, session: Session) -> ReportSent:
        """This month's activity report, delivered into the patient's INBOX now.

        Raises:
            ThrottledError: one was asked less than :data:`REPORT_INTERVAL` ago.
            UnavailableError: no mail store here, or it refused the report.
        """
        if self._reports is None:
            raise UnavailableError("relevé : indisponible sur ce serveur")
        now = self._clock()
        last = self._last_report.get(session.login)
        if last is not None and now - last < REPORT_INTERVAL:
            raise ThrottledError(
                "relevé : un relevé vient d'être demandé, réessayez dans une minute",
                (REPORT_INTERVAL - (now - last)).total_seconds(),
            )
        self._last_report[session.login] = now
        month = Month.of(now, self._zone)
        try:
            report = await gather(self._reports, session.login, month)
            await send_report(
                self._reports,
                report,
                key=on_demand_key(session.login, month, now),
                trigger="on-demand",
                actor=session.login,
                now=now,
            )
        except (ReportError, DirectoryError, OSError) as exc:
            raise UnavailableError(
                "relevé : non remis pour le moment, réessayez plus tard"
            ) from exc
        return ReportSent(month)


def _party(text: str) -> str:
    """A party as typed, canonical, or a :class:`FieldError`."""
    try:
        return canonical_party(text)
    except InvalidFieldError:
        raise FieldError(
            "party",
            "expéditeur : une adresse de messagerie, un identifiant de professionnel"
            " (8 + RPPS, 0 + ADELI) ou de structure (1 + FINESS, 3 + SIRET)",
        ) from None
