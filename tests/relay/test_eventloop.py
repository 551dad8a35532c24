"""relay.eventloop: uvloop by default, asyncio's loop on demand, a wrong
choice named, and the ``mssante`` command on the same loop."""

from __future__ import annotations

import asyncio
import gc
import inspect
import subprocess
import sys
import warnings
from typing import TYPE_CHECKING

import pytest
import uvloop

from relay import eventloop

if TYPE_CHECKING:
    from pathlib import Path


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def test_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(eventloop.ENV_VAR, raising=False)
    assert eventloop.loop_factory() is uvloop.new_event_loop
    assert eventloop.run(_loop_module()) == "uvloop"


@pytest.mark.parametrize(
    ("choice", "module"), [("asyncio", "asyncio"), ("uvloop", "uvloop")]
)
def test_chosen_by_environment(
    monkeypatch: pytest.MonkeyPatch, choice: str, module: str
) -> None:
    monkeypatch.setenv(eventloop.ENV_VAR, choice)
    assert eventloop.run(_loop_module()) == module


def test_unknown_loop_named_and_coroutine_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(eventloop.ENV_VAR, "trio")
    main = _loop_module()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited"
        with pytest.raises(ValueError, match="MSSANTE_EVENT_LOOP='trio'") as raised:
            eventloop.run(main)
        gc.collect()
    assert "uvloop, asyncio" in str(raised.value)
    assert inspect.getcoroutinestate(main) == inspect.CORO_CLOSED  # never run


def test_uvloop_asked_but_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(eventloop.ENV_VAR, "uvloop")
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import fails
    with pytest.raises(ValueError, match="uvloop is not installed"):
        eventloop.loop_factory()
    monkeypatch.delenv(eventloop.ENV_VAR)
    assert eventloop.loop_factory() is None  # silently asyncio's loop


def test_cli_refuses_unknown_loop(tmp_path: Path) -> None:
    config = tmp_path / "relay.toml"
    config.write_text(
        f'[relay]\ndata_dir = "{tmp_path / "data"}"\ndomain = "mssante.example"\n',
        encoding="utf-8",
    )
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from cli.main import entry_point; entry_point()",
            *("--config", str(config), "account", "list"),
        ],
        env={"MSSANTE_EVENT_LOOP": "fast", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "MSSANTE_EVENT_LOOP='fast'" in done.stderr
    assert not (tmp_path / "data").exists()  # refused before any work
