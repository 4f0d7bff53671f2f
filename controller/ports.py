"""The hardware boundary: small protocols the controller core talks to, and the plain data that
crosses them. Real adapters (python-snap7, pypylon, Ray/ONNX Runtime, SQLite) and the simulator's
parts implement these; code under `controller/` never asks which implementation it holds.

Not here: any I/O. This module only names roles and the values they exchange.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from controller.core.plc_codec import DecisionEntry
    from controller.core.resume import Recorded
    from controller.core.tracking import GateCounters

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True, slots=True)
class Frame:
    """One camera exposure as it reached the controller."""

    counter: int
    """The camera's own frame counter (increments once per exposure, including dropped ones)."""
    image: Image
    """Mono8 (H, W) or RGB8 (H, W, 3); owned by the frame (a copy, never a driver buffer)."""
    received_at: float
    """Controller monotonic time (s) when the frame was handed to the event loop."""
    exposed_at: float | None = None
    """Exposure time in the controller's monotonic clock, where the camera's clock is synchronised
    to it (PTP, or the same host); None otherwise. Sharper than `received_at` for association."""


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """What a model says about one frame."""

    defect_class: int
    """Model class index; 0 = good."""
    score: float
    """Defect confidence in [0, 1]: 1 − P(good) from the model's classifier."""
    reject: bool
    """True when the score is at or above the model's calibrated threshold."""
    model_version: str
    infer_s: float
    """Seconds the engine spent on this frame (preprocessing included, queueing excluded)."""
    worker: str = ""
    defect_map: npt.NDArray[np.float16] | None = field(default=None, compare=False, repr=False)
    """The model's per-pixel defect probability over the ROI (the whole frame without one), shape
    (h, w) at the model's map resolution; float16 to keep it small on the wire. None where the
    engine gives none. Excluded from comparison (arrays have no single truth value) and repr."""
    brightness: float | None = None
    """Mean grey level (0..255) of the inspected region, for drift; None where the engine gives none."""
    focus: float | None = None
    """Mean squared Laplacian of the inspected region (sharpness and contrast), for drift."""
    threshold: float | None = None
    """The model's reject threshold on `score` (parts near it are queued for review)."""


class PlcLink(Protocol):
    """A connection to the PLC's two data blocks (contract: shared/spec/plc-interface.md)."""

    async def read_plc_to_vision(self) -> bytes:
        """One consistent read of the whole `PlcToVision` block."""
        ...

    async def write_vision_to_plc(self, offset: int, data: bytes) -> None:
        """Write `data` into `VisionToPlc` at `offset` as one request."""
        ...

    async def reconnect(self) -> None:
        """Drop the connection and open a fresh one (after any timeout or cancellation)."""
        ...

    @property
    def max_write_bytes(self) -> int:
        """The most data bytes one write request carries on this connection (negotiated PDU)."""
        ...


class FrameSource(Protocol):
    """Frames from a hardware-triggered camera, in exposure order."""

    def frames(self) -> AsyncIterator[Frame]:
        """Yield frames as they arrive; ends only when the source is closed. Raises CameraError."""
        ...


class InferenceService(Protocol):
    """Turns one frame into a result before a deadline, or fails with InferenceError."""

    @property
    def expected_latency_s(self) -> float:
        """A pessimistic (p99-like) estimate of queue + inference time for one more frame now."""
        ...

    @property
    def healthy(self) -> bool: ...

    async def infer(self, image: Image, deadline: float) -> InferenceResult:
        """Infer `image`; `deadline` is controller monotonic time after which the result is useless.
        Raises InferenceError when it cannot deliver in time or the worker failed."""
        ...

    async def swap_model(self, model_path: Path) -> str:
        """Load and warm `model_path` beside the current model, then switch between two requests.
        Returns the new model version; on failure raises and keeps serving the old model."""
        ...


@dataclass(slots=True)
class PartRecord:
    """Everything the journal keeps about one trigger's outcome."""

    epoch: int
    seq: int
    outcome: str
    """'pass', 'reject' or 'failsafe'."""
    reason: str
    """Why: 'model_pass', 'model_reject', 'no_frame', 'late', 'inference_unavailable', ..."""
    trigger_pos: int
    frame_counter: int | None = None
    defect_class: int | None = None
    score: float | None = None
    model_version: str | None = None
    worker: str | None = None
    t_trigger_seen: float | None = None
    t_frame: float | None = None
    t_infer_start: float | None = None
    t_infer_end: float | None = None
    t_decided: float | None = None
    """Monotonic times (s) of each stage; t_decided is when the outcome was fixed."""
    wall_utc: str = ""
    written_verdict: str | None = None
    """'pass' or 'reject': the verdict written to the PLC for this part, or about to be (the record
    is durable before the write). None where nothing was or will be written."""
    image: Image | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One operator action: who, from where, what, and what came of it."""

    wall_utc: str
    user: str
    role: str
    peer: str
    action: str
    argument: str
    result: str
    """'done' or 'refused'."""
    detail: str


class Journal(Protocol):
    """Durable record of every part's outcome. A record or amendment is queued at the call, in call
    order; awaiting it returns once it is on disk, or raises JournalError."""

    def record(self, rec: PartRecord) -> Awaitable[None]: ...

    def record_many(self, recs: list[PartRecord]) -> Awaitable[None]:
        """Several records durable at once (one fsync)."""
        ...

    def amend(self, epoch: int, seq: int, outcome: str, reason: str) -> Awaitable[None]:
        """Replace a recorded outcome with what the PLC's gate did (learned after the decision);
        the rest of the record stays."""
        ...

    def gate_reconciled(self, epoch: int, gate: GateCounters) -> None:
        """Every part decided up to `gate` has its outcome queued: later transactions store `gate`
        as the epoch's resume point."""
        ...

    async def resume_point(self, epoch: int, gate: GateCounters) -> GateCounters:
        """The stored resume point of `epoch`, or `gate` (stored now) if the epoch is new."""
        ...

    async def recorded(self, epoch: int, after_seq: int, upto_seq: int) -> list[Recorded]:
        """The parts recorded in `epoch` with after_seq < seq <= upto_seq. Raises JournalError."""
        ...

    async def supersede_epoch(self, epoch: int) -> int:
        """Set aside the rows of an earlier PLC run that used the same epoch number; returns how
        many. Raises JournalError."""
        ...

    async def note_alarm(self, name: str, raised: bool, detail: str) -> None:
        """The alarm history (diagnostic, never raises)."""
        ...

    def note_review(self, epoch: int, seq: int, why: str) -> Awaitable[None]:
        """Queue the part for a person's review and keep its frame (queued at the call, never raises)."""
        ...

    def note_gate(self, epoch: int, seq: int, decision: DecisionEntry) -> Awaitable[None]:
        """What the PLC's gate did with the part, from its decision ring (queued at the call, never raises)."""
        ...

    async def note_audit(self, entry: AuditEntry) -> None:
        """The operator actions' history (kept like a record until the disk takes it; never raises)."""
        ...

    def note_written(self, epoch: int, seq: int, t_written: float) -> Awaitable[None]:
        """When the PLC acknowledged the verdict's write; queued at the call, never raises."""
        ...

    @property
    def healthy(self) -> bool: ...

    @property
    def stalled_s(self) -> float | None:
        """How long a record has waited for the disk, once that is past the journal's stall limit."""
        ...

    @property
    def moved_aside(self) -> Path | None:
        """Where the journal last moved a corrupt file (found at open or by its scheduled check)."""
        ...

    @property
    def error(self) -> str | None:
        """Why it is not healthy, or what it found at open (a corrupt journal it moved aside)."""
        ...
