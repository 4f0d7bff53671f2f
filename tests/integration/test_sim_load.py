"""`lineinspect sim --load N` (sim/load.py): real busy processes, at our priority, that never outlive
the run: killed on leaving it whatever the way out, and ending by themselves if we are killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sim.load import SimLoad

REPO = Path(__file__).resolve().parents[2]


def _running(pid: int) -> bool:
    """Alive and not a zombie waiting for a reaper (an orphan's reaper may be slow to come)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _gone_within(pids: list[int], seconds: float) -> bool:
    end = time.monotonic() + seconds
    while any(_running(p) for p in pids):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


@pytest.mark.parametrize("way_out", [RuntimeError, KeyboardInterrupt])
def test_load_is_killed_on_any_way_out_of_the_run(way_out: type[BaseException]) -> None:
    with pytest.raises(way_out), SimLoad(2, seconds=120) as load:
        load.start(priority_of=os.getpid())
        pids = load.pids
        assert len(pids) == 2 and all(_running(p) for p in pids)
        assert all(os.getpriority(os.PRIO_PROCESS, p) == os.getpriority(os.PRIO_PROCESS, 0) for p in pids)
        raise way_out
    assert not any(_running(p) for p in pids)
    assert load.summary() | {"ran_s": None} == {"processes": 2, "nice": os.getpriority(os.PRIO_PROCESS, 0),
                                                "started": True, "ran_s": None}  # fmt: skip


def test_load_ends_by_itself_when_the_run_is_killed() -> None:
    """SIGKILL leaves no way out to run: each load process notices it lost its parent."""
    starter = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time\nfrom sim.load import SimLoad\n"
         "load = SimLoad(2, seconds=120)\nload.start(priority_of=os.getpid())\n"
         "print(*load.pids, flush=True)\ntime.sleep(120)\n"],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert starter.stdout is not None
        pids = [int(p) for p in starter.stdout.readline().split()]
        assert len(pids) == 2 and all(_running(p) for p in pids)
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait()
        starter.stdout.close()  # type: ignore[union-attr]
    assert _gone_within(pids, 10.0)


def test_a_load_process_ends_when_its_time_is_up() -> None:
    proc = subprocess.run([sys.executable, "-m", "sim.load", "--seconds", "0.3", "--parent", str(os.getpid())],
                          cwd=REPO, timeout=30)  # fmt: skip
    assert proc.returncode == 0


def test_no_load_starts_nothing() -> None:
    with SimLoad(0, seconds=10) as load:
        load.start(priority_of=os.getpid())
        assert load.pids == []
    assert load.summary()["started"] is False
