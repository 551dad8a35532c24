"""``mssante queue``: the admin's view of the outbound queue, like Postfix's
``postqueue -p`` / ``postsuper``.

``list`` and ``show`` read; ``retry``, ``hold``, ``release`` and ``delete``
change the queue and are written to the audit trail (actor ``cli``). The
running relay sees a change at its next look at the queue (about a second).
Nothing here prints message content: envelopes, states and the last reply.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from cli import output
from relay.app import load_master_key
from relay.audit import AuditEvent
from relay.queue.outbound import OUTBOUND_FILE_NAME, SqliteOutboundQueue

if TYPE_CHECKING:
    import argparse

    from cli.main import Context
    from relay.queue.outbound import QueuedMessage, QueuedRecipient

ACTOR: Final = "cli"
_HEADER: Final = ("QUEUE ID", "SENDER", "RECIPIENT", "STATE", "TRIES", "LAST REPLY")


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    queue = top.add_parser("queue", help="inspect and manage the outbound queue")
    sub = queue.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")
    sub.add_parser("list", help="queued messages, one line per recipient")
    for name, text in (
        ("show", "one message's envelope and recipients"),
        ("hold", "keep a message from being tried (until release)"),
        ("release", "let a held message be tried again"),
        ("delete", "drop a message from the queue (no bounce is sent)"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("queue_id")
    retry = sub.add_parser("retry", help="try now (one message, or --all)")
    which = retry.add_mutually_exclusive_group(required=True)
    which.add_argument("queue_id", nargs="?")
    which.add_argument("--all", action="store_true", help="every queued message")
    queue.set_defaults(handler="queue")


def run_queue(ctx: Context, args: argparse.Namespace) -> int:
    data_dir = ctx.config.relay.data_dir
    if not (data_dir / OUTBOUND_FILE_NAME).exists():
        raise ValueError(f"{data_dir / OUTBOUND_FILE_NAME}: no outbound queue here")
    queue = SqliteOutboundQueue.open(
        data_dir, load_master_key(ctx.config).derive("outbound")
    )
    try:
        return _run(ctx, args, queue)
    finally:
        queue.close()


def _run(ctx: Context, args: argparse.Namespace, queue: SqliteOutboundQueue) -> int:
    command = args.command
    if command == "list":
        entries = queue.messages()
        rows = [
            (
                m.id,
                m.sender or "<>",
                r.address,
                "held" if m.held else _state(r),
                str(r.attempts),
                r.last_reply,
            )
            for m, recipients in entries
            for r in recipients
        ]
        ctx.emit(
            [_record(m, rs) for m, rs in entries],
            output.columns(rows, _HEADER) if rows else "the outbound queue is empty",
        )
        return 0
    if command == "show":
        message, recipients = queue.message(args.queue_id)
        record = _record(message, recipients)
        human = "\n".join(
            [
                f"{k}: {v}"
                for k, v in record.items()
                if k != "recipients" and v not in (None, "")
            ]
            + [
                f"  {r['address']}: {r['state']}, {r['attempts']} attempt(s),"
                f" next {r['next_attempt']}, last reply: {r['last_reply'] or '-'}"
                for r in record["recipients"]
            ]
        )
        ctx.emit(record, human)
        return 0
    if command == "retry":
        target = None if args.all else args.queue_id
        count = queue.retry(target, datetime.now(UTC))
        ctx.audit(
            AuditEvent.QUEUE_CHANGED,
            actor=ACTOR,
            action="retry",
            queue_id=target or "*",
            recipients=count,
        )
        ctx.emit({"retried": count}, f"{count} recipient(s) to be tried now")
        return 0
    if command in ("hold", "release"):
        queue.hold(args.queue_id, held=command == "hold")
    else:
        queue.delete(args.queue_id)
    ctx.audit(
        AuditEvent.QUEUE_CHANGED, actor=ACTOR, action=command, queue_id=args.queue_id
    )
    ctx.emit({command: args.queue_id}, f"{args.queue_id}: {command} done")
    return 0


def _state(recipient: QueuedRecipient) -> str:
    return "deferred" if recipient.attempts else recipient.state.value


def _record(
    message: QueuedMessage, recipients: list[QueuedRecipient]
) -> dict[str, Any]:
    return {
        "queue_id": message.id,
        "sender": message.sender,
        "queued_at": message.queued_at.isoformat(timespec="seconds"),
        "size": message.size,
        "held": message.held,
        "envid": message.envid,
        "recipients": [
            {
                "address": r.address,
                "state": _state(r),
                "attempts": r.attempts,
                "next_attempt": r.next_attempt.isoformat(timespec="seconds"),
                "last_reply": r.last_reply,
            }
            for r in recipients
        ],
    }
