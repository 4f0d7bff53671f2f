"""The controller under test in a simulated run, in one of two ways:

- `InProcessController`: in the runner's process, so faults can reach inside it (kill an inference
  actor, slow its inference, hot-swap the model) and its internals can be reported.
- `ControllerProcess`: its own `lineinspect run --config line.toml` process, exactly as at a line,
  so nothing of the runner (progress bar, judge, simulator plumbing) shares its event loop, GIL or
  garbage collector, and so faults can reach the process itself: SIGSTOP it for a while, or SIGKILL
  it and start it again. Its progress is read from its journal (SQLite in WAL mode lets a reader
  in beside it), its end-of-run numbers from its JSON log.

Both give the same `Progress` and stop the same way. Not here: the simulated line or the judge
(sim/runner.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from controller.app import LineController
from controller.bootstrap import run_controller
from controller.cli import run_stats
from controller.config import LineConfig
from controller.errors import ControllerError
from controller.status import LineStatus
from sim.scenarios import ProcessFault

log = structlog.get_logger("lineinspect.sim")

STOP_TIMEOUT_S = 30.0
"""A controller asked to stop gets this long to record its open parts before it is killed."""
CATCH_UP_S = 90.0
"""A controller restarted near the end of a run gets this long to start and record what it missed."""


@dataclass(frozen=True)
class Progress:
    decided: int
    info: str


# ---------------------------------------------------------------------- in this process
class InProcessController:
    """`run_controller` as a task here; `started` gives the running controller and its inference
    service to the runner's fault injection."""

    def __init__(self, cfg: LineConfig, wrap_inference: Any = None) -> None:
        self.cfg, self.wrap_inference = cfg, wrap_inference
        self._stop = asyncio.Event()
        self._latest: list[LineStatus] = []
        self.started: asyncio.Future[tuple[LineController, Any]] = asyncio.get_running_loop().create_future()
        self._task: asyncio.Task[LineController] | None = None

    async def __aenter__(self) -> InProcessController:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Whatever happened, the controller stops: asked, then cancelled; each wait bounded."""
        self._stop.set()
        task = self._task
        if task is None:
            return
        await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_TIMEOUT_S)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: the run's own error, if any, is reported by `check`/`stop`

    async def start(self) -> None:
        self._task = asyncio.create_task(run_controller(
            self.cfg, stop=self._stop, on_status=self._latest.append, started=self.started,
            wrap_inference=self.wrap_inference,
        ))  # fmt: skip

    @property
    def pid(self) -> int:
        return os.getpid()

    async def check(self) -> None:
        """Raise if the controller ended before the run did (its start-up error, if any)."""
        assert self._task is not None
        if self._task.done():
            await self._task
            raise ControllerError("controller stopped before the run ended")

    def progress(self) -> Progress | None:
        if not self._latest:
            return None
        self._latest[:] = self._latest[-1:]  # only the newest status matters
        s = self._latest[-1]
        return Progress(s.passes + s.rejects + s.failsafe, f"{s.state.value} pass {s.passes} reject {s.rejects} "
                        f"failsafe {s.failsafe} p99 {s.latency_p99_ms:.0f} ms")  # fmt: skip

    async def stop(self) -> dict[str, Any]:
        assert self._task is not None
        self._stop.set()
        return run_stats(await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S))


# ---------------------------------------------------------------------- its own process
class ControllerProcess:
    """`lineinspect run` in its own session (so it and any Ray processes it starts can be cleaned
    up together), with a fault on the process once a third of `parts` have their outcome."""

    def __init__(self, cfg: LineConfig, workdir: Path, fault: ProcessFault | None, parts: int) -> None:
        self.workdir, self.fault, self.parts = workdir, fault, parts
        self.journal = cfg.journal.path
        self.config_path = workdir / "line.toml"
        self.config_path.write_text(to_toml(cfg.model_dump(mode="json", exclude_none=True)))
        self._procs: list[asyncio.subprocess.Process] = []
        self._groups_killed: set[int] = set()
        self.events: list[dict[str, Any]] = []
        """What was done to the process, when (seconds into the run) and after how many parts."""
        self._t0 = time.monotonic()
        times = fault.times if fault else 0
        self._strike_at = ([parts // 3] if times == 1 else
                           sorted(random.Random(parts).sample(range(parts // 10, parts * 9 // 10), times)))  # fmt: skip
        self.strikes: list[int] = []
        """The part counts at which the fault struck."""
        self.fault_struck = fault is None
        """The scenario's fault really happened (the run was long enough, the signal was sent)."""
        # As systemd would (Type=notify, WatchdogSec=10): the controller's notifications arrive here.
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self._notify_name = f"lineinspect-sim-{os.getpid()}-{id(self)}"
        self._notify.bind("\0" + self._notify_name)
        self.notifications: list[str] = []

    def _notified(self) -> dict[str, Any]:
        with contextlib.suppress(BlockingIOError, OSError):
            while True:
                self.notifications += self._notify.recv(4096).decode().splitlines()
        return {"ready": self.notifications.count("READY=1"), "watchdog": self.notifications.count("WATCHDOG=1"),
                "stopping": self.notifications.count("STOPPING=1")}  # fmt: skip

    @property
    def _proc(self) -> asyncio.subprocess.Process:
        return self._procs[-1]

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _log(self, n: int, suffix: str = "log") -> Path:
        return self.workdir / f"controller-{n}.{suffix}"

    async def __aenter__(self) -> ControllerProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Whatever happened (an error, Ctrl-C, a timeout), no controller or Ray process outlives
        the run: this session's processes are in their own process groups, out of reach of the
        terminal's signals."""
        if self._procs and self._proc.returncode is None:
            await self.stop()
        for proc in self._procs:
            self._kill_group(proc.pid)
            await proc.wait()
        self._notify.close()

    async def start(self) -> None:
        n = len(self._procs) + 1
        self._log(n).unlink(missing_ok=True)  # its log is opened for appending
        # Its structured log as JSON lines; anything else it prints (a traceback) beside it.
        with self._log(n, "stderr").open("wb") as stderr:
            self._procs.append(await asyncio.create_subprocess_exec(
                sys.executable, "-m", "controller.cli", "run", "--config", str(self.config_path),
                "--log-file", str(self._log(n)),
                stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": "@" + self._notify_name,
                     "WATCHDOG_USEC": "10000000"},
            ))  # fmt: skip

    async def check(self) -> None:
        self._notified()  # drained as systemd would: a full queue would refuse the controller's pings
        if self._proc.returncode is not None:
            raise ControllerError(f"controller process exited with {self._proc.returncode} before the run ended "
                                  f"(see {self._log(len(self._procs), 'stderr')})")  # fmt: skip

    def _counts_total(self) -> int:
        return sum(self._counts().values())

    def _counts(self) -> dict[str, int]:
        if not self.journal.exists():
            return {}
        db = sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True, timeout=1.0)
        try:
            return dict(db.execute("SELECT outcome, count(*) FROM parts GROUP BY outcome").fetchall())
        except sqlite3.OperationalError:
            return {}  # not created yet
        finally:
            db.close()

    def progress(self) -> Progress | None:
        n = self._counts()
        state = "restarted" if len(self._procs) > 1 else "running"
        info = f"{state} pass {n.get('pass', 0)} reject {n.get('reject', 0)} failsafe {n.get('failsafe', 0)}"
        return Progress(sum(n.values()), info)

    async def inject(self, decided: int) -> None:
        due = self._strike_at[len(self.strikes)] if len(self.strikes) < len(self._strike_at) else None
        if self.fault is None or due is None or decided < due:
            return
        self.strikes.append(decided)
        pid, at = self._proc.pid, round(time.monotonic() - self._t0, 3)
        if self.fault.signal == "SIGSTOP":
            os.kill(pid, signal.SIGSTOP)
            self.events.append({"signal": "SIGSTOP", "at_s": at, "after_parts": decided})
            try:
                await asyncio.sleep(self.fault.seconds)
            finally:
                os.kill(pid, signal.SIGCONT)  # also when cancelled: a stopped process cannot stop cleanly
            self.events.append({"signal": "SIGCONT", "at_s": round(time.monotonic() - self._t0, 3)})
        else:
            os.kill(pid, signal.SIGKILL)
            await self._proc.wait()
            self._kill_group(pid)  # what it started (Ray's helpers), while the group id is surely still theirs
            self.events.append({"signal": "SIGKILL", "at_s": at, "after_parts": decided})
            await asyncio.sleep(self.fault.seconds)
            await self.start()
            self.events.append({"started_again_at_s": round(time.monotonic() - self._t0, 3)})
        self.fault_struck = True
        log.warning("fault_injected", fault=self.fault.signal, after_parts=decided)

    async def stop(self) -> dict[str, Any]:
        """SIGTERM: the controller records its open parts and exits (0). Killed if it takes too long.
        A controller restarted near the end is first given time to catch up (to record what the
        PLC decided while none ran), as the next start at a line would: stopping it while it still
        starts would leave those triggers without a record that no fault of the line explains."""
        if self.fault is not None and self.fault.signal == "SIGKILL" and self.strikes:
            for _ in range(int(CATCH_UP_S / 0.25)):  # its journal is the only sign (another process)
                if self._proc.returncode is not None or self._counts_total() >= self.parts:
                    break
                await asyncio.sleep(0.25)
        with contextlib.suppress(ProcessLookupError):
            self._proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._proc.wait(), STOP_TIMEOUT_S)
        exit_code = self._proc.returncode
        self._kill_group(self._proc.pid)
        ended = self._logged(("controller_stopped", "gc_pauses"))
        notified = self._notified()
        return {**ended.get("controller_stopped", {}), "gc_pauses": ended.get("gc_pauses"),
                "process": {"started": len(self._procs), "events": self.events, "exit_code": exit_code,
                            "systemd": notified}}  # fmt: skip

    def _logged(self, events: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """The last process's last log entry of each of these events, less the log's own fields."""
        found: dict[str, dict[str, Any]] = {}
        path = self._log(len(self._procs))
        for line in path.read_text().splitlines() if path.exists() else []:
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict) and entry.get("event") in events:
                    found[entry["event"]] = {k: v for k, v in entry.items()
                                             if k not in ("event", "level", "timestamp", "logger")}  # fmt: skip
        return found

    def _kill_group(self, pgid: int) -> None:
        """Once per group: later, its id may belong to someone else."""
        if pgid not in self._groups_killed:
            self._groups_killed.add(pgid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)


def to_toml(cfg: dict[str, Any]) -> str:
    """A line config (sections of scalars) as TOML. JSON's string escapes are valid TOML."""
    lines = []
    for section, values in cfg.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
        lines.append("")
    return "\n".join(lines)
