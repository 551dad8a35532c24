"""``mssante audit``: verify, query and purge the trail; the patients' reports.

``verify`` exits 0 when the chain is intact and 1 naming the first bad line
(line 0: the anchor a purge left). ``show`` lists the records about one
mailbox or one patient (by INS, through the patient's address
``<INS>@patient.<domain>``), oldest first, typed by the query core
(:mod:`relay.audit_query`) the patients' reports use too. ``purge`` removes
the records older than the retention (``[audit] retention_days``) and
records that it did (``audit.purged``). ``report`` prints a patient's
activity report for a month, or delivers it into their INBOX (``--deliver``):
directly when the relay is stopped, else through a request the running relay
picks up within ``[audit] check_interval`` seconds.
"""

from __future__ import annotations

import zoneinfo
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from cli import output
from directory import identifiers as ids
from directory.config import open_directory
from relay import audit, audit_query, audit_report
from relay.app import STORE_DIR_NAME, load_master_key
from relay.audit import AUDIT_FILE_NAME, AuditEvent, AuditTrail
from relay.store import MailStore, StoreLockedError

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping
    from pathlib import Path

    from cli.main import Context

EXIT_BROKEN: Final = 1
# Columns of ``show``: what happened, between whom, and why.
_DETAIL_FIELDS: Final = ("channel", "code", "reason", "queue_id", "action", "target")


def _since(value: str | None, option: str = "--since") -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"{option}: {value!r} is not a date or date-time (ISO 8601)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _who(record: Mapping[str, object]) -> str:
    parts = [str(record[name]) for name in ("actor", "sender") if record.get(name)]
    recipients = record.get("recipients") or record.get("recipient")
    if isinstance(recipients, list):
        recipients = ", ".join(str(r) for r in recipients)
    if recipients:
        parts.append("→ " + str(recipients))
    return " ".join(parts)


async def run_audit(ctx: Context, args: argparse.Namespace) -> int:
    path = ctx.config.relay.data_dir / AUDIT_FILE_NAME
    if args.command == "verify":
        return _verify(ctx, path)
    if args.command == "purge":
        return _purge(ctx, args, path)
    if args.command == "report":
        return await _report(ctx, args)
    return _show(ctx, args, path)


def _verify(ctx: Context, path: Path) -> int:
    result = audit.verify(path, ctx.audit_key())
    value = {
        "intact": result.intact,
        "records": result.records,
        "first_bad_line": result.first_bad_line,
        "problem": result.problem,
    }
    if result.intact:
        anchor = audit.read_anchor(path)
        after = f", after {anchor.seq} purged" if anchor is not None else ""
        ctx.emit(value, f"{path}: intact, {result.records} records{after}")
        return 0
    where = audit.anchor_path(path) if result.first_bad_line == 0 else path
    line = f":{result.first_bad_line}" if result.first_bad_line else ""
    ctx.emit(value, f"{where}{line}: {result.problem}")
    return EXIT_BROKEN


def _show(ctx: Context, args: argparse.Namespace, path: Path) -> int:
    if args.patient:
        ins = ids.ins(args.patient)
        addresses = {f"{ins}@{ctx.config.relay.patient_domain}", ins}
    else:
        addresses = {ids.address(args.mailbox)}
    period = audit_query.Period(_since(args.since), _since(args.until, "--until"))
    found = audit_query.query(path, addresses, period)
    human = output.columns(
        [
            (
                str(a.record.get("time", ""))[:19],
                a.event,
                a.kind.value,
                _who(a.record),
                " ".join(
                    f"{k}={a.record[k]}" for k in _DETAIL_FIELDS if a.record.get(k)
                ),
            )
            for a in found
        ],
        ("TIME", "EVENT", "KIND", "WHO", "DETAIL"),
    )
    ctx.emit(
        [{**a.record, "kind": a.kind.value} for a in found],
        human if found else "no records",
    )
    return 0


def _purge(ctx: Context, args: argparse.Namespace, path: Path) -> int:
    now = _now()
    if args.before is not None:
        before = _since(args.before, "--before")
        assert before is not None  # noqa: S101 - given
    else:
        days = (
            args.older_than
            if args.older_than is not None
            else ctx.config.audit.retention_days
        )
        if days < 1:
            raise ValueError(f"--older-than: {days}: must be at least 1 day")
        before = now - timedelta(days=days)
    result = audit.purge(path, ctx.audit_key(), before, now)
    value = {
        "purged": result.purged,
        "kept": result.kept,
        "before": before.isoformat(),
        "anchor_seq": result.anchor.seq if result.anchor is not None else None,
    }
    if result.purged:
        # Appended after the purge, to the new file: the trail says who purged.
        ctx.audit(
            AuditEvent.AUDIT_PURGED,
            actor="cli",
            before=before.isoformat(),
            count=result.purged,
            anchor_seq=value["anchor_seq"],
        )
    ctx.emit(
        value,
        f"{path}: {result.purged} records before {before.isoformat()} purged,"
        f" {result.kept} kept",
    )
    return 0


async def _report(ctx: Context, args: argparse.Namespace) -> int:
    settings = ctx.config.audit
    zone = zoneinfo.ZoneInfo(settings.timezone)
    now = _now()
    month = (
        audit_report.Month.parse(args.month)
        if args.month
        else audit_report.Month.of(now, zone).previous()
    )
    ins = ids.ins(args.patient)
    relay = ctx.config.relay
    address = audit_report.patient_address(ins, relay.patient_domain)
    master = load_master_key(ctx.config)
    try:
        store = MailStore.open(relay.data_dir / STORE_DIR_NAME, master)
    except StoreLockedError:
        if not args.deliver:
            raise ValueError(
                "the running relay holds the mail store (document types are read"
                " from it): use --deliver, and the relay delivers the report"
            ) from None
        audit_report.request_report(relay.data_dir, ins, month)
        ctx.emit(
            {"patient": ins, "month": str(month), "requested": True},
            f"{address}: report for {month} requested; the running relay"
            f" delivers it within {settings.check_interval:g} s",
        )
        return 0
    trail = AuditTrail(relay.data_dir / AUDIT_FILE_NAME, master.derive("audit"))
    directory = await open_directory(ctx.directory_config)
    try:
        rctx = audit_report.ReportContext(
            store=store,
            directory=directory,
            audit=trail,
            patient_domain=relay.patient_domain,
            hostname=relay.hostname,
            zone=zone,
        )
        report = await audit_report.gather(rctx, address, month)
        if args.deliver:
            await audit_report.send_report(
                rctx,
                report,
                key=audit_report.on_demand_key(address, month, now),
                trigger="on-demand",
                actor="cli",
                now=now,
            )
            ctx.emit(
                {"patient": ins, "month": str(month), "delivered": True},
                f"{address}: report for {month} delivered",
            )
        else:
            ctx.emit(
                {
                    "patient": ins,
                    "month": str(month),
                    "text": audit_report.render_text(report, zone),
                },
                audit_report.render_text(report, zone),
            )
    finally:
        await directory.close()
        trail.close()
        store.close()
    return 0


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    auditp = top.add_parser("audit", help="verify and query the audit trail")
    sub = auditp.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    sub.add_parser("verify", help="check the chain; name the first bad line")
    show = sub.add_parser("show", help="records about one mailbox or one patient")
    which = show.add_mutually_exclusive_group(required=True)
    which.add_argument("--mailbox", help="a mailbox address")
    which.add_argument("--patient", help="a patient's INS")
    show.add_argument("--since", help="only records from this date (ISO 8601)")
    show.add_argument("--until", help="only records before this date (ISO 8601)")
    purge = sub.add_parser(
        "purge", help="remove records past the retention; the chain stays verifiable"
    )
    cutoff = purge.add_mutually_exclusive_group()
    cutoff.add_argument("--before", help="remove records before this date (ISO 8601)")
    cutoff.add_argument(
        "--older-than",
        type=int,
        metavar="DAYS",
        help="remove records older than DAYS (default: [audit] retention_days)",
    )
    report = sub.add_parser("report", help="a patient's monthly activity report")
    report.add_argument("--patient", required=True, help="the patient's INS")
    report.add_argument("--month", help="YYYY-MM (default: the previous month)")
    report.add_argument(
        "--deliver",
        action="store_true",
        help="deliver it into the patient's INBOX instead of printing it",
    )
    auditp.set_defaults(handler="audit")
