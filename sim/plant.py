"""The plant: a conveyor with a speed profile, its encoder, parts at random pitch with a ground
truth, and the photo-eye that sees their leading edges.

Deterministic for a seed and stepped by the caller with absolute times, so it runs in virtual time
in tests and in real time under the simulated PLC. Not here: the PLC's rules (sim/plc_program.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from controller.core.plc_codec import U32


@dataclass(frozen=True, slots=True)
class PlantConfig:
    speed_mm_s: float = 1000.0
    ramp_s: float = 0.5
    """Time to accelerate from standstill to speed at start."""
    counts_per_mm: float = 10.0
    decision_mm: float = 400.0
    """Photo-eye to decision point at the gate."""
    pitch_mm: tuple[float, float] = (35.0, 65.0)
    """Leading edge to leading edge, uniform in this range (mean 50 mm: 20 parts/s at 1 m/s)."""
    defect_rate: float = 0.1
    defect_classes: int = 3
    """Defect classes 1..N (0 = good)."""
    parts: int = 100
    seed: int = 1
    speed_profile: tuple[tuple[float, float], ...] = ()
    """(seconds since the run started, target speed as a fraction of `speed_mm_s`), piecewise
    constant; the conveyor follows with the ramp's acceleration. Empty: constant speed."""
    encoder_start: int | None = None
    """Encoder count at travel 0; None: random (a real encoder starts anywhere)."""
    bursts: tuple[int, int] = (0, 0)
    """(every N parts, L parts): every N-th part starts a burst of L parts at the smallest pitch."""
    reference_escape_rate: float = 0.08
    """The existing inspection (an older AOI or people at a station) passes this share of defective
    parts at the start of the run ..."""
    reference_false_reject_rate: float = 0.03
    """... and rejects this share of good ones ..."""
    reference_fatigue: float = 0.5
    """... and both grow by this fraction over the run (a shift: people tire, an AOI's lamp ages)."""
    lighting: tuple[float, float] = (1.0, 1.0)
    """The camera's light at the first and at the last part (linear in between): (1.0, 0.8) dims
    it by 20 % over the run."""
    new_defect: tuple[int, float, float] | None = None
    """(class, from, share): from this fraction of the run on, this share of defective parts has this
    defect class (an index into models.synthetic.ALL_CLASSES: 4 = dent, 5 = chip, never trained)."""

    @property
    def decision_counts(self) -> int:
        return round(self.decision_mm * self.counts_per_mm)

    @property
    def min_pitch_counts(self) -> int:
        return int(self.pitch_mm[0] * self.counts_per_mm)


@dataclass(frozen=True, slots=True)
class SimPart:
    part_id: int
    truth: int
    """0 = good, else the defect class."""
    eye_mm: float
    """Conveyor travel at which the part's leading edge reaches the photo-eye."""
    reference_reject: bool = False
    """The existing inspection's verdict for this part (what the gate follows in shadow mode)."""
    light: float = 1.0
    """The camera's light when it sees this part (1.0: as at commissioning)."""


@dataclass(frozen=True, slots=True)
class EyeEdge:
    part: SimPart
    encoder_pos: int
    """Encoder count at the edge (interpolated inside the step, as a hardware latch would be)."""
    at: float


@dataclass
class Plant:
    cfg: PlantConfig
    travel_mm: float = 0.0
    speed_mm_s: float = 0.0
    parts: list[SimPart] = field(default_factory=list)
    _next: int = 0
    _t0: float | None = None
    _t: float = 0.0
    _encoder0: int = 0
    _run_t0: float | None = None

    def _profile(self, now: float) -> float:
        factor = 1.0
        for at, f in self.cfg.speed_profile:
            if self._run_t0 is not None and now - self._run_t0 >= at:
                factor = f
        return factor

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.cfg.seed)
        self._encoder0 = int(rng.integers(0, U32))
        if self.cfg.encoder_start is not None:
            self._encoder0 = self.cfg.encoder_start % U32
        # Its own stream, so the parts of a seed stay the same whatever the reference's rates.
        reference_rng = np.random.default_rng((self.cfg.seed, 7919))
        new_rng = np.random.default_rng((self.cfg.seed, 104729))
        first, last = self.cfg.lighting
        every, length = self.cfg.bursts
        eye, in_burst = 100.0, 0
        for i in range(self.cfg.parts):
            truth = 0
            if rng.random() < self.cfg.defect_rate:
                truth = int(rng.integers(1, self.cfg.defect_classes + 1))
            progress = i / max(1, self.cfg.parts - 1)
            if self.cfg.new_defect is not None and truth:
                cls, start, share = self.cfg.new_defect
                if progress >= start and new_rng.random() < share:
                    truth = cls
            self.parts.append(SimPart(part_id=i + 1, truth=truth, eye_mm=eye,
                                      reference_reject=self._reference_rejects(reference_rng, truth, i),
                                      light=first + (last - first) * progress))  # fmt: skip
            if every and i % every == 0:
                in_burst = length
            pitch = float(rng.uniform(*self.cfg.pitch_mm))
            if in_burst > 0:
                in_burst -= 1
                pitch = self.cfg.pitch_mm[0]
            eye += pitch

    def _reference_rejects(self, rng: np.random.Generator, truth: int, index: int) -> bool:
        tired = 1.0 + self.cfg.reference_fatigue * index / max(1, self.cfg.parts - 1)
        draw = float(rng.random())
        if truth:
            return draw >= self.cfg.reference_escape_rate * tired
        return draw < self.cfg.reference_false_reject_rate * tired

    def encoder_at(self, travel_mm: float) -> int:
        return (self._encoder0 + int(travel_mm * self.cfg.counts_per_mm)) % U32

    @property
    def encoder_pos(self) -> int:
        return self.encoder_at(self.travel_mm)

    @property
    def speed_counts_s(self) -> float:
        return self.speed_mm_s * self.cfg.counts_per_mm

    @property
    def all_triggered(self) -> bool:
        return self._next >= len(self.parts)

    @property
    def end_mm(self) -> float:
        """Travel at which the last part has passed its decision point (plus a little)."""
        return self.parts[-1].eye_mm + self.cfg.decision_mm + 50.0 if self.parts else 0.0

    def step(self, now: float, *, running: bool = True) -> list[EyeEdge]:
        """Advance to `now` and return the photo-eye edges in between."""
        if self._t0 is None:
            self._t0 = self._t = now
        dt = max(0.0, now - self._t)
        self._t = now
        if running and self._run_t0 is None:
            self._run_t0 = now
        target = self.cfg.speed_mm_s * self._profile(now) if running else 0.0
        accel = self.cfg.speed_mm_s / max(self.cfg.ramp_s, 1e-3)
        prev_speed = self.speed_mm_s
        if self.speed_mm_s < target:
            self.speed_mm_s = min(target, self.speed_mm_s + accel * dt)
        else:
            self.speed_mm_s = max(target, self.speed_mm_s - accel * dt)
        start = self.travel_mm
        self.travel_mm += 0.5 * (prev_speed + self.speed_mm_s) * dt
        edges = []
        while self._next < len(self.parts) and self.parts[self._next].eye_mm <= self.travel_mm:
            part = self.parts[self._next]
            frac = (part.eye_mm - start) / max(self.travel_mm - start, 1e-12)
            edges.append(EyeEdge(part, self.encoder_at(part.eye_mm), now - (1 - frac) * dt))
            self._next += 1
        return edges
