"""``mssante audit``: verify the trail, and answer who sent, received, read what, when.

``verify`` exits 0 when the chain is intact and 1 naming the first bad line.
``show`` lists the records about one mailbox or one patient (by INS, through
the patient's address ``<INS>@patient.<domain>``), oldest first.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from cli import output
from directory import identifiers as ids
from relay import audit
from relay.audit import AUDIT_FILE_NAME

if TYPE_CHECKING:
    import argparse

    from cli.main import Context

EXIT_BROKEN: Final = 1
# Columns of ``show``: what happened, between whom, and why.
_DETAIL_FIELDS: Final = ("channel", "code", "reason", "queue_id", "action", "target")


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"--since: {value!r} is not a date or date-time (ISO 8601)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _who(record: dict[str, object]) -> str:
    parts = [str(record[name]) for name in ("actor", "sender") if record.get(name)]
    recipients = record.get("recipients") or record.get("recipient")
    if isinstance(recipients, list):
        recipients = ", ".join(str(r) for r in recipients)
    if recipients:
        parts.append("→ " + str(recipients))
    return " ".join(parts)


def run_audit(ctx: Context, args: argparse.Namespace) -> int:
    path = ctx.config.relay.data_dir / AUDIT_FILE_NAME
    if args.command == "verify":
        result = audit.verify(path, ctx.audit_key())
        value = {
            "intact": result.intact,
            "records": result.records,
            "first_bad_line": result.first_bad_line,
            "problem": result.problem,
        }
        if result.intact:
            ctx.emit(value, f"{path}: intact, {result.records} records")
            return 0
        ctx.emit(value, f"{path}:{result.first_bad_line}: {result.problem}")
        return EXIT_BROKEN
    if args.patient:
        ins = ids.ins(args.patient)
        addresses = {f"{ins}@{ctx.config.relay.patient_domain}", ins}
    else:
        addresses = {ids.address(args.mailbox)}
    found = list(audit.concerning(path, addresses, _since(args.since)))
    human = output.columns(
        [
            (
                str(r.get("time", ""))[:19],
                str(r.get("event", "")),
                _who(r),
                " ".join(f"{k}={r[k]}" for k in _DETAIL_FIELDS if r.get(k)),
            )
            for r in found
        ],
        ("TIME", "EVENT", "WHO", "DETAIL"),
    )
    ctx.emit(found, human if found else "no records")
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
    auditp.set_defaults(handler="audit")
