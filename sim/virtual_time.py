"""An asyncio event loop whose clock is virtual: when every task waits for a timer, time jumps to
the next timer instead of sleeping. A controller over in-memory devices (sim/memory.py) then runs
a thousand parts in about a second, and every run with the same seed is the same.

Only for code without real I/O or threads that call back into the loop: the clock does not move
while the loop waits on a socket, so such a wait would hang (it raises instead, see `select`).
Not here: the devices (sim/memory.py).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise RuntimeError("virtual time: every task waits and no timer is set (a deadlock, or real I/O)")
        self.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self, start: float = 1000.0) -> None:
        self._jumping = _JumpingSelector()
        self._jumping.now = start
        super().__init__(self._jumping)

    def time(self) -> float:
        return self._jumping.now


def run_virtual(coro: Coroutine[Any, Any, T], *, debug: bool = False) -> T:
    """Run `coro` to completion on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    loop.set_debug(debug)
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
