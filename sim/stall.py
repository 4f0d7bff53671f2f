"""A fault on the controller itself: its process stops running for a while, as under SIGSTOP, a
long GC pause or a starved VM. In a simulated run the controller shares the runner's process, so
the stall blocks that process's event loop: no heartbeat, no reads, no writes, no judging, while the
PLC, the camera and the inference workers (other processes) carry on.

Not here: when to stall (controller/bootstrap.py's simulated-run faults).
"""

from __future__ import annotations

import time


def freeze(seconds: float) -> None:
    """Block the calling thread (the event loop's) for `seconds`; deliberately synchronous."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(left)
