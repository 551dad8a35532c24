"""Running the ``mssante`` command in-process, as the CLI tests do."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from cli.main import main

if TYPE_CHECKING:
    from pathlib import Path


def run(config: Path, *argv: str) -> tuple[int, str]:
    """``mssante --config CONFIG ARGV...``: the exit status and what it printed."""
    out = io.StringIO()
    status = main(["--config", str(config), *argv], out=out)
    return status, out.getvalue()
