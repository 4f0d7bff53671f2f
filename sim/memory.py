"""The simulator's first tier: the whole line in memory, behind the controller's ports, for tests in
virtual time (sim/virtual_time.py). No sockets, no threads, seeded.

- `SimMemoryPlc` (PlcLink): the PLC program of the contract (sim/plc_program.py) over two byte
  arrays, with a request round trip and, on purpose, replies handled late (event-loop stalls).
- `SimMemoryCamera` (FrameSource): exposes on the PLC's trigger pulses; drops and glitches on purpose.
- `SimMemoryInference` (InferenceService): says what the frame shows after a latency, sometimes
  three times too slow.
- `MemoryJournal` (Journal): records in a dict, durable at once.
- `SimMemoryLine`: the conveyor, its parts and the PLC's scan; runs beside the controller and keeps
  the ground truth the test judges against.

A frame's image is 1×2 pixels: the part's id (mod 256) and its truth, so a misassociation is seen
exactly. Not here: the wire-level simulator (sim/plc_server.py, sim/camera.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from controller.app import LineController, Timing
from controller.core import plc_codec as c
from controller.core.frame_matching import MatchWindow
from controller.core.resume import Recorded
from controller.core.tracking import GateCounters, Margins, Outcome
from controller.errors import InferenceError
from controller.ports import AuditEntry, Frame, Image, InferenceResult, PartRecord
from sim.plc_program import PlcProgram

SCAN_S = 0.001


@dataclass
class MemoryFaults:
    read_stall: float = 0.0
    """Probability that a read's reply is handled 0–150 ms late (the controller's loop was busy)."""
    drop: float = 0.0
    """Probability that an exposure's frame is lost (the counter still advances)."""
    spurious: float = 0.0
    """Probability of a glitch exposure half a pitch after a real one."""
    slow_inference: float = 0.0
    """Probability that an inference takes three times its usual time."""
    plc_restart_at_s: float | None = None


class SimMemoryPlc:
    def __init__(self, program: PlcProgram, rng: random.Random, faults: MemoryFaults, rtt_s: float = 0.0006) -> None:
        self.program, self.rng, self.faults, self.rtt_s = program, rng, faults, rtt_s

    @property
    def max_write_bytes(self) -> int:
        return 480 - 35

    async def read_plc_to_vision(self) -> bytes:
        await asyncio.sleep(self.rtt_s / 2)
        data = bytes(self.program.plc_db)
        await asyncio.sleep(self.rtt_s / 2)
        if self.rng.random() < self.faults.read_stall:
            await asyncio.sleep(self.rng.uniform(0.0, 0.150))
        return data

    async def write_vision_to_plc(self, offset: int, data: bytes) -> None:
        await asyncio.sleep(self.rtt_s / 2)
        self.program.vision_db[offset : offset + len(data)] = data
        await asyncio.sleep(self.rtt_s / 2)

    async def reconnect(self) -> None:
        await asyncio.sleep(self.rtt_s)


class SimMemoryCamera:
    def __init__(self, rng: random.Random, faults: MemoryFaults) -> None:
        self.rng, self.faults = rng, faults
        self.counter = rng.randrange(2**32)
        self._queue: asyncio.Queue[Frame] = asyncio.Queue(maxsize=256)  # overflow: drop newest (never here)

    def expose(self, part_id: int, truth: int, now: float) -> None:
        """The camera's trigger input: one exposure of what is under it now."""
        self.counter += 1
        if self.rng.random() >= self.faults.drop:
            self._deliver(self.counter, np.array([[part_id % 256, truth]], np.uint8), now)

    def glitch(self, now: float) -> None:
        self.counter += 1
        self._deliver(self.counter, np.array([[255, 255]], np.uint8), now)

    def _deliver(self, counter: int, image: Image, exposed_at: float) -> None:
        loop = asyncio.get_running_loop()
        frame = Frame(counter, image, exposed_at + 0.004, exposed_at)  # received after readout
        loop.call_at(frame.received_at, self._queue.put_nowait, frame)

    async def frames(self) -> AsyncIterator[Frame]:
        while True:
            yield await self._queue.get()


class SimMemoryInference:
    def __init__(self, rng: random.Random, faults: MemoryFaults, latency_s: float = 0.008) -> None:
        self.rng, self.faults, self.latency_s = rng, faults, latency_s
        self.version = "memory-1"
        self.load_s = 0.3
        """How long a model swap takes to load the new model."""

    @property
    def expected_latency_s(self) -> float:
        return self.latency_s * 1.5

    @property
    def healthy(self) -> bool:
        return True

    async def infer(self, image: Image, deadline: float) -> InferenceResult:
        slow = self.rng.random() < self.faults.slow_inference
        took = self.latency_s * (3 if slow else self.rng.uniform(0.8, 1.2))
        loop = asyncio.get_running_loop()
        if loop.time() + took > deadline:
            await asyncio.sleep(max(0.0, deadline - loop.time()))
            raise InferenceError("inference past its deadline")
        await asyncio.sleep(took)
        defect = int(image[0, 1])
        return InferenceResult(defect, 0.9 if defect else 0.1, defect != 0, self.version, took)

    async def swap_model(self, model_path: Path) -> str:
        """The in-memory "model" is named by its folder (a registry version's); the file must exist."""
        if not await asyncio.to_thread(model_path.is_file):
            raise InferenceError(f"no model at {model_path}")
        await asyncio.sleep(self.load_s)  # loading and warming a model takes a while; the old one serves
        self.version = model_path.parent.name
        return self.version


class MemoryJournal:
    def __init__(self) -> None:
        self.parts: dict[tuple[int, int], PartRecord] = {}
        self.t_written: dict[tuple[int, int], float] = {}
        self.alarms: list[tuple[str, bool]] = []
        self.audit: list[AuditEntry] = []
        self.gate: dict[tuple[int, int], c.DecisionEntry] = {}
        self.review: dict[tuple[int, int], str] = {}
        self.points: dict[int, GateCounters] = {}
        self._gate: tuple[int, GateCounters] | None = None
        self.error: str | None = None
        self.stalled_s: float | None = None
        self.moved_aside: Path | None = None

    @property
    def healthy(self) -> bool:
        return True

    async def _done(self) -> None:
        await asyncio.sleep(0.0005)  # one fsync

    def record(self, rec: PartRecord) -> asyncio.Future[None]:
        return self.record_many([rec])

    def record_many(self, recs: list[PartRecord]) -> asyncio.Future[None]:
        for rec in recs:
            self.parts[rec.epoch, rec.seq] = rec
        self._store_point()
        return asyncio.ensure_future(self._done())

    def amend(self, epoch: int, seq: int, outcome: str, reason: str) -> asyncio.Future[None]:
        rec = self.parts[epoch, seq]
        rec.outcome, rec.reason = outcome, reason
        self._store_point()
        return asyncio.ensure_future(self._done())

    def gate_reconciled(self, epoch: int, gate: GateCounters) -> None:
        self._gate = (epoch, gate)

    def _store_point(self) -> None:
        if self._gate is not None and self._gate[0] in self.points:
            self.points[self._gate[0]] = self._gate[1]

    async def resume_point(self, epoch: int, gate: GateCounters) -> GateCounters:
        return self.points.setdefault(epoch, gate)

    async def recorded(self, epoch: int, after_seq: int, upto_seq: int) -> list[Recorded]:
        return [Recorded(r.seq, Outcome(r.outcome), Outcome(r.written_verdict) if r.written_verdict else None,
                         (epoch, r.seq) in self.t_written, r.trigger_pos)
                for (ep, _), r in self.parts.items() if ep == epoch and after_seq < r.seq <= upto_seq]  # fmt: skip

    async def supersede_epoch(self, epoch: int) -> int:
        old = [key for key in self.parts if key[0] == epoch]
        for key in old:
            del self.parts[key]
        self.points.pop(epoch, None)
        return len(old)

    async def note_alarm(self, name: str, raised: bool, detail: str) -> None:
        self.alarms.append((name, raised))

    async def note_audit(self, entry: AuditEntry) -> None:
        self.audit.append(entry)

    def note_review(self, epoch: int, seq: int, why: str) -> asyncio.Future[None]:
        self.review.setdefault((epoch, seq), why)
        return asyncio.ensure_future(asyncio.sleep(0))

    def note_gate(self, epoch: int, seq: int, decision: c.DecisionEntry) -> asyncio.Future[None]:
        self.gate[epoch, seq] = decision
        return asyncio.ensure_future(asyncio.sleep(0))

    def note_written(self, epoch: int, seq: int, t_written: float) -> asyncio.Future[None]:
        self.t_written[epoch, seq] = t_written
        return asyncio.ensure_future(asyncio.sleep(0))


@dataclass
class SimMemoryLine:
    """Conveyor, parts and the PLC's scan. `speed` in counts/s; parts at a random pitch."""

    seed: int
    parts: int = 200
    speed: float = 10_000.0
    pitch_counts: tuple[int, int] = (350, 650)
    decision_offset: int = 4000
    defect_rate: float = 0.1
    speed_changes: bool = False
    faults: MemoryFaults = field(default_factory=MemoryFaults)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.program = PlcProgram(bytearray(c.PLC_TO_VISION_SIZE), bytearray(c.VISION_TO_PLC_SIZE),
                                  decision_offset=self.decision_offset, rng=random.Random(self.seed))  # fmt: skip
        self.plc = SimMemoryPlc(self.program, random.Random(self.seed + 1), self.faults)
        self.camera = SimMemoryCamera(random.Random(self.seed + 2), self.faults)
        self.inference = SimMemoryInference(random.Random(self.seed + 3), self.faults)
        self.journal = MemoryJournal()
        self.truth: dict[int, int] = {}
        """part_id → defect class (0 = good)."""
        self.pos = 0.0

    async def run(self) -> None:
        """Move every part past the gate, then a little more; returns when the line has run empty."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        next_part, part_id = 1000.0, 0
        target, v = self.speed, self.speed
        restart_at = None if self.faults.plc_restart_at_s is None else start + self.faults.plc_restart_at_s
        pending_glitch: float | None = None
        while part_id < self.parts or self.program.fifo:
            await asyncio.sleep(SCAN_S)
            now = loop.time()
            if self.speed_changes and self.rng.random() < 0.002:
                target = self.speed * self.rng.uniform(0.4, 1.2)
            v += max(-10_000 * SCAN_S, min(10_000 * SCAN_S, target - v))  # 1 m/s² at 10 counts/mm
            self.pos += v * SCAN_S
            edges = []
            if part_id < self.parts and self.pos >= next_part:
                part_id += 1
                self.truth[part_id] = self.rng.randrange(1, 4) if self.rng.random() < self.defect_rate else 0
                edges.append((part_id, self.truth[part_id], int(self.pos) % 2**32))
                next_part += self.rng.uniform(*self.pitch_counts)
            if restart_at is not None and now >= restart_at:
                self.program.start(now)
                restart_at = None
            pulses = self.program.scan(now, int(self.pos) % 2**32, v, True, edges)
            for _, (pid, truth, _) in zip(pulses, edges, strict=True):
                self.camera.expose(pid, truth, now)
                if self.rng.random() < self.faults.spurious:
                    pending_glitch = now + (self.pitch_counts[0] / 2) / max(v, 1.0)
            if pending_glitch is not None and now >= pending_glitch:
                self.camera.glitch(now)
                pending_glitch = None
        for _ in range(1000):  # the controller sees and records the last decisions (bounded: 1 s)
            await asyncio.sleep(SCAN_S)
            self.program.scan(loop.time(), int(self.pos) % 2**32, 0.0, True, [])
            if {(d.epoch, d.seq) for d in self.program.log} <= set(self.journal.parts):
                break

    def _unseen_at_restart(self) -> set[tuple[int, int]]:
        """Per epoch that ended in a restart: the decisions after the last seq the journal has."""
        last_epoch = self.program.epoch
        newest: dict[int, int] = {}
        for ep, seq in self.journal.parts:
            newest[ep] = max(newest.get(ep, 0), seq)
        return {(d.epoch, d.seq) for d in self.program.log
                if d.epoch != last_epoch and d.seq > newest.get(d.epoch, 0) and d.gate != "pass"}  # fmt: skip

    def judge(self) -> dict[str, int]:
        """The ground truth against the journal: what the issue's criteria count."""
        decisions = {(d.epoch, d.seq): d for d in self.program.log}
        records = self.journal.parts
        misassociated = sum(1 for (ep, seq), r in records.items() if r.image is not None and (ep, seq) in decisions
                            and int(r.image[0, 0]) != decisions[ep, seq].part_id % 256)  # fmt: skip
        written_pass = {(ep, seq) for (ep, seq), r in records.items() if r.written_verdict == "pass"}
        gate_of = {"pass": "pass", "reject": "reject_vision", "failsafe": "reject_failsafe"}
        return {
            "parts": len(decisions),
            "misassociated": misassociated,
            "passed_without_own_pass": sum(1 for k, d in decisions.items()
                                           if d.gate == "pass" and k not in written_pass),
            "escapes": sum(1 for d in decisions.values() if d.gate == "pass" and d.truth != 0),
            # Triggers latched after the controller's last read of an epoch that a PLC restart then
            # wiped (decided or dropped, all rejected) are unknowable to it: the ring is zeroed.
            "without_one_outcome": len((set(decisions) ^ set(records)) - (unseen := self._unseen_at_restart())),
            "unseen_at_restart": len(unseen),
            # A verdict written and decided just before a PLC restart the controller had not seen yet:
            # it records `epoch_changed` (the new epoch's counters cannot tell what the gate did).
            "gate_unknown_at_restart": len(unknown := {
                k for k, d in decisions.items() if k in records and records[k].reason == "epoch_changed"
                and records[k].written_verdict is not None and d.gate == gate_of[records[k].written_verdict]}),
            "journal_not_gate": sum(1 for k, d in decisions.items()
                                    if k in records and k not in unknown and gate_of[records[k].outcome] != d.gate),
            "late_writes": c.decode_plc_to_vision(bytes(self.program.plc_db)).verdicts_late,
            "failsafe": sum(1 for r in records.values() if r.outcome == "failsafe"),
            "model_verdicts": sum(1 for r in records.values() if r.outcome != "failsafe"),
        }


WINDOW = MatchWindow(tolerance_s=0.002, same_part_s=0.015)
"""The in-memory camera stamps exposures with the PLC scan that pulsed it; 35 ms smallest pitch."""


def controller_for(line: SimMemoryLine, **options: Any) -> LineController:
    """The real controller (controller/app.py) on the in-memory line, in the running loop's
    (virtual) time; `options` go to its constructor (registry, products, label_store, ...)."""
    return LineController(
        line.plc, line.camera, line.inference, line.journal,
        margins=Margins(write_s=0.004, plc_cycle_s=0.002), window=WINDOW,
        timing=Timing(min_part_pitch_counts=line.pitch_counts[0], plc_max_cycle_s=0.002),
        clock=asyncio.get_running_loop().time, **options,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def running(controller: LineController) -> AsyncIterator[LineController]:
    """The controller's run as a task, connected before the first part; cancelled at the end."""
    task = asyncio.create_task(controller.run(), name="controller")
    await asyncio.sleep(0.05)
    try:
        yield controller
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def assert_safe(result: dict[str, int]) -> None:
    """The promises a run of the in-memory line must keep, whatever its timing (`SimMemoryLine.judge`)."""
    assert result["misassociated"] == 0, result
    assert result["passed_without_own_pass"] == 0, result
    assert result["without_one_outcome"] == 0, result
    assert result["journal_not_gate"] == 0, result
    assert result["late_writes"] == 0, result  # a verdict that cannot be on time is dropped, never written
