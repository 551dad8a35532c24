"""Export of the whole directory (or some kinds) as JSON or LDIF.

Both stream: entries are read from the backend in pages and written as they
come, so an export of the full national volumes runs in bounded memory.

- JSON: one array of records (:func:`directory.model.to_record`), which
  ``mssante directory`` can read back and which round-trips to equal entries.
- LDIF (RFC 2849): the entries as the LDAP backend stores them
  (:func:`directory.ldap.entry_record`), loadable with ``ldapadd``/``slapadd`` into a
  slapd that has our schema.
"""

from __future__ import annotations

import base64
import json
from typing import IO, TYPE_CHECKING

from directory.model import to_record

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from directory.model import Kind
    from directory.protocol import Directory


async def export_json(directory: Directory, out: IO[str], kinds: Iterable[Kind]) -> int:
    """Write a JSON array of every entry of ``kinds``; returns the count."""
    n = 0
    out.write("[")
    for kind in kinds:
        async for entry in directory.entries(kind):
            out.write(",\n" if n else "\n")
            out.write(json.dumps(to_record(entry), ensure_ascii=False, sort_keys=True))
            n += 1
    out.write("\n]\n" if n else "]\n")
    return n


def _ldif_value(name: str, value: str | bytes) -> str:
    """One ``attr: value`` line, base64 (``attr:: ...``) when RFC 2849 §4 says so."""
    if isinstance(value, str) and _ldif_safe(value):
        return f"{name}: {value}"
    raw = value if isinstance(value, bytes) else value.encode("utf-8")
    return f"{name}:: {base64.b64encode(raw).decode('ascii')}"


def _ldif_safe(value: str) -> bool:
    """RFC 2849 §2 SAFE-STRING: printable ASCII, no leading space, ':' or '<'."""
    return (
        value == value.strip()
        and not value.startswith((":", "<"))
        and all(32 <= ord(c) < 127 for c in value)
    )


def _fold(line: str, width: int = 76) -> str:
    """RFC 2849 line folding: continuation lines start with one space."""
    if len(line) <= width:
        return line
    parts = [line[:width]]
    rest = line[width:]
    while rest:
        parts.append(" " + rest[: width - 1])
        rest = rest[width - 1 :]
    return "\n".join(parts)


async def export_ldif(
    directory: Directory, out: IO[str], kinds: Iterable[Kind], *, base_dn: str
) -> int:
    """Write every entry of ``kinds`` as LDIF records; returns the count."""
    from directory.ldap import containers, entry_record  # ldap3 only when used

    n = 0
    out.write("version: 1\n")
    for dn, attributes in containers(base_dn):
        out.write(_record(dn, attributes))
    for kind in kinds:
        async for entry in directory.entries(kind):
            dn, attributes = entry_record(entry, base_dn)
            out.write(_record(dn, attributes))
            n += 1
    return n


def _record(dn: str, attributes: Mapping[str, Sequence[str | bytes]]) -> str:
    lines = ["", _fold(_ldif_value("dn", dn))]
    for name, values in attributes.items():
        lines.extend(_fold(_ldif_value(name, v)) for v in values)
    return "\n".join(lines) + "\n"
