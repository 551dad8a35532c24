"""The patient's activity report: who wrote, who opened, who acted on their behalf.

Owns: the monthly report (issue 10) a patient finds in their own INBOX,
readable in any IMAP client: the messages they received in the month (date,
sender's name and organisation, document type), who opened them (the
patient, a proxy, a delegate), every other access on their behalf (a
proxy's deletions, a break-glass opening and its reason), and the changes
to their consent. Also the relay task that sends the previous month's
report to every patient mailbox once a month (:class:`MonthlyReports`), and
the on-demand requests ``mssante audit report --deliver`` leaves for a
running relay.

What must stay true:

- **Nothing the patient may not already see.** The trail holds no content;
  names and organisations come from the directory (what any professional
  sees), the document type from the ``X-MSS-CODECDA`` header of the
  patient's own copy (MSSanté DST §3.2: the type code of the CDA). No
  subject, body, attachment name or clinical detail. A message the patient
  deleted is listed without a type.
- Plain French text, UTF-8, ``Auto-Submitted: auto-generated`` (RFC 3834
  §5: not a reply), from ``no-reply@patient.<domain>``; delivered into the
  INBOX through the mail store (encrypted at rest, durable before it
  counts), then audited ``patient.report.sent`` (month, trigger, counts:
  never the text).
- **Once per patient and month.** The monthly report's delivery key is
  (address, month): the store stores nothing twice for one key, so a restart,
  a second relay run or a crash between delivery and the next tick never
  sends it twice. An on-demand report has its own key (it may be asked again).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import hashlib
import json
import logging
import os
import secrets
import zoneinfo
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import TYPE_CHECKING, Any, Final

from directory.errors import DirectoryError
from directory.model import Mailbox, OwnerKind
from relay import generated
from relay.audit import AuditError, AuditEvent
from relay.audit_query import Activity, Kind, Period, by_address
from relay.store import StoreError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from pathlib import Path

    from directory.protocol import Directory
    from relay.audit import AuditTrail
    from relay.config import AuditSettings
    from relay.store import MailStore

log = logging.getLogger("mssante.relay.reports")

REPORT_LOCAL_PART: Final = "no-reply"
REPORT_DISPLAY_NAME: Final = "Messagerie sécurisée de santé"
MONTHS_FR: Final = (
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
)
# LOINC type codes of the documents most sent to patients (ANS, "Jeux de
# valeurs" JDV_J07-XdsTypeCode-CISIS), as the patient sees them named.
DOCUMENT_TYPES: Final[Mapping[str, str]] = {
    "11488-4": "Compte rendu de consultation",
    "11490-0": "Lettre de liaison de sortie",
    "11502-2": "Compte rendu d'examens biologiques",
    "11505-5": "Compte rendu opératoire",
    "18748-4": "Compte rendu d'imagerie médicale",
    "34133-9": "Synthèse d'épisode de soins",
    "57833-6": "Prescription de médicaments",
    "60591-5": "Synthèse médicale",
    "77436-4": "Compte rendu d'anatomie et de cytologie pathologiques",
}
H_CODECDA: Final = "X-MSS-CODECDA"
# Where ``mssante audit report --deliver`` leaves requests for a running relay.
REQUESTS_DIR: Final = "audit-reports"
_VIA_FR: Final[Mapping[str, str]] = {
    "proxy": "aidant ou représentant légal",
    "delegation": "délégation",
    "break-glass": "accès exceptionnel d'un administrateur",
}


class ReportError(Exception):
    """A report cannot be built or delivered (the message says why)."""


@dataclass(frozen=True, slots=True, order=True)
class Month:
    """A calendar month, ``YYYY-MM``."""

    year: int
    month: int

    @classmethod
    def parse(cls, text: str) -> Month:
        try:
            year, month = (int(p) for p in text.split("-"))
            if not 1 <= month <= 12 or year < 1970:
                raise ValueError(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a month (YYYY-MM)") from None
        return cls(year, month)

    @classmethod
    def of(cls, when: datetime, zone: zoneinfo.ZoneInfo) -> Month:
        local = when.astimezone(zone)
        return cls(local.year, local.month)

    def previous(self) -> Month:
        if self.month == 1:
            return Month(self.year - 1, 12)
        return Month(self.year, self.month - 1)

    def next(self) -> Month:
        if self.month == 12:
            return Month(self.year + 1, 1)
        return Month(self.year, self.month + 1)

    def start(self, zone: zoneinfo.ZoneInfo) -> datetime:
        return datetime(self.year, self.month, 1, tzinfo=zone)

    def period(self, zone: zoneinfo.ZoneInfo) -> Period:
        return Period(self.start(zone), self.next().start(zone))

    @property
    def label(self) -> str:
        """``novembre 2026``."""
        return f"{MONTHS_FR[self.month - 1]} {self.year}"

    def __str__(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"


@dataclass(frozen=True, slots=True)
class Party:
    """Someone who wrote to the patient, as the directory names them."""

    address: str
    name: str = ""
    organisation: str = ""

    def describe(self) -> str:
        who = self.name or self.address
        return f"{who} ({self.organisation})" if self.organisation else who


@dataclass(frozen=True, slots=True)
class Opening:
    """One person's first opening of a message."""

    time: datetime
    actor: str
    via: str


@dataclass(frozen=True, slots=True)
class Received:
    """One message delivered to the patient in the month."""

    time: datetime
    sender: Party
    document_type: str | None  # None: no longer in the mailbox (deleted)
    in_mailbox: bool
    openings: tuple[Opening, ...]


@dataclass(frozen=True, slots=True)
class Report:
    """What one patient's report says (no text yet: :func:`render_text`)."""

    address: str
    month: Month
    received: tuple[Received, ...]
    on_behalf: tuple[Activity, ...]  # reads, deletions... by others; break-glass
    consent: tuple[Activity, ...]
    admin: tuple[Activity, ...]

    @property
    def records(self) -> int:
        opened = sum(len(r.openings) for r in self.received)
        return (
            len(self.received)
            + opened
            + len(self.on_behalf)
            + len(self.consent)
            + len(self.admin)
        )


def document_label(codes: str) -> str:
    """The patient-facing name of ``X-MSS-CODECDA`` codes (comma-separated)."""
    labels = []
    for code in (c.strip() for c in codes.split(",")):
        if code:
            name = DOCUMENT_TYPES.get(code)
            labels.append(f"{name} ({code})" if name else f"document de type {code}")
    return ", ".join(labels) or "message sans document structuré"


def build_report(
    address: str,
    month: Month,
    activities: Iterable[Activity],
    documents: Mapping[str, str],
    parties: Mapping[str, Party],
) -> Report:
    """The report from the patient's typed activities (pure).

    ``documents`` maps the ``message_ref`` of each message still in the
    mailbox to its document type label; ``parties`` the senders' addresses to
    their directory names.
    """
    owner = address.lower()
    received: list[tuple[Activity, list[Opening]]] = []
    by_ref: dict[str, list[Opening]] = {}
    on_behalf: list[Activity] = []
    consent: list[Activity] = []
    admin: list[Activity] = []
    first_open: set[tuple[str, str]] = set()
    for a in activities:
        if a.kind is Kind.RECEIVED and a.mailbox.lower() == owner:
            openings: list[Opening] = []
            received.append((a, openings))
            if a.message_ref:
                by_ref.setdefault(a.message_ref, openings)
        elif a.kind is Kind.READ and a.mailbox.lower() == owner:
            key = (a.message_ref, a.actor.lower())
            if a.message_ref in by_ref and key not in first_open:
                first_open.add(key)
                by_ref[a.message_ref].append(Opening(a.time, a.actor, a.via))
            if a.on_behalf:
                on_behalf.append(a)
        elif a.kind is Kind.BREAK_GLASS or (
            a.kind in (Kind.DELETED, Kind.SENT) and a.on_behalf
        ):
            on_behalf.append(a)
        elif a.kind is Kind.CONSENT:
            consent.append(a)
        elif a.kind is Kind.ADMIN:
            admin.append(a)
    items = tuple(
        Received(
            time=a.time,
            sender=parties.get(a.sender.lower(), Party(a.sender)),
            document_type=documents.get(a.message_ref),
            in_mailbox=a.message_ref in documents,
            openings=tuple(openings),
        )
        for a, openings in received
    )
    return Report(
        address=owner,
        month=month,
        received=items,
        on_behalf=tuple(on_behalf),
        consent=tuple(consent),
        admin=tuple(admin),
    )


def _when(t: datetime, zone: zoneinfo.ZoneInfo) -> str:
    local = t.astimezone(zone)
    return f"le {local:%d/%m/%Y} à {local:%H:%M}"


def _who(actor: str, via: str, owner: str) -> str:
    if actor.lower() == owner or via == "owner":
        return "vous"
    role = _VIA_FR.get(via)
    return f"{actor} ({role})" if role else actor


_SCOPE_FR: Final = {"read": "lecture", "read-reply": "lecture et réponse"}


def _consent_change(record: Mapping[str, Any]) -> str:
    """A consent ledger change in plain French (identifiers only, as the
    ledger keeps them: no contact value, no reason)."""
    action = str(record.get("action", ""))
    party = str(record.get("party", ""))
    account = str(record.get("account", ""))
    until = str(record.get("until", ""))[:10]
    match action:
        case "opt-out":
            return "fermeture de votre messagerie aux nouveaux messages"
        case "opt-in":
            return "réouverture de votre messagerie"
        case "block":
            return f"blocage de {party}"
        case "unblock":
            return f"fin du blocage de {party}"
        case "proxy-granted":
            scope = _SCOPE_FR.get(str(record.get("scope", "")), "accès")
            end = f" jusqu'au {until}" if until else ""
            return f"accès accordé à {account} ({scope}){end}"
        case "proxy-revoked":
            return f"fin de l'accès de {account}"
        case "contact-changed":
            return "changement de vos coordonnées de contact"
        case "treating-doctor-set":
            return f"déclaration de votre médecin traitant ({record.get('doctor', '')})"
        case _:
            return "modification de vos choix"


def _heading(title: str, count: int) -> list[str]:
    line = f"{title} ({count})"
    return ["", line, "-" * len(line)]


def _on_behalf_line(a: Activity, owner: str, zone: zoneinfo.ZoneInfo) -> str:
    who = _who(a.actor, a.via, owner)
    when = _when(a.time, zone)
    if a.kind is Kind.BREAK_GLASS:
        reason = f" Motif indiqué : {a.reason}." if a.reason else ""
        return (
            f"- {when} : l'administrateur {a.actor or 'du service'} a ouvert votre"
            f" messagerie en accès exceptionnel (bris de glace).{reason}"
        )
    if a.kind is Kind.READ:
        return f"- {when} : {who} a ouvert un message."
    if a.kind is Kind.DELETED:
        n = a.count
        return f"- {when} : {who} a supprimé {n} message{'s' if n > 1 else ''}."
    return f"- {when} : {who} a envoyé un message en votre nom."


def render_text(report: Report, zone: zoneinfo.ZoneInfo) -> str:
    """The report as the patient reads it: plain French text."""
    owner = report.address
    month = report.month
    end = month.next().start(zone) - timedelta(days=1)
    lines = [
        "Bonjour,",
        "",
        "Voici le relevé d'activité de votre messagerie sécurisée de santé pour"
        f" {month.label} (du 1er au {end.day} {month.label}, heure de"
        f" {zone.key.split('/')[-1]}).",
        "Il indique qui vous a écrit, qui a ouvert vos messages et toute action"
        " faite en votre nom. Il ne reprend aucun contenu de vos messages.",
    ]
    lines += _heading("Messages reçus", len(report.received))
    if not report.received:
        lines.append("Aucun message reçu ce mois-ci.")
    for r in report.received:
        lines.append(f"- {_when(r.time, zone)} : de {r.sender.describe()}")
        if r.in_mailbox:
            lines.append(f"  Document : {r.document_type}")
        else:
            lines.append("  Document : message supprimé de votre messagerie")
        for o in r.openings:
            lines.append(
                f"  Ouvert par {_who(o.actor, o.via, owner)} {_when(o.time, zone)}"
            )
        if not r.openings:
            lines.append("  Pas encore ouvert.")
    lines += _heading("Accès en votre nom", len(report.on_behalf))
    if not report.on_behalf:
        lines.append("Personne d'autre que vous n'a accédé à votre messagerie.")
    lines += [_on_behalf_line(a, owner, zone) for a in report.on_behalf]
    if report.consent:
        lines += _heading("Changements de vos choix", len(report.consent))
        for a in report.consent:
            who = _who(a.actor, a.via, owner) if a.actor else "le service"
            if who == "cli":
                who = "l'administration, à votre demande"
            lines.append(
                f"- {_when(a.time, zone)} : {_consent_change(a.record)} (par {who})."
            )
    if report.admin:
        lines += _heading("Interventions de l'administration", len(report.admin))
        lines += [
            f"- {_when(a.time, zone)} : modification de votre compte ou de votre"
            " fiche (enregistrée au journal)."
            for a in report.admin
        ]
    lines += [
        "",
        "Si une de ces lignes vous surprend, signalez-le à votre établissement"
        " ou au service qui gère votre messagerie.",
        "",
        "Ce message est envoyé automatiquement chaque mois ; merci de ne pas y"
        " répondre.",
    ]
    return "\n".join(lines) + "\n"


def report_sender(patient_domain: str) -> str:
    return f"{REPORT_LOCAL_PART}@{patient_domain}"


def compose_report(
    report: Report,
    *,
    patient_domain: str,
    hostname: str,
    now: datetime,
    zone: zoneinfo.ZoneInfo,
) -> bytes:
    """The report as a MIME message (CRLF line ends), ready for the store."""
    return generated.compose(
        sender=(REPORT_DISPLAY_NAME, report_sender(patient_domain)),
        to=report.address,
        # An en dash between the title and the month.
        subject=f"Votre relevé d'activité \N{EN DASH} {report.month.label}",
        text=render_text(report, zone),
        hostname=hostname,
        now=now,
        id_left="releve",
    )


def delivery_key(address: str, month: Month) -> str:
    """The monthly report's store delivery key: one per patient and month."""
    return f"audit-report\0{address.lower()}\0{month}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportContext:
    """What building and delivering reports needs, from the running relay or
    from the CLI (with the relay stopped)."""

    store: MailStore
    directory: Directory
    audit: AuditTrail
    patient_domain: str
    hostname: str
    zone: zoneinfo.ZoneInfo


def _documents(ctx: ReportContext, address: str) -> dict[str, str]:
    """message_ref -> document label, for every message in the patient's mailbox."""
    out: dict[str, str] = {}
    if not ctx.store.has_mailbox(address):
        return out
    parser = BytesHeaderParser(policy=compat32)
    for folder in ctx.store.folders(address):
        uids = [m.uid for m in ctx.store.messages(address, folder.name)]
        for header in ctx.store.headers(address, folder.name, uids).values():
            fields = parser.parsebytes(header)
            message_id = str(fields.get("Message-ID", "")).strip()
            if message_id:
                codes = str(fields.get(H_CODECDA, ""))
                out[ctx.audit.message_ref(message_id)] = document_label(codes)
    return out


async def _party(directory: Directory, address: str) -> Party:
    try:
        entry = await directory.resolve(address)
        if not isinstance(entry, Mailbox):
            return Party(address)
        structure = entry.structure_id or (
            entry.owner_id if entry.owner_kind is OwnerKind.ORGANISATION else ""
        )
        organisation = await directory.organisation(structure) if structure else None
    except DirectoryError:
        return Party(address)  # the address alone, rather than no report
    return Party(
        address,
        entry.display_name,
        organisation.name if organisation is not None else "",
    )


async def gather(
    ctx: ReportContext,
    address: str,
    month: Month,
    activities: list[Activity] | None = None,
) -> Report:
    """One patient's report for ``month`` (reads the trail unless given the
    patient's activities, as the monthly run does in one pass)."""
    if activities is None:
        period = month.period(ctx.zone)
        found = await asyncio.to_thread(by_address, ctx.audit.path, [address], period)
        activities = found[address.lower()]
    documents = await asyncio.to_thread(_documents, ctx, address)
    parties: dict[str, Party] = {}
    for a in activities:
        if a.kind is Kind.RECEIVED and a.sender and a.sender.lower() not in parties:
            parties[a.sender.lower()] = await _party(ctx.directory, a.sender)
    return build_report(address, month, activities, documents, parties)


async def send_report(
    ctx: ReportContext,
    report: Report,
    *,
    key: str,
    trigger: str,
    actor: str,
    now: datetime,
) -> bool:
    """Deliver ``report`` into the patient's INBOX; False when ``key`` was
    delivered before (nothing stored twice). Audited ``patient.report.sent``.

    Raises:
        ReportError: the store refused it.
    """
    message = compose_report(
        report,
        patient_domain=ctx.patient_domain,
        hostname=ctx.hostname,
        now=now,
        zone=ctx.zone,
    )

    def deliver() -> bool:
        ctx.store.ensure_mailbox(report.address)
        done = ctx.store.deliver(
            report.address, message, delivery_key=key, internal_date=now
        )
        return not done.duplicate

    try:
        delivered = await asyncio.to_thread(deliver)
    except (StoreError, OSError) as exc:
        raise ReportError(f"{report.address}: report not delivered ({exc})") from exc
    if delivered:
        ctx.audit.emit(
            AuditEvent.PATIENT_REPORT_SENT,
            actor=actor,
            mailbox=report.address,
            month=str(report.month),
            trigger=trigger,
            received=len(report.received),
            on_behalf=len(report.on_behalf),
            message_ref=ctx.audit.message_ref(
                email.message_from_bytes(message)["Message-ID"]
            ),
        )
    return delivered


def due_month(now: datetime, settings: AuditSettings) -> Month | None:
    """The month whose reports are due at ``now`` (the previous month, once
    the configured day and hour of this one have come), else None."""
    zone = zoneinfo.ZoneInfo(settings.timezone)
    local = now.astimezone(zone)
    this = Month(local.year, local.month)
    due_at = datetime(
        local.year,
        local.month,
        settings.report_day,
        settings.report_hour,
        tzinfo=zone,
    )
    return this.previous() if local >= due_at else None


def trail_start(path: Path, zone: zoneinfo.ZoneInfo) -> Month | None:
    """The month of the trail's first record, or None for an empty trail.

    Monthly reports cover months from this one on: a relay installed on the
    23rd sends no report for the month before it existed.
    """
    try:
        with path.open("rb") as f:
            first = f.readline()
        when = datetime.fromisoformat(str(json.loads(first)["time"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return Month.of(when, zone)


# --- on-demand requests (CLI -> running relay) -------------------------------


def request_report(data_dir: Path, ins: str, month: Month) -> Path:
    """Leave a request for the running relay (which holds the mail store):
    its next tick delivers the report. The file names the INS only inside."""
    directory = data_dir / REQUESTS_DIR
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    name = secrets.token_hex(8)
    tmp = directory / f".{name}.tmp"
    tmp.write_text(json.dumps({"ins": ins, "month": str(month)}), encoding="utf-8")
    tmp.chmod(0o600)
    final = directory / f"{name}.request"
    tmp.replace(final)
    return final


def _pending_requests(data_dir: Path) -> list[tuple[Path, str, Month]]:
    directory = data_dir / REQUESTS_DIR
    out: list[tuple[Path, str, Month]] = []
    try:
        paths = sorted(directory.glob("*.request"))
    except OSError:
        return out
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            out.append((path, str(data["ins"]), Month.parse(str(data["month"]))))
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("report request %s unreadable; removed", path.name)
            path.unlink(missing_ok=True)
    return out


def on_demand_key(address: str, month: Month, now: datetime) -> str:
    digest = hashlib.sha256(f"{address}\0{month}\0{now.isoformat()}".encode())
    return f"audit-report-on-demand\0{digest.hexdigest()}"


class MonthlyReports:
    """The relay task: the previous month's report to every patient mailbox,
    once per patient and month, and the on-demand requests of the CLI."""

    def __init__(
        self,
        ctx: ReportContext,
        settings: AuditSettings,
        *,
        data_dir: Path,
        clock: Callable[[], datetime],
    ) -> None:
        self._ctx = ctx
        self._settings = settings
        self._data_dir = data_dir
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        # The last month whose reports all went out (by this process): the
        # store is not asked again about it every check_interval.
        self._done: Month | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="audit-reports")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.run_once()
            except (ReportError, AuditError, StoreError, OSError):
                log.exception("activity reports: this run stopped; next one retries")
            await asyncio.sleep(self._settings.check_interval)

    async def run_once(self) -> int:
        """Send what is due now; returns how many reports were delivered."""
        sent = await self._requests()
        if not self._settings.monthly_reports:
            return sent
        now = self._clock()
        month = due_month(now, self._settings)
        if month is None or month == self._done:
            return sent
        ctx = self._ctx
        start = await asyncio.to_thread(trail_start, ctx.audit.path, ctx.zone)
        if start is None or month < start:
            return sent
        todo = await asyncio.to_thread(self._waiting, month)
        if not todo:
            self._done = month
            return sent
        # One pass over the trail for every patient still waiting.
        found = await asyncio.to_thread(
            by_address, ctx.audit.path, todo, month.period(ctx.zone)
        )
        for address in todo:
            report = await gather(ctx, address, month, found[address.lower()])
            if await send_report(
                ctx,
                report,
                key=delivery_key(address, month),
                trigger="monthly",
                actor="relay",
                now=now,
            ):
                sent += 1
        return sent

    def _waiting(self, month: Month) -> list[str]:
        """The patient mailboxes that have no report for ``month`` yet
        (blocking: the store's index)."""
        store = self._ctx.store
        suffix = "@" + self._ctx.patient_domain.lower()
        return [
            a
            for a in store.mailboxes()
            if a.lower().endswith(suffix)
            and not store.has_delivered(delivery_key(a, month))
        ]

    async def _requests(self) -> int:
        sent = 0
        for path, ins, month in await asyncio.to_thread(
            _pending_requests, self._data_dir
        ):
            address = f"{ins}@{self._ctx.patient_domain}".lower()
            now = self._clock()
            try:
                report = await gather(self._ctx, address, month)
                await send_report(
                    self._ctx,
                    report,
                    key=on_demand_key(address, month, now),
                    trigger="on-demand",
                    actor="cli",
                    now=now,
                )
                sent += 1
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # noqa: PTH108 - the request is done (or failed: logged)
        return sent


def patient_address(ins: str, patient_domain: str) -> str:
    return f"{ins}@{patient_domain}".lower()
