"""The ``mssante`` command.

Each subcommand parses its arguments, calls one library function, and prints
the result: a human table by default, JSON with ``--json``. Errors are
reported in one place (:func:`main`): the message names the field and value,
and the exit status says what happened:

====  =====================================================
0     done
1     refused: the entry exists, is absent, or cannot change
2     invalid input (argument, field value, file, config)
75    temporary failure: the directory is unreachable (EX_TEMPFAIL)
====  =====================================================

Nothing is half-written: each change is one directory call, itself atomic.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final

from cli import accounts, output, values
from cli import audit as audit_cli
from cli import enrolment as enrolment_cli
from cli import mailbox as mailbox_cli
from cli import patients as patients_cli
from cli import queue as queue_cli
from cli import send as send_cli
from directory import identifiers as ids
from directory.certs import check_for_mailbox
from directory.config import Backend, DirectoryConfig, open_directory
from directory.errors import (
    DirectoryError,
    DirectoryUnavailableError,
    EntryExistsError,
    EntryNotFoundError,
    ImmutableFieldError,
    InvalidFieldError,
)
from directory.export import export_json, export_ldif
from directory.importers import ImportFileError
from directory.model import (
    BalType,
    CertificateUsage,
    Delegation,
    DelegationScope,
    Entry,
    Kind,
    Mailbox,
    Operator,
    OperatorCertificate,
    Organisation,
    OwnerKind,
    Patient,
    Practitioner,
    Sex,
    Status,
    canonical_key,
    key_of,
    kind_of,
    to_record,
)
from mssante import (
    MessageError,
    MessageTooLargeError,
    SubmissionError,
    TLSVerificationError,
    TransportError,
)
from relay import eventloop
from relay.accounts import AccountError, AccountExistsError, AccountNotFoundError
from relay.app import RelayError, load_master_key
from relay.audit import AUDIT_FILE_NAME, AuditError, AuditEvent, AuditTrail
from relay.config import DEFAULT_CONFIG_PATH, Config, ConfigError, RelaySettings, load
from relay.notify import NoticeSetupError
from relay.queue.outbound import OutboundError, UnknownQueueIdError
from relay.store import StoreError
from relay.tls import TlsConfigError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from directory.protocol import Directory

EXIT_OK: Final = 0
EXIT_REFUSED: Final = 1
EXIT_INVALID: Final = 2
EXIT_TEMPFAIL: Final = 75  # sysexits.h EX_TEMPFAIL


class UsageError(Exception):
    """A command-line argument is wrong; the message names it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    config: Config
    directory_config: DirectoryConfig
    as_json: bool
    out: IO[str]

    def audit_key(self) -> bytes:
        """The audit trail's key, from the relay's master key."""
        return load_master_key(self.config).derive("audit")

    def audit(self, event: AuditEvent, **fields: object) -> None:
        """Record an admin action in the relay's audit trail."""
        trail = AuditTrail(
            self.config.relay.data_dir / AUDIT_FILE_NAME, self.audit_key()
        )
        try:
            trail.emit(event, **fields)
        finally:
            trail.close()

    def emit(self, value: Any, human: str) -> None:  # noqa: ANN401 - any JSON value
        if self.as_json:
            self.out.write(
                json.dumps(value, ensure_ascii=False, indent=2, default=str) + "\n"
            )
        else:
            self.out.write(human + ("\n" if not human.endswith("\n") else ""))


# --- helpers ------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(UTC)


def _read_file(field: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise InvalidFieldError(
            field, str(path), exc.strerror or "cannot be read"
        ) from None


def guess_kind(key: str) -> Kind:
    """The kind of entry a bare key names (for ``show``, ``suspend``...)."""
    k = key.strip()
    if "|" in k:
        return Kind.DELEGATION
    if "@" in k:
        return Kind.MAILBOX
    upper = k.upper()
    if len(k) == ids.RPPS_LENGTH and k.isdigit():
        return Kind.PRACTITIONER
    if len(k) == ids.RPPS_LENGTH + 1 and k[0] in "80" and k.isdigit():
        return Kind.PRACTITIONER
    if len(k) == ids.ADELI_LENGTH + 1 and k[0] == "0" and k.isdigit():
        return Kind.PRACTITIONER
    if (
        len(k) == ids.INS_LENGTH
        and upper[:7].replace("A", "").replace("B", "").isalnum()
    ):
        return Kind.PATIENT
    if (len(k) == ids.FINESS_LENGTH + 1 and k[0] == "1") or (
        len(k) == ids.SIRET_LENGTH + 1 and k[0] == "3"
    ):
        return Kind.ORGANISATION
    if "." in k:
        return Kind.OPERATOR
    raise UsageError(
        f"key: {key!r}: cannot tell which kind of entry it is; pass --kind"
    )


async def _entry_or_fail(d: Directory, kind: Kind, key: str) -> Entry:
    if kind is Kind.MAILBOX:
        found: Entry | None = await d.resolve(key)
    else:
        found = await d.get(kind, key)
    if found is None:
        raise EntryNotFoundError(kind.value, canonical_key(kind, key))
    return found


# --- directory subcommands ---------------------------------------------------


async def cmd_add_practitioner(
    ctx: Context, d: Directory, a: argparse.Namespace
) -> int:
    entry = Practitioner(
        national_id=a.rpps or a.national_id,
        last_name=a.last_name,
        first_name=a.first_name,
        civility=a.civility,
        profession_code=a.profession_code,
        profession=a.profession,
        specialty_code=a.specialty_code,
        specialty=a.specialty,
    )
    await d.add(entry)
    return _added(ctx, entry)


async def cmd_add_organisation(
    ctx: Context, d: Directory, a: argparse.Namespace
) -> int:
    structure = "1" + ids.finess(a.finess) if a.finess else "3" + ids.siret(a.siret)
    entry = Organisation(structure_id=structure, name=a.name, trade_name=a.trade_name)
    await d.add(entry)
    return _added(ctx, entry)


async def cmd_add_mailbox(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    bal_type = BalType(a.type)
    owner = a.owner.strip().upper()
    owner_kind = (
        OwnerKind.PRACTITIONER
        if guess_kind(owner) is Kind.PRACTITIONER
        else OwnerKind.ORGANISATION
    )
    if owner_kind is OwnerKind.PRACTITIONER:
        owner = ids.national_practitioner_id(owner, "owner")
        known: Entry | None = await d.practitioner(owner)
    else:
        owner = ids.national_structure_id(owner, "owner")
        known = await d.organisation(owner)
    if known is None and not a.allow_unknown_owner:
        raise InvalidFieldError(
            "owner", a.owner, f"no such {owner_kind.value} in the directory"
        )
    pgp_key = (
        _read_file("pgp_key", a.pgp_key).decode("ascii", "replace") if a.pgp_key else ""
    )
    entry = Mailbox(
        address=a.address,
        bal_type=bal_type,
        owner_kind=owner_kind,
        owner_id=owner,
        display_name=a.display_name,
        structure_id=a.structure or "",
        service=a.service,
        published=not a.unlisted,
        pgp_key=pgp_key,
        prefers_pgp=a.prefers_pgp,
    )
    await d.add(entry)
    return _added(ctx, entry)


async def cmd_add_patient(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    ins_value = ids.ins(a.ins)
    ids.ins_oid(a.oid, production=ctx.directory_config.production)
    address = None
    if a.qualified:
        address = (
            f"{ins_value}@patient.{ids.domain(ctx.config.relay.domain, 'relay.domain')}"
        )
    try:
        sex = Sex(a.sex.upper())
    except ValueError:
        raise InvalidFieldError("sex", a.sex, "must be M, F or I") from None
    entry = Patient(
        ins=ins_value,
        ins_oid=a.oid,
        birth_name=a.birth_name,
        first_names=a.first_names,
        sex=sex,
        birth_date=values.a_date("birth_date", a.birth_date),
        birth_place=a.birth_place,
        qualified=a.qualified,
        address=address,
        contact_email=a.contact_email,
        contact_phone=a.contact_phone,
    )
    await d.add(entry)
    return _added(ctx, entry)


async def cmd_add_operator(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    certs = tuple(
        OperatorCertificate(subject_dn=dn, issuer_dn=a.issuer_dn or "") for dn in a.dn
    )
    entry = Operator(
        domain=a.domain,
        certificates=certs,
        description=a.description,
        contacts=tuple(a.contact),
    )
    await d.add(entry)
    return _added(ctx, entry)


async def cmd_add_delegation(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    if await d.mailbox(a.mailbox) is None:
        raise InvalidFieldError(
            "mailbox", a.mailbox, "no such mailbox in the directory"
        )
    entry = Delegation(
        account=a.account,
        mailbox=a.mailbox,
        scope=DelegationScope(a.scope),
        granted_by=a.granted_by,
        expires=values.expiry("expires", a.expires),
    )
    await d.add(entry)
    return _added(ctx, entry)


async def cmd_attach_certificate(
    ctx: Context, d: Directory, a: argparse.Namespace
) -> int:
    mailbox = await d.mailbox(a.address)
    if mailbox is None:
        raise EntryNotFoundError(Kind.MAILBOX.value, ids.address(a.address))
    cert = check_for_mailbox(
        _read_file("certificate", a.file),
        mailbox.address,
        CertificateUsage(a.usage),
        _now(),
    )
    kept = tuple(c for c in mailbox.certificates if c.fingerprint != cert.fingerprint)
    updated = dataclasses.replace(mailbox, certificates=(*kept, cert))
    await d.replace(updated)
    ctx.audit(
        AuditEvent.DIRECTORY_CHANGED,
        actor="cli",
        mailbox=mailbox.address,
        action="certificate attached",
        fingerprint=cert.fingerprint,
    )
    ctx.emit(
        {
            "mailbox": mailbox.address,
            "fingerprint": cert.fingerprint,
            "usage": cert.usage.value,
        },
        f"attached {cert.usage.value} certificate {cert.fingerprint} to {mailbox.address}",
    )
    return EXIT_OK


async def cmd_show(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    kind = Kind(a.kind) if a.kind else guess_kind(a.key)
    entry = await _entry_or_fail(d, kind, a.key)
    ctx.emit(to_record(entry), output.describe(entry))
    return EXIT_OK


async def cmd_search(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    found = await d.search(a.text, kind=Kind(a.kind) if a.kind else None, limit=a.limit)
    ctx.emit([to_record(e) for e in found], output.table(found))
    return EXIT_OK


async def _set_status(
    ctx: Context, d: Directory, a: argparse.Namespace, status: Status
) -> int:
    kind = Kind(a.kind) if a.kind else guess_kind(a.key)
    entry = await _entry_or_fail(d, kind, a.key)
    if entry.status is Status.REVOKED and status is not Status.REVOKED:
        raise ImmutableFieldError(
            kind.value, key_of(entry), "status (revoked is final)"
        )
    updated = await d.set_status(kind_of(entry), key_of(entry), status)
    ctx.audit(
        AuditEvent.DIRECTORY_CHANGED,
        actor="cli",
        kind=kind_of(entry).value,
        target=key_of(entry),
        action=f"status {updated.status.value}",
    )
    ctx.emit(
        to_record(updated),
        f"{kind_of(entry).value} {key_of(entry)}: {updated.status.value}",
    )
    return EXIT_OK


async def cmd_suspend(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    return await _set_status(ctx, d, a, Status.SUSPENDED)


async def cmd_reactivate(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    return await _set_status(ctx, d, a, Status.ACTIVE)


async def cmd_revoke(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    return await _set_status(ctx, d, a, Status.REVOKED)


async def cmd_export(ctx: Context, d: Directory, a: argparse.Namespace) -> int:
    kinds = [Kind(a.kind)] if a.kind else list(Kind)
    out: IO[str] = (
        Path(a.output).open("w", encoding="utf-8")  # noqa: ASYNC230, SIM115 - closed below
        if a.output
        else ctx.out
    )
    try:
        if a.format == "json":
            n = await export_json(d, out, kinds)
        else:
            n = await export_ldif(d, out, kinds, base_dn=a.base_dn)
    finally:
        if a.output:
            out.close()
    if a.output:
        sys.stderr.write(f"exported {n} entries to {a.output}\n")
    return EXIT_OK


def _added(ctx: Context, entry: Entry) -> int:
    ctx.audit(
        AuditEvent.DIRECTORY_CHANGED,
        actor="cli",
        kind=kind_of(entry).value,
        target=key_of(entry),
        action="added",
    )
    ctx.emit(to_record(entry), f"added {kind_of(entry).value} {key_of(entry)}")
    return EXIT_OK


# --- parser ---------------------------------------------------------------------


def _kind_choices() -> list[str]:
    return [k.value for k in Kind]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mssante", description="MSSanté-style secure health messaging."
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=f"relay config (default {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--backend",
        choices=[b.value for b in Backend],
        help="override [directory] backend",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    top = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    demo = top.add_parser(
        "demo", help="load the demo directory and show how to browse it"
    )
    demo.set_defaults(handler="demo")

    demo.add_argument(
        "--no-serve", action="store_true", help="load the demo data and exit"
    )
    serve = top.add_parser("serve", help="run the relay")
    serve.set_defaults(handler="serve")
    accounts.add_parser(top)
    audit_cli.add_parser(top)
    queue_cli.add_parser(top)
    send_cli.add_parser(top)
    mailbox_cli.add_parsers(top)
    enrolment_cli.add_enrolment_commands(patients_cli.add_parser(top))

    dirp = top.add_parser("directory", help="manage the trust directory")
    sub = dirp.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    def add(name: str, fn: object, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(handler=fn)
        return p

    for fmt in ("mssante", "rpps"):
        p = add(
            f"import-{fmt}",
            f"import:{fmt}",
            f"import the public {fmt.upper()} extraction (.txt or .zip)",
        )
        p.add_argument("file", type=Path)
        p.add_argument("--batch-size", type=int, default=5000)
        p.add_argument("--no-progress", action="store_true")
    p = add(
        "import-whitelist",
        "import:whitelist",
        "import the operator whitelist (listeblanchemssante.xml)",
    )
    p.add_argument("file", type=Path)
    p.add_argument("--sha256", help="expected SHA-256 of the file (hex)")

    p = add("add-practitioner", cmd_add_practitioner, "add a health professional")
    ident = p.add_mutually_exclusive_group(required=True)
    ident.add_argument("--rpps")
    ident.add_argument("--national-id", help="8 + RPPS, or 0 + ADELI")
    p.add_argument("--last-name", required=True)
    p.add_argument("--first-name", default="")
    p.add_argument("--civility", default="")
    p.add_argument("--profession-code", default="")
    p.add_argument("--profession", default="")
    p.add_argument("--specialty-code", default="")
    p.add_argument("--specialty", default="")

    p = add(
        "add-organisation",
        cmd_add_organisation,
        "add an organisation (FINESS or SIRET)",
    )
    ident = p.add_mutually_exclusive_group(required=True)
    ident.add_argument("--finess")
    ident.add_argument("--siret")
    p.add_argument("--name", required=True)
    p.add_argument("--trade-name", default="")

    p = add("add-mailbox", cmd_add_mailbox, "add a mailbox (BAL)")
    p.add_argument("address")
    p.add_argument("--type", required=True, choices=[t.value for t in BalType])
    p.add_argument(
        "--owner", required=True, help="RPPS / national id, or 1+FINESS / 3+SIRET"
    )
    p.add_argument("--display-name", default="")
    p.add_argument(
        "--structure", help="structure id (1+FINESS / 3+SIRET) the mailbox belongs to"
    )
    p.add_argument("--service", default="")
    p.add_argument(
        "--unlisted",
        action="store_true",
        help="liste rouge: readable by the relay only",
    )
    p.add_argument(
        "--pgp-key", type=Path, help="ASCII-armoured OpenPGP public key file"
    )
    p.add_argument("--prefers-pgp", action="store_true")
    p.add_argument(
        "--allow-unknown-owner",
        action="store_true",
        help="owner need not be in the directory",
    )

    p = add("add-patient", cmd_add_patient, "add a patient (INS)")
    p.add_argument("--ins", required=True, help="15-character INS matricule")
    p.add_argument(
        "--oid", required=True, help="INS OID (1.2.250.1.213.1.4.8 INS-NIR, .9 INS-NIA)"
    )
    p.add_argument("--birth-name", required=True)
    p.add_argument("--first-names", required=True)
    p.add_argument("--sex", required=True, help="M, F or I")
    p.add_argument("--birth-date", required=True, help="YYYY-MM-DD")
    p.add_argument(
        "--birth-place", required=True, help="INSEE code of the birth commune"
    )
    p.add_argument(
        "--qualified",
        action="store_true",
        help="the INS was qualified (gives a mailbox)",
    )
    p.add_argument("--contact-email", default="", help="ordinary e-mail contact")
    p.add_argument("--contact-phone", default="", help="mobile number, E.164")

    p = add(
        "add-operator",
        cmd_add_operator,
        "add an operator domain and its TLS certificate DNs",
    )
    p.add_argument("domain")
    p.add_argument(
        "--dn",
        action="append",
        required=True,
        help="certificate subject DN (repeatable)",
    )
    p.add_argument("--issuer-dn")
    p.add_argument("--description", default="")
    p.add_argument("--contact", action="append", default=[])

    p = add("add-delegation", cmd_add_delegation, "let a staff account use a mailbox")
    p.add_argument("--account", required=True)
    p.add_argument("--mailbox", required=True)
    p.add_argument("--scope", required=True, choices=[s.value for s in DelegationScope])
    p.add_argument("--expires", help="date or date-time (ISO 8601)")
    p.add_argument("--granted-by", default="")

    p = add(
        "attach-certificate",
        cmd_attach_certificate,
        "attach a certificate (PEM/DER) to a mailbox",
    )
    p.add_argument("address")
    p.add_argument("file", type=Path)
    p.add_argument(
        "--usage", default="signature", choices=[u.value for u in CertificateUsage]
    )

    p = add("show", cmd_show, "show one entry")
    p.add_argument(
        "key",
        help="address, RPPS, national id, INS, structure id, domain or account|mailbox",
    )
    p.add_argument("--kind", choices=_kind_choices())

    p = add("search", cmd_search, "search names, addresses and identifiers")
    p.add_argument("text")
    p.add_argument("--kind", choices=_kind_choices())
    p.add_argument("--limit", type=int, default=50)

    for name, fn, what in (
        ("suspend", cmd_suspend, "suspend an entry"),
        ("reactivate", cmd_reactivate, "reactivate a suspended entry"),
        ("revoke", cmd_revoke, "revoke an entry (final)"),
    ):
        p = add(name, fn, what)
        p.add_argument("key")
        p.add_argument("--kind", choices=_kind_choices())

    p = add("export", cmd_export, "export the directory as LDIF or JSON")
    p.add_argument("--format", choices=["ldif", "json"], default="json")
    p.add_argument("--kind", choices=_kind_choices())
    p.add_argument("--output", "-o", help="file (default: standard output)")
    p.add_argument("--base-dn", default="dc=mssante,dc=example", help="LDIF base DN")
    return parser


# --- running ----------------------------------------------------------------------


def _load_config(path: Path | None) -> Config:
    if path is not None:
        return load(path)
    if DEFAULT_CONFIG_PATH.exists():
        return load(DEFAULT_CONFIG_PATH)
    raise ConfigError(f"{DEFAULT_CONFIG_PATH}: no such config file; pass --config")


async def _run(args: argparse.Namespace, ctx: Context) -> int:
    handler = args.handler
    if handler == "demo":
        from cli.demo import run_demo

        return await run_demo(
            ctx.directory_config, ctx.config, ctx.out, serve=not args.no_serve
        )
    if handler == "serve":
        from cli.serve import serve

        config = dataclasses.replace(ctx.config, directory=ctx.directory_config)
        return await serve(config, ctx.out)
    if handler == "account":
        return accounts.run_account(ctx, args)
    if handler == "audit":
        return await audit_cli.run_audit(ctx, args)
    if handler == "queue":
        return queue_cli.run_queue(ctx, args)
    if handler == "send":
        return await asyncio.to_thread(send_cli.run_send, ctx, args)
    if handler == "inbox":
        return await asyncio.to_thread(mailbox_cli.run_inbox, ctx, args)
    if handler == "receipts":
        return await asyncio.to_thread(mailbox_cli.run_receipts, ctx, args)
    d = await open_directory(ctx.directory_config)
    try:
        if isinstance(handler, str) and handler.startswith("import:"):
            from cli.imports import run_import

            return await run_import(ctx, d, handler.removeprefix("import:"), args)
        result: int = await handler(ctx, d, args)
        return result
    finally:
        await d.close()


def main(argv: Sequence[str] | None = None, out: IO[str] | None = None) -> int:
    """Run the command; returns the exit status (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    stream = out if out is not None else sys.stdout
    try:
        if args.handler in {"send", "inbox", "receipts"} and args.config is None:
            # A client command: it needs no relay configuration.
            config = Config(
                relay=RelaySettings(data_dir=Path("data"), domain="localhost")
            )
        else:
            config = _load_config(args.config)
        dir_config = config.directory
        if args.backend:
            dir_config = dataclasses.replace(dir_config, backend=Backend(args.backend))
        ctx = Context(
            config=config, directory_config=dir_config, as_json=args.json, out=stream
        )
        return eventloop.run(_run(args, ctx))
    except (
        InvalidFieldError,
        ImportFileError,
        UsageError,
        ConfigError,
        TlsConfigError,
        NoticeSetupError,
        ValueError,
    ) as exc:
        return _fail(exc, EXIT_INVALID)
    except (
        EntryExistsError,
        EntryNotFoundError,
        ImmutableFieldError,
        AccountExistsError,
        AccountNotFoundError,
    ) as exc:
        return _fail(exc, EXIT_REFUSED)
    except AccountError as exc:
        return _fail(exc, EXIT_INVALID)
    except UnknownQueueIdError as exc:
        return _fail(exc, EXIT_REFUSED)
    except (RelayError, StoreError, AuditError, OutboundError) as exc:
        return _fail(exc, EXIT_REFUSED)
    except (MessageError, MessageTooLargeError) as exc:
        return _fail(exc, EXIT_INVALID)
    except (SubmissionError, TLSVerificationError) as exc:
        return _fail(exc, EXIT_REFUSED)
    except TransportError as exc:
        return _fail(exc, EXIT_TEMPFAIL)
    except DirectoryUnavailableError as exc:
        return _fail(exc, EXIT_TEMPFAIL)
    except DirectoryError as exc:
        return _fail(exc, EXIT_REFUSED)


def _fail(exc: Exception, status: int) -> int:
    sys.stderr.write(f"mssante: error: {exc}\n")
    return status


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())
