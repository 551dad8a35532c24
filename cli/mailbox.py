"""``mssante inbox`` and ``mssante receipts``: read a mailbox over IMAP (implicit TLS).

``receipts`` matches the DSNs and MDNs in the inbox with the submissions the
client traces recorded (``mssante send --traces FILE``), and flags a read
receipt that is overdue.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cli import output
from mssante import MailboxSession, TLSConfig, TraceLog

if TYPE_CHECKING:
    import argparse

    from cli.main import Context


def _endpoint(args: argparse.Namespace) -> tuple[str, int, str, TLSConfig]:
    host, sep, port = args.server.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--server: {args.server!r} must be HOST:PORT")
    try:
        password = args.password_file.read_text(encoding="utf-8").rstrip("\n")
    except OSError as exc:
        raise ValueError(
            f"--password-file: {args.password_file}: {exc.strerror}"
        ) from None
    return host, int(port), password, TLSConfig(ca_file=args.ca_file)


def run_inbox(ctx: Context, args: argparse.Namespace) -> int:
    host, port, password, tls = _endpoint(args)

    async def go() -> list[dict[str, object]]:
        async with MailboxSession.open(
            host, port, login=args.login, password=password, tls=tls
        ) as mailbox:
            items = await mailbox.messages(args.folder)
        return [
            {
                "uid": i.uid,
                "seen": "\\Seen" in i.flags,
                "from": i.sender,
                "subject": i.subject,
                "date": i.date,
                "size": i.size,
                "report": i.is_report,
            }
            for i in items
        ]

    rows = asyncio.run(go())
    human = output.columns(
        [
            (
                str(r["uid"]),
                "" if r["seen"] else "new",
                str(r["from"]),
                str(r["subject"]),
            )
            for r in rows
        ],
        ("UID", "", "FROM", "SUBJECT"),
    )
    ctx.emit(rows, human if rows else "no messages")
    return 0


def run_receipts(ctx: Context, args: argparse.Namespace) -> int:
    host, port, password, tls = _endpoint(args)
    sent = TraceLog(args.traces).sent()

    async def go() -> list[dict[str, object]]:
        async with MailboxSession.open(
            host, port, login=args.login, password=password, tls=tls
        ) as mailbox:
            found = await mailbox.receipts(
                sent,
                now=datetime.now(UTC),
                mdn_overdue_after=timedelta(days=args.overdue_days),
            )
        return [
            {
                "message_id": r.message_id,
                "delivery": {k: list(v) for k, v in r.delivery.items()},
                "read": {k: v.field_value() for k, v in r.dispositions.items()},
                "mdn_overdue": r.mdn_overdue,
            }
            for r in found
        ]

    rows = asyncio.run(go())
    human = output.columns(
        [
            (
                str(r["message_id"]),
                " ".join(f"{k}:{v[0]}" for k, v in dict(r["delivery"]).items()),  # type: ignore[call-overload]
                "MDN OVERDUE" if r["mdn_overdue"] else " ".join(dict(r["read"])),  # type: ignore[call-overload]
            )
            for r in rows
        ],
        ("MESSAGE-ID", "DELIVERY", "READ"),
    )
    ctx.emit(rows, human if rows else "no sent messages in the traces")
    return 0


def add_parsers(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    for name, what in (
        ("inbox", "list a mailbox folder (nothing is marked read)"),
        ("receipts", "DSN and MDN receipts of the messages in the client traces"),
    ):
        p = top.add_parser(name, help=what)
        p.add_argument("--server", required=True, help="HOST:PORT of the IMAPS port")
        p.add_argument("--login", required=True)
        p.add_argument("--password-file", type=Path, required=True)
        p.add_argument(
            "--ca-file", type=Path, help="trust anchors (default: the system's)"
        )
        if name == "inbox":
            p.add_argument("--folder", default="INBOX")
        else:
            p.add_argument(
                "--traces", type=Path, required=True, help="the client trace file"
            )
            p.add_argument(
                "--overdue-days",
                type=float,
                default=7.0,
                help="flag an MDN missing after this",
            )
        p.set_defaults(handler=name)
