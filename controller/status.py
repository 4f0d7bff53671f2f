"""The controller's observable state: health, counters and latency, as one immutable snapshot.

The controller publishes a new snapshot a few times per second; the HMI and the CLI only read it
(latest value wins). Not here: how the numbers are computed (see controller/app.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


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
    model_version: str = ""
