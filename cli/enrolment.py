"""``mssante patient enrol | recover | inactive``: patient accounts (issue 10).

- ``enrol INS [--deliver contact|print]`` creates the patient's account
  (login: the patient's address, no usable password) with a one-time
  activation code, or re-issues the code of an account never activated.
  ``contact`` (the default) sends the code to the declared contact: the
  admin never sees it. ``print`` shows it once, for a postal letter handed
  to the patient.
- ``recover INS --via contact`` sends a recovery code to the contact;
  ``--via caregiver ACCOUNT`` puts it in the caregiver's own secure INBOX
  (the caregiver must hold an active proxy grant): through the spool, which
  the running relay delivers within about a second (a stopped one at its
  start). The admin sees no code either way.
- ``inactive [--days N]`` lists patient accounts never activated, activated
  and never used, or unused, for N days (``[enrolment] inactive_days``).

Every change is in the audit trail, never a code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
from typing import TYPE_CHECKING, Final

from cli import output
from relay import generated
from relay.accounts import AccountStore
from relay.app import load_master_key, local_domains
from relay.audit import AUDIT_FILE_NAME, AuditTrail
from relay.enrolment import (
    Delivery,
    Enrolment,
    NoticeFailedError,
    Via,
    notifier_for,
    site_url,
)

if TYPE_CHECKING:
    import argparse
    from collections.abc import AsyncIterator
    from datetime import datetime

    from cli.main import Context
    from directory.protocol import Directory
    from relay.contact import ContactNotifier

ACTOR: Final = "cli"
# Exit statuses of cli.main (not imported: cli.main imports this module).
_EXIT_OK: Final = 0
_EXIT_TEMPFAIL: Final = 75


def add_enrolment_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """Add ``enrol``, ``recover`` and ``inactive`` to the ``patient`` group."""
    p = sub.add_parser(
        "enrol", help="create a patient's account with a one-time activation code"
    )
    p.add_argument("ins", help="the patient's INS matricule (qualified)")
    p.add_argument(
        "--deliver",
        choices=[d.value for d in Delivery],
        default=Delivery.CONTACT.value,
        help="contact: sent to the declared contact (default);"
        " print: shown once, for a postal letter",
    )
    p.set_defaults(handler=cmd_enrol)

    p = sub.add_parser("recover", help="send a recovery code for a lost password")
    p.add_argument("ins", help="the patient's INS matricule")
    p.add_argument(
        "--via",
        nargs="+",
        required=True,
        metavar=("contact|caregiver", "ACCOUNT"),
        help="contact, or caregiver ACCOUNT (an active proxy of the patient)",
    )
    p.set_defaults(handler=cmd_recover)

    p = sub.add_parser(
        "inactive", help="patient accounts never activated, never used or unused"
    )
    p.add_argument(
        "--days",
        type=int,
        default=None,
        help="quiet for this many days (default [enrolment] inactive_days)",
    )
    p.add_argument(
        "--json", dest="as_json", action="store_true", help="machine-readable output"
    )
    p.set_defaults(handler=cmd_inactive)


@contextlib.asynccontextmanager
async def service(
    ctx: Context, d: Directory, notifier: ContactNotifier | None = None
) -> AsyncIterator[Enrolment]:
    """The enrolment service of the configured data directory."""
    cfg = ctx.config
    accounts = AccountStore.for_config(cfg)
    audit = AuditTrail(cfg.relay.data_dir / AUDIT_FILE_NAME, ctx.audit_key())
    try:
        yield Enrolment(
            accounts=accounts,
            directory=d,
            audit=audit,
            notifier=notifier or notifier_for(cfg),
            settings=cfg.enrolment,
            web=cfg.web,
            patient_domain=cfg.relay.patient_domain,
            site=site_url(cfg),
        )
    finally:
        audit.close()
        accounts.close()


def _day(at: datetime | None) -> str:
    return "-" if at is None else at.strftime("%Y-%m-%d %H:%M")


async def cmd_enrol(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    return await enrol(ctx, d, a)


async def enrol(
    ctx: Context,
    d: Directory,
    a: argparse.Namespace,
    notifier: ContactNotifier | None = None,
) -> int:
    delivery = Delivery(a.deliver)
    async with service(ctx, d, notifier) as enrolment:
        try:
            done = await enrolment.enrol(a.ins, delivery, actor=ACTOR)
        except NoticeFailedError as exc:
            sys.stderr.write(f"mssante: error: {exc}\n")
            return _EXIT_TEMPFAIL
        site = enrolment.site
    row: dict[str, object] = {
        "login": done.login,
        "created": done.created,
        "delivery": done.delivery.value,
        "channels": list(done.channels),
        "expires": done.expires.isoformat(),
    }
    what = "enrolled" if done.created else "new activation code for"
    if delivery is Delivery.PRINT:
        assert done.code is not None  # noqa: S101 - PRINT carries the code
        row |= {"code": done.code, "site": site}
        human = (
            f"{what} {done.login}\n"
            "Letter for the patient (shown once, never stored in clear):\n"
            f"  site:            {site}/activate\n"
            f"  login:           {done.login}\n"
            f"  activation code: {done.code}\n"
            f"  expires:         {_day(done.expires)} UTC"
        )
    else:
        human = (
            f"{what} {done.login}: activation code sent by"
            f" {', '.join(done.channels)}; expires {_day(done.expires)} UTC"
        )
    ctx.emit(row, human)
    return _EXIT_OK


async def cmd_recover(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    return await recover(ctx, d, a)


async def recover(
    ctx: Context,
    d: Directory,
    a: argparse.Namespace,
    notifier: ContactNotifier | None = None,
) -> int:
    via_text, *rest = a.via
    try:
        via = Via(via_text)
    except ValueError:
        raise ValueError(f"--via: {via_text!r} is not contact or caregiver") from None
    if (via is Via.CAREGIVER) != bool(rest) or len(rest) > 1:
        raise ValueError("--via: 'contact', or 'caregiver ACCOUNT'")
    cfg = ctx.config
    async with service(ctx, d, notifier) as enrolment:
        if via is Via.CONTACT:
            try:
                sent = await enrolment.recover_via_contact(a.ins, actor=ACTOR)
            except NoticeFailedError as exc:
                sys.stderr.write(f"mssante: error: {exc}\n")
                return _EXIT_TEMPFAIL
            ctx.emit(
                {
                    "login": sent.login,
                    "via": sent.via.value,
                    "channels": list(sent.channels),
                    "expires": sent.expires.isoformat(),
                },
                f"recovery code for {sent.login} sent by"
                f" {', '.join(sent.channels)}; expires {_day(sent.expires)} UTC",
            )
            return _EXIT_OK
        # Spooled without clearing spool/tmp: the running relay may be
        # writing there.
        spool = generated.admin_spool(cfg.relay.data_dir, load_master_key(cfg))
        sent = await enrolment.recover_via_caregiver(
            a.ins,
            rest[0],
            lambda mailbox, message: generated.spool_generated(
                spool, mailbox, message, enrolment.now()
            ),
            sender=f"postmaster@{cfg.relay.domain}",
            hostname=cfg.relay.hostname,
            is_local=local_domains(cfg).is_local,
            actor=ACTOR,
        )
    ctx.emit(
        {
            "login": sent.login,
            "via": sent.via.value,
            "caregiver": sent.caregiver,
            "mailbox": sent.mailbox,
            "queue_id": sent.queue_id,
            "expires": sent.expires.isoformat(),
        },
        f"recovery code for {sent.login} queued for {sent.mailbox}"
        f" (caregiver {sent.caregiver}, queue id {sent.queue_id});"
        f" expires {_day(sent.expires)} UTC",
    )
    return _EXIT_OK


async def cmd_inactive(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    if a.as_json:
        ctx = dataclasses.replace(ctx, as_json=True)
    if a.days is not None and a.days < 0:
        raise ValueError(f"--days: {a.days} is negative")
    async with service(ctx, d) as enrolment:
        found = enrolment.inactive(a.days)
    rows = [
        {
            "login": i.login,
            "state": i.state.value,
            "created": i.created.isoformat(),
            "activated": i.activated.isoformat() if i.activated else None,
            "last_login": i.last_login.isoformat() if i.last_login else None,
            "locked": i.locked,
        }
        for i in found
    ]
    human = output.columns(
        [
            (
                i.login,
                i.state.value,
                _day(i.created),
                _day(i.activated),
                _day(i.last_login),
            )
            for i in found
        ],
        ("LOGIN", "STATE", "CREATED", "ACTIVATED", "LAST LOGIN"),
    )
    ctx.emit(rows, human if rows else "no inactive patient account")
    return _EXIT_OK
