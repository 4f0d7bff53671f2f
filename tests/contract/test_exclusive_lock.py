"""One controller per line: the lock a second controller is refused by, held by a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.adapters.exclusive_lock import hold_exclusive_lock, plc_lock_path
from controller.errors import InUseError

HOLD = """
import sys, time
from pathlib import Path
from controller.adapters.exclusive_lock import hold_exclusive_lock
hold_exclusive_lock(Path(sys.argv[1]), "the line")
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_holder_is_refused_with_the_first_ones_pid_until_it_dies(tmp_path: Path) -> None:
    lock = tmp_path / "line.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).parents[2])  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(InUseError, match=rf"^the line is in use by another controller \(pid {holder.pid}\)"):
            hold_exclusive_lock(lock, "the line")
        holder.send_signal(signal.SIGKILL)  # however it ends, the OS drops its lock
        holder.wait(10)
        t_end = time.monotonic() + 5
        while True:
            try:
                fd = hold_exclusive_lock(lock, "the line")
                break
            except InUseError:
                assert time.monotonic() < t_end, "the lock outlived its holder"
                time.sleep(0.01)
        assert lock.read_text().strip() == str(os.getpid())
        os.close(fd)
    finally:
        holder.kill()
        holder.wait(10)
        if holder.stdout is not None:
            holder.stdout.close()


def test_the_plc_lock_is_per_plc_address() -> None:
    a = hold_exclusive_lock(plc_lock_path("127.0.0.9", 50102, 0, 1), "PLC a")
    try:
        b = hold_exclusive_lock(plc_lock_path("127.0.0.9", 50103, 0, 1), "PLC b")  # another PLC: fine
        os.close(b)
        with pytest.raises(InUseError, match="PLC a again is in use"):
            hold_exclusive_lock(plc_lock_path("127.0.0.9", 50102, 0, 1), "PLC a again")
    finally:
        os.close(a)
