"""A fault-injecting TCP proxy on loopback between the controller and the simulated PLC: real S7
bytes, delivered late, in fragments, or not at all (a link that goes silent with the socket open).

Not here: S7 itself (python-snap7's server behind it). Every connection is bounded by the
proxy's lifetime; threads end when either side closes or the proxy stops.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType


@dataclass(frozen=True, slots=True)
class LinkFaults:
    latency_ms: tuple[float, float] = (0.0, 0.0)
    """(mean, ± uniform jitter) added to every chunk in each direction; order is kept."""
    fragment: bool = False
    """Deliver each chunk in small random pieces."""
    silent_at_s: float | None = None
    silent_s: float = 0.0
    """From `silent_at_s` after `start_clock()`, forward nothing for `silent_s` (sockets stay open)."""


class S7Proxy:
    def __init__(
        self, upstream_port: int, faults: LinkFaults, *, host: str = "127.0.0.1", port: int = 0, seed: int = 0
    ) -> None:
        self.upstream = (host, upstream_port)
        self.faults = faults
        self._rng = random.Random(seed)
        self._listener = socket.create_server((host, port))
        self.port: int = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self._t0: float | None = None
        self._threads: list[threading.Thread] = []
        self._accept = threading.Thread(target=self._accept_loop, name="sim-s7-proxy", daemon=True)

    def __enter__(self) -> S7Proxy:
        self._accept.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._listener.close()
        self._accept.join(timeout=5)
        for t in self._threads:
            t.join(timeout=5)

    def start_clock(self) -> None:
        """The fault schedule counts from here (the start of the run)."""
        self._t0 = time.monotonic()

    def _silent_until(self) -> float | None:
        f = self.faults
        if f.silent_at_s is None or self._t0 is None:
            return None
        start = self._t0 + f.silent_at_s
        now = time.monotonic()
        return start + f.silent_s if start <= now < start + f.silent_s else None

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                down, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                up = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                down.close()
                continue
            for s in (down, up):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.settimeout(0.2)
            for src, dst in ((down, up), (up, down)):
                t = threading.Thread(target=self._pump, args=(src, dst), name="sim-s7-proxy-pump", daemon=True)
                self._threads.append(t)
                t.start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        mean, jitter = self.faults.latency_ms
        not_before = 0.0
        try:
            while not self._stop.is_set():
                try:
                    data = src.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    break
                while (until := self._silent_until()) is not None and not self._stop.is_set():
                    time.sleep(min(0.05, until - time.monotonic() + 0.001))  # hold: the link is silent
                if mean or jitter:
                    delay = max(0.0, mean + self._rng.uniform(-jitter, jitter)) / 1000
                    not_before = max(not_before, time.monotonic() + delay)  # later, never reordered
                    time.sleep(max(0.0, not_before - time.monotonic()))
                self._send(dst, data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def _send(self, dst: socket.socket, data: bytes) -> None:
        if not self.faults.fragment:
            dst.sendall(data)
            return
        i = 0
        while i < len(data):
            n = self._rng.randint(1, 16)
            dst.sendall(data[i : i + n])
            i += n
            time.sleep(0.0002)
