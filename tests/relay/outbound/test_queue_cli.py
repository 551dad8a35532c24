"""``mssante queue`` against a live relay's outbound queue, and its audit records."""

from __future__ import annotations

import asyncio
import io
import json
from typing import TYPE_CHECKING, Any

from cli.main import main
from tests.relay.outbound.conftest import DOCTOR_A, DOCTOR_B, DOMAIN_A, message

if TYPE_CHECKING:
    import contextlib
    from collections.abc import Callable
    from pathlib import Path

    from tests.relay.outbound.conftest import Certificates, Pair


async def _cli(config: Path, *argv: str) -> tuple[int, Any]:
    out = io.StringIO()
    status = await asyncio.to_thread(
        main, ["--config", str(config), "--json", *argv], out=out
    )
    text = out.getvalue()
    return status, json.loads(text) if text.strip() else None


async def test_the_admin_lists_holds_retries_and_deletes_a_deferred_message(
    operators: Callable[..., contextlib.AbstractAsyncContextManager[Pair]],
    certificates: Certificates,
    tmp_path: Path,
) -> None:
    async with operators(a_whitelists=certificates.stranger[2]) as pair:
        config = tmp_path / "a.toml"
        data_dir = pair.a.config.relay.data_dir
        config.write_text(f'[relay]\ndata_dir = "{data_dir}"\ndomain = "{DOMAIN_A}"\n')
        assert await pair.send(pair.a, [DOCTOR_B], message(DOCTOR_A, DOCTOR_B)) == {}
        await pair.a.wait_for(lambda: bool(pair.a.events("message.deferred")))

        status, listed = await _cli(config, "queue", "list")
        assert status == 0
        [entry] = listed
        queue_id = entry["queue_id"]
        assert entry["sender"] == DOCTOR_A
        [recipient] = entry["recipients"]
        assert recipient["address"] == DOCTOR_B
        assert recipient["state"] == "deferred"
        assert "not whitelisted" in recipient["last_reply"]

        assert (await _cli(config, "queue", "hold", queue_id))[0] == 0
        status, shown = await _cli(config, "queue", "show", queue_id)
        assert (status, shown["held"]) == (0, True)
        assert (await _cli(config, "queue", "release", queue_id))[0] == 0
        status, retried = await _cli(config, "queue", "retry", queue_id)
        assert (status, retried) == (0, {"retried": 1})
        assert (await _cli(config, "queue", "delete", queue_id))[0] == 0
        assert await _cli(config, "queue", "list") == (0, [])

        # A queue id that is not there is a refusal that names it.
        status, _ = await _cli(config, "queue", "show", queue_id)
        assert status == 1

        actions = [
            (r["action"], r["actor"], r["queue_id"])
            for r in pair.a.events("queue.changed")
        ]
        assert actions == [
            ("hold", "cli", queue_id),
            ("release", "cli", queue_id),
            ("retry", "cli", queue_id),
            ("delete", "cli", queue_id),
        ]
