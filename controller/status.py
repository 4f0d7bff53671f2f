"""The controller's observable state: health, counters and latency, as one immutable snapshot.

The controller publishes a new snapshot a few times per second; the HMI and the CLI only read it
(latest value wins). Not here: how the numbers are computed (see controller/app.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from controller.alarms import Condition


class Health(StrEnum):
    STARTING = "STARTING"
    READY = "READY"
    DEGRADED = "DEGRADED"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class LineStatus:
    state: Health = Health.STARTING
    ready_bit: bool = False
    """What the controller currently tells the PLC in `command.ready`."""
    epoch: int = 0
    line_running: bool = False
    vision_enabled: bool = False
    shadow_mode: bool = False
    watchdog_tripped: bool = False
    product_id: int = 0
    """The product the PLC says the line runs (0: it does not say)."""
    shadow_counts: dict[str, int] = field(default_factory=dict)
    """Vision against the existing inspection over the parts decided since start: both_pass,
    both_reject, vision_only_reject, reference_only_reject, no_reference; decided, shadow."""
    drift: dict[str, float] = field(default_factory=dict)
    """The serving model's drift figures (controller/core/drift.py): brightness_change,
    focus_log_ratio, high_score_share; empty until its windows are full or without a reference."""
    speed_counts_per_s: float = 0.0
    triggers: int = 0
    passes: int = 0
    rejects: int = 0
    failsafe: int = 0
    failsafe_by_reason: dict[str, int] = field(default_factory=dict)
    latency_p50_ms: float = 0.0
    latency_p99_ms: float = 0.0
    """Trigger seen → verdict written, over the last few hundred parts."""
    plc_rejects_vision: int = 0
    plc_rejects_failsafe: int = 0
    plc_verdicts_late: int = 0
    plc_watchdog_trips: int = 0
    alarms: tuple[str, ...] = ()
    """Active alarms' names."""
    model_version: str = ""
    plc_connected: bool = False
    inference_in_flight: int = 0
    """Parts waiting for or in inference."""
    log_lines_dropped: int = 0
    """Log lines the controller dropped because its log writer fell behind (controller/logs.py)."""
    vision_state: str = "Preoperational"
    """The Machine Vision state machine's state (controller/operator.py `VisionState`)."""
    shadow_requested: bool = False
    """The controller asks the PLC for shadow mode (`request_shadow`); `shadow_mode` is the PLC's answer."""
    conditions: tuple[Condition, ...] = ()
    """Alarms latched for the operator: active, or not yet acknowledged and confirmed."""
    recipes: tuple[Recipe, ...] = ()
    active_recipe: str = ""
    """The recipe whose model is serving ("" when the model is none of them)."""
    recent_actions: tuple[str, ...] = ()
    """The last operator actions, newest first, one line each (the journal's audit table has them all)."""


@dataclass(frozen=True, slots=True)
class Recipe:
    """An installed model a line can switch to (workers/recipes.py finds them)."""

    id: str
    """Its folder's name."""
    model: str
    version: str = ""
    train_data_hash: str = ""
    detection_rate: float | None = None
    false_reject_rate: float | None = None
    """From its evaluation report, where it has one."""
    problem: str = ""
    """Why it cannot be used (its model does not load), or empty."""

    def describe(self) -> str:
        quality = (f"detects {self.detection_rate:.1%} at {self.false_reject_rate:.2%} false rejects"
                   if self.detection_rate is not None and self.false_reject_rate is not None else "not evaluated")
        if self.problem:
            return f"{self.id}: unusable: {self.problem}"
        return f"{self.id}: {self.version}, {quality}, training data {self.train_data_hash[:12] or '?'}"


@dataclass(frozen=True, slots=True)
class PartResult:
    """One trigger's outcome as a panel sees it (a result event). Sent again, with the same
    (epoch, seq), if the outcome is corrected later (e.g. the write to the PLC failed)."""

    epoch: int
    seq: int
    wall_utc: str
    outcome: str
    reason: str
    defect_class: int | None
    score: float | None
    model_version: str
    frame_ms: float | None
    """Trigger seen → frame arrived."""
    inference_ms: float | None
    total_ms: float | None
    """Trigger seen → outcome decided."""
    corrected: bool = False
    """The PLC's gate did otherwise than recorded: this replaces the part's earlier result."""

    @property
    def result_id(self) -> str:
        return f"{self.epoch}/{self.seq}"
