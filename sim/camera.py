"""The simulator's camera: on each trigger pulse it "exposes" the part under the photo-eye —
renders its image (models.synthetic), stamps the part's hidden identity outside the ROI — and
streams it with its frame counter to every connected controller (controller/adapters/frame_stream.py).

A render thread keeps the PLC scan free of image work; its queue is unbounded by count only in
principle: triggers come at most once per part pitch and rendering is ~100× faster than that.
Not here: association with triggers (the controller's job).
"""

from __future__ import annotations

import queue
import random
import socket
import threading
import time
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from controller.adapters.frame_stream import encode_frame
from models import synthetic
from sim import identity


@dataclass(frozen=True, slots=True)
class CameraFaults:
    drop_rate: float = 0.0
    """Probability that an exposure's frame is lost (the counter still advances)."""
    drop_burst_every: int = 0
    """Every N-th exposure starts a burst of 5 lost frames (0: never)."""
    spurious_rate: float = 0.0
    """Probability of an extra exposure (a trigger-line glitch) half a pitch after a real one."""


NO_FAULTS = CameraFaults()


class SimCamera:
    def __init__(
        self, *, seed: int, host: str = "127.0.0.1", port: int = 0, faults: CameraFaults = NO_FAULTS
    ) -> None:
        self.seed = seed
        self.faults = faults
        self.dropped: list[int] = []
        """Part ids whose frame was lost on purpose."""
        self.spurious = 0
        self._fault_rng = random.Random(seed)
        self._burst_left = 0
        self.host, self.port = host, port
        self.counter = 0
        self.truth: dict[int, int] = {}
        """part_id → defect class, filled by the line before the run."""
        self.light: dict[int, float] = {}
        """part_id → the light's strength when it is exposed (1.0 where missing)."""
        self.frames_sent = 0
        self._jobs: queue.Queue[tuple[int, float] | None] = queue.Queue()
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server((host, port))
        self.port = self._listener.getsockname()[1]
        self._threads = [
            threading.Thread(target=self._accept_loop, name="sim-camera-accept", daemon=True),
            threading.Thread(target=self._render_loop, name="sim-camera-render", daemon=True),
        ]

    def __enter__(self) -> SimCamera:
        self.render(0)  # loads and caches the textures now, not at the first part's exposure
        for t in self._threads:
            t.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._jobs.put(None)
        self._listener.close()
        for t in self._threads:
            t.join(timeout=5)
        with self._lock:
            for s in self._clients:
                s.close()

    def trigger(self, part_id: int, at: float) -> None:
        """Hardware trigger input: expose now (called from the PLC scan thread)."""
        self._jobs.put((part_id, at))

    def render(self, part_id: int) -> np.ndarray:
        rng = np.random.default_rng((self.seed, part_id))
        frame, _ = synthetic.render_frame(rng, self.truth.get(part_id, 0))
        light = self.light.get(part_id, 1.0)
        if light != 1.0:
            frame = np.clip(np.rint(frame * np.float32(light)), 0, 255).astype(np.uint8)
        identity.stamp(frame, part_id)
        return frame

    def _lost(self) -> bool:
        f = self.faults
        if f.drop_burst_every and self.counter % f.drop_burst_every == 0:
            self._burst_left = 5
        if self._burst_left > 0:
            self._burst_left -= 1
            return True
        return self._fault_rng.random() < f.drop_rate

    def _render_loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            part_id, at = job
            self.counter += 1
            if self._lost():
                self.dropped.append(part_id)
            else:
                self._send(encode_frame(self.counter, self.render(part_id), at))
            if self._fault_rng.random() < self.faults.spurious_rate:
                time.sleep(0.015)  # half the smallest pitch: between two parts, nobody's frame
                self.counter += 1
                self.spurious += 1
                self._send(encode_frame(self.counter, self.render(0), time.monotonic()))

    def _send(self, msg: bytes) -> None:
        with self._lock:
            for s in list(self._clients):
                try:
                    s.sendall(msg)
                except OSError:
                    self._clients.remove(s)
                    s.close()
        self.frames_sent += 1

    def _accept_loop(self) -> None:
        self._listener.settimeout(0.2)
        while True:
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # listener closed
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._clients.append(conn)

    def wait_for_client(self, timeout_s: float) -> bool:
        end = time.monotonic() + timeout_s
        while True:
            with self._lock:
                if self._clients:
                    return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.01)
