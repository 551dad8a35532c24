"""Human-readable rendering of directory entries: tables and detail views."""

from __future__ import annotations

from typing import TYPE_CHECKING

from directory.model import (
    Delegation,
    Entry,
    Mailbox,
    Operator,
    Organisation,
    Patient,
    Practitioner,
    key_of,
    kind_of,
    to_record,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

_MAX_CELL = 48


def summary(entry: Entry) -> str:
    """One line that says who or what the entry is."""
    match entry:
        case Practitioner():
            return " ".join(
                p
                for p in (
                    entry.civility,
                    entry.last_name,
                    entry.first_name,
                    f"({entry.profession})" if entry.profession else "",
                )
                if p
            )
        case Organisation():
            return entry.name
        case Mailbox():
            listed = "" if entry.published else " [unlisted]"
            return f"{entry.bal_type.value} {entry.display_name}{listed}".strip()
        case Patient():
            mailbox = entry.address or "no mailbox (INS not qualified)"
            return f"{entry.birth_name} {entry.first_names} ({entry.sex.value}, {entry.birth_date.isoformat()}) {mailbox}"
        case Delegation():
            until = (
                f" until {entry.expires.date().isoformat()}" if entry.expires else ""
            )
            return f"{entry.scope.value}{until}"
        case Operator():
            return f"{len(entry.certificates)} certificate DN(s) {entry.description}".strip()


def _cell(text: str) -> str:
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def columns(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    """A fixed-width table; the last column is not padded."""
    table_rows = [tuple(header), *(tuple(r) for r in rows)]
    last = len(header) - 1
    widths = [max(len(r[i]) for r in table_rows) for i in range(last)]
    lines = [
        "  ".join([*(r[i].ljust(widths[i]) for i in range(last)), r[last]])
        for r in table_rows
    ]
    return "\n".join(line.rstrip() for line in lines)


def table(entries: Sequence[Entry]) -> str:
    """A fixed-width table: kind, key, status, summary."""
    if not entries:
        return "no entries found"
    return columns(
        [
            (kind_of(e).value, key_of(e), e.status.value, _cell(summary(e)))
            for e in entries
        ],
        ("KIND", "KEY", "STATUS", "DESCRIPTION"),
    )


def describe(entry: Entry) -> str:
    """Every field of one entry, one per line; certificates shown by fingerprint."""
    lines = [f"{kind_of(entry).value} {key_of(entry)}"]
    record = to_record(entry)
    record.pop("kind")
    if isinstance(entry, Mailbox):
        record["certificates"] = [
            f"{c.usage.value} {c.fingerprint} {c.subject} (until {c.not_after.date() if c.not_after else '?'})"
            for c in entry.certificates
        ]
        if entry.pgp_key:
            record["pgp_key"] = f"{len(entry.pgp_key)} characters"
    width = max(len(k) for k in record)
    for name, value in record.items():
        if isinstance(value, list):
            if not value:
                lines.append(f"  {name.ljust(width)}  -")
            for i, item in enumerate(value):
                label = name if i == 0 else ""
                lines.append(f"  {label.ljust(width)}  {_item(item)}")
        else:
            shown = "-" if value in ("", None) else str(value)
            lines.append(f"  {name.ljust(width)}  {shown}")
    return "\n".join(lines)


def _item(item: object) -> str:
    if isinstance(item, dict):
        return ", ".join(f"{k}={v}" for k, v in item.items() if v not in ("", None))
    return str(item)
