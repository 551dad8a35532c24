"""Command-line values parsed into typed ones; errors name the field.

Shared by the commands of ``cli/``: each raises
:class:`~directory.errors.InvalidFieldError` (exit status 2) with the field
and the value it could not read.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

from directory.errors import InvalidFieldError


def a_date(field: str, value: str) -> date:
    """``YYYY-MM-DD``."""
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise InvalidFieldError(field, value, "must be a date YYYY-MM-DD") from None


def expiry(field: str, value: str | None) -> datetime | None:
    """An ISO 8601 date or date-time (UTC when it names no zone), or None."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidFieldError(
            field, value, "must be a date or date-time (ISO 8601)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
