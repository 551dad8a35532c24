"""``mssante send``: send a CDA report (and its PDF rendition) through a relay.

The patient and the author come from the CDA header; ``--patient-ins`` must
match it (a guard against the wrong patient's document). The password is
read from a file, never from the command line. Errors name the field and
exit non-zero: 2 for bad input (nothing was sent), 1 when the relay refused,
75 when it could not be reached (try again later).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from mssante import Client, TLSConfig, TraceLog, report_from_cda

if TYPE_CHECKING:
    import argparse

    from cli.main import Context


def _read(field: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{field}: {path}: {exc.strerror}") from None


def _server(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--server: {value!r} must be HOST:PORT")
    return host, int(port)


def run_send(ctx: Context, args: argparse.Namespace) -> int:
    report = report_from_cda(
        _read("--cda", args.cda),
        sender=args.sender,
        to=args.to,
        pdf=_read("--pdf", args.pdf) if args.pdf else None,
        patient_ins=args.patient_ins,
        qualified=args.qualified,
        body=args.body,
        read_receipt=args.read_receipt,
        end_of_thread=args.end_thread,
        copy_treating_doctor=args.copy_treating_doctor,
    )
    host, port = _server(args.server)
    password = _read("--password-file", args.password_file).decode("utf-8").rstrip("\n")
    tls = TLSConfig(ca_file=args.ca_file, mssante_strict=args.strict)
    traces = TraceLog(args.traces) if args.traces else None

    async def go() -> dict[str, object]:
        async with Client.connect(
            host,
            port,
            login=args.login or args.sender,
            password=password,
            tls=tls,
            implicit_tls=args.implicit_tls,
            traces=traces,
        ) as client:
            sent = await client.send(report)
        return {
            "message_id": sent.message_id,
            "accepted": list(sent.accepted),
            "refused": {k: str(v) for k, v in sent.refused.items()},
            "reply": str(sent.reply),
        }

    result = asyncio.run(go())
    refused = result["refused"]
    human = f"sent {result['message_id']}: {result['reply']}"
    if isinstance(refused, dict) and refused:
        human += "".join(f"\n  refused {k}: {v}" for k, v in refused.items())
    ctx.emit(result, human)
    return 0


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = top.add_parser("send", help="send a CDA report through a relay")
    p.add_argument("--server", required=True, help="HOST:PORT of the submission port")
    p.add_argument("--from", dest="sender", required=True, help="the sender's mailbox")
    p.add_argument(
        "--to", action="append", required=True, help="a recipient (repeatable)"
    )
    p.add_argument(
        "--patient-ins", required=True, help="the INS of the document's patient"
    )
    p.add_argument("--cda", type=Path, required=True, help="the CDA R2 document")
    p.add_argument("--pdf", type=Path, help="its PDF rendition")
    p.add_argument("--qualified", action="store_true", help="the INS is qualified")
    p.add_argument("--body", default="", help="the text of the message")
    p.add_argument("--read-receipt", action="store_true", help="ask for an MDN")
    p.add_argument("--end-thread", action="store_true", help="X-MSS-MES: FIN")
    p.add_argument(
        "--copy-treating-doctor",
        action="store_true",
        help="ask the relay to copy the patient's declared treating doctor",
    )
    p.add_argument("--login", help="login (default: the sender address)")
    p.add_argument("--password-file", type=Path, required=True)
    p.add_argument("--ca-file", type=Path, help="trust anchors (default: the system's)")
    p.add_argument(
        "--implicit-tls", action="store_true", help="TLS from the start (465)"
    )
    p.add_argument(
        "--strict", action="store_true", help="MSSanté profile: TLS 1.2, 4 suites"
    )
    p.add_argument("--traces", type=Path, help="append client traces to this file")
    p.set_defaults(handler="send")
