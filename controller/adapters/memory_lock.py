"""Keep a real-time process's memory in RAM: `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`.

A virtual machine's host may page out memory that looks idle (this one runs DAMON with a `pageout`
scheme: anything untouched for a couple of seconds goes): the code of a rarely taken branch, a
cold part of the heap, SQLite's page cache. The next touch is a disk read inside a part's budget,
behind whatever the disk is flushing (one 300-part run: 4,500 file refaults, 111 major faults).
Locked pages are never paged out. ONFAULT locks a page only once it is touched, so a large shared
mapping (Ray's object store, gigabytes of /dev/shm) costs only what the process really uses.
Needs CAP_IPC_LOCK or a large enough `ulimit -l`; without them the process runs unlocked, and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT = 1, 2, 4


def lock_memory() -> str | None:
    """Lock this process's pages as they are touched, now and from now on. Returns None when locked,
    else why not (for one log line)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return "no C library found"
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if libc.mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0:
        return os.strerror(ctypes.get_errno())
    return None
