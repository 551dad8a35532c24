"""``mssante account``: create, change and list the relay's login accounts.

Passwords never come from the command line (they would sit in the shell
history and in ``ps``): from a file (``--password-file``), from standard
input (``--password-stdin``), or typed at a prompt. Every change is written
to the audit trail, without the password.
"""

from __future__ import annotations

import getpass
import sys
from typing import TYPE_CHECKING, Final

from cli import output
from relay.accounts import Account, AccountKind, AccountStore
from relay.audit import AuditEvent

if TYPE_CHECKING:
    import argparse

    from cli.main import Context

ACTOR: Final = "cli"


def _password(args: argparse.Namespace, *, confirm: bool) -> str:
    if args.password_file is not None:
        try:
            text: str = args.password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(
                f"--password-file: {args.password_file}: {exc.strerror}"
            ) from None
        return text.rstrip("\n")
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("password: ")
    if confirm and getpass.getpass("again: ") != first:
        raise ValueError("password: the two entries differ")
    return first


def _row(account: Account) -> dict[str, object]:
    return {
        "login": account.login,
        "kind": account.kind.value,
        "mailboxes": list(account.mailboxes),
        "locked": account.locked,
    }


def run_account(ctx: Context, args: argparse.Namespace) -> int:
    """Run one ``account`` subcommand; returns the exit status."""
    store = AccountStore.for_config(ctx.config)
    try:
        return _dispatch(ctx, store, args)
    finally:
        store.close()


def _dispatch(ctx: Context, store: AccountStore, args: argparse.Namespace) -> int:
    command = args.command
    if command == "list":
        accounts = store.all()
        human = output.columns(
            [
                (
                    a.login,
                    a.kind.value,
                    "locked" if a.locked else "",
                    " ".join(a.mailboxes),
                )
                for a in accounts
            ],
            ("LOGIN", "KIND", "STATE", "MAILBOXES"),
        )
        ctx.emit([_row(a) for a in accounts], human if accounts else "no accounts")
        return 0
    login: str = args.login
    if command == "create":
        account = store.create(
            login,
            AccountKind(args.kind),
            _password(args, confirm=True),
            args.mailbox or [],
        )
        ctx.audit(
            AuditEvent.ACCOUNT_CHANGED, actor=ACTOR, target=login, action="created"
        )
        ctx.emit(_row(account), f"created account {login}")
    elif command == "passwd":
        store.set_password(login, _password(args, confirm=True))
        ctx.audit(
            AuditEvent.ACCOUNT_CHANGED,
            actor=ACTOR,
            target=login,
            action="password changed",
        )
        ctx.emit({"login": login}, f"password of {login} changed")
    elif command in {"lock", "unlock"}:
        store.set_locked(login, command == "lock")
        ctx.audit(
            AuditEvent.ACCOUNT_CHANGED, actor=ACTOR, target=login, action=command + "ed"
        )
        ctx.emit({"login": login, "locked": command == "lock"}, f"{command}ed {login}")
    elif command == "delete":
        store.delete(login)
        ctx.audit(
            AuditEvent.ACCOUNT_CHANGED, actor=ACTOR, target=login, action="deleted"
        )
        ctx.emit({"login": login}, f"deleted account {login}")
    return 0


def add_parser(top: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    accp = top.add_parser("account", help="manage login accounts")
    sub = accp.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    def secret_options(p: argparse.ArgumentParser) -> None:
        from pathlib import Path

        group = p.add_mutually_exclusive_group()
        group.add_argument("--password-file", type=Path, help="read it from this file")
        group.add_argument(
            "--password-stdin", action="store_true", help="read it from standard input"
        )

    p = sub.add_parser("create", help="create an account")
    p.add_argument("login")
    p.add_argument("--kind", required=True, choices=[k.value for k in AccountKind])
    p.add_argument(
        "--mailbox", action="append", help="a mailbox the account owns (repeatable)"
    )
    secret_options(p)
    p = sub.add_parser("passwd", help="change an account's password")
    p.add_argument("login")
    secret_options(p)
    for name, what in (
        ("lock", "refuse logins"),
        ("unlock", "allow logins again"),
        ("delete", "delete"),
    ):
        p = sub.add_parser(name, help=f"{what} for an account")
        p.add_argument("login")
    sub.add_parser("list", help="list accounts")
    accp.set_defaults(handler="account")
