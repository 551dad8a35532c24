"""Making file-system changes durable.

Owns: the directory sync every writer of the relay needs after creating,
renaming or removing an entry (the spool, the mailbox store's segments, the
audit trail's replacements).

What must stay true: a file's own ``fsync`` does not make its directory
entry durable on every file system (POSIX leaves it open); a writer that
acknowledges something whose existence depends on a new name syncs the
directory first.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
