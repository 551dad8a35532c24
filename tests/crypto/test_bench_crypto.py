"""Smoke test of ``python -m bench crypto``: one small size, BENCH lines out."""

from __future__ import annotations

import shutil

import pytest

from bench import crypto as bench_crypto


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
def test_bench_crypto_prints_a_bench_line_per_figure(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert bench_crypto.main(["--sizes", "10KB", "--repeat", "1"]) == 0

    lines = [
        line
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("BENCH")
    ]
    assert [line.split()[2] for line in lines] == [
        "sign_encrypt_10KB",
        "decrypt_verify_10KB",
    ]
    assert all(" ratio=" in line and line.endswith("unit=ms") for line in lines)


def test_bench_messages_have_the_size_asked() -> None:
    entity = bench_crypto.message(10 * 1024)

    assert 10 * 1024 <= len(entity) < 11 * 1024
    assert entity == bench_crypto.message(10 * 1024)
