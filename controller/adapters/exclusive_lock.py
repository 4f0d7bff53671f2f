"""One controller per line: exclusive locks on its journal and on its PLC's address.

`flock` on a lock file beside what it guards: the OS drops it when the holder's process ends,
however it ends (a SIGKILL leaves no stale lock), and a second process asking for it is refused at
once, told the holder's pid. Host-local: two controllers on two machines are not seen here.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path

from controller.errors import InUseError


def hold_exclusive_lock(lock_path: Path, what: str) -> int:
    """Lock `lock_path` (created if missing) for as long as the returned descriptor is open.
    Raises InUseError naming `what` and the holder's pid."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise InUseError(f"{what} is in use by another controller (pid {holder}); one controller per line") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def plc_lock_path(host: str, port: int, rack: int, slot: int) -> Path:
    """Where the lock for one PLC lives on this host (the system's temporary folder: every
    controller on the host sees the same one)."""
    folder = Path(tempfile.gettempdir()) / "lineinspect-locks"
    folder.mkdir(mode=0o755, exist_ok=True)
    return folder / f"plc-{host}-{port}-r{rack}s{slot}.lock"
