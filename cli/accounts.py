"""``mssante account``: create, change and list the relay's login accounts.

Passwords never come from the command line (they would sit in the shell
history and in ``ps``): from a file (``--password-file``), from standard
input (``--password-stdin``), or typed at a prompt. Every change is written
to the audit trail, without the password.

``app-password add`` prints the generated password once (it is stored only
as an argon2id hash); ``tokens test`` checks a bearer token as the relay
would and says why it is refused; ``show`` lists the mechanisms the
account's kind may use under the configuration.
"""

from __future__ import annotations

import getpass
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

from cli import output
from relay.accounts import (
    NO_PASSWORD,
    SASL_MECHANISMS,
    Account,
    AccountKind,
    AccountStore,
    Mechanism,
)
from relay.audit import AuditEvent
from relay.oauth import (
    KeysUnavailableError,
    TokenProblem,
    TokenRefusedError,
    verifier_for,
)

if TYPE_CHECKING:
    import argparse

    from cli.main import Context

ACTOR: Final = "cli"
# Exit statuses of cli.main (not imported: cli.main imports this module).
_EXIT_REFUSED: Final = 1
_EXIT_TEMPFAIL: Final = 75


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


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M")


def _show(ctx: Context, store: AccountStore, login: str) -> int:
    account = store.require(login)
    allowed = ctx.config.auth.mechanisms.for_kind(account.kind)
    oauth_ready = ctx.config.auth.oauth is not None
    mechanisms = sorted(m.value for m in allowed)
    sasl = sorted(
        {
            name
            for m in allowed
            for name in SASL_MECHANISMS[m]
            if m is not Mechanism.OAUTH or oauth_ready
        }
    )
    devices = store.app_passwords(login)
    row = _row(account) | {
        "external_id": account.external_id,
        "has_password": account.password_hash != NO_PASSWORD,
        "mechanisms": mechanisms,
        "sasl": sasl,
        "production": ctx.config.auth.production,
        "app_passwords": [d.name for d in devices],
    }
    lines = [
        f"login:         {account.login}",
        f"kind:          {account.kind.value}",
        f"state:         {'locked' if account.locked else 'active'}",
        f"mailboxes:     {' '.join(account.mailboxes) or '-'}",
        f"external id:   {account.external_id or '-'}",
        f"mechanisms:    {' '.join(mechanisms) or 'none'}"
        f" ({'production' if ctx.config.auth.production else 'demo'} mode)",
        f"SASL:          {' '.join(sasl) or 'none'}",
        f"app passwords: {' '.join(d.name for d in devices) or '-'}",
    ]
    if "oauth" in mechanisms and not oauth_ready:
        lines.append("note:          no [auth.oauth] issuer: tokens are not accepted")
    ctx.emit(row, "\n".join(lines))
    return 0


def _tokens_test(ctx: Context, store: AccountStore, token: str) -> int:
    settings = ctx.config.auth.oauth
    if settings is None:
        raise ValueError("auth.oauth: no token issuer configured")
    verifier = verifier_for(settings)
    try:
        verified = verifier.verify(token.strip(), now=time.time())
    except TokenRefusedError as exc:
        ctx.emit(
            {"accepted": False, "problem": exc.problem.name, "reason": str(exc)},
            f"refused: {exc}",
        )
        return _EXIT_REFUSED
    except KeysUnavailableError as exc:
        ctx.emit({"accepted": False, "problem": "KEYS_UNAVAILABLE"}, f"unknown: {exc}")
        return _EXIT_TEMPFAIL
    account = store.by_external_id(verified.identity)
    if account is None or account.locked:
        problem = TokenProblem.UNKNOWN_ACCOUNT
        ctx.emit(
            {
                "accepted": False,
                "problem": problem.name,
                "identity": verified.identity,
            },
            f"refused: {problem.value}: {settings.claim} = {verified.identity}"
            + (" (account locked)" if account is not None else ""),
        )
        return _EXIT_REFUSED
    allowed = ctx.config.auth.mechanisms.for_kind(account.kind)
    if Mechanism.OAUTH not in allowed:
        ctx.emit(
            {"accepted": False, "problem": "MECHANISM", "login": account.login},
            f"refused: tokens are not allowed for {account.kind.value} accounts",
        )
        return _EXIT_REFUSED
    ctx.emit(
        {"accepted": True, "login": account.login, "identity": verified.identity},
        f"accepted: {settings.claim} = {verified.identity} -> {account.login}",
    )
    return 0


def _app_password(ctx: Context, store: AccountStore, args: argparse.Namespace) -> int:
    login: str = args.login
    action = args.app_command
    if action == "list":
        devices = store.app_passwords(login)
        human = output.columns(
            [(d.name, _when(d.created), _when(d.last_used)) for d in devices],
            ("DEVICE", "CREATED", "LAST USED"),
        )
        ctx.emit(
            [
                {"name": d.name, "created": d.created, "last_used": d.last_used}
                for d in devices
            ],
            human if devices else f"no app passwords for {login}",
        )
        return 0
    name: str = args.name
    if action == "add":
        secret = store.add_app_password(login, name)
        ctx.audit(
            AuditEvent.ACCOUNT_CHANGED,
            actor=ACTOR,
            target=login,
            action="app password added",
            device=name,
        )
        # Shown once: only its hash is kept.
        ctx.emit(
            {"login": login, "name": name, "app_password": secret},
            f"app password for {login} on {name} (shown once):\n{secret}",
        )
        return 0
    store.revoke_app_password(login, name)
    ctx.audit(
        AuditEvent.ACCOUNT_CHANGED,
        actor=ACTOR,
        target=login,
        action="app password revoked",
        device=name,
    )
    ctx.emit({"login": login, "name": name}, f"revoked app password {name} of {login}")
    return 0


def _dispatch(ctx: Context, store: AccountStore, args: argparse.Namespace) -> int:
    command = args.command
    if command == "tokens":
        return _tokens_test(ctx, store, args.token)
    if command == "app-password":
        return _app_password(ctx, store, args)
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
    if command == "show":
        return _show(ctx, store, login)
    if command == "external-id":
        value = None if args.clear else args.value
        if value is None and not args.clear:
            raise ValueError("external-id: give a VALUE or --clear")
        store.set_external_id(login, value)
        ctx.audit(
            AuditEvent.ACCOUNT_CHANGED,
            actor=ACTOR,
            target=login,
            action="external id " + ("cleared" if value is None else "set"),
        )
        ctx.emit(
            {"login": login, "external_id": value},
            f"external id of {login}: {value or '-'}",
        )
        return 0
    if command == "create":
        account = store.create(
            login,
            AccountKind(args.kind),
            None if args.no_password else _password(args, confirm=True),
            args.mailbox or [],
            external_id=args.external_id,
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
    p.add_argument(
        "--external-id",
        help="the identity a bearer token names ([auth.oauth] claim), e.g. 8<RPPS>",
    )
    p.add_argument(
        "--no-password",
        action="store_true",
        help="no main password (tokens, certificate or app passwords only)",
    )
    secret_options(p)
    p = sub.add_parser("external-id", help="set the identity a bearer token names")
    p.add_argument("login")
    p.add_argument("value", nargs="?")
    p.add_argument("--clear", action="store_true", help="remove it")
    p = sub.add_parser("show", help="an account and the mechanisms it may use")
    p.add_argument("login")
    p = sub.add_parser("app-password", help="per-device app passwords")
    apps = p.add_subparsers(dest="app_command", required=True, metavar="ACTION")
    q = apps.add_parser("add", help="generate one (printed once)")
    q.add_argument("login")
    q.add_argument("--name", required=True, help="the device it is for")
    q = apps.add_parser("list", help="list a login's app passwords")
    q.add_argument("login")
    q = apps.add_parser("revoke", help="revoke one")
    q.add_argument("login")
    q.add_argument("--name", required=True, help="the device to revoke")
    p = sub.add_parser("tokens", help="bearer tokens")
    toks = p.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    q = toks.add_parser("test", help="check a token as the relay would, say why not")
    q.add_argument("token")
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
