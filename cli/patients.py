"""``mssante patient``: a patient's consent, proxies, contact and break-glass.

Each change goes through :meth:`directory.protocol.Directory.change_consent`
(the patient entry and its consent ledger record, together) and is then
written to the audit trail (``patient.consent.changed``, or
``patient.access.break_glass``), with the actor ``--actor`` names (default
``cli``). A change that would change nothing says so and records nothing.

``break-glass`` opens an administrator's read-only access to the patient's
mailbox for ``--hours`` (1 by default, 24 at most), only with a reason. The
patient is told at once: a plain-French message in their INBOX (who: "un
administrateur", when, why, until when) and, when the relay has a contact
notifier, a :class:`relay.contact.ContactNotice` of kind ``BREAK_GLASS`` to
their ordinary contact (fixed text: never the reason, which may name care).
The INBOX message goes into the mail store directly when the relay is not
running; when it is (the store is locked by it), into the relay's spool,
fsynced, which the relay delivers within a second (it polls its spool).

Other ``patient`` subcommands (enrolment, recovery) are added to the same
group: :func:`add_parser` returns the group's subparsers, and each module
adds its commands with a function like :func:`add_consent_commands`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

from cli import values
from directory import identifiers as ids
from directory.consent import (
    Block,
    GrantProxy,
    OpenBreakGlass,
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
from directory.errors import EntryNotFoundError, InvalidFieldError
from directory.model import (
    BREAK_GLASS_MAX,
    Kind,
    Mailbox,
    Patient,
    ProxyScope,
    to_record,
)
from relay import generated
from relay.accounts import Account, AccountKind, AccountStore
from relay.app import STORE_DIR_NAME, load_master_key
from relay.audit import AuditEvent
from relay.audit_query import consent_fields
from relay.contact import ContactError, NoticeKind
from relay.notify import Notifier, texts

if TYPE_CHECKING:
    import argparse

    from cli.main import Context
    from directory.consent import ConsentChange, ConsentOutcome
    from directory.model import ConsentRecord
    from directory.protocol import Directory
    from relay.config import Config
    from relay.contact import ContactNotifier

ACTOR: Final = "cli"
DEFAULT_BREAK_GLASS_HOURS: Final = 1
MAX_BREAK_GLASS_HOURS: Final = int(BREAK_GLASS_MAX / timedelta(hours=1))
BREAK_GLASS_SUBJECT: Final = "Accès exceptionnel à votre messagerie de santé"


def _now() -> datetime:
    return datetime.now(UTC)


# --- parser ---------------------------------------------------------------------


def add_parser(
    top: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The ``patient`` group; returns its subparsers for other modules' commands."""
    group = top.add_parser("patient", help="a patient's consent, proxies and access")
    sub = group.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    add_consent_commands(sub)
    return sub


def add_consent_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """show, opt-out ... break-glass (this module's commands)."""

    def add(name: str, fn: object, text: str, *, change: bool = True) -> Any:  # noqa: ANN401 - argparse parser
        p = sub.add_parser(name, help=text)
        p.set_defaults(handler=fn)
        if name != "show":
            p.add_argument("ins", help="15-character INS matricule")
        if change:
            p.add_argument(
                "--actor", default=ACTOR, help=f"who asked (default {ACTOR})"
            )
        return p

    p = add("show", cmd_show, "show a patient and their grants", change=False)
    p.add_argument("patient", help="INS matricule or patient mailbox address")
    add("opt-out", cmd_opt_out, "close the patient's mailbox to new mail")
    add("opt-in", cmd_opt_in, "open it again")
    p = add("block", cmd_block, "refuse mail from a party")
    p.add_argument("party", help="mailbox address, 8+RPPS practitioner or structure id")
    p = add("unblock", cmd_unblock, "lift a block")
    p.add_argument("party")
    p = add("grant-proxy", cmd_grant_proxy, "let a caregiver use the mailbox")
    p.add_argument("account", help="the caregiver's own login")
    p.add_argument("--scope", required=True, choices=[s.value for s in ProxyScope])
    p.add_argument("--until", help="end of the grant: date or date-time (ISO 8601)")
    p = add("revoke-proxy", cmd_revoke_proxy, "end a caregiver's access")
    p.add_argument("account")
    p = add("set-contact", cmd_set_contact, "change the ordinary contact")
    p.add_argument("--email", help='e-mail address ("" clears it)')
    p.add_argument("--phone", help='mobile number, E.164 ("" clears it)')
    p = add(
        "set-treating-doctor",
        cmd_set_treating_doctor,
        "declare the treating doctor (replaces the previous one)",
    )
    p.add_argument("address", help="the doctor's mailbox address")
    add("history", cmd_history, "the consent ledger", change=False)
    p = add(
        "break-glass",
        cmd_break_glass,
        "open an administrator's read-only access, with a reason",
    )
    p.add_argument("--account", required=True, help="the administrator's login")
    p.add_argument("--reason", required=True, help="why (told to the patient)")
    p.add_argument(
        "--hours",
        type=int,
        default=DEFAULT_BREAK_GLASS_HOURS,
        help=f"how long (default {DEFAULT_BREAK_GLASS_HOURS}, at most {MAX_BREAK_GLASS_HOURS})",
    )


# --- shared -------------------------------------------------------------------------


async def _patient(d: Directory, key: str) -> Patient:
    if "@" in key:
        found = await d.resolve(key)
        if not isinstance(found, Patient):
            raise EntryNotFoundError(Kind.PATIENT.value, ids.address(key))
        return found
    patient = await d.patient(key)
    if patient is None:
        raise EntryNotFoundError(Kind.PATIENT.value, ids.ins(key))
    return patient


def _describe_record(record: ConsentRecord) -> str:
    detail = " ".join(f"{k}={v}" for k, v in record.detail if v)
    when = record.time.isoformat(timespec="seconds")
    return f"{record.sequence:>4}  {when}  {record.actor}  {record.action.value}  {detail}".rstrip()


async def _change(
    ctx: Context, d: Directory, a: argparse.Namespace, change: ConsentChange
) -> ConsentOutcome:
    """Apply one change, audit it, print it."""
    outcome = await d.change_consent(a.ins, change, actor=a.actor, now=_now())
    record = outcome.record
    ins = outcome.patient.ins
    if record is None:
        ctx.emit(
            {"ins": ins, "changed": False},
            f"patient {ins}: unchanged ({a.command}: nothing to do)",
        )
        return outcome
    ctx.audit(AuditEvent.PATIENT_CONSENT_CHANGED, **consent_fields(record))
    ctx.emit(
        {"ins": ins, "changed": True, "record": record.as_json()},
        f"patient {ins}: {_describe_record(record).strip()}",
    )
    return outcome


# --- commands -------------------------------------------------------------------------


async def cmd_show(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    from cli import output

    patient = await _patient(d, a.patient)
    ctx.emit(to_record(patient), output.describe(patient))
    return 0


async def cmd_opt_out(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    await _change(ctx, d, a, OptOut())
    return 0


async def cmd_opt_in(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    await _change(ctx, d, a, OptIn())
    return 0


async def _known_party(d: Directory, party: str) -> str:
    """The canonical party, which must be in the directory."""
    canonical = canonical_party(party)
    if await find_party(d, canonical) is None:
        kind = party_kind(canonical)
        raise InvalidFieldError("party", party, f"no such {kind} in the directory")
    return canonical


async def cmd_block(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    await _change(ctx, d, a, Block(await _known_party(d, a.party)))
    return 0


async def cmd_unblock(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    # A party since gone from the directory can still be unblocked.
    await _change(ctx, d, a, Unblock(a.party))
    return 0


def _account(ctx: Context, login: str) -> Account:
    """The account ``login`` of the relay's account store, or an error naming it."""
    accounts = AccountStore.for_config(ctx.config)
    try:
        known = accounts.get(login)
    finally:
        accounts.close()
    if known is None:
        raise InvalidFieldError("account", login, "no such account")
    return known


async def cmd_grant_proxy(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    scope = ProxyScope(a.scope)
    # A grant to a login nobody holds yet would go to whoever is later given
    # that login: only an existing caregiver account.
    if _account(ctx, a.account).kind is not AccountKind.PROXY:
        raise InvalidFieldError("account", a.account, "is not a proxy account")
    await _change(
        ctx, d, a, GrantProxy(a.account, scope, values.expiry("until", a.until))
    )
    return 0


async def cmd_revoke_proxy(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    await _change(ctx, d, a, RevokeProxy(a.account))
    return 0


async def cmd_set_contact(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    await _change(ctx, d, a, SetContact(email=a.email, phone=a.phone))
    return 0


async def cmd_set_treating_doctor(
    ctx: Context, d: Directory, a: argparse.Namespace
) -> int:
    mailbox = await d.mailbox(a.address)
    if not isinstance(mailbox, Mailbox):
        raise InvalidFieldError(
            "address", a.address, "no such mailbox in the directory"
        )
    await _change(ctx, d, a, SetTreatingDoctor(mailbox.address))
    return 0


async def cmd_history(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    patient = await _patient(d, a.ins)
    records = await d.consent_history(patient.ins)
    human = "\n".join(_describe_record(r) for r in records)
    ctx.emit(
        [r.as_json() for r in records],
        human or f"patient {patient.ins}: no consent change recorded",
    )
    return 0


# --- break-glass ------------------------------------------------------------------


def compose_break_glass_notice(
    *,
    patient: str,
    opened_at: datetime,
    until: datetime,
    reason: str,
    domain: str,
    hostname: str,
) -> bytes:
    """The message the patient finds in their INBOX, CRLF line ends.

    It names no administrator (``un administrateur``): who it was is in the
    audit trail, for the patient's report and any inquiry.
    """

    def when(value: datetime) -> str:
        return value.astimezone(UTC).strftime("%d/%m/%Y à %H:%M (UTC)")

    return generated.compose(
        sender=("Messagerie sécurisée de santé", f"postmaster@{domain}"),
        to=patient,
        subject=BREAK_GLASS_SUBJECT,
        text=(
            "Bonjour,\n"
            "\n"
            f"Le {when(opened_at)}, un administrateur de la messagerie sécurisée de"
            " santé a ouvert un accès exceptionnel à votre boîte aux lettres, en"
            " lecture seule.\n"
            "\n"
            f"Motif indiqué : {reason}\n"
            "\n"
            f"Cet accès prend fin le {when(until)}. Il ne permet pas d'envoyer de"
            " message en votre nom. Chaque lecture est enregistrée dans le journal"
            " d'audit et figurera dans votre prochain relevé d'accès.\n"
            "\n"
            "Ceci est un message automatique.\n"
        ),
        hostname=hostname,
        now=opened_at,
        id_left="break-glass",
    )


def contact_notifier(config: Config) -> ContactNotifier | None:
    """The relay's contact channels (``[notices]``), or None when it has none.

    Raises :class:`~relay.notify.NoticeSetupError` (a :class:`ContactError`)
    when a secret file of ``[notices]`` cannot be read.
    """
    notifier = Notifier.for_config(config)
    return notifier if notifier.configured else None


async def open_break_glass(
    ctx: Context,
    d: Directory,
    *,
    ins: str,
    account: str,
    reason: str,
    hours: int,
    actor: str,
    notifier: ContactNotifier | None,
) -> dict[str, Any]:
    """Open the access, record it, tell the patient; returns what was done."""
    reason = reason.strip()
    if not reason:
        raise InvalidFieldError("reason", reason, "a break-glass access needs a reason")
    if not 1 <= hours <= MAX_BREAK_GLASS_HOURS:
        raise InvalidFieldError(
            "hours", hours, f"must be from 1 to {MAX_BREAK_GLASS_HOURS}"
        )
    _account(ctx, account)
    now = _now()
    until = now + timedelta(hours=hours)
    change = OpenBreakGlass(account, reason, until, opened_by=actor)
    outcome = await d.change_consent(ins, change, actor=actor, now=now)
    patient, record = outcome.patient, outcome.record
    # OpenBreakGlass refuses a patient without a mailbox and always changes.
    assert patient.address is not None  # noqa: S101
    assert record is not None  # noqa: S101
    ctx.audit(
        AuditEvent.PATIENT_BREAK_GLASS,
        actor=actor,
        patient=patient.ins,
        mailbox=patient.address,
        account=account,
        reason=reason,
        until=until.isoformat(),
        sequence=record.sequence,
    )
    notice = compose_break_glass_notice(
        patient=patient.address,
        opened_at=now,
        until=until,
        reason=reason,
        domain=ctx.config.relay.domain,
        hostname=ctx.config.relay.hostname,
    )
    config = ctx.config
    handed = generated.hand_to_inbox(
        config.relay.data_dir,
        config.relay.data_dir / STORE_DIR_NAME,
        load_master_key(config),
        patient.address,
        notice,
        key=f"break-glass:{patient.ins}:{record.sequence}",
        now=now,
    )
    ctx.audit(
        AuditEvent.PATIENT_NOTICE_SENT,
        actor=actor,
        kind="break-glass",
        recipient=patient.address,
        via=handed.via,
        ref=handed.ref,
    )
    channels: list[str] = []
    if notifier is not None:
        try:
            channels = await notifier.notify(
                patient,
                texts.break_glass(access_report_url=config.notices.access_report_url),
            )
        except ContactError as exc:
            ctx.audit(
                AuditEvent.PATIENT_CONTACT_FAILED,
                actor=actor,
                patient=patient.ins,
                kind=NoticeKind.BREAK_GLASS.value,
                reason=type(exc).__name__,
            )
        else:
            ctx.audit(
                AuditEvent.PATIENT_CONTACT_NOTIFIED,
                actor=actor,
                patient=patient.ins,
                kind=NoticeKind.BREAK_GLASS.value,
                channels=channels,
            )
    return {
        "ins": patient.ins,
        "mailbox": patient.address,
        "account": account,
        "until": until.isoformat(),
        "imap_folder": f"Shared/{patient.address}/INBOX",
        "record": record.as_json(),
        "notice": {"via": handed.via, "ref": handed.ref},
        "contact_channels": channels,
    }


async def cmd_break_glass(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    done = await open_break_glass(
        ctx,
        d,
        ins=a.ins,
        account=a.account,
        reason=a.reason,
        hours=a.hours,
        actor=a.actor,
        notifier=contact_notifier(ctx.config),
    )
    ctx.emit(
        done,
        f"patient {done['ins']}: break-glass access for {done['account']} until"
        f" {done['until']} (read-only, IMAP folder {done['imap_folder']});"
        f" the patient was told ({done['notice']['via']})",
    )
    return 0
