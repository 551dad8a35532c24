"""The composition root: build the relay from its config and run it.

``run_relay(cfg)`` is an async context manager. On entry it opens the
directory, the account, thread and mailbox stores, the spool and the audit
trail, queues what the spool still holds (a crash between ``250`` and
delivery loses nothing), and binds every enabled listener; it yields a
:class:`RunningRelay` with the bound addresses (port ``0`` in the config
means an ephemeral port, for tests). On exit it stops accepting, lets the
delivery queue drain (bounded), and closes everything, flushing the audit
trail. Production (``mssante serve``) and tests start the relay the same
way.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto as sslproto
import contextlib
import dataclasses
import json
import logging
import sys
import zoneinfo
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

from directory.config import open_directory
from mssante import Timeouts
from relay import policy
from relay.accounts import (
    SASL_MECHANISMS,
    AccountStore,
    Authenticator,
    LoginThrottle,
    Mechanism,
)
from relay.audit import AUDIT_FILE_NAME, AuditEvent, AuditTrail
from relay.audit_report import MonthlyReports, ReportContext
from relay.config import PatientReadReceipts
from relay.contact import ContactError
from relay.enrolment import Enrolment, notifier_for, site_url
from relay.imap import ImapContext, ImapServer
from relay.notify.dispatch import NoticeDispatcher, open_dispatcher
from relay.oauth import verifier_for
from relay.queue.commit import SpoolCommitter
from relay.queue.deliver import LocalDelivery
from relay.queue.notices import success_notices
from relay.queue.outbound import SqliteOutboundQueue
from relay.queue.receipts import ReadReceipts
from relay.queue.resolve import DnsResolver
from relay.queue.spool import Spool
from relay.queue.transfer import OutboundDelivery, TransferSettings
from relay.selfservice import SelfService
from relay.smime import RelaySmime
from relay.smtp.handler import HandlerContext, RelayHandler
from relay.smtp.server import RelaySMTP
from relay.store import MailStore, MasterKey
from relay.threads import ThreadStore
from relay.tls import TlsConfigError, client_context, server_context
from relay.web import WebError, serve_web

if TYPE_CHECKING:
    import ssl
    from collections.abc import AsyncIterator, Callable

    from directory.protocol import Directory
    from relay.config import Config, Listener
    from relay.contact import ContactNotifier

log = logging.getLogger("mssante.relay")

# How long shutdown waits for queued deliveries (they resume at next start).
DEFAULT_DRAIN_TIMEOUT: Final = 10.0
STORE_DIR_NAME: Final = "mail"
# With acceptor processes, how often the relay looks for their spool files.
SPOOL_POLL_INTERVAL: Final = 0.02
# Without them, how often it looks for files admin commands spooled (the
# break-glass notice, a recovery code for a caregiver): one listing a second.
ADMIN_SPOOL_POLL_INTERVAL: Final = 1.0
ACCEPTOR_START_TIMEOUT: Final = 60.0
# How long shutdown waits for messages between DATA and their reply.
SETTLE_TIMEOUT: Final = 30.0


class RelayError(Exception):
    """The relay cannot start; the message says what to fix."""


@dataclass(slots=True)
class RunningRelay:
    """A started relay: its bound addresses and its parts (for tests and the CLI)."""

    addresses: dict[str, tuple[str, int]]
    directory: Directory
    accounts: AccountStore
    store: MailStore
    audit: AuditTrail
    spool: Spool
    delivery: LocalDelivery
    threads: ThreadStore
    outbound: OutboundDelivery | None = None  # None: [delivery] enabled = false
    outbound_queue: SqliteOutboundQueue | None = None
    notices: NoticeDispatcher | None = None  # None: no [notices] channel
    servers: list[asyncio.Server] = field(default_factory=list)
    reports: MonthlyReports | None = None  # the patients' activity reports


def _no_protocol_traces(record: logging.LogRecord) -> bool:
    # aiosmtpd's DEBUG records trace message data line by line ("DATA
    # readline") and undecodable AUTH blobs: health data and credentials.
    # They never pass, whatever level an operator configures.
    return record.levelno > logging.DEBUG


def quiet_protocol_traces() -> None:
    """Drop aiosmtpd's content-bearing DEBUG traces (idempotent)."""
    logger = logging.getLogger("mail.log")
    if _no_protocol_traces not in logger.filters:
        logger.addFilter(_no_protocol_traces)


# asyncio allocates this read buffer for every TLS connection (256 KB in
# CPython 3.11's sslproto): on asyncio's loop (relay.eventloop's fallback);
# uvloop's TLS layer has its own. A TLS record holds at most 16 KB of data
# (RFC 8446 §5.1), so 32 KB reads whole records; it keeps an idle IMAP or
# SMTP session near 60 KB instead of 285 KB.
TLS_READ_BUFFER: Final = 32 * 1024


def small_tls_buffers() -> None:
    """Use :data:`TLS_READ_BUFFER` for the TLS connections of this process."""
    sslproto.SSLProtocol.max_size = TLS_READ_BUFFER


def load_master_key(cfg: Config) -> MasterKey:
    """The master key; created at the default place on first use (zero setup).

    A key file named in the config (``relay.master_key_file``) must exist: a
    production relay never invents its key.
    """
    path = cfg.master_key_file
    if cfg.relay.master_key_file is None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return MasterKey.generate(path)
    return MasterKey.load(path)


def _now() -> datetime:
    return datetime.now(UTC)


def local_domains(cfg: Config) -> policy.LocalDomains:
    return policy.LocalDomains(
        domains=frozenset(cfg.relay.local_domains),
        patient_domain=cfg.relay.patient_domain,
    )


async def _listen(
    name: str,
    listener: Listener,
    factory: Callable[[], RelaySMTP],
    ssl_context: ssl.SSLContext | None,
    *,
    reuse_port: bool = False,
) -> asyncio.Server:
    loop = asyncio.get_running_loop()
    try:
        return await loop.create_server(
            factory,
            listener.host,
            listener.port,
            ssl=ssl_context,
            reuse_address=True,
            reuse_port=reuse_port or None,
        )
    except OSError as exc:
        raise RelayError(
            f"smtp.{name}: cannot listen on {listener.host}:{listener.port}: {exc.strerror}"
        ) from exc


@contextlib.asynccontextmanager
async def _acceptor_processes(
    cfg: Config, count: int, addresses: dict[str, tuple[str, int]]
) -> AsyncIterator[None]:
    """Start ``count`` acceptor processes on the SMTP ports the relay bound.

    Each prints ``ready`` once it listens; the relay waits for that, and at
    exit sends SIGTERM and waits for them to finish their transactions.
    """
    ports = json.dumps({name: port for name, (_, port) in addresses.items()})
    procs: list[asyncio.subprocess.Process] = []
    try:
        for _ in range(count):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "relay.acceptor",
                str(cfg.source),
                ports,
                stdout=asyncio.subprocess.PIPE,
            )
            procs.append(proc)
        for proc in procs:
            assert proc.stdout is not None  # noqa: S101 - PIPE above
            async with asyncio.timeout(ACCEPTOR_START_TIMEOUT):
                line = await proc.stdout.readline()
            if line.strip() != b"ready":
                raise RelayError("smtp.processes: an acceptor process did not start")
        yield
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cfg.smtp.timeout):
                    await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def spool_only(acceptance: Acceptance) -> Callable[[str], None]:
    """An acceptor process announces nothing: the relay polls the spool."""
    del acceptance
    return lambda name: None


@dataclass(slots=True)
class Acceptance:
    """What accepting SMTP needs, opened from the config (see :func:`accepting`)."""

    directory: Directory
    accounts: AccountStore
    audit: AuditTrail
    threads: ThreadStore
    spool: Spool
    smime: RelaySmime | None
    authenticator: Authenticator
    addresses: dict[str, tuple[str, int]]
    servers: list[asyncio.Server]
    plain_ctx: ssl.SSLContext
    throttle: LoginThrottle
    handler: RelayHandler | None = None  # set once the listeners are up
    # The relay's local delivery, which stores all-local mail before its
    # 250 (relay.queue.commit); None in an acceptor process.
    direct: LocalDelivery | None = None


@contextlib.asynccontextmanager
async def accepting(
    cfg: Config,
    master: MasterKey,
    deliveries: Callable[[Acceptance], Callable[[str], None]],
    *,
    clock: Callable[[], datetime],
    ports: dict[str, int] | None = None,
    reuse_port: bool = False,
) -> AsyncIterator[Acceptance]:
    """Open the acceptance side and listen on the SMTP ports.

    ``ports`` overrides the configured ports by listener name (acceptor
    processes take the ports the relay bound); ``reuse_port`` lets several
    processes listen on the same ports (``SO_REUSEPORT``: the kernel spreads
    the connections).
    """
    assert cfg.tls is not None  # noqa: S101 - checked by the callers
    data_dir = cfg.relay.data_dir
    async with contextlib.AsyncExitStack() as stack:
        directory = await open_directory(cfg.directory)
        stack.push_async_callback(directory.close)
        accounts = AccountStore.for_config(cfg)
        stack.callback(accounts.close)
        audit = AuditTrail(data_dir / AUDIT_FILE_NAME, master.derive("audit"))
        stack.callback(audit.close)
        threads = ThreadStore.open(data_dir, master.derive("threads"))
        stack.callback(threads.close)
        spool = Spool.open(data_dir, master.derive("spool"))
        smime = (
            RelaySmime(
                cfg.smime, data_dir=data_dir, hostname=cfg.relay.hostname, audit=audit
            )
            if cfg.smime is not None
            else None
        )
        throttle = LoginThrottle(
            max_failures=cfg.auth.max_failures,
            max_failures_per_peer=cfg.auth.max_failures_per_peer,
            lockout=cfg.auth.lockout,
            base_delay=cfg.auth.failure_delay,
            max_delay=cfg.auth.max_failure_delay,
        )
        authenticator = Authenticator(
            accounts=accounts,
            throttle=throttle,
            audit=audit,
            directory=directory,
            mechanisms=cfg.auth.mechanisms,
            tokens=verifier_for(cfg.auth.oauth) if cfg.auth.oauth else None,
        )
        # SASL EXTERNAL: submission and IMAP ask for a client certificate
        # (verified against the trust anchors) when some account kind uses it.
        plain_ctx = server_context(
            cfg.tls,
            ask_client_certificate=authenticator.offers(Mechanism.EXTERNAL),
        )
        acceptance = Acceptance(
            directory=directory,
            accounts=accounts,
            audit=audit,
            threads=threads,
            spool=spool,
            smime=smime,
            authenticator=authenticator,
            addresses={},
            servers=[],
            plain_ctx=plain_ctx,
            throttle=throttle,
        )
        # Group commit: what is spooled is announced to delivery by file;
        # all-local mail is stored in its mailboxes before its 250 instead
        # (the relay's delivery; acceptor processes have none).
        announce = deliveries(acceptance)
        committer = SpoolCommitter(spool, announce, direct=acceptance.direct)
        stack.push_async_callback(committer.close)
        ctx = HandlerContext(
            directory=directory,
            audit=audit,
            spool=committer,
            threads=threads,
            local=local_domains(cfg),
            hostname=cfg.relay.hostname,
            clock=clock,
            smime=smime,
            authenticator=authenticator,
            remote_delivery=cfg.delivery.enabled,
            patients=cfg.patients,
        )
        acceptance.handler = RelayHandler(ctx)
        await _smtp_listeners(cfg, acceptance.handler, acceptance, ports, reuse_port)
        try:
            yield acceptance
        finally:
            for server in acceptance.servers:
                server.close()
            for server in acceptance.servers:
                await server.wait_closed()
            # Messages in DATA get their reply before the spool and the audit
            # trail close (SIGTERM: stop accepting, finish transactions).
            await acceptance.handler.settled(within=SETTLE_TIMEOUT)


async def _smtp_listeners(
    cfg: Config,
    handler: RelayHandler,
    acceptance: Acceptance,
    ports: dict[str, int] | None,
    reuse_port: bool,
) -> None:
    assert cfg.tls is not None  # noqa: S101 - checked by the callers
    plain_ctx = acceptance.plain_ctx
    mx_ctx = (
        server_context(cfg.tls, ask_client_certificate=True)
        if cfg.smtp.mx.enabled
        else None
    )
    smtp = cfg.smtp
    all_sasl = sorted({n for names in SASL_MECHANISMS.values() for n in names})
    offered = acceptance.authenticator.sasl_names()
    common: dict[str, Any] = {
        # Only the mechanisms some account kind may use are advertised.
        "auth_exclude_mechanism": [n for n in all_sasl if n not in offered],
        "hostname": cfg.relay.hostname,
        "data_size_limit": cfg.relay.max_message_size,
        "enable_SMTPUTF8": True,
        "timeout": smtp.timeout,
    }

    def submission() -> RelaySMTP:
        return RelaySMTP(
            handler,
            channel=policy.Channel.SUBMISSION,
            tls_context=plain_ctx,
            require_starttls=True,
            auth_require_tls=True,
            **common,
        )

    def submissions() -> RelaySMTP:
        # Implicit TLS (RFC 8314): the whole session is TLS, so AUTH is
        # offered at once; aiosmtpd only knows STARTTLS as "TLS".
        return RelaySMTP(
            handler,
            channel=policy.Channel.SUBMISSION,
            implicit_tls=True,
            auth_require_tls=False,
            **common,
        )

    def mx() -> RelaySMTP:
        return RelaySMTP(
            handler,
            channel=policy.Channel.MX,
            tls_context=mx_ctx,
            require_starttls=True,
            # No AUTH on MX: operators are known by their certificate.
            **{**common, "auth_exclude_mechanism": all_sasl},
        )

    listeners: list[
        tuple[str, Listener, Callable[[], RelaySMTP], ssl.SSLContext | None]
    ] = []
    if smtp.submission.enabled:
        listeners.append(("submission", smtp.submission, submission, None))
    if smtp.submissions.enabled:
        listeners.append(("submissions", smtp.submissions, submissions, plain_ctx))
    if smtp.mx.enabled:
        listeners.append(("mx", smtp.mx, mx, None))
    for name, listener, factory, implicit in listeners:
        if ports is not None:
            listener = dataclasses.replace(listener, port=ports[name])
        server = await _listen(name, listener, factory, implicit, reuse_port=reuse_port)
        acceptance.servers.append(server)
        host, port = server.sockets[0].getsockname()[:2]
        acceptance.addresses[name] = (host, port)


def _outbound_delivery(
    cfg: Config,
    queue: SqliteOutboundQueue,
    directory: Directory,
    store: MailStore,
    audit: AuditTrail,
    clock: Callable[[], datetime],
) -> OutboundDelivery:
    """Delivery to other operators: mutual TLS with [tls]'s certificate by default."""
    settings = cfg.delivery
    assert cfg.tls is not None  # noqa: S101 - checked by run_relay
    anchors = settings.trust_anchors_file or cfg.tls.trust_anchors_file
    if anchors is None:
        raise RelayError(
            "delivery.trust_anchors_file: required to deliver to other operators"
            " (or set tls.trust_anchors_file, or delivery.enabled = false)"
        )
    try:
        tls = client_context(
            cert_file=settings.client_cert_file or cfg.tls.cert_file,
            key_file=settings.client_key_file or cfg.tls.key_file,
            trust_anchors_file=anchors,
            crl_files=settings.crl_files,
        )
    except TlsConfigError as exc:
        raise RelayError(str(exc)) from exc
    return OutboundDelivery(
        queue=queue,
        resolver=DnsResolver(settings.nameservers, port=settings.dns_port),
        directory=directory,
        store=store,
        audit=audit,
        tls=tls,
        hostname=cfg.relay.hostname,
        clock=clock,
        settings=TransferSettings(
            port=settings.port,
            retry=settings.retry,
            concurrency=settings.concurrency,
            destination_concurrency=settings.destination_concurrency,
            timeouts=Timeouts(
                connect=settings.connect_timeout,
                command=settings.command_timeout,
                data=max(settings.command_timeout, 600.0),
            ),
        ),
    )


@contextlib.asynccontextmanager
async def run_relay(
    cfg: Config,
    *,
    clock: Callable[[], datetime] = _now,
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
    notifier: ContactNotifier | None = None,
) -> AsyncIterator[RunningRelay]:
    """Start the relay described by ``cfg``; stop it when the block exits.

    ``notifier`` reaches patients' ordinary contacts (default: the channels
    of ``cfg``).
    """
    if cfg.tls is None:
        raise RelayError("tls: the [tls] table is required to serve")
    processes = cfg.smtp.processes
    if processes > 1 and cfg.source is None:
        raise RelayError("smtp.processes: more than one needs a config file")
    data_dir = cfg.relay.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    quiet_protocol_traces()
    small_tls_buffers()
    master = load_master_key(cfg)
    async with contextlib.AsyncExitStack() as stack:
        store = MailStore.open(data_dir / STORE_DIR_NAME, master)
        stack.callback(store.close)
        local = local_domains(cfg)
        made: list[LocalDelivery] = []
        outbound_queue: SqliteOutboundQueue | None = None
        if cfg.delivery.enabled:
            outbound_queue = SqliteOutboundQueue.open(
                data_dir, master.derive("outbound")
            )
            stack.callback(outbound_queue.close)
        outbound: list[OutboundDelivery] = []
        loop = asyncio.get_running_loop()

        def outbound_queued() -> None:
            # Called from a delivery thread.
            for transfer in outbound:
                loop.call_soon_threadsafe(transfer.wake)

        notices: list[NoticeDispatcher] = []

        def local_delivery(acceptance: Acceptance) -> Callable[[str], None]:
            # Issue 10: new-message notices to patients' ordinary contacts.
            try:
                dispatcher = open_dispatcher(
                    cfg,
                    directory=acceptance.directory,
                    audit=acceptance.audit,
                    is_patient_address=local.is_patient_address,
                    clock=clock,
                )
            except ContactError as exc:
                raise RelayError(str(exc)) from exc
            if dispatcher is not None:
                stack.callback(dispatcher.close)
                notices.append(dispatcher)
            delivery = LocalDelivery(
                spool=acceptance.spool,
                store=store,
                audit=acceptance.audit,
                is_local=local.is_local,
                clock=clock,
                success_notice=success_notices(cfg.relay.hostname, clock),
                protection=acceptance.smime,
                directory=acceptance.directory,
                outbound=outbound_queue,
                on_outbound=outbound_queued,
                on_delivered=dispatcher.delivered if dispatcher is not None else None,
            )
            made.append(delivery)
            acceptance.direct = delivery
            return delivery.submit

        acceptance = await stack.enter_async_context(
            accepting(
                cfg, master, local_delivery, clock=clock, reuse_port=processes > 1
            )
        )
        [delivery] = made
        for dispatcher in notices:
            dispatcher.start()
            stack.push_async_callback(dispatcher.stop)
        # Acceptor processes write to the spool; the relay looks at it often.
        # Admin commands may too (patient notices): then once a second.
        delivery.start(
            poll_interval=SPOOL_POLL_INTERVAL
            if processes > 1
            else ADMIN_SPOOL_POLL_INTERVAL
        )
        stack.push_async_callback(delivery.stop)
        directory = acceptance.directory
        if outbound_queue is not None:
            transfer = _outbound_delivery(
                cfg, outbound_queue, directory, store, acceptance.audit, clock
            )
            outbound.append(transfer)
            transfer.start()
            stack.push_async_callback(transfer.stop)
        if cfg.delivery.patient_read_receipts is PatientReadReceipts.ALWAYS:
            receipts = ReadReceipts(
                store=store,
                spool=acceptance.spool,
                announce=delivery.submit,
                audit=acceptance.audit,
                is_patient_address=local.is_patient_address,
                hostname=cfg.relay.hostname,
                clock=clock,
            )
            receipts.start()
            stack.push_async_callback(receipts.stop)
        # The patients' monthly activity reports, and on-demand ones the CLI
        # asks for while the relay holds the store (issue 10).
        report_ctx = ReportContext(
            store=store,
            directory=directory,
            audit=acceptance.audit,
            patient_domain=cfg.relay.patient_domain,
            hostname=cfg.relay.hostname,
            zone=zoneinfo.ZoneInfo(cfg.audit.timezone),
        )
        reports = MonthlyReports(
            report_ctx,
            cfg.audit,
            data_dir=data_dir,
            clock=clock,
        )
        reports.start()
        stack.push_async_callback(reports.stop)
        accounts = acceptance.accounts
        audit = acceptance.audit
        spool = acceptance.spool
        throttle = acceptance.throttle
        authenticator = acceptance.authenticator
        plain_ctx = acceptance.plain_ctx
        running = RunningRelay(
            addresses=dict(acceptance.addresses),
            directory=directory,
            accounts=accounts,
            store=store,
            audit=audit,
            spool=spool,
            delivery=delivery,
            threads=acceptance.threads,
            outbound=outbound[0] if outbound else None,
            outbound_queue=outbound_queue,
            reports=reports,
            notices=notices[0] if notices else None,
        )
        if processes > 1:
            await stack.enter_async_context(
                _acceptor_processes(cfg, processes - 1, acceptance.addresses)
            )
        # IMAP (issue 5): "imap" is STARTTLS (143), "imaps" implicit TLS (993).
        imap_ctx = ImapContext(
            store=store,
            accounts=accounts,
            throttle=throttle,
            audit=audit,
            directory=directory,
            tls_context=plain_ctx,
            hostname=cfg.relay.hostname,
            auth_failure_delay=cfg.auth.failure_delay,
            clock=clock,
            max_message_size=cfg.relay.max_message_size,
            authenticator=authenticator,
            timeout=cfg.imap.timeout,
        )
        imap_handlers: list[ImapServer] = []
        for name, imap_listener, implicit_tls in (
            ("imap", cfg.imap.plain, False),
            ("imaps", cfg.imap.implicit, True),
        ):
            if not imap_listener.enabled:
                continue
            imap_handler = ImapServer(imap_ctx, implicit_tls=implicit_tls)
            try:
                server = await asyncio.start_server(
                    imap_handler,
                    imap_listener.host,
                    imap_listener.port,
                    ssl=plain_ctx if implicit_tls else None,
                    reuse_address=True,
                )
            except OSError as exc:
                raise RelayError(
                    f"imap.{'implicit' if implicit_tls else 'plain'}: cannot listen on"
                    f" {imap_listener.host}:{imap_listener.port}: {exc.strerror}"
                ) from exc
            imap_handlers.append(imap_handler)
            running.servers.append(server)
            host, port = server.sockets[0].getsockname()[:2]
            running.addresses[name] = (host, port)
        if cfg.web.listener.enabled:
            # Enrolment and recovery over HTTPS (issue 10), TLS as the relay's.
            enrolment = Enrolment(
                accounts=accounts,
                directory=directory,
                audit=audit,
                notifier=notifier or notifier_for(cfg),
                settings=cfg.enrolment,
                web=cfg.web,
                patient_domain=cfg.relay.patient_domain,
                site=site_url(cfg),
                clock=clock,
            )
            try:
                running.addresses["web"] = await stack.enter_async_context(
                    serve_web(
                        cfg.web.listener,
                        server_context(cfg.tls, ask_client_certificate=False),
                        enrolment,
                        # The patient's own pages (/compte): same accounts,
                        # throttle and audit as SMTP and IMAP.
                        SelfService(
                            authenticator=authenticator,
                            directory=directory,
                            audit=audit,
                            patient_domain=cfg.relay.patient_domain,
                            reports=report_ctx,
                            lockout=cfg.auth.lockout,
                            clock=clock,
                        ),
                    )
                )
            except WebError as exc:
                raise RelayError(str(exc)) from exc
        audit.emit(
            AuditEvent.RELAY_STARTED,
            listeners={k: f"{h}:{p}" for k, (h, p) in running.addresses.items()},
            queued=len(spool.pending()),
            # Whether messages are verified, sealed and encrypted ("off": none).
            smime=cfg.smime.describe() if cfg.smime is not None else "off",
            # Who may log in how (issue 6); production forbids main passwords
            # for practitioner and organisation accounts.
            auth_production=cfg.auth.production,
            auth_mechanisms=cfg.auth.mechanisms.describe(),
            auth_sasl=authenticator.sasl_names(),
        )
        if not cfg.auth.production:
            log.warning(
                "auth: demo mode, main passwords accepted for every account kind;"
                " set [auth] production = true to require tokens, certificates"
                " or app passwords for practitioner and organisation accounts"
            )
        else:
            log.warning(
                "auth: production mode, main passwords refused for: %s",
                ", ".join(
                    k.value
                    for k, ms in cfg.auth.mechanisms.allowed
                    if Mechanism.PASSWORD not in ms
                )
                or "none",
            )
        try:
            yield running
        finally:
            # Stop accepting first (SMTP and IMAP), then let deliveries drain.
            for server in [*acceptance.servers, *running.servers]:
                server.close()
            for imap_handler in imap_handlers:
                await imap_handler.close_connections()
            for server in running.servers:
                await server.wait_closed()
            if acceptance.handler is not None:
                await acceptance.handler.settled(within=drain_timeout)
            await delivery.drain(within=drain_timeout)
            audit.emit(AuditEvent.RELAY_STOPPED)
