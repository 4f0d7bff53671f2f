"""`lineinspect sim --load N`: N busy processes beside the line, at the controller's priority, so a
run shows what the verdict path does on a machine that has other work (the issue's load average 8).

Each process spins a CPU-bound integer loop, no I/O, no memory growth. It ends by itself once its
time is up or once the process that started it is gone (even SIGKILLed), and `SimLoad` kills it
on every way out of a run (its end, an error, Ctrl-C): no load outlives the run that asked for it.
Not here: when the load starts or stops during a run (sim/runner.py).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import Any

CHECK_EVERY = 200_000
"""Loop iterations between checks of time and parent (about 10-20 ms of CPython work)."""


def spin(seconds: float, parent: int) -> None:
    """Keep one CPU busy until `seconds` have passed or `parent` is no longer our parent."""
    end = time.monotonic() + seconds
    x = 1
    while time.monotonic() < end and os.getppid() == parent:
        for _ in range(CHECK_EVERY):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF  # a linear congruential step: pure CPU


class SimLoad:
    """`processes` busy processes, started with `start()` at the priority (nice value) of the
    process `priority_of`, each bounded to `seconds`; stopped by `stop()` or on leaving the
    `with` block, whichever comes first."""

    def __init__(self, processes: int, *, seconds: float) -> None:
        if processes < 0:
            raise ValueError(f"load processes must be 0 or more, got {processes}")
        self.processes, self.seconds = processes, seconds
        self._procs: list[subprocess.Popen[bytes]] = []
        self._started_at: float | None = None
        self._stopped_at: float | None = None
        self._nice: int | None = None

    def __enter__(self) -> SimLoad:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, *, priority_of: int) -> None:
        """Start the load (once; later calls do nothing) at the nice value of process `priority_of`."""
        if self._started_at is not None or self.processes == 0:
            return
        self._started_at = time.monotonic()
        self._nice = os.getpriority(os.PRIO_PROCESS, priority_of)
        for _ in range(self.processes):
            proc = subprocess.Popen(
                [sys.executable, "-m", "sim.load", "--seconds", str(self.seconds), "--parent", str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                # Its own session: the terminal's Ctrl-C reaches only us, and we end it ourselves.
                start_new_session=True,
            )  # fmt: skip
            self._procs.append(proc)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                # Raising our own nice needs no privilege; lowering it does: then it stays ours.
                os.setpriority(os.PRIO_PROCESS, proc.pid, self._nice)

    def stop(self) -> None:
        """Kill every load process and reap it. The loop holds no state worth a graceful end."""
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
        for proc in self._procs:
            proc.wait(timeout=10)
        if self._started_at is not None and self._stopped_at is None:
            self._stopped_at = time.monotonic()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def summary(self) -> dict[str, Any]:
        """What load the run had, for its summary JSON."""
        ran_s = None
        if self._started_at is not None:
            ran_s = round((self._stopped_at or time.monotonic()) - self._started_at, 2)
        return {"processes": self.processes, "nice": self._nice, "started": self._started_at is not None,
                "ran_s": ran_s}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.load", description="one busy process (lineinspect sim --load)")
    p.add_argument("--seconds", type=float, required=True)
    p.add_argument("--parent", type=int, required=True, help="stop once this process is no longer our parent")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        spin(args.seconds, args.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
