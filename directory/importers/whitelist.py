"""The MSSanté operators' whitelist (``listeblanchemssante.xml``) -> operators.

Owns the XML layout, its safe parsing, the diff against what is loaded, and
the import run.

Layout (namespace :data:`NAMESPACE`)::

    <ListeBlancheMSSante>
      <DateDeGeneration>2026-11-20T03:00:00+01:00</DateDeGeneration>
      <ListeDomaines>
        <Domaine>                         one per (domain, authorised DN)
          <Nom>operateur.mssante.fr</Nom>
          <Description>...</Description>
          <DNCertificatOperateur>CN=...,O=...,C=FR</DNCertificatOperateur>
          <SupportContact>...</SupportContact>   any child named *Contact*
          <DateMAJ>2026-01-15</DateMAJ>
        </Domaine>
        ...

A domain with two authorised certificate DNs appears in two ``Domaine``
elements; they become one :class:`~directory.model.Operator` with two
:class:`~directory.model.OperatorCertificate` items (source ``"whitelist"``).

What must stay true:

- **Safe parsing.** The file comes from outside. It is parsed with the stdlib
  expat parser, streamed by chunks, and any DOCTYPE, entity declaration or
  external entity reference is refused (:class:`UnsafeXmlError`): no DTD, so
  no entity expansion (billion laughs) and no external fetch (XXE). This is
  what defusedxml does for expat, reduced to a refusal of DTDs, which a
  whitelist never needs.
- **Nothing written on a file-level error**: the whole file is parsed, its
  SHA-256 checked against the expected one (when given) and its generation
  date compared with the loaded one before the first write.
- **No going back.** A file whose ``DateDeGeneration`` is older than the one
  loaded (meta :data:`META_GENERATED`) is refused (:class:`StaleWhitelistError`);
  the same date is allowed and re-importing is idempotent. Dates without a
  time zone are read as UTC.
- Domains absent from the file are suspended (never deleted); an operator an
  admin suspended stays suspended (:func:`directory.protocol.plan_batch`).
- A ``Domaine`` element with a bad domain, DN or date is rejected with its
  line number; the others are imported.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import IO, TYPE_CHECKING, Any, Final
from xml.parsers import expat

from directory import identifiers as ids
from directory.errors import InvalidFieldError
from directory.importers._errors import (
    ChecksumMismatchError,
    ImportFileError,
    StaleWhitelistError,
    UnsafeXmlError,
)
from directory.importers._run import Reject
from directory.model import (
    SOURCE_WHITELIST,
    Kind,
    Operator,
    OperatorCertificate,
    Status,
)
from directory.protocol import BatchCounts, Directory, ImportRun

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

NAMESPACE: Final = "https://listeblanche.mssante.fr/schema"
ROOT: Final = "ListeBlancheMSSante"
META_GENERATED: Final = "whitelist.generated"
META_SHA256: Final = "whitelist.sha256"
_CHUNK: Final = 64 * 1024
# A whitelist is a few hundred KB; no text node of it comes near this.
MAX_TEXT_CHARS: Final = 64 * 1024
_SEP: Final = " "  # expat namespace separator: "<uri> <local>"


@dataclass(frozen=True, slots=True)
class DomainRecord:
    """One ``Domaine`` element: a (domain, DN) pair and its details."""

    line: int
    fields: Mapping[str, tuple[str, ...]]  # child local name -> texts

    def first(self, name: str) -> str:
        values = self.fields.get(name, ())
        return values[0] if values else ""


@dataclass(frozen=True, slots=True)
class ParsedWhitelist:
    generated: str
    records: tuple[DomainRecord, ...]
    sha256: str


class _Collector:
    """expat handlers that collect the ``Domaine`` records, refusing DTDs."""

    def __init__(self, parser: expat.XMLParserType) -> None:
        self._parser = parser
        self._stack: list[str] = []
        self._text: list[str] = []
        self._text_len = 0
        self._fields: dict[str, list[str]] | None = None
        self._line = 0
        self.generated = ""
        self.records: list[DomainRecord] = []
        parser.StartDoctypeDeclHandler = self._doctype
        parser.EntityDeclHandler = self._entity
        parser.ExternalEntityRefHandler = self._external
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self._chars
        parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)

    def _where(self) -> str:
        return f"line {self._parser.CurrentLineNumber}"

    def _doctype(self, *_: object) -> None:
        raise UnsafeXmlError(f"{self._where()}: DOCTYPE refused (no DTD allowed)")

    def _entity(self, *_: object) -> None:
        raise UnsafeXmlError(f"{self._where()}: entity declaration refused")

    def _external(self, *_: object) -> int:
        raise UnsafeXmlError(f"{self._where()}: external entity refused")

    def _start(self, name: str, _attrs: dict[str, str]) -> None:
        uri, sep, local = name.rpartition(_SEP)
        if not sep or uri != NAMESPACE:
            msg = f"{self._where()}: element {local!r} is not in namespace {NAMESPACE}"
            raise ImportFileError(msg)
        if not self._stack and local != ROOT:
            msg = f"{self._where()}: root element is {local!r}, expected {ROOT!r}"
            raise ImportFileError(msg)
        self._stack.append(local)
        self._text, self._text_len = [], 0
        if self._stack == [ROOT, "ListeDomaines", "Domaine"]:
            self._fields = {}
            self._line = self._parser.CurrentLineNumber

    def _end(self, _name: str) -> None:
        local = self._stack.pop()
        text = "".join(self._text).strip()
        self._text, self._text_len = [], 0
        if self._stack == [ROOT] and local == "DateDeGeneration":
            self.generated = text
        elif self._stack == [ROOT, "ListeDomaines", "Domaine"]:
            if self._fields is not None:
                self._fields.setdefault(local, []).append(text)
        elif local == "Domaine" and self._fields is not None:
            fields = {k: tuple(v) for k, v in self._fields.items()}
            self.records.append(DomainRecord(self._line, fields))
            self._fields = None

    def _chars(self, data: str) -> None:
        self._text_len += len(data)
        if self._text_len > MAX_TEXT_CHARS:
            msg = f"{self._where()}: text longer than {MAX_TEXT_CHARS} characters"
            raise ImportFileError(msg)
        self._text.append(data)


def parse_whitelist(stream: IO[bytes]) -> ParsedWhitelist:
    """Parse a whitelist safely, streaming; also returns the file's SHA-256.

    Raises:
        UnsafeXmlError: a DOCTYPE, an entity, or XML that is not well-formed.
        ImportFileError: well-formed XML that is not a whitelist (root,
            namespace, no ``DateDeGeneration``).
    """
    parser = expat.ParserCreate(encoding=None, namespace_separator=_SEP)
    collector = _Collector(parser)
    digest = hashlib.sha256()
    try:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            parser.Parse(chunk, False)
        parser.Parse(b"", True)
    except expat.ExpatError as exc:
        msg = f"not well-formed XML: {expat.ErrorString(exc.code)} at line {exc.lineno}"
        raise UnsafeXmlError(msg) from exc
    if not collector.generated:
        raise ImportFileError(f"{ROOT}: no DateDeGeneration")
    if not collector.records:
        # An empty list would suspend every operator: refuse it as a bad file.
        raise ImportFileError(f"{ROOT}: no Domaine element")
    return ParsedWhitelist(
        collector.generated, tuple(collector.records), digest.hexdigest()
    )


def generation_time(value: str, field_name: str = "DateDeGeneration") -> datetime:
    """An ISO 8601 generation date; a date without a zone is read as UTC."""
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidFieldError(field_name, value, "not an ISO 8601 date") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def build_operators(
    records: tuple[DomainRecord, ...],
) -> tuple[list[Operator], list[Reject]]:
    """Group ``Domaine`` records by domain into operators. Pure.

    The first non-empty description wins; contacts are the union (sorted);
    ``updated`` is the latest ``DateMAJ``.
    """
    rejects: list[Reject] = []
    grouped: dict[str, list[tuple[OperatorCertificate, DomainRecord]]] = {}
    for record in records:
        try:
            domain = ids.domain(record.first("Nom"), "Nom")
            cert = OperatorCertificate(
                subject_dn=ids.distinguished_name(
                    record.first("DNCertificatOperateur"), "DNCertificatOperateur"
                )
            )
            if record.first("DateMAJ"):
                _updated(record)
        except InvalidFieldError as exc:
            rejects.append(Reject(record.line, str(exc)))
            continue
        grouped.setdefault(domain, []).append((cert, record))
    operators = []
    for domain, items in sorted(grouped.items()):
        descriptions = [r.first("Description") for _, r in items]
        contacts = {
            text
            for _, r in items
            for name, texts in r.fields.items()
            if "Contact" in name
            for text in texts
            if text
        }
        dates = [d for _, r in items if (d := _updated(r)) is not None]
        operators.append(
            Operator(
                domain=domain,
                certificates=tuple(c for c, _ in items),
                description=next((d for d in descriptions if d), ""),
                contacts=tuple(sorted(contacts)),
                updated=max(dates, default=None),
                source=SOURCE_WHITELIST,
            )
        )
    return operators, rejects


def _updated(record: DomainRecord) -> date | None:
    text = record.first("DateMAJ")
    if not text:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        raise InvalidFieldError("DateMAJ", text, "not an ISO 8601 date") from None


@dataclass(frozen=True, slots=True)
class WhitelistDiff:
    """What changed between the loaded whitelist and the new file."""

    domains_added: tuple[str, ...] = ()
    domains_removed: tuple[str, ...] = ()
    dns_added: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    dns_removed: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (
            self.domains_added
            or self.domains_removed
            or self.dns_added
            or self.dns_removed
        )

    def lines(self) -> list[str]:
        """One line per change (``+``/``-``), for the CLI and the audit trail."""
        out = [f"+ domain {d}" for d in self.domains_added]
        out += [f"- domain {d}" for d in self.domains_removed]
        out += [f"+ {d} DN {dn}" for d, dns in self.dns_added.items() for dn in dns]
        out += [f"- {d} DN {dn}" for d, dns in self.dns_removed.items() for dn in dns]
        return out


def diff_whitelist(
    old: Mapping[str, frozenset[str]], new: Mapping[str, frozenset[str]]
) -> WhitelistDiff:
    """Compare domain -> authorised DNs maps. Pure.

    A new domain's DNs are not listed again under ``dns_added`` (nor a
    removed domain's under ``dns_removed``).
    """
    common = sorted(old.keys() & new.keys())
    added = {d: tuple(sorted(new[d] - old[d])) for d in common}
    removed = {d: tuple(sorted(old[d] - new[d])) for d in common}
    return WhitelistDiff(
        domains_added=tuple(sorted(new.keys() - old.keys())),
        domains_removed=tuple(sorted(old.keys() - new.keys())),
        dns_added={d: v for d, v in added.items() if v},
        dns_removed={d: v for d, v in removed.items() if v},
    )


@dataclass(slots=True, kw_only=True)
class WhitelistReport:
    path: Path
    run_id: str
    generated: str
    previous: str | None  # the generation date loaded before, if any
    sha256: str
    domains: int = 0
    certificates: int = 0
    counts: BatchCounts = field(default_factory=BatchCounts)
    suspended: list[str] = field(default_factory=list)
    diff: WhitelistDiff = field(default_factory=WhitelistDiff)
    rejects: list[Reject] = field(default_factory=list)
    elapsed: float = 0.0

    def to_record(self) -> dict[str, Any]:
        """A JSON-compatible dict (``mssante directory import-whitelist --json``)."""
        return {
            "file": str(self.path),
            "run_id": self.run_id,
            "generated": self.generated,
            "previous": self.previous,
            "sha256": self.sha256,
            "domains": self.domains,
            "certificates": self.certificates,
            "added": self.counts.added,
            "updated": self.counts.updated,
            "unchanged": self.counts.unchanged,
            "suspended": self.suspended,
            "diff": {
                "domains_added": list(self.diff.domains_added),
                "domains_removed": list(self.diff.domains_removed),
                "dns_added": {d: list(v) for d, v in self.diff.dns_added.items()},
                "dns_removed": {d: list(v) for d, v in self.diff.dns_removed.items()},
            },
            "rejects": [{"line": r.line, "reason": r.reason} for r in self.rejects],
            "elapsed_seconds": round(self.elapsed, 3),
        }

    def describe(self) -> str:
        """The report as text, one change per line."""
        c = self.counts
        lines = [
            f"whitelist {self.path.name} generated {self.generated}"
            f" (previous: {self.previous or 'none'}): {self.domains} domains,"
            f" {self.certificates} certificate DNs",
            f"  operators added {c.added}, updated {c.updated}, unchanged"
            f" {c.unchanged}, suspended {len(self.suspended)}",
        ]
        lines += [f"  {line}" for line in self.diff.lines()] or ["  no change"]
        lines += [f"  rejected {r}" for r in self.rejects]
        return "\n".join(lines)


def _dn_map(operators: list[Operator]) -> dict[str, frozenset[str]]:
    return {
        o.domain: frozenset(c.subject_dn for c in o.certificates) for o in operators
    }


async def loaded_whitelist(directory: Directory) -> dict[str, frozenset[str]]:
    """Domain -> DNs of the active operators that came from the whitelist."""
    loaded = [
        entry
        async for entry in directory.entries(Kind.OPERATOR)
        if isinstance(entry, Operator)
        and entry.source == SOURCE_WHITELIST
        and entry.status is Status.ACTIVE
    ]
    return _dn_map(loaded)


async def import_whitelist(
    directory: Directory,
    path: Path,
    *,
    expected_sha256: str | None = None,
    run_id: str | None = None,
) -> WhitelistReport:
    """Load the operators' whitelist into ``directory``.

    Args:
        expected_sha256: when given, the file's SHA-256 (hex, colons allowed)
            must equal it.
        run_id: the import run's unique id (default: a random one).

    Returns:
        The :class:`WhitelistReport`, with the diff against what was loaded.

    Raises:
        UnsafeXmlError, ImportFileError: the file is not a safe, well-formed
            whitelist.
        ChecksumMismatchError: the SHA-256 differs from ``expected_sha256``.
        StaleWhitelistError: the file is older than the loaded whitelist.
        InvalidFieldError: ``DateDeGeneration`` or ``expected_sha256`` is
            malformed.
        DirectoryUnavailableError: the backend failed.
    All but the last are raised before anything is written.
    """
    started = time.monotonic()
    expected = (
        ids.sha256_fingerprint(expected_sha256, "expected_sha256")
        if (expected_sha256 is not None)
        else None
    )
    with path.open("rb") as f:
        parsed = parse_whitelist(f)
    if expected is not None and parsed.sha256 != expected:
        raise ChecksumMismatchError(expected, parsed.sha256)
    generated = generation_time(parsed.generated)
    previous = await directory.get_meta(META_GENERATED)
    if previous is not None and generated < generation_time(previous, META_GENERATED):
        raise StaleWhitelistError(parsed.generated, previous)
    operators, rejects = build_operators(parsed.records)
    run = ImportRun(SOURCE_WHITELIST, run_id or f"whitelist-{uuid.uuid4().hex}")
    report = WhitelistReport(
        path=path,
        run_id=run.run_id,
        generated=parsed.generated,
        previous=previous,
        sha256=parsed.sha256,
        domains=len(operators),
        certificates=sum(len(o.certificates) for o in operators),
        rejects=rejects,
    )
    report.diff = diff_whitelist(await loaded_whitelist(directory), _dn_map(operators))
    if operators:
        report.counts = await directory.import_batch(operators, run)
    report.suspended = sorted(await directory.suspend_absent(Kind.OPERATOR, run))
    await directory.set_meta(META_GENERATED, parsed.generated)
    await directory.set_meta(META_SHA256, parsed.sha256)
    report.elapsed = time.monotonic() - started
    return report
