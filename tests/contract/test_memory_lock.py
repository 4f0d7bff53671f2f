"""A real-time process's pages stay in RAM once touched (controller/adapters/memory_lock.py)."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
from controller.adapters.memory_lock import lock_memory

def locked_kib():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    return int(status["VmLck"].split()[0])

why = lock_memory()
before = locked_kib()
buf = bytearray(8 << 20)  # a new mapping, touched after the call: locked too (MCL_FUTURE | MCL_ONFAULT)
print(why or "locked", locked_kib() - before)
"""


def test_pages_touched_after_locking_are_locked_or_the_reason_is_given() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True, timeout=60)
    why, grown_kib = out.stdout.rsplit(" ", 1)
    if why == "locked":
        assert int(grown_kib) >= 8 << 10  # the 8 MiB touched after the call
    else:
        assert why and int(grown_kib) == 0  # e.g. "Operation not permitted" without CAP_IPC_LOCK
