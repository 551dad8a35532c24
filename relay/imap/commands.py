"""One function per IMAP command, a dispatch table, and the one wrapper that
turns errors into replies.

Each ``cmd_*`` reads its arguments with the core's grammar, calls the store
(through ``to_thread``: it blocks), writes untagged data, and returns the
text (and response code) of its tagged ``OK``. It raises:

- :class:`mssante.proto.imap.CommandSyntaxError` -> ``BAD``;
- :class:`CommandRefusedError` -> ``NO [CODE]``;
- :class:`ServerFaultError` -> ``NO [UNAVAILABLE]``;

and :func:`run_command` alone catches them (mox's ``conn.command()``). Which
commands a state accepts is the core's table
(:data:`mssante.proto.imap.COMMANDS_BY_STATE`); :data:`COMMANDS` maps every
name to its function.

What must stay true:

- Opening a message (a non-PEEK body fetch, or ``\\Seen`` set by STORE) is
  one ``message.read`` audit event per message, naming the account that
  read it and through which grant.
- Before TLS, LOGIN and AUTHENTICATE are refused (``LOGINDISABLED``,
  RFC 3501 §6.2.3). After it, LOGIN and AUTHENTICATE PLAIN (password or app
  password), OAUTHBEARER/XOAUTH2 (bearer token) and EXTERNAL (client
  certificate) are decided by :class:`relay.accounts.Authenticator`, the
  same as SMTP AUTH (throttle, mechanisms per account kind, ``auth.*``
  audit); ``imap.login.*`` records the IMAP session on top.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import logging
import re
import sqlite3
import traceback
from collections import ChainMap
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from directory.errors import DirectoryError
from directory.model import Patient, ProxyScope, Status
from mssante.proto import imap
from relay.accounts import Attempt, Mechanism, Refusal
from relay.audit import AuditEvent
from relay.imap import _fetch, _search
from relay.imap._errors import CommandRefusedError, ServerFaultError
from relay.imap._search import SearchDoc
from relay.imap._session import (
    DELIMITER,
    SHARED_PREFIX,
    Access,
    Grant,
    ReadCache,
    Selected,
    Target,
    Via,
    header_cost,
    structure_cost,
)
from relay.oauth import (
    SaslSyntaxError,
    error_challenge,
    parse_oauthbearer,
    parse_xoauth2,
)
from relay.store import (
    ChangeKind,
    CorruptMessageError,
    FlagMode,
    FolderExistsError,
    FolderNotAllowedError,
    FolderNotFoundError,
    InvalidFlagError,
    MailboxNotFoundError,
    MessageInfo,
    ParsedStructure,
    StoreError,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping
    from datetime import datetime

    from relay.accounts import Account, Outcome
    from relay.imap.server import ImapConnection
    from relay.store import Change, MailStore

log = logging.getLogger("mssante.relay.imap")

# RFC 3501 §7.2.1 and the extensions implemented (docs/rfc-status.md).
BASE_CAPABILITIES: Final = (
    "IMAP4rev1",
    "LITERAL+",  # RFC 7888
    "SASL-IR",  # RFC 4959
    "ID",  # RFC 2971
    "IDLE",  # RFC 2177
    "UIDPLUS",  # RFC 4315
    "MOVE",  # RFC 6851
    "NAMESPACE",  # RFC 2342
    "ENABLE",  # RFC 5161
    "SPECIAL-USE",  # RFC 6154
    "UNSELECT",  # RFC 3691
    "CHILDREN",  # RFC 3348
)
SERVER_ID: Final = ("name", "mssante", "vendor", "mssante")


@dataclass(frozen=True, slots=True)
class Done:
    """The tagged OK of a command."""

    text: str
    code: str | None = None


def capabilities(c: ImapConnection) -> list[str]:
    caps = list(BASE_CAPABILITIES)
    if c.conn.state is imap.State.NOT_AUTHENTICATED:
        if c.tls:
            # RFC 3501 §6.2.2; RFC 7628 §4 (OAUTHBEARER), RFC 4422 (EXTERNAL).
            caps += ["AUTH=" + name for name in _sasl(c)]
            if not _passwords_offered(c):
                caps.append("LOGINDISABLED")
        else:
            caps += ["STARTTLS", "LOGINDISABLED"]
    return caps


def _args(cmd: imap.CommandReceived, low: int, high: int | None = None) -> None:
    n = len(cmd.args)
    if n < low or (high is not None and n > high):
        raise imap.CommandSyntaxError(cmd.tag, f"{cmd.name}: wrong number of arguments")


def _mailbox_name(value: imap.Value) -> str:
    return imap.decode_mailbox(imap.astring(value, "mailbox"))


# -- any state ---------------------------------------------------------------


async def cmd_capability(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 0, 0)
    c.untagged(imap.Atom("CAPABILITY"), *map(imap.Atom, capabilities(c)))
    return Done("CAPABILITY completed")


async def cmd_noop(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 0, 0)
    return Done("NOOP completed")


async def cmd_logout(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 0, 0)
    c.write(c.conn.send(imap.Untagged.status(imap.Status.BYE, "Logging out")))
    return Done("LOGOUT completed")


async def cmd_id(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    # RFC 2971 §3.1: the client's parameters (a list or NIL) are not used.
    _args(cmd, 1, 1)
    c.untagged(imap.Atom("ID"), SERVER_ID)
    return Done("ID completed")


# -- not authenticated ---------------------------------------------------------


async def cmd_starttls(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 0, 0)
    if c.tls:
        raise CommandRefusedError(None, "TLS is already active")
    c.start_tls_after_reply = True
    return Done("Begin TLS negotiation now")


def _sasl(c: ImapConnection) -> list[str]:
    """The SASL mechanisms AUTHENTICATE takes (IMAP has no SASL LOGIN)."""
    return [n for n in c.ctx.authenticator.sasl_names() if n != "LOGIN"]


def _passwords_offered(c: ImapConnection) -> bool:
    auth = c.ctx.authenticator
    return auth.offers(Mechanism.PASSWORD) or auth.offers(Mechanism.APP_PASSWORD)


def _attempt(c: ImapConnection, sasl: str) -> Attempt:
    return Attempt(
        protocol="imap", sasl=sasl, cid=c.cid, peer=c.peer, tls=c.tls_description
    )


async def cmd_login(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 2, 2)
    user = imap.astring(cmd.args[0], "user")
    password = imap.astring(cmd.args[1], "password")
    if not c.tls:
        # RFC 3501 §6.2.3, §11.1: LOGINDISABLED; RFC 5530 PRIVACYREQUIRED.
        raise CommandRefusedError("PRIVACYREQUIRED", "Login requires TLS (STARTTLS)")
    if not _passwords_offered(c):
        raise CommandRefusedError("PRIVACYREQUIRED", "LOGIN is disabled here")
    return await _password(c, user, password, "LOGIN")


async def _sasl_response(c: ImapConnection, cmd: imap.CommandReceived) -> bytes:
    if len(cmd.args) == 2:  # RFC 4959 SASL-IR initial response
        response = imap.astring(cmd.args[1], "initial response")
    else:
        response = await c.continuation("")
    if response == b"*":  # RFC 3501 §6.2.2: the client cancels
        raise imap.CommandSyntaxError(cmd.tag, "AUTHENTICATE cancelled")
    try:
        # RFC 4959 §3: "=" is an empty initial response.
        return base64.b64decode(response if response != b"=" else b"", validate=True)
    except binascii.Error:
        raise imap.CommandSyntaxError(cmd.tag, "response is not base64") from None


async def cmd_authenticate(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 1, 2)
    mechanism = imap.atom(cmd.args[0], "mechanism").upper()
    if not c.tls:
        raise CommandRefusedError("PRIVACYREQUIRED", "Authentication requires TLS")
    if mechanism not in _sasl(c):
        raise CommandRefusedError(None, f"Unsupported mechanism {mechanism}")
    blob = await _sasl_response(c, cmd)
    auth = c.ctx.authenticator
    if mechanism == "PLAIN":
        # RFC 4616 §2: [authzid] NUL authcid NUL passwd.
        parts = blob.split(b"\0")
        if len(parts) != 3:
            raise imap.CommandSyntaxError(cmd.tag, "malformed PLAIN response")
        authzid, user, password = parts
        if authzid and authzid != user:
            raise CommandRefusedError(
                "AUTHORIZATIONFAILED", "Authorization identity differs"
            )
        return await _password(c, user, password, "PLAIN")
    attempt = _attempt(c, mechanism)
    if mechanism == "EXTERNAL":
        # RFC 4422 Appendix A: the response is the authorization identity.
        try:
            identity = blob.decode("utf-8") or None
        except UnicodeDecodeError:
            raise imap.CommandSyntaxError(cmd.tag, "authzid is not UTF-8") from None
        outcome = await auth.certificate(attempt, c.peer_certificate, identity)
        return await _finish(c, outcome, mechanism)
    parse = parse_oauthbearer if mechanism == "OAUTHBEARER" else parse_xoauth2
    try:
        response = parse(blob)
    except SaslSyntaxError as exc:
        raise imap.CommandSyntaxError(cmd.tag, f"malformed response: {exc}") from None
    outcome = await auth.bearer(attempt, response)
    if outcome.refusal is Refusal.INVALID:
        # RFC 7628 §3.2.2, §4.3: the error JSON in a continuation; the client's
        # dummy response (^A) comes before the tagged NO.
        rules = auth.tokens.rules if auth.tokens is not None else None
        challenge = base64.b64encode(error_challenge(mechanism, rules)).decode()
        await c.continuation(challenge)
    return await _finish(c, outcome, mechanism)


async def _password(
    c: ImapConnection, user: bytes, password: bytes, mechanism: str
) -> Done:
    auth = c.ctx.authenticator
    attempt = _attempt(c, mechanism)
    try:
        name = user.decode("utf-8")
        secret = password.decode("utf-8")
    except UnicodeDecodeError:
        name = user.decode("utf-8", "replace")
        outcome = await auth.refuse(attempt, name, "credentials not UTF-8")
    else:
        outcome = await auth.password(attempt, name, secret)
    return await _finish(c, outcome, mechanism, name)


async def _finish(
    c: ImapConnection, outcome: Outcome, mechanism: str, name: str | None = None
) -> Done:
    """The tagged reply of LOGIN/AUTHENTICATE; the session record in the audit."""
    ctx = c.ctx
    account = outcome.account
    if account is None:
        if outcome.refusal is Refusal.LOCKED:
            raise CommandRefusedError(
                "UNAVAILABLE", "Too many failures, try again later"
            )
        if outcome.refusal is Refusal.UNAVAILABLE:
            raise CommandRefusedError("UNAVAILABLE", "Temporary authentication failure")
        ctx.audit.emit(
            AuditEvent.IMAP_LOGIN_FAILED,
            cid=c.cid,
            actor=name,
            peer=c.peer,
            mechanism=mechanism,
            reason="authentication refused (auth.failed says why)",
        )
        raise CommandRefusedError("AUTHENTICATIONFAILED", "Invalid credentials")
    c.access = await _access(c, account)
    ctx.audit.emit(
        AuditEvent.IMAP_LOGIN_SUCCEEDED,
        cid=c.cid,
        actor=account.login,
        peer=c.peer,
        mechanism=mechanism,
        tls=c.tls_description,
    )
    return Done("Logged in", code="CAPABILITY " + " ".join(BASE_CAPABILITIES))


async def _access(c: ImapConnection, account: Account) -> Access:
    """The mailboxes ``account`` reaches: owned, delegated (directory)."""
    access = Access(account)
    for address in account.mailboxes:
        access.grants[address] = Grant(address, Via.OWNER, writable=True)
    if account.mailboxes:
        access.personal = account.mailboxes[0]
    now = c.ctx.clock()
    try:
        delegations = await c.ctx.directory.delegations(account=account.login)
    except DirectoryError as exc:
        c.ctx.audit.emit(
            AuditEvent.DIRECTORY_LOOKUP_FAILED,
            cid=c.cid,
            actor=account.login,
            reason=type(exc).__name__,
        )
        delegations = []
    for d in delegations:
        if d.active_at(now) and d.mailbox not in access.grants:
            writable = d.scope.value == "read-send"
            access.grants[d.mailbox] = Grant(d.mailbox, Via.DELEGATION, writable)
    # Patients who made this account their proxy (caregiver): listed too.
    try:
        patients = await c.ctx.directory.patients_with_proxy(account.login)
    except DirectoryError:
        patients = []  # they stay reachable by name (_proxy_grant)
    for patient in patients:
        grant = _patient_grant(patient, account.login, now)
        if grant is not None and grant.address not in access.grants:
            access.grants[grant.address] = grant
    for address in access.grants:
        await c.store(c.ctx.store.ensure_mailbox, address)
    return access


def _patient_grant(patient: Patient, login: str, now: datetime) -> Grant | None:
    """``login``'s active grant on the patient's mailbox: a proxy (writable
    when it may reply), else an administrator's break-glass access (always
    read-only); None without one."""
    if patient.status is not Status.ACTIVE or not patient.address:
        return None
    for grant in patient.proxies:
        if grant.account == login and grant.active_at(now):
            writable = grant.scope is ProxyScope.READ_REPLY
            return Grant(patient.address, Via.PROXY, writable, grant.expires)
    for opened in patient.break_glass:
        if opened.account == login and opened.active_at(now):
            return Grant(patient.address, Via.BREAK_GLASS, False, opened.expires)
    return None


async def _proxy_grant(c: ImapConnection, address: str) -> Grant | None:
    """A patient's grant (proxy, break-glass) for the logged-in account,
    checked on use.

    Proxied mailboxes are listed at login (``patients_with_proxy``); a grant
    added since, and a break-glass access (never listed), are found here when
    the account names the mailbox (``Shared/<address>/INBOX``). A grant that
    ended is forgotten (fail closed: so is one the directory cannot confirm).
    """
    assert c.access is not None  # noqa: S101 - authenticated state
    c.access.grants.pop(address, None)
    try:
        entry = await c.ctx.directory.resolve(address)
    except DirectoryError:
        return None
    if not isinstance(entry, Patient):
        return None
    g = _patient_grant(entry, c.access.account.login, c.ctx.clock())
    if g is None:
        return None
    c.access.grants[address] = g
    await c.store(c.ctx.store.ensure_mailbox, address)
    return g


async def resolve(c: ImapConnection, name: str) -> Target:
    assert c.access is not None  # noqa: S101 - authenticated state
    try:
        target = c.access.resolve(name)
    except CommandRefusedError:
        target = None
    if target is not None and not target.grant.checked_on_use:
        return target
    head, _, rest = name.partition(DELIMITER)
    address = rest.partition(DELIMITER)[0]
    if head == SHARED_PREFIX and "@" in address:
        grant = await _proxy_grant(c, address)
        if grant is not None:
            return c.access.resolve(name)
    c.ctx.audit.emit(
        AuditEvent.IMAP_ACCESS_REFUSED,
        cid=c.cid,
        actor=c.access.account.login,
        mailbox=address or None,
    )
    raise CommandRefusedError("NONEXISTENT", "No such mailbox")


def _writable(target: Target) -> None:
    if not target.grant.writable:
        raise CommandRefusedError("NOPERM", "Read-only access to this mailbox")


def _selectable(target: Target) -> None:
    if not target.folder:
        raise CommandRefusedError("NONEXISTENT", "No such mailbox")


# -- authenticated -------------------------------------------------------------


async def _select(
    c: ImapConnection, cmd: imap.CommandReceived, *, read_only: bool
) -> Done:
    _args(cmd, 1, 1)
    await unselect(c)
    target = await resolve(c, _mailbox_name(cmd.args[0]))
    _selectable(target)
    read_only = read_only or not target.grant.writable
    store = c.ctx.store
    info = await c.store(store.folder, target.address, target.folder)
    recent = (
        set()
        if read_only
        else set(await c.store(store.claim_recent, target.address, target.folder))
    )
    selected = Selected(
        target=target,
        uidvalidity=info.uidvalidity,
        read_only=read_only,
        uids=[],
        flags={},
        recent=recent,
    )
    selected.subscription = c.subscribe(target.address)
    messages = await c.store(store.messages, target.address, target.folder)
    selected.uids = [m.uid for m in messages]
    selected.flags = {m.uid: m.flags for m in messages}
    c.selected = selected
    unseen = next((i + 1 for i, m in enumerate(messages) if not m.seen), None)
    # RFC 3501 §6.3.1 responses.
    c.untagged(imap.Atom("FLAGS"), _flag_atoms(_SYSTEM_FLAGS))
    c.untagged(
        imap.Atom("OK"),
        imap.Raw(
            b"[PERMANENTFLAGS "
            + (
                b"()"
                if read_only
                else b"(" + b" ".join(f.encode() for f in _SYSTEM_FLAGS) + b" \\*)"
            )
            + b"]"
        ),
        imap.Raw(b"Limited" if not read_only else b"Read-only"),
    )
    c.untagged(len(messages), imap.Atom("EXISTS"))
    c.untagged(len(recent), imap.Atom("RECENT"))
    if unseen is not None:
        c.status_ok(f"UNSEEN {unseen}", "First unseen")
    c.status_ok(f"UIDVALIDITY {info.uidvalidity}", "UIDs valid")
    c.status_ok(f"UIDNEXT {info.uidnext}", "Predicted next UID")
    code = "READ-ONLY" if read_only else "READ-WRITE"
    return Done(f"{cmd.name} completed", code=code)


_SYSTEM_FLAGS: Final = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


def _flag_atoms(flags: object) -> tuple[imap.Atom, ...]:
    assert isinstance(flags, tuple | frozenset | set | list)  # noqa: S101
    return tuple(imap.Atom(f) for f in sorted(flags))


async def cmd_select(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    return await _select(c, cmd, read_only=False)


async def cmd_examine(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    return await _select(c, cmd, read_only=True)


async def unselect(c: ImapConnection) -> None:
    if c.selected is not None:
        if c.selected.subscription is not None:
            c.ctx.store.unsubscribe(c.selected.subscription)
        c.selected = None


async def cmd_create(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 1, 1)
    target = await resolve(c, _mailbox_name(cmd.args[0]))
    _selectable(target)
    _writable(target)
    await c.store(c.ctx.store.create_folder, target.address, target.folder)
    return Done("CREATE completed")


async def cmd_delete(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 1, 1)
    target = await resolve(c, _mailbox_name(cmd.args[0]))
    _selectable(target)
    _writable(target)
    if c.selected is not None and (c.selected.address, c.selected.folder) == (
        target.address,
        target.folder,
    ):
        await unselect(c)
    await c.store(c.ctx.store.delete_folder, target.address, target.folder)
    return Done("DELETE completed")


async def cmd_rename(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 2, 2)
    source = await resolve(c, _mailbox_name(cmd.args[0]))
    dest = await resolve(c, _mailbox_name(cmd.args[1]))
    _selectable(source)
    _selectable(dest)
    _writable(source)
    if source.address != dest.address:
        raise CommandRefusedError("CANNOT", "Cannot move folders between mailboxes")
    await c.store(c.ctx.store.rename_folder, source.address, source.folder, dest.folder)
    return Done("RENAME completed")


async def _subscribe(c: ImapConnection, cmd: imap.CommandReceived, on: bool) -> Done:
    _args(cmd, 1, 1)
    target = await resolve(c, _mailbox_name(cmd.args[0]))
    _selectable(target)
    await c.store(c.ctx.store.subscribe, target.address, target.folder, subscribed=on)
    return Done(f"{cmd.name} completed")


async def cmd_subscribe(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    return await _subscribe(c, cmd, True)


async def cmd_unsubscribe(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    return await _subscribe(c, cmd, False)


@dataclass(frozen=True, slots=True)
class _Listed:
    name: str
    attributes: tuple[str, ...]
    subscribed: bool


async def _all_names(c: ImapConnection) -> list[_Listed]:
    assert c.access is not None  # noqa: S101
    out: list[_Listed] = []
    shared = [a for a in c.access.grants if a != c.access.personal]
    if shared:
        out.append(_Listed(SHARED_PREFIX, ("\\Noselect", "\\HasChildren"), False))
    for address in ([c.access.personal] if c.access.personal else []) + sorted(shared):
        prefix = c.access.prefix(address)
        if prefix:
            out.append(
                _Listed(
                    prefix.rstrip(DELIMITER), ("\\Noselect", "\\HasChildren"), False
                )
            )
        folders = await c.store(c.ctx.store.folders, address)
        names = {f.name for f in folders}
        for f in folders:
            attrs: list[str] = []
            children = any(n.startswith(f.name + DELIMITER) for n in names)
            attrs.append("\\HasChildren" if children else "\\HasNoChildren")
            if f.special_use is not None:
                attrs.append(f.special_use.value)  # RFC 6154 §2
            out.append(_Listed(prefix + f.name, tuple(attrs), f.subscribed))
    return out


def _pattern(reference: str, pattern: str) -> re.Pattern[str]:
    # RFC 3501 §6.3.8: * matches anything, % anything but the delimiter.
    full = reference + pattern
    regex = "".join(
        ".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch) for ch in full
    )
    if full[:5].upper() == "INBOX":
        # RFC 3501 §5.1: INBOX is case-insensitive.
        regex = "(?i:INBOX)" + regex[len("INBOX") :]
    return re.compile(regex + r"\Z")


async def _list(c: ImapConnection, cmd: imap.CommandReceived, *, lsub: bool) -> Done:
    _args(cmd, 2, 2)
    reference = _mailbox_name(cmd.args[0])
    pattern = _mailbox_name(cmd.args[1])
    verb = imap.Atom("LSUB" if lsub else "LIST")
    if not pattern and not lsub:
        # RFC 3501 §6.3.8: the delimiter and root.
        c.untagged(verb, (imap.Atom("\\Noselect"),), DELIMITER, "")
        return Done("LIST completed")
    regex = _pattern(reference, pattern)
    for item in await _all_names(c):
        if lsub and not item.subscribed:
            continue
        if regex.match(item.name):
            c.untagged(
                verb,
                tuple(imap.Atom(a) for a in item.attributes),
                DELIMITER,
                imap.encode_mailbox(item.name),
            )
    return Done(f"{verb.value} completed")


async def cmd_list(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    return await _list(c, cmd, lsub=False)


async def cmd_lsub(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    return await _list(c, cmd, lsub=True)


_STATUS_ITEMS: Final = frozenset(
    {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN"}
)


async def cmd_status(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 2, 2)
    name = _mailbox_name(cmd.args[0])
    wanted = cmd.args[1]
    if not isinstance(wanted, tuple) or not wanted:
        raise imap.CommandSyntaxError(cmd.tag, "STATUS needs a list of items")
    items = [imap.atom(w, "status item").upper() for w in wanted]
    if any(i not in _STATUS_ITEMS for i in items):
        raise imap.CommandSyntaxError(cmd.tag, "unknown STATUS item")
    target = await resolve(c, name)
    _selectable(target)
    info = await c.store(c.ctx.store.folder, target.address, target.folder)
    values = {
        "MESSAGES": info.exists,
        "RECENT": info.recent,
        "UIDNEXT": info.uidnext,
        "UIDVALIDITY": info.uidvalidity,
        "UNSEEN": info.unseen,
    }
    out: list[object] = []
    for i in items:
        out += [imap.Atom(i), values[i]]
    c.untagged(imap.Atom("STATUS"), imap.encode_mailbox(name), tuple(out))
    return Done("STATUS completed")


async def cmd_append(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 2, 4)
    name = _mailbox_name(cmd.args[0])
    message = cmd.args[-1]
    if not isinstance(message, bytes):
        raise imap.CommandSyntaxError(cmd.tag, "APPEND needs the message as a literal")
    flags: list[str] = []
    when = c.ctx.clock()
    for extra in cmd.args[1:-1]:
        if isinstance(extra, tuple):
            flags = imap.parse_flags(extra)
        else:
            when = imap.parse_datetime(extra)
    if len(message) > c.ctx.max_message_size:
        raise CommandRefusedError("TOOBIG", "Message too big")
    try:
        target = await resolve(c, name)
    except CommandRefusedError:
        raise CommandRefusedError("TRYCREATE", "No such mailbox") from None
    _selectable(target)
    _writable(target)
    result = await c.store(
        c.ctx.store.append,
        target.address,
        target.folder,
        message,
        internal_date=when,
        flags=flags,
    )
    # RFC 4315 §3 APPENDUID.
    return Done("APPEND completed", code=f"APPENDUID {result.uidvalidity} {result.uid}")


async def cmd_namespace(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 0, 0)
    assert c.access is not None  # noqa: S101
    personal = (("", DELIMITER),) if c.access.personal else None
    # RFC 2342 §5: personal, other users', shared.
    c.untagged(
        imap.Atom("NAMESPACE"),
        personal,
        None,
        ((SHARED_PREFIX + DELIMITER, DELIMITER),),
    )
    return Done("NAMESPACE completed")


async def cmd_enable(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 1)
    # RFC 5161 §3.1: we enable none of the capabilities a client may ask for
    # (CONDSTORE, QRESYNC, UTF8=ACCEPT are not implemented yet).
    c.untagged(imap.Atom("ENABLED"))
    return Done("ENABLE completed")


async def cmd_idle(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 0, 0)
    # RFC 2177 §3: untagged updates while idling, until DONE.
    await flush_changes(c, expunge=True)
    line = await c.idle()
    if line.upper() != b"DONE":
        raise imap.CommandSyntaxError(cmd.tag, "expected DONE")
    return Done("IDLE terminated")


# -- selected ------------------------------------------------------------------


def _sel(c: ImapConnection) -> Selected:
    assert c.selected is not None  # noqa: S101 - the core checks the state
    return c.selected


def _readable(c: ImapConnection) -> Selected:
    """The selected folder, if the grant that opened it has not expired."""
    sel = _sel(c)
    expires = sel.target.grant.expires
    if expires is not None and c.ctx.clock() >= expires:
        raise CommandRefusedError("NOPERM", "Access to this mailbox has ended")
    return sel


async def cmd_check(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 0, 0)
    return Done("CHECK completed")


async def cmd_close(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 0, 0)
    sel = _sel(c)
    if not sel.read_only:
        # RFC 3501 §6.4.2: expunge silently.
        removed = await c.store(c.ctx.store.expunge, sel.address, sel.folder)
        _audit_deleted(c, sel, removed)
    await unselect(c)
    return Done("CLOSE completed")


async def cmd_unselect(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 0, 0)
    await unselect(c)
    return Done("UNSELECT completed")


def _audit_deleted(c: ImapConnection, sel: Selected, uids: list[int]) -> None:
    if uids:
        assert c.access is not None  # noqa: S101
        c.ctx.audit.emit(
            AuditEvent.MESSAGE_DELETED,
            cid=c.cid,
            actor=c.access.account.login,
            mailbox=sel.address,
            folder=sel.folder,
            uids=uids,
            via=sel.target.grant.via.value,
        )


def _send_expunges(c: ImapConnection, sel: Selected, uids: list[int]) -> None:
    for uid in sorted(uids):
        seq = sel.seq_of(uid)
        if seq is None:
            continue
        del sel.uids[seq - 1]
        sel.uids_changed()
        sel.flags.pop(uid, None)
        sel.recent.discard(uid)
        c.untagged(seq, imap.Atom("EXPUNGE"))
    if sel.cache is not None:
        sel.cache.forget(uids)


async def cmd_expunge(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    sel = _sel(c)
    uids = None
    if cmd.uid:  # RFC 4315 §2.1 UID EXPUNGE
        _args(cmd, 1, 1)
        uids = imap.parse_sequence_set(cmd.args[0]).select(sel.uids)
    else:
        _args(cmd, 0, 0)
    if sel.read_only:
        raise CommandRefusedError("READ-ONLY", "Folder selected read-only")
    removed = await c.store(c.ctx.store.expunge, sel.address, sel.folder, uids)
    _send_expunges(c, sel, removed)
    _audit_deleted(c, sel, removed)
    return Done("EXPUNGE completed")


def _messages_for(
    c: ImapConnection, cmd: imap.CommandReceived, value: imap.Value
) -> list[tuple[int, int]]:
    """(seq, uid) pairs named by a sequence set or a UID set."""
    sel = _sel(c)
    seqset = imap.parse_sequence_set(value)
    uids = sel.uids
    n = len(uids)
    spans: list[tuple[int, int]] = []  # index ranges into uids, [i, j)
    if cmd.uid:
        largest = uids[-1] if uids else 0
        for lo, hi in seqset.ranges:
            # RFC 3501 §6.4.8: * is the largest UID; a:b is b:a.
            a = largest if lo is None else lo
            b = largest if hi is None else hi
            a, b = min(a, b), max(a, b)
            spans.append((bisect.bisect_left(uids, a), bisect.bisect_right(uids, b)))
    else:
        if n == 0:
            # RFC 3501 §6.4.5 / 9051: a sequence set on an empty folder is BAD.
            raise imap.CommandSyntaxError(cmd.tag, "no messages")
        for lo, hi in seqset.ranges:
            for bound in (lo, hi):
                if bound is not None and bound > n:
                    raise imap.CommandSyntaxError(
                        cmd.tag, "invalid message sequence number"
                    )
            a = n if lo is None else lo
            b = n if hi is None else hi
            spans.append((min(a, b) - 1, max(a, b)))
    spans = [(i, j) for i, j in spans if i < j]
    if len(spans) == 1:
        i, j = spans[0]
        return list(zip(range(i + 1, j + 1), uids[i:j], strict=True))
    indexes = sorted({k for i, j in spans for k in range(i, j)})
    return [(k + 1, uids[k]) for k in indexes]


async def cmd_fetch(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 2)
    sel = _readable(c)
    targets = _messages_for(c, cmd, cmd.args[0])
    items = imap.parse_fetch_items(cmd.args[1] if len(cmd.args) == 2 else cmd.args[1:])
    if cmd.uid and not any(i.name == "UID" for i in items):
        items.insert(0, imap.FetchItem("UID"))  # RFC 3501 §6.4.8
    marks_seen = any(i.sets_seen for i in items) and not sel.read_only
    needs_structure = any(_reads_structure(i) for i in items)
    # Only the top-level header (BODY[HEADER...], RFC822.HEADER): it is read
    # without building the structure's tree.
    header_only = needs_structure and all(
        _top_header(i) or not _reads_structure(i) for i in items
    )
    needs_message = any(
        i.name in ("RFC822", "RFC822.TEXT")
        or (i.section is not None and _fetch.needs_message(i.section))
        for i in items
    )
    # A read is content fetched, \Seen or not (BODY.PEEK[] reads as much as
    # BODY[]), and for anyone but the owner (delegate, proxy, break-glass) any
    # header too (a Subject can say as much as a body): audited once per
    # message and selection (DESIGN §7).
    opens = (
        needs_message
        or any(i.sets_seen for i in items)
        or (
            sel.target.grant.via is not Via.OWNER
            and any(_reads_content(i) for i in items)
        )
    )
    cache = sel.read_cache()
    # FLAGS, and \Seen to set, are read fresh from the store (one call); the
    # internal date and size never change and come from the session's cache.
    fresh: dict[int, MessageInfo] | None = None
    needs_meta = needs_message or any(
        i.name in ("INTERNALDATE", "RFC822.SIZE") for i in items
    )
    if marks_seen or any(i.name == "FLAGS" for i in items):
        fresh = await _refresh(c, sel)
        targets = [(s, u) for s, u in targets if u in fresh]
    elif needs_meta and any(u not in cache.meta for _, u in targets):
        present = await _refresh(c, sel)
        targets = [(s, u) for s, u in targets if u in present]
    unseen: list[int] = []
    if marks_seen:
        assert fresh is not None  # noqa: S101
        unseen = [u for _, u in targets if not fresh[u].seen]
        if unseen:
            for changed in await c.store(
                c.ctx.store.store_flags,
                sel.address,
                sel.folder,
                unseen,
                ["\\Seen"],
                FlagMode.ADD,
            ):
                fresh[changed.uid] = changed
    seen_set = set(unseen)
    labelled = [(i, i.response_name().encode()) for i in items]
    batches: list[list[tuple[int, int]]] = []
    pos = 0
    while pos < len(targets):
        # A small first batch: the first bytes go out sooner and the
        # pipeline fills.
        limit = _FETCH_FIRST_BATCH if not batches else _FETCH_BATCH_MESSAGES
        batches.append(
            _fetch_batch(targets, pos, cache, with_body=needs_message, limit=limit)
        )
        pos += len(batches[-1])

    def start(batch: list[tuple[int, int]]) -> asyncio.Future[_Loaded] | None:
        missing = (
            [
                u
                for _, u in batch
                if u not in cache.structures
                and not (header_only and u in cache.headers)
            ]
            if needs_structure
            else []
        )
        if not missing and not needs_message:
            return None
        return asyncio.ensure_future(
            c.store(
                _load_batch,
                c.ctx.store,
                sel.address,
                sel.folder,
                missing,
                [u for _, u in batch] if needs_message else [],
                header_only=header_only,
            )
        )

    # The next batch loads (in a worker thread) while this one is written
    # and the client reads it.
    pending = start(batches[0]) if batches else None
    try:
        for k, batch in enumerate(batches):
            loading, pending = pending, None
            loaded, headers, messages = (
                ({}, {}, {}) if loading is None else await loading
            )
            if k + 1 < len(batches):
                pending = start(batches[k + 1])
            structures: dict[int, ParsedStructure] = cache.structures
            if cache.admit(cache.structures, loaded, structure_cost):
                structures = {**cache.structures, **loaded}
            if extra := cache.admit(cache.headers, headers, header_cost):
                headers = {**cache.headers, **extra}
            else:
                headers = cache.headers
            out: list[bytes] = []
            for seq, uid in batch:
                if needs_message and uid not in messages:
                    continue  # expunged by another session meanwhile
                structure = structures.get(uid)
                header = structure.header if structure is not None else headers.get(uid)
                if needs_structure and header is None:
                    continue
                if opens and uid not in sel.read:
                    _audit_read(c, sel, uid, structure)
                info = fresh.get(uid) if fresh is not None else None
                message = messages.get(uid)
                # The untagged FETCH line, assembled from encoded items (the
                # core keeps no state for untagged data): RFC 3501 §7.4.2.
                # Message data goes in as it is, copied once, by the join.
                out.append(b"* %d FETCH (" % seq)
                for n, (item, label) in enumerate(labelled):
                    if n:
                        out.append(b" ")
                    encoded = _fetch_item(
                        sel, cache, item, label, uid, info, structure, header, message
                    )
                    if isinstance(encoded, tuple):
                        out += encoded
                    else:
                        out.append(encoded)
                if uid in seen_set and not any(i.name == "FLAGS" for i in items):
                    assert info is not None  # noqa: S101
                    out.append(b" FLAGS " + _flag_bytes(sel, info.flags, uid))
                out.append(b")\r\n")
                if info is not None:
                    sel.flags[uid] = info.flags
            c.write(b"".join(out))
            await c.drain_if_needed()
    finally:
        if pending is not None:
            pending.cancel()
    return Done(f"{'UID ' if cmd.uid else ''}FETCH completed")


# The items that read the cached structure, besides any with a section.
_STRUCTURE_ITEMS: Final = frozenset(
    {"ENVELOPE", "BODY", "BODYSTRUCTURE", "RFC822.HEADER", "RFC822.TEXT"}
)


def _reads_structure(item: imap.FetchItem) -> bool:
    return item.section is not None or item.name in _STRUCTURE_ITEMS


# A FETCH loads the structures and bodies it needs in batches: up to this many
# messages, or this many octets of message bodies, per worker-thread call.
_FETCH_BATCH_MESSAGES: Final = 256
_FETCH_FIRST_BATCH: Final = 32
_FETCH_BATCH_OCTETS: Final = 8 * 1024 * 1024


def _fetch_batch(
    targets: list[tuple[int, int]],
    pos: int,
    cache: ReadCache,
    *,
    with_body: bool,
    limit: int,
) -> list[tuple[int, int]]:
    """The targets from ``pos`` on that the next load takes."""
    if not with_body:
        return targets[pos : pos + 4 * limit]
    octets = 0
    end = pos
    while end < len(targets) and end - pos < limit:
        meta = cache.meta.get(targets[end][1])
        size = meta[1] if meta is not None else 0
        if end > pos and octets + size > _FETCH_BATCH_OCTETS:
            break
        octets += size
        end += 1
    return targets[pos:end]


_Loaded = tuple[dict[int, ParsedStructure], dict[int, bytes], dict[int, bytes]]


def _load_batch(
    store: MailStore,
    address: str,
    folder: str,
    structure_uids: list[int],
    body_uids: list[int],
    *,
    header_only: bool,
) -> _Loaded:
    """Structures (or only headers) and bodies (blocking: a worker thread).

    A message expunged meanwhile by another session is left out.
    """
    structures: dict[int, ParsedStructure] = {}
    headers: dict[int, bytes] = {}
    if structure_uids and header_only:
        headers = store.headers(address, folder, structure_uids)
    elif structure_uids:
        structures = store.structures(address, folder, structure_uids)
    bodies = store.fetch_many(address, folder, body_uids) if body_uids else {}
    return structures, headers, bodies


def _top_header(item: imap.FetchItem) -> bool:
    """Whether ``item`` reads only the top-level header."""
    if item.name == "RFC822.HEADER":
        return True
    s = item.section
    return s is not None and not s.part and s.text.startswith("HEADER")


async def _refresh(c: ImapConnection, sel: Selected) -> dict[int, MessageInfo]:
    """The store's metadata of the folder now; keeps dates and sizes cached.

    Messages the client was told of but never got flags for (new messages)
    take the store's flags as the ones told.
    """
    messages = await c.store(c.ctx.store.messages, sel.address, sel.folder)
    cache = sel.read_cache()
    known = set(sel.uids)
    for m in messages:
        cache.meta[m.uid] = (m.internal_date, m.size)
        if m.uid in known and m.uid not in sel.flags:
            sel.flags[m.uid] = m.flags
    return {m.uid: m for m in messages}


def _reads_content(item: imap.FetchItem) -> bool:
    """Whether a FETCH item returns message text (a header or body section)."""
    return item.section is not None or item.name in (
        "RFC822",
        "RFC822.TEXT",
        "RFC822.HEADER",
    )


def _audit_read(
    c: ImapConnection, sel: Selected, uid: int, structure: ParsedStructure | None
) -> None:
    assert c.access is not None  # noqa: S101
    sel.read.add(uid)
    message_id = structure.envelope.message_id if structure is not None else None
    c.ctx.audit.emit(
        AuditEvent.MESSAGE_READ,
        cid=c.cid,
        actor=c.access.account.login,
        mailbox=sel.address,
        folder=sel.folder,
        uid=uid,
        uidvalidity=sel.uidvalidity,
        via=sel.target.grant.via.value,
        message_ref=c.ctx.audit.message_ref(message_id) if message_id else "",
    )


def _flags(sel: Selected, info: MessageInfo) -> tuple[imap.Atom, ...]:
    flags = set(info.flags)
    if info.uid in sel.recent:
        flags.add("\\Recent")
    return _flag_atoms(flags)


def _flag_bytes(sel: Selected, flags: frozenset[str], uid: int) -> bytes:
    """RFC 3501 §7.4.2 FLAGS list (flags and keywords are atoms)."""
    names = sorted(flags | {"\\Recent"} if uid in sel.recent else flags)
    return b"(" + " ".join(names).encode("ascii") + b")"


def _fetch_item(
    sel: Selected,
    cache: ReadCache,
    item: imap.FetchItem,
    label: bytes,
    uid: int,
    info: MessageInfo | None,
    structure: ParsedStructure | None,
    header: bytes | None,
    message: bytes | None,
) -> bytes | tuple[bytes, bytes]:
    """One FETCH data item, encoded (RFC 3501 §7.4.2); a literal as its
    announcement and its data, to be joined without another copy."""
    name = item.name
    if name == "UID":
        return b"UID %d" % uid
    if name == "FLAGS":
        assert info is not None  # noqa: S101 - loaded for FLAGS
        return b"FLAGS " + _flag_bytes(sel, info.flags, uid)
    if name == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % cache.meta[uid][1]
    if name == "INTERNALDATE":
        return b"INTERNALDATE " + imap.encode_values(
            [imap.format_datetime(cache.meta[uid][0])]
        )
    if header is not None and _top_header(item):
        section = item.section
        if section is None or section.text == "HEADER":
            data = header
        else:
            data = _fetch.header_fields(
                header, section.fields, exclude=section.text.endswith(".NOT")
            )
        data = _fetch.partial(data, item)
        return b"%b {%d}\r\n" % (label, len(data)), data
    value: object
    if name == "RFC822":  # the whole message: no structure needed
        assert message is not None  # noqa: S101 - loaded for RFC822
        return b"%b {%d}\r\n" % (label, len(message)), message
    assert structure is not None  # noqa: S101 - loaded for these items
    if name == "ENVELOPE":
        value = _fetch.envelope(structure.envelope)
    elif name == "BODYSTRUCTURE":
        value = _fetch.body_structure(structure.body, extensible=True)
    elif name == "BODY" and item.section is None:
        value = _fetch.body_structure(structure.body, extensible=False)
    elif name == "RFC822.HEADER":
        value = structure.header
    elif name == "RFC822.TEXT":
        assert message is not None  # noqa: S101
        value = message[structure.body.body_start :]
    else:
        assert item.section is not None  # noqa: S101
        try:
            data = _fetch.section_bytes(item.section, structure, message)
        except _fetch.SectionError:
            data = b""  # RFC 3501 §6.4.5: a part that does not exist is empty
        data = _fetch.partial(data, item)
        # bytes always go as a literal (RFC 3501 §4.3).
        return b"%b {%d}\r\n" % (label, len(data)), data
    if isinstance(value, bytes):
        return b"%b {%d}\r\n" % (label, len(value)), value
    return label + b" " + imap.encode_values([value])


_STORE_ITEM: Final = re.compile(r"([+-]?)FLAGS(\.SILENT)?\Z", re.IGNORECASE)


async def cmd_store(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    _args(cmd, 3)
    sel = _sel(c)
    targets = _messages_for(c, cmd, cmd.args[0])
    m = _STORE_ITEM.match(imap.atom(cmd.args[1], "store item"))
    if m is None:
        raise imap.CommandSyntaxError(cmd.tag, "expected FLAGS, +FLAGS or -FLAGS")
    flags = imap.parse_flags(cmd.args[2] if len(cmd.args) == 3 else list(cmd.args[2:]))
    if sel.read_only:
        raise CommandRefusedError("READ-ONLY", "Folder selected read-only")
    mode = {"+": FlagMode.ADD, "-": FlagMode.REMOVE, "": FlagMode.REPLACE}[m.group(1)]
    before = {u: sel.flags.get(u, frozenset()) for _, u in targets}
    changed = await c.store(
        c.ctx.store.store_flags,
        sel.address,
        sel.folder,
        [u for _, u in targets],
        flags,
        mode,
    )
    by_uid = {i.uid: i for i in changed}
    for seq, uid in targets:
        info = by_uid.get(uid)
        if info is None:
            continue
        if (
            "\\Seen" in info.flags
            and "\\Seen" not in before[uid]
            and uid not in sel.read
        ):
            _audit_read(c, sel, uid, None)
        sel.flags[uid] = info.flags
        if not m.group(2):
            data: list[object] = [imap.Atom("FLAGS"), _flags(sel, info)]
            if cmd.uid:
                data = [imap.Atom("UID"), uid, *data]
            c.untagged(seq, imap.Atom("FETCH"), tuple(data))
    return Done(f"{'UID ' if cmd.uid else ''}STORE completed")


async def _copy(c: ImapConnection, cmd: imap.CommandReceived, *, move: bool) -> Done:
    _args(cmd, 2, 2)
    sel = _sel(c)
    targets = _messages_for(c, cmd, cmd.args[0])
    try:
        dest = await resolve(c, _mailbox_name(cmd.args[1]))
    except CommandRefusedError:
        raise CommandRefusedError("TRYCREATE", "No such mailbox") from None
    _selectable(dest)
    _writable(dest)
    if move and sel.read_only:
        raise CommandRefusedError("READ-ONLY", "Folder selected read-only")
    if dest.address != sel.address:
        raise CommandRefusedError("CANNOT", "Cannot copy between mailboxes")
    uids = [u for _, u in targets]
    fn = c.ctx.store.move if move else c.ctx.store.copy
    result = await c.store(fn, sel.address, sel.folder, uids, dest.folder)
    code = None
    if result.source_uids:
        # RFC 4315 §3 COPYUID.
        code = (
            f"COPYUID {result.uidvalidity} {_uid_set(result.source_uids)}"
            f" {_uid_set(result.dest_uids)}"
        )
    if move:
        if code:
            c.status_ok(code, "Moved")  # RFC 6851 §4.3: before the EXPUNGEs
        _send_expunges(c, sel, list(result.source_uids))
        return Done(f"{'UID ' if cmd.uid else ''}MOVE completed")
    return Done(f"{'UID ' if cmd.uid else ''}COPY completed", code=code)


def _uid_set(uids: tuple[int, ...]) -> str:
    return ",".join(str(u) for u in uids)


async def cmd_copy(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    return await _copy(c, cmd, move=False)


async def cmd_move(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    return await _copy(c, cmd, move=True)


async def cmd_search(c: ImapConnection, cmd: imap.CommandReceived) -> Done:
    sel = _readable(c)
    charset, key = imap.parse_search(cmd.args)
    if charset not in (None, "UTF-8", "US-ASCII"):
        raise CommandRefusedError("BADCHARSET (UTF-8 US-ASCII)", "Unsupported charset")
    cache = sel.read_cache()
    need = _search.needs(key)
    # The messages the client knows, less those another session expunged
    # (their EXPUNGE is still pending: RFC 3501 §7.4.1).
    gone = {u for ch in sel.pending if ch.kind is ChangeKind.EXPUNGE for u in ch.uids}
    within = [u for u in sel.uids if u not in gone] if gone else list(sel.uids)
    # Selected.flags holds UIDs of Selected.uids only: fewer entries means
    # messages whose flags the session never learnt (new ones).
    if len(sel.flags) < len(sel.uids) or (
        _search.META in need and not all(map(cache.meta.__contains__, within))
    ):
        present = await _refresh(c, sel)
        within = [u for u in within if u in present]
    # Flags as they are now: what the client was told, and the changes
    # another session made that are not told yet.
    flags: dict[int, frozenset[str]] = sel.flags
    updates = [
        info
        for ch in sel.pending
        if ch.kind is ChangeKind.FLAGS
        for info in ch.messages
    ]
    if updates:
        flags = {**sel.flags, **{info.uid: info.flags for info in updates}}
    docs: Mapping[int, SearchDoc] = cache.docs
    bodies: Mapping[int, str] = cache.bodies
    want_docs = (
        [u for u in within if u not in cache.docs] if _search.DOC in need else []
    )
    want_bodies = (
        [u for u in within if u not in cache.bodies] if _search.BODY in need else []
    )
    if want_docs or want_bodies:
        # One worker-thread call decrypts what is missing; the cache keeps
        # what its budget allows, the rest serves this command only.
        structures, new_docs, new_bodies = await c.store(
            _load_search,
            c.ctx.store,
            sel.address,
            sel.folder,
            {u: p for u in want_docs + want_bodies if (p := cache.structures.get(u))},
            {u: h for u in want_docs if (h := cache.headers.get(u))},
            want_docs,
            want_bodies,
        )
        cache.admit(cache.structures, structures, structure_cost)
        if extra := cache.admit(cache.docs, new_docs, SearchDoc.cost):
            docs = ChainMap(extra, cache.docs)
        if extra_bodies := cache.admit(cache.bodies, new_bodies, _body_cost):
            bodies = ChainMap(extra_bodies, cache.bodies)
        lost = {u for u in want_docs if u not in new_docs}
        lost |= {u for u in want_bodies if u not in new_bodies}
        if lost:  # expunged meanwhile
            within = [u for u in within if u not in lost]
    view = _search.View(
        flags=flags,
        recent=sel.recent,
        largest_uid=sel.uids[-1] if sel.uids else 0,
        largest_seq=len(sel.uids),
        seq_of=sel.seq_of,
        meta=cache.meta,
        docs=docs,
        bodies=bodies,
    )
    found = _search.evaluate(key, view, within)
    numbers = found if cmd.uid else sel.seqs_of(found)
    c.write(b"* SEARCH%b\r\n" % "".join([f" {n}" for n in numbers]).encode())
    return Done(f"{'UID ' if cmd.uid else ''}SEARCH completed")


# SEARCH BODY/TEXT decrypts messages in batches of this many per file read
# round, so that only their text parts stay in memory.
_SEARCH_BATCH: Final = 128


def _body_cost(text: str) -> int:
    return len(text) + 64


def _load_search(
    store: MailStore,
    address: str,
    folder: str,
    known: dict[int, ParsedStructure],
    known_headers: dict[int, bytes],
    want_docs: list[int],
    want_bodies: list[int],
) -> tuple[dict[int, ParsedStructure], dict[int, SearchDoc], dict[int, str]]:
    """Search documents and text parts (blocking: runs in a worker thread).

    Returns the structures it had to load too. A message expunged meanwhile
    is left out.
    """
    missing = [u for u in want_bodies if u not in known]
    loaded = store.structures(address, folder, missing) if missing else {}
    structures = {**known, **loaded}
    # Headers from the structures at hand, else from the sealed structure
    # without building its tree.
    headers = {u: structures[u].header for u in want_docs if u in structures}
    headers.update(known_headers)
    if rest := [u for u in want_docs if u not in headers]:
        headers.update(store.headers(address, folder, rest))
    docs = {u: SearchDoc.of(h) for u, h in headers.items()}
    bodies: dict[int, str] = {}
    for i in range(0, len(want_bodies), _SEARCH_BATCH):
        chunk = [u for u in want_bodies[i : i + _SEARCH_BATCH] if u in structures]
        for uid, message in store.fetch_many(address, folder, chunk).items():
            bodies[uid] = _search.body_text(structures[uid], message)
    return loaded, docs, bodies


# -- untagged updates ----------------------------------------------------------


async def flush_changes(c: ImapConnection, *, expunge: bool) -> None:
    """Tell the client what other sessions changed in the selected folder.

    RFC 3501 §7.4.1: no EXPUNGE during FETCH, STORE or SEARCH (``expunge``
    false): those changes stay pending, and so does everything after them,
    to keep the order.
    """
    sel = c.selected
    if sel is None or not sel.pending:
        return
    keep: list[Change] = []
    for change in sel.pending:
        if keep or (change.kind is ChangeKind.EXPUNGE and not expunge):
            keep.append(change)
            continue
        if change.folder != sel.folder:
            continue
        if change.kind is ChangeKind.EXPUNGE:
            _send_expunges(c, sel, list(change.uids))
        elif change.kind is ChangeKind.EXISTS:
            last = sel.uids[-1] if sel.uids else 0
            new = sorted(u for u in change.uids if u > last)
            sel.uids.extend(new)
            sel.uids_changed()
            added = set(new)
            for info in change.messages:
                if info.uid in added:
                    sel.flags[info.uid] = info.flags
            if new:
                c.untagged(len(sel.uids), imap.Atom("EXISTS"))
        elif change.kind is ChangeKind.FLAGS:
            for info in change.messages:
                seq = sel.seq_of(info.uid)
                if seq is None or sel.flags.get(info.uid) == info.flags:
                    continue
                sel.flags[info.uid] = info.flags
                c.untagged(
                    seq,
                    imap.Atom("FETCH"),
                    (imap.Atom("UID"), info.uid, imap.Atom("FLAGS"), _flags(sel, info)),
                )
    sel.pending = keep


# -- dispatch ------------------------------------------------------------------

COMMANDS: Final[
    dict[str, Callable[[ImapConnection, imap.CommandReceived], Awaitable[Done]]]
] = {
    "CAPABILITY": cmd_capability,
    "NOOP": cmd_noop,
    "LOGOUT": cmd_logout,
    "ID": cmd_id,
    "STARTTLS": cmd_starttls,
    "LOGIN": cmd_login,
    "AUTHENTICATE": cmd_authenticate,
    "SELECT": cmd_select,
    "EXAMINE": cmd_examine,
    "CREATE": cmd_create,
    "DELETE": cmd_delete,
    "RENAME": cmd_rename,
    "SUBSCRIBE": cmd_subscribe,
    "UNSUBSCRIBE": cmd_unsubscribe,
    "LIST": cmd_list,
    "LSUB": cmd_lsub,
    "STATUS": cmd_status,
    "APPEND": cmd_append,
    "NAMESPACE": cmd_namespace,
    "ENABLE": cmd_enable,
    "IDLE": cmd_idle,
    "CHECK": cmd_check,
    "CLOSE": cmd_close,
    "UNSELECT": cmd_unselect,
    "EXPUNGE": cmd_expunge,
    "SEARCH": cmd_search,
    "FETCH": cmd_fetch,
    "STORE": cmd_store,
    "COPY": cmd_copy,
    "MOVE": cmd_move,
}
# RFC 3501 §7.4.1: no untagged EXPUNGE while these run (UID forms excepted).
_NO_EXPUNGE: Final = frozenset({"FETCH", "STORE", "SEARCH"})


async def run_command(c: ImapConnection, cmd: imap.CommandReceived) -> None:
    """Run one command and write its tagged reply, whatever happens.

    The one place where the three error kinds become replies.
    """
    fn = COMMANDS[cmd.name]
    status, text, code = imap.Status.OK, "", None
    try:
        done = await fn(c, cmd)
        text, code = done.text, done.code
    except imap.CommandSyntaxError as exc:
        status, text = imap.Status.BAD, exc.text
    except CommandRefusedError as exc:
        status, text, code = imap.Status.NO, exc.text, exc.code
        log.info("imap %s refused: %s", cmd.name, exc, extra={"cid": c.cid})
    except ServerFaultError as exc:
        status, text, code = imap.Status.NO, exc.text, "UNAVAILABLE"
        log.error("imap %s failed: %s", cmd.name, exc, extra={"cid": c.cid})
    except (MailboxNotFoundError, FolderNotFoundError):
        status, text, code = imap.Status.NO, "No such mailbox", "NONEXISTENT"
    except FolderExistsError:
        status, text, code = imap.Status.NO, "Mailbox already exists", "ALREADYEXISTS"
    except FolderNotAllowedError as exc:
        status, text, code = imap.Status.NO, f"Not allowed: {exc.reason}", "CANNOT"
    except InvalidFlagError as exc:
        status, text = imap.Status.BAD, f"Invalid flag: {exc.reason}"
    except CorruptMessageError as exc:
        log.error("imap %s: corrupt message: %s", cmd.name, exc, extra={"cid": c.cid})
        status, text, code = imap.Status.NO, "Message unreadable", "CORRUPTION"
    except (StoreError, OSError, sqlite3.Error) as exc:
        log.error("imap %s: store failure: %s", cmd.name, exc, extra={"cid": c.cid})
        status, text, code = imap.Status.NO, "Temporary failure", "UNAVAILABLE"
    except Exception as exc:  # noqa: BLE001 - the per-command boundary
        # What no command expected (a directory failure, a bug): the session
        # goes on, the client may retry; the log says the type and the place,
        # never the text (it could quote message data).
        tb = traceback.extract_tb(exc.__traceback__)[-1:]
        where = f"{tb[0].filename}:{tb[0].lineno}" if tb else "?"
        log.error(
            "imap %s failed: %s at %s",
            cmd.name,
            type(exc).__name__,
            where,
            extra={"cid": c.cid},
        )
        status, text, code = imap.Status.NO, "Temporary failure", "UNAVAILABLE"
    if c.conn.state is not imap.State.LOGOUT:
        await flush_changes(c, expunge=cmd.uid or cmd.name not in _NO_EXPUNGE)
    c.write(c.conn.send(imap.Tagged(cmd.tag, status, text, code)))


__all__ = [
    "COMMANDS",
    "Done",
    "capabilities",
    "flush_changes",
    "run_command",
    "unselect",
]
