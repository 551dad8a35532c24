"""Throughput of MailStore.deliver: ``python -m tests.relay.store.bench_deliver``.

Delivers N messages of 5 KB and 100 KB into a fresh store in a temporary
directory on the same file system as the repository (fsync is the cost that
matters, so /tmp on tmpfs would lie), single thread and with 4 threads, and
next to it a bare Maildir-style write (temp file, fdatasync, rename, directory
fsync: the floor for a durable delivery without index or encryption).
Prints one ``BENCH store ...`` line per figure, like ``python -m bench``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from relay.store import MailStore, MasterKey, parse_structure

WHEN = datetime(2026, 3, 1, tzinfo=UTC)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")


RCPT = "bench@hopital.example"


def sample(size: int) -> bytes:
    head = (
        b"From: Dr Bench <dr.bench@clinique.example>\r\n"
        b"To: bench@hopital.example\r\nSubject: XDM/1.0/DDM+CR BENCH Jean 01/01/1970\r\n"
        b"Message-ID: <x@clinique.example>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBonjour.\r\n"
        b'--b1\r\nContent-Type: application/pdf; name="cr.pdf"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    line = b"JVBERi0xLjcKJeLjz9MKMSAwIG9iago8PC9UeXBlL0NhdGFsb2cvUGFnZXMgMiAwIFI+PgplbmRv\r\n"
    tail = b"--b1--\r\n"
    n = max(0, -(-(size - len(head) - len(tail)) // len(line)))
    return head + line * n + tail


def bare_maildir(directory: Path, message: bytes, count: int) -> float:
    directory.mkdir()
    start = time.perf_counter()
    for i in range(count):
        tmp = directory / f"tmp.{i}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, message)
        os.fdatasync(fd)
        os.close(fd)
        tmp.rename(directory / f"{i}")
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(dfd)
        os.close(dfd)
    return count / (time.perf_counter() - start)


def run_store(
    root: Path, key: MasterKey, message: bytes, count: int, threads: int
) -> float:
    with MailStore.open(root, key) as store:
        store.ensure_mailbox(RCPT)
        store.deliver(RCPT, message, delivery_key="warm", internal_date=WHEN)
        per = count // threads

        def work(t: int) -> None:
            for i in range(per):
                store.deliver(
                    RCPT, message, delivery_key=f"{t}:{i}", internal_date=WHEN
                )

        workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start
        replay_start = time.perf_counter()
        for i in range(per):
            store.deliver(RCPT, message, delivery_key=f"0:{i}", internal_date=WHEN)
        replay = per / (time.perf_counter() - replay_start)
    say(f"  replay of {per} delivered keys (duplicates): {replay:,.0f}/s")
    return per * threads / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=400)
    parser.add_argument("--dir", type=Path, default=Path(__file__).resolve().parents[3])
    ns = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-store-", dir=ns.dir) as tmp:
        base = Path(tmp)
        key = MasterKey.generate(base / "master.key")
        for size in (5_000, 100_000):
            message = sample(size)
            t0 = time.perf_counter()
            for _ in range(200):
                parse_structure(message)
            parse_us = (time.perf_counter() - t0) / 200 * 1e6
            ref = bare_maildir(base / f"maildir-{size}", message, ns.count)
            one = run_store(base / f"store1-{size}", key, message, ns.count, 1)
            four = run_store(base / f"store4-{size}", key, message, ns.count, 4)
            kb = len(message) // 1000
            say(
                f"{kb} KB: parse {parse_us:.0f} us; bare maildir {ref:,.0f}/s; "
                f"store 1 thread {one:,.0f}/s; 4 threads {four:,.0f}/s"
            )
            say(
                f"BENCH store deliver_{kb}k_1thread ours={one:.0f} ref={ref:.0f} "
                f"ratio={one / ref:.2f} unit=msg/s"
            )
            say(
                f"BENCH store deliver_{kb}k_4threads ours={four:.0f} ref={ref:.0f} "
                f"ratio={four / ref:.2f} unit=msg/s"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
