"""A fault on the inference path: now and then a worker's answer comes three times its budget late
(a GC pause, a swapped-out page, a noisy neighbour on the GPU). The real inference service does the
work; this only holds its answer back, so the controller meets the fault exactly where a slow
worker would show it: no result by the deadline it gave.

Seeded; wraps any InferenceService. Not here: admission or deadlines (the controller's job).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from controller.errors import InferenceError
from controller.ports import Image, InferenceResult


@dataclass(frozen=True, slots=True)
class InferenceFaults:
    slow_rate: float = 0.0
    """Probability that one inference is slow."""
    slow_factor: float = 3.0
    """A slow inference takes this many times the budget the caller gave it (deadline − now)."""


class SimSlowInference:
    def __init__(self, inner: Any, faults: InferenceFaults, *, seed: int = 0) -> None:
        self.inner, self.faults = inner, faults
        self._rng = random.Random(seed)
        self.slowed = 0

    async def __aenter__(self) -> SimSlowInference:
        await self.inner.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.inner.__aexit__(et, e, tb)

    @property
    def healthy(self) -> bool:
        return bool(self.inner.healthy)

    @property
    def expected_latency_s(self) -> float:
        return float(self.inner.expected_latency_s)

    async def swap_model(self, model_path: Path) -> str:
        return str(await self.inner.swap_model(model_path))

    async def infer(self, image: Image, deadline: float) -> InferenceResult:
        started = time.monotonic()
        result: InferenceResult = await self.inner.infer(image, deadline)
        if self._rng.random() >= self.faults.slow_rate:
            return result
        self.slowed += 1
        answer_at = started + self.faults.slow_factor * (deadline - started)
        # Like any late worker: the caller gets nothing before its deadline, then an error.
        await asyncio.sleep(max(0.0, min(answer_at, deadline) - time.monotonic()))
        if time.monotonic() < answer_at:
            raise InferenceError(f"late: inference took {self.faults.slow_factor:g}× its budget")
        return result
