"""The simulated PLC: python-snap7's S7 `Server` on loopback serving the two data blocks, and a
scan thread that runs the PLC program against the plant every cycle (≤ 2 ms).

Holding both DB locks during a scan makes every S7 read or write atomic with respect to a scan,
as on a real CPU where communication is served between cycles.
Not here: the rules themselves (sim/plc_program.py).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from types import TracebackType

import snap7
from snap7.type import SrvArea

from controller.core import plc_codec as c
from sim.plant import Plant
from sim.plc_program import PlcProgram

SCAN_S = 0.001

# snap7's server logs every client event at INFO; keep the simulator's console for the run.
logging.getLogger("snap7").setLevel(logging.ERROR)


class SimPlc:
    def __init__(
        self, plant: Plant, *, host: str = "127.0.0.1", port: int = 0, db_in: int = 100,
        db_out: int = 101, watchdog_s: float = 0.2,
        on_trigger: Callable[[int, int, float], None] | None = None,
    ) -> None:  # fmt: skip
        self.plant = plant
        self.host, self.port = host, port
        self.db_in, self.db_out = db_in, db_out
        self.plc_db = bytearray(c.PLC_TO_VISION_SIZE)
        self.vision_db = bytearray(c.VISION_TO_PLC_SIZE)
        reference = {part.part_id: part.reference_reject for part in plant.parts}
        self.program = PlcProgram(
            self.plc_db, self.vision_db, decision_offset=plant.cfg.decision_counts, watchdog_s=watchdog_s,
            reference_of=reference.get,
        )
        self.on_trigger = on_trigger or (lambda seq, part_id, at: None)
        """Camera trigger output: (seq, part_id, time) at each photo-eye edge."""
        self.running = False
        """Conveyor run command (the line operator's start)."""
        self.max_scan_s = 0.0
        self.max_cycle_s = 0.0
        """Longest start-to-start of two scans: how late a photo-eye edge can reach the block."""
        self.realtime: bool | None = None
        """Whether the scan thread got real-time priority (None: not started yet)."""
        self._server = snap7.server.Server(log=False)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._scan_loop, name="sim-plc-scan", daemon=True)

    def __enter__(self) -> SimPlc:
        self._server.register_area(SrvArea.DB, self.db_in, self.plc_db)
        self._server.register_area(SrvArea.DB, self.db_out, self.vision_db)
        if self.port == 0:
            self.port = _free_port(self.host)
        self._server.start_to(self.host, self.port)
        self._thread.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._server.stop()

    def controller_ready(self) -> bool:
        """The controller has acknowledged this epoch, is ready and its heartbeat is fresh."""
        with self.locked():
            v = c.decode_vision_header(self.vision_db)
            return bool(v.command & c.READY) and v.epoch_ack == self.program.epoch

    def restart(self) -> None:
        """PLC restart: new epoch, zeroed data (rule 5)."""
        with self.locked():
            self.program.start(time.monotonic())

    def locked(self) -> _BothLocks:
        return _BothLocks(self._server, self.db_in, self.db_out)

    def _scan_loop(self) -> None:
        # A PLC is hardware of its own: its cycle does not stretch when the controller's machine is
        # busy. As an ordinary thread on shared cores it stretched to 26-34 ms; real-time priority
        # (where permitted) keeps it near SCAN_S. It sleeps every cycle, so it cannot starve the rest.
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
            self.realtime = True
        except (PermissionError, OSError):
            self.realtime = False
        last = None
        while not self._stop.is_set():
            with self.locked():
                # Inputs are sampled inside the cycle, after the last read was served, as on a CPU
                # (inputs, program, then communication): a read never sees values sampled before
                # the read before it was answered (controller/core/plc_clock.py relies on it).
                t0 = time.monotonic()
                if last is not None:
                    self.max_cycle_s = max(self.max_cycle_s, t0 - last)
                last = t0
                edges = self.plant.step(t0, running=self.running)
                pulses = self.program.scan(
                    t0, self.plant.encoder_pos, self.plant.speed_counts_s, self.plant.speed_mm_s > 0,
                    [(e.part.part_id, e.part.truth, e.encoder_pos) for e in edges],
                )
            for edge, seq in zip(edges, pulses, strict=True):
                self.on_trigger(seq, edge.part.part_id, edge.at)
            spent = time.monotonic() - t0
            self.max_scan_s = max(self.max_scan_s, spent)
            time.sleep(max(0.0, SCAN_S - spent))


class _BothLocks:
    """Acquire both DB locks in a fixed order (no deadlock with the server's per-request lock)."""

    def __init__(self, server: snap7.server.Server, db_in: int, db_out: int) -> None:
        self.server, self.dbs = server, sorted((db_in, db_out))

    def __enter__(self) -> None:
        for db in self.dbs:
            self.server.lock_area(SrvArea.DB, db)

    def __exit__(self, *exc: object) -> None:
        for db in reversed(self.dbs):
            self.server.unlock_area(SrvArea.DB, db)


def _free_port(host: str) -> int:
    """An OS-assigned free port (snap7's server cannot bind port 0 and report it back)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
