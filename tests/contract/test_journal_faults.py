"""The journal on a disk that misbehaves: a real filesystem of its own (tmpfs, mounted here for the
test; skipped where this machine does not allow mounting) filled up, made read-only, and a real
file corrupted. What must hold: no record lost, the resume point never past a missing record, one
clear error where the journal cannot be used."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from controller.adapters.journal import SqliteJournal
from controller.core.tracking import GateCounters
from controller.errors import InUseError, JournalError
from controller.ports import PartRecord


def rec(seq: int, outcome: str = "pass") -> PartRecord:
    return PartRecord(epoch=7, seq=seq, outcome=outcome, reason=f"model_{outcome}", trigger_pos=seq * 500,
                      written_verdict=outcome, wall_utc="x" * 200)  # fmt: skip


def counters(decided: int) -> GateCounters:
    return GateCounters(decided, 0, 0, 0, watchdog_tripped=False)


class Disk:
    """A small tmpfs at `root`: fill it, free it, make it read-only and writable again."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._filler = root / "filler"

    def mount(self, options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(self.root)], check=True, capture_output=True)

    def fill(self) -> None:
        fd = os.open(self._filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for _ in range(100_000):  # 2 MiB in pages, and then some
                os.write(fd, b"\0" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    root = tmp_path / "disk"
    root.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a filesystem for the test here: {done.stderr.strip()}")
    try:
        yield Disk(root)
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    """A small ext4 filesystem on a loop device: one that can be frozen (`fsfreeze`), as a stalled disk."""
    image, root = tmp_path / "ext4.img", tmp_path / "ext4"
    root.mkdir()
    with open(image, "wb") as f:
        f.truncate(16 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", str(image)], capture_output=True, text=True)
    done = subprocess.run(["mount", "-o", "loop", str(image), str(root)], capture_output=True, text=True)
    if made.returncode != 0 or done.returncode != 0:
        pytest.skip(f"cannot mount a loop filesystem for the test here: {(made.stderr + done.stderr).strip()}")
    try:
        yield root
    finally:
        subprocess.run(["fsfreeze", "-u", str(root)], capture_output=True)
        subprocess.run(["umount", "-l", str(root)], capture_output=True)


async def wait_until(cond: object, limit_s: float) -> None:
    t_end = time.monotonic() + limit_s
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < t_end, "condition not reached in time"
        await asyncio.sleep(0.02)


def scribble(path: Path, garbage: bytes) -> None:
    """A disk that returns garbage: `garbage` over the middle of the file."""
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(garbage)


def stored(path: Path) -> list[tuple[int, str]]:
    db = sqlite3.connect(path)
    try:
        return list(db.execute("SELECT seq, outcome FROM parts ORDER BY seq"))
    finally:
        db.close()


def test_a_full_disk_loses_no_record_and_the_resume_point_waits_for_them(disk: Disk) -> None:
    """Records the full disk refused are written with the first transaction it takes again, and
    the resume point stored then covers them (it never skips past a record that is missing)."""
    path = disk.root / "journal.db"

    async def run() -> tuple[int, GateCounters]:
        async with SqliteJournal(path, retry_s=0.05) as j:
            await j.resume_point(7, counters(0))
            await j.record(rec(1))
            disk.fill()
            refused, seq = 0, 1
            while refused == 0 and seq < 5000:  # the WAL grows until the disk says no
                seq += 1
                j.gate_reconciled(7, counters(seq - 1))
                try:
                    await j.record(rec(seq))
                except JournalError as exc:
                    assert "full" in str(exc)
                    refused = seq
            assert refused, "the disk never filled up"
            assert not j.healthy and j.pending == 1
            # The controller records the part again as it ended (the PLC rejected it): that
            # replaces the refused PASS, in call order, and waits with it.
            with pytest.raises(JournalError):
                await j.record(rec(refused, "failsafe"))
            disk.free()
            await wait_until(lambda: j.healthy and j.pending == 0, limit_s=5)  # retried on its own
            j.gate_reconciled(7, counters(refused))
            await j.record(rec(refused + 1))
            assert j.lost == 0
            return refused, await j.resume_point(7, counters(9999))

    refused, since = asyncio.run(run())
    rows = stored(path)
    assert [s for s, _ in rows] == list(range(1, refused + 2))  # every record, exactly once
    assert dict(rows)[refused] == "failsafe"
    assert since == counters(refused)


def test_a_journal_that_cannot_be_written_at_start_is_refused_and_used_once_it_can(disk: Disk) -> None:
    """A read-only journal opens and reads fine; only its first durable write tells. Until that
    write lands the journal is not usable (the controller is not ready)."""
    path = disk.root / "journal.db"

    async def first() -> None:
        async with SqliteJournal(path) as j:
            await j.record(rec(1))

    asyncio.run(first())
    disk.mount("ro")
    with pytest.raises(JournalError, match=r"cannot be opened: .*[Rr]ead-?only"):
        asyncio.run(first())
    disk.mount("rw")

    async def again() -> bool:
        async with SqliteJournal(path) as j:
            await j.record(rec(2))
            return j.healthy

    assert asyncio.run(again())
    assert [s for s, _ in stored(path)] == [1, 2]


def test_a_second_controller_on_the_same_journal_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"

    async def run() -> None:
        async with SqliteJournal(path) as j:
            await j.record(rec(1))
            with pytest.raises(InUseError, match=rf"journal .* is in use by another controller \(pid {os.getpid()}\)"):
                async with SqliteJournal(path):
                    pass
            await j.record(rec(2))  # the first one is unaffected
        async with SqliteJournal(path) as j:  # and once it has closed, the next one may
            await j.record(rec(3))

    asyncio.run(run())
    assert [s for s, _ in stored(path)] == [1, 2, 3]


@pytest.mark.parametrize("where", ["header", "middle"])
def test_a_corrupt_journal_is_moved_aside_and_never_written_into(tmp_path: Path, where: str) -> None:
    path = tmp_path / "journal.db"
    rng = np.random.default_rng(1)

    async def fill() -> None:
        async with SqliteJournal(path) as j:
            for seq in range(1, 301):
                r = rec(seq)
                r.image = rng.integers(0, 255, (48, 48), dtype=np.uint8)  # incompressible: the file grows
                await j.record(r)

    asyncio.run(fill())
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(0 if where == "header" else size // 2)
        f.write(rng.integers(0, 255, 64 * 1024, dtype=np.uint8).tobytes())
    corrupt = path.read_bytes()

    async def reopen() -> tuple[Path | None, str | None]:
        async with SqliteJournal(path) as j:
            found = j.error  # what the controller raises its journal alarm with at start
            await j.record(rec(1))
            assert j.error is None
            return j.moved_aside, found

    aside, why = asyncio.run(reopen())
    assert aside is not None and aside.name.startswith("journal.db.corrupt-")
    assert why is not None and f"moved aside to {aside}" in why
    assert aside.read_bytes() == corrupt  # kept as it was, for whoever investigates
    assert stored(path) == [(1, "pass")]  # a fresh journal
    assert asyncio.run(reopen()) == (None, None)  # which is sound


def test_a_stalled_disk_makes_the_journal_unhealthy_until_the_record_lands(ext4: Path) -> None:
    """`fsfreeze` holds every write: the record waits, the journal says so once it has waited
    `stall_s` (the controller drops `ready` and raises `journal_stalled`), and the record lands
    when the disk thaws."""
    path = ext4 / "journal.db"

    async def run() -> None:
        async with SqliteJournal(path, stall_s=0.3) as j:
            await j.record(rec(1))
            await asyncio.to_thread(subprocess.run, ["fsfreeze", "-f", str(ext4)], check=True)
            try:
                waiting = j.record(rec(2))
                await asyncio.sleep(0.1)
                assert j.healthy and j.stalled_s is None  # a slow flush is not yet a stall
                await wait_until(lambda: not j.healthy, limit_s=5)
                assert j.stalled_s is not None and j.stalled_s >= 0.3
                assert not waiting.done()  # type: ignore[attr-defined]
            finally:
                await asyncio.to_thread(subprocess.run, ["fsfreeze", "-u", str(ext4)], check=True)
            await waiting
            assert j.healthy and j.stalled_s is None

    asyncio.run(run())
    assert [s for s, _ in stored(path)] == [1, 2]


def test_a_journal_found_corrupt_while_open_is_moved_aside_and_a_fresh_one_goes_on(tmp_path: Path) -> None:
    """The scheduled check (here every 0.3 s) finds garbage written into the open file: the file
    goes aside with the alarm's text, and the epoch's resume point and the records go on in a
    fresh one."""
    path = tmp_path / "journal.db"
    rng = np.random.default_rng(2)

    async def run() -> tuple[Path, str | None, GateCounters]:
        async with SqliteJournal(path, check_every_s=0.3) as j:
            await j.resume_point(7, counters(0))
            for seq in range(1, 301):
                r = rec(seq)
                r.image = rng.integers(0, 255, (48, 48), dtype=np.uint8)
                j.gate_reconciled(7, counters(seq - 1))
                await j.record(r)
            await asyncio.sleep(1.2)  # checkpointed into the file
            await asyncio.to_thread(scribble, path, rng.integers(0, 255, 64 * 1024, dtype=np.uint8).tobytes())
            await wait_until(lambda: j.moved_aside is not None, limit_s=10)
            found = j.error  # the controller's journal alarm says this
            await j.record(rec(301))
            assert j.healthy and j.moved_aside is not None
            return j.moved_aside, found, await j.resume_point(7, counters(9999))

    aside, error, since = asyncio.run(run())
    assert aside.exists() and aside.name.startswith("journal.db.corrupt-")
    assert error is not None and "found corrupt" in error
    assert since == counters(299)  # the resume point carried over (the last one reconciled)
    assert [s for s, _ in stored(path)] == [301]  # never written into the corrupt file again
