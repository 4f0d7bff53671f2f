"""Faults on the controller's journal, on real filesystems: a disk that fills up, turns read-only
or stalls, a journal found corrupt at start, a second controller started on the same line.

The disk faults put the journal on a filesystem mounted for the run (tmpfs for `disk-full`; ext4 on
a loop device for `read-only`, which is made to fail as ext4 does on an I/O error, and `disk-stall`,
frozen with `fsfreeze`): they need root, as mounting does. The fault strikes once a third of the
parts have their outcome and is undone `seconds` later; the journal is copied out for the judge
before the filesystem goes. Not here: what must hold afterwards (sim/scenarios.py, sim/judge.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from controller.errors import ControllerError

log = structlog.get_logger("lineinspect.sim")

Kind = Literal["disk-full", "read-only", "disk-stall", "corrupt", "second-controller"]


@dataclass(frozen=True)
class JournalFault:
    kind: Kind
    seconds: float = 2.0
    """How long the disk stays full, read-only or frozen."""


MOUNTING = ("disk-full", "read-only", "disk-stall")
"""The faults that put the journal on a filesystem mounted for the run."""


def cannot_mount() -> str | None:
    """Why this machine cannot mount the filesystems those faults need (not root, no loop device),
    or None. Tried for real: a tmpfs mounted and unmounted, and a free loop device looked up."""
    with tempfile.TemporaryDirectory() as where:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", where], capture_output=True, text=True)
        if done.returncode != 0:
            return done.stderr.strip() or f"mount exited {done.returncode}"
        subprocess.run(["umount", where], capture_output=True)
    loop = subprocess.run(["losetup", "-f"], capture_output=True, text=True)
    return None if loop.returncode == 0 else (loop.stderr.strip() or "no free loop device")


class SimJournalFaults:
    """Where the controller's journal lives for the run, and the fault on it, by part count."""

    def __init__(self, fault: JournalFault | None, workdir: Path, parts: int) -> None:
        self.fault, self.workdir, self.parts = fault, workdir, parts
        self.journal_path = workdir / "journal.db"
        """Where the judge finds the journal once the run is over."""
        self._mount: Path | None = None
        self._image: Path | None = None
        self.done: dict[str, Any] = {}
        self.fault_struck = fault is None
        self._undo: asyncio.Task[None] | None = None
        self._thaw: subprocess.Popen[bytes] | None = None

    @property
    def controller_journal(self) -> Path:
        """Where the controller keeps its journal during the run."""
        return self._mount / "journal.db" if self._mount else self.journal_path

    async def __aenter__(self) -> SimJournalFaults:
        await asyncio.to_thread(self._prepare)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._undo is not None:
            self._undo.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._undo
        await asyncio.to_thread(self._teardown)

    def _prepare(self) -> None:
        kind = self.fault.kind if self.fault else None
        if kind == "disk-full":
            self._mount = self._mounted(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
        elif kind in ("read-only", "disk-stall"):
            self._image = self.workdir / "journal-disk.img"
            with open(self._image, "wb") as f:
                f.truncate(64 << 20)
            _run(["mkfs.ext4", "-q", "-F", str(self._image)])
            self._mount = self._mounted(["-o", "loop,errors=remount-ro", str(self._image)])
        elif kind == "corrupt":
            _corrupt_journal(self.journal_path)
            self.done["corrupt"] = {"bytes": self.journal_path.stat().st_size}
            self.fault_struck = True  # found at start, whatever the part count

    def _teardown(self) -> None:
        if self._thaw is not None:
            self._thaw.kill()
            self._thaw.wait()
        if self._mount is None:
            return
        subprocess.run(["fsfreeze", "-u", str(self._mount)], capture_output=True)  # never leave it frozen
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.controller_journal}{suffix}")
            if src.exists():
                shutil.copyfile(src, f"{self.journal_path}{suffix}")
        subprocess.run(["umount", "-l", str(self._mount)], capture_output=True)

    def _mounted(self, how: list[str]) -> Path:
        where = self.workdir / "journal-disk"
        where.mkdir(exist_ok=True)
        done = subprocess.run(["mount", *how, str(where)], capture_output=True, text=True)
        if done.returncode != 0:
            assert self.fault is not None
            raise ControllerError(f"scenario {self.fault.kind} puts the journal on a filesystem of its own and "
                                  f"cannot mount one here (root is needed): {done.stderr.strip()}")  # fmt: skip
        return where

    async def inject(self, decided: int) -> None:
        fault = self.fault
        if fault is None or fault.kind == "corrupt" or "struck_after_parts" in self.done or decided < self.parts // 3:
            return
        self.done["struck_after_parts"] = decided
        log.warning("fault_injected", fault=fault.kind, after_parts=decided)
        if fault.kind == "second-controller":
            self.done["second_controller"] = await _second_controller(self.workdir / "line.toml", self.workdir)
            self.fault_struck = self.done["second_controller"]["refused"]
            return
        await asyncio.to_thread(self._strike, fault)
        self.fault_struck = True
        self._undo = asyncio.create_task(self._undo_after(fault))

    def _strike(self, fault: JournalFault) -> None:
        assert self._mount is not None
        if fault.kind == "disk-full":
            self.done["filler_bytes"] = _fill(self._mount / "filler")
        elif fault.kind == "read-only":
            # What ext4 does on an I/O error with errors=remount-ro: read-only at once, for every open file.
            found = subprocess.run(["findmnt", "-no", "SOURCE", str(self._mount)], capture_output=True, text=True)
            device = Path(found.stdout.strip())
            Path(f"/sys/fs/ext4/{device.name}/trigger_fs_error").write_text("lineinspect sim: read-only\n")
        elif fault.kind == "disk-stall":
            _run(["fsfreeze", "-f", str(self._mount)])
            # Thawed by a process of its own: this event loop may itself block reading the frozen journal.
            self._thaw = subprocess.Popen(["sh", "-c", f"sleep {fault.seconds}; fsfreeze -u {self._mount}"])

    async def _undo_after(self, fault: JournalFault) -> None:
        await asyncio.sleep(fault.seconds)
        await asyncio.to_thread(self._undo_fault, fault)
        self.done["undone_after_s"] = fault.seconds
        log.info("fault_undone", fault=fault.kind)

    def _undo_fault(self, fault: JournalFault) -> None:
        assert self._mount is not None
        if fault.kind == "disk-full":
            (self._mount / "filler").unlink()
        elif fault.kind == "read-only":
            # An ext4 that failed stays read-only until checked and mounted again. Its device stays
            # busy (the controller's open files), and mounting it again would share its failed
            # state: detach it and mount a checked copy of its disk, as on a replacement disk.
            assert self._image is not None
            _run(["umount", "-l", str(self._mount)])
            copy = self._image.with_name("journal-disk-checked.img")
            _run(["cp", "--sparse=always", str(self._image), str(copy)])
            subprocess.run(["e2fsck", "-fy", str(copy)], capture_output=True)  # exit 1: errors fixed
            _run(["mount", "-o", "loop,errors=remount-ro", str(copy), str(self._mount)])


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _fill(path: Path) -> int:
    """Write until the filesystem is full; returns how much it took."""
    written = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for _ in range(1 << 16):  # 256 MiB at most, more than the filesystem holds
            written += os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    return written


def _corrupt_journal(path: Path) -> None:
    """A journal left by an earlier run (a few MB of records), with 64 KiB of garbage in the middle."""
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE parts (epoch INTEGER, seq INTEGER, outcome TEXT, reason TEXT, PRIMARY KEY (epoch, seq))")
    db.execute("CREATE TABLE images (epoch INTEGER, seq INTEGER, data BLOB, PRIMARY KEY (epoch, seq))")
    rows = [(1, seq, "pass", "model_pass") for seq in range(1, 2001)]
    db.executemany("INSERT INTO parts VALUES (?, ?, ?, ?)", rows)
    db.executemany("INSERT INTO images VALUES (?, ?, ?)", [(1, seq, os.urandom(1500)) for seq in range(1, 2001)])
    db.commit()
    db.close()
    with open(path, "r+b") as f:
        f.seek(path.stat().st_size // 2)
        f.write(os.urandom(64 * 1024))


async def _second_controller(config_path: Path, workdir: Path) -> dict[str, Any]:
    """Start `lineinspect run` on the running line's own config: it must refuse, with one line."""
    t0 = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "controller.cli", "run", "--config", str(config_path),
        "--log-file", str(workdir / "controller-second.log"),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {"refused": False, "error": "it ran (killed after 60 s)"}
    lines = [line for line in stderr.decode(errors="replace").splitlines() if line.strip()]
    error = lines[-1] if lines else ""
    return {"refused": proc.returncode != 0 and "in use by another controller" in error,
            "exit_code": proc.returncode, "error": error, "stderr_lines": len(lines),
            "took_s": round(time.monotonic() - t0, 2)}  # fmt: skip
