"""A real-time process's pages stay in RAM once touched (controller/adapters/memory_lock.py)."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
from controller.adapters.memory_lock import lock_memory
why = lock_memory()
buf = bytearray(8 << 20)  # touched after the call: locked too (MCL_FUTURE | MCL_ONFAULT)
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(why or "locked", int(status["VmLck"].split()[0]))
"""


def test_pages_touched_after_locking_are_locked_or_the_reason_is_given() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60)
    why, locked_kib = out.stdout.rsplit(" ", 1)
    if why == "locked":
        assert int(locked_kib) >= 8 << 10  # at least the 8 MiB touched after the call
    else:
        assert why and int(locked_kib) == 0  # e.g. "Operation not permitted" without CAP_IPC_LOCK
