"""The whole simulated line as one object: plant, PLC (S7 on loopback) and camera (frame stream),
run for a number of parts, then its gate log written as JSON for the judge.

`lineinspect sim-line` runs it as its own process so a controller process can be tested against
it over the real protocols (hardware-in-the-loop style). Not here: scoring (sim/judge.py).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from controller.adapters.memory_lock import lock_memory
from controller.core import plc_codec as c
from sim.camera import NO_FAULTS, CameraFaults, SimCamera
from sim.plant import Plant, PlantConfig
from sim.plc_server import SimPlc
from sim.s7_proxy import LinkFaults, S7Proxy
from sim.scenarios import SCENARIOS


class SimLine:
    def __init__(
        self, cfg: PlantConfig, *, plc_port: int = 0, camera_port: int = 0,
        camera_faults: CameraFaults = NO_FAULTS, plc_restart_at_s: float | None = None,
        link_faults: LinkFaults | None = None,
    ) -> None:  # fmt: skip
        self.cfg = cfg
        self.plc_restart_at_s = plc_restart_at_s
        self.plant = Plant(cfg)
        self.camera = SimCamera(seed=cfg.seed, port=camera_port, faults=camera_faults)
        self.camera.truth = {p.part_id: p.truth for p in self.plant.parts}
        self.camera.light = {p.part_id: p.light for p in self.plant.parts if p.light != 1.0}
        self.plc = SimPlc(self.plant, port=0 if link_faults else plc_port,
                          on_trigger=lambda seq, pid, at: self.camera.trigger(pid, at))  # fmt: skip
        self.proxy = S7Proxy(0, link_faults, port=plc_port, seed=cfg.seed) if link_faults else None
        """Between the controller and the PLC when the scenario disturbs the link."""

    def __enter__(self) -> SimLine:
        self.camera.__enter__()
        self.plc.__enter__()
        if self.proxy is not None:
            self.proxy.upstream = (self.plc.host, self.plc.port)
            self.proxy.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proxy is not None:
            self.proxy.__exit__(None, None, None)
        self.plc.__exit__(None, None, None)
        self.camera.__exit__(None, None, None)

    @property
    def endpoints(self) -> dict[str, int]:
        plc_port = self.proxy.port if self.proxy is not None else self.plc.port
        return {"plc_port": plc_port, "camera_port": self.camera.port}

    def wait_for_controller(self, timeout_s: float) -> bool:
        """Components start in any order: the conveyor starts only once the controller is ready."""
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.plc.controller_ready() and self.camera.wait_for_client(0.0):
                return True
            time.sleep(0.02)
        return False

    def run(self, *, timeout_s: float) -> bool:
        """Convey all parts past the gate; False if that took longer than `timeout_s`."""
        self.plc.running = True
        if self.proxy is not None:
            self.proxy.start_clock()
        started = time.monotonic()
        end = started + timeout_s
        restart_at = None if self.plc_restart_at_s is None else started + self.plc_restart_at_s
        while time.monotonic() < end:
            if restart_at is not None and time.monotonic() >= restart_at:
                self.plc.restart()
                restart_at = None
            if self.plant.all_triggered and self.plant.travel_mm >= self.plant.end_mm and not self.plc.program.fifo:
                break
            time.sleep(0.05)
        self.plc.running = False
        while self.plant.speed_mm_s > 0 and time.monotonic() < end + 5:
            time.sleep(0.01)
        return self.plant.all_triggered and not self.plc.program.fifo

    def report(self) -> dict[str, object]:
        with self.plc.locked():
            snap = c.decode_plc_to_vision(bytes(self.plc.plc_db))
            log = list(self.plc.program.log)
        return {
            "parts": [asdict(p) for p in self.plant.parts],
            "decisions": [asdict(d) for d in log],
            "plc": {
                "epoch": snap.epoch, "trigger_seq": snap.trigger_seq, "decided_seq": snap.decided_seq,
                "rejects_vision": snap.rejects_vision, "rejects_failsafe": snap.rejects_failsafe,
                "verdicts_late": snap.verdicts_late, "watchdog_trips": snap.watchdog_trips,
            },
            "max_scan_ms": self.plc.max_scan_s * 1000,
            "max_cycle_ms": self.plc.max_cycle_s * 1000,
            "plc_realtime": self.plc.realtime,
            "frames_sent": self.camera.frames_sent,
            "frames_dropped_on_purpose": self.camera.dropped,
            "spurious_frames_sent": self.camera.spurious,
            "seed": self.cfg.seed,
        }


def serve(
    cfg: PlantConfig, *, out: Path, plc_port: int, camera_port: int, wait_s: float, scenario: str = "steady",
    hold: bool = False,
) -> int:  # fmt: skip
    """`lineinspect sim-line`: announce endpoints as one JSON line, run, write the report. `hold`: the
    conveyor also waits for a "go" line on stdin (the runner's panel is subscribed by then)."""
    # The PLC's scan thread shares this process's GIL with the S7 server and the camera's renderer:
    # with Python's 5 ms switch interval its 1 ms cycle stretched to 30 ms on a busy machine.
    sys.setswitchinterval(0.0005)
    lock_memory()  # a PLC's program is never paged out (controller/adapters/memory_lock.py)
    sc = SCENARIOS[scenario]
    cfg = sc.plant_config(cfg)
    link = sc.link if sc.link != LinkFaults() else None
    with SimLine(cfg, plc_port=plc_port, camera_port=camera_port, camera_faults=sc.camera,
                 plc_restart_at_s=sc.plc_restart_at_s, link_faults=link) as line:  # fmt: skip
        print(json.dumps({"event": "listening", **line.endpoints}), flush=True)
        if not line.wait_for_controller(wait_s):
            print(json.dumps({"event": "error", "error": "no controller became ready"}), flush=True)
            return 2
        if hold and (refused := _wait_for_go(wait_s)) is not None:
            print(json.dumps({"event": "error", "error": refused}), flush=True)
            return 2
        print(json.dumps({"event": "running", "parts": cfg.parts}), flush=True)
        stopped_s = sum(4.0 for _, f in cfg.speed_profile if f < 0.5)  # slow or stopped stretches
        budget = cfg.parts * max(cfg.pitch_mm) / cfg.speed_mm_s + cfg.decision_mm / cfg.speed_mm_s + 30 + stopped_s
        done = line.run(timeout_s=budget)
        out.write_text(json.dumps(line.report()))
        print(json.dumps({"event": "done", "complete": done, "report": str(out)}), flush=True)
        _linger(10.0)
        return 0 if done else 3


def _wait_for_go(timeout_s: float) -> str | None:
    """None once stdin brings the line "go"; else why not (EOF, another line, timeout_s passed).
    Reads the file descriptor itself (no buffer), so `_linger` sees the EOF that follows."""
    import select

    got = b""
    end = time.monotonic() + timeout_s
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready:
            chunk = os.read(sys.stdin.fileno(), 64)
            if not chunk:
                return 'stdin closed before "go"'
            got += chunk
            if b"\n" in got:
                line = got.split(b"\n")[0].strip()
                return None if line == b"go" else f'expected "go" on stdin, got {line[:40]!r}'
    return f'no "go" on stdin within {timeout_s:g} s'


def _linger(timeout_s: float) -> None:
    """Keep serving until the controller's side closes our stdin (it has stopped cleanly), so the
    end of a run is not reported as a lost PLC link. Bounded: never blocks longer than timeout_s."""
    import select

    end = time.monotonic() + timeout_s
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready and not sys.stdin.buffer.read1(4096):
            return
