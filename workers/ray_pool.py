"""`InferenceService` on Ray actors: each actor holds one `OnnxRuntimeEngine` in its own process,
so a crash in the runtime costs one actor (which Ray restarts), not the controller.

Responsible for: creating and warming actors, least-outstanding routing, bounded in-flight
admission, deadlines, translating Ray failures into InferenceError, health (an actor that failed is
out of rotation until a canary inference succeeds on it again) and the latency estimate.
Not responsible for: preprocessing or scoring (the engine), or what to do with a failed frame (the
controller). Ray itself is the caller's to initialise; see `RayInferencePool.start`.

Both `controller` and `workers` must be importable in Ray's worker processes (installed package, or
the driver's working directory, which Ray puts on the workers' path for a local cluster).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from controller.errors import InferenceError
from controller.ports import Image, InferenceResult
from workers._latency import LatencyWindow
from workers.model_meta import load_model_meta
from workers.onnx_engine import OnnxRuntimeEngine

log = logging.getLogger(__name__)


@ray.remote(num_cpus=1)
class InferenceActor:
    """One engine in one Ray worker process. The pool creates it with `max_concurrency=1`: requests
    run one after another, in submission order, which is what its queue-depth arithmetic assumes."""

    def __init__(
        self,
        model_path: str,
        name: str,
        intra_op_threads: int = 1,
        providers: Sequence[str] | None = None,
        warmup_runs: int = 3,
    ) -> None:
        self._engine = OnnxRuntimeEngine(
            model_path,
            intra_op_threads=intra_op_threads,
            providers=providers,
            name=f"{name}@{socket.gethostname()}:{os.getpid()}",
        )
        # Warm up here, not on request: after a restart the actor must be fast before its first frame.
        self._engine.warmup(warmup_runs)

    def infer_batch(self, frames: list[Image]) -> list[InferenceResult]:
        return self._engine.infer_batch(frames)

    def canary(self) -> InferenceResult:
        return self._engine.canary()

    def pid(self) -> int:
        return os.getpid()


@dataclass(eq=False)
class _Slot:
    """The pool's book-keeping for one actor."""

    name: str
    handle: Any
    outstanding: int = 0
    healthy: bool = False
    last_done: float = 0.0
    """Monotonic time the actor last finished a request (for service-time samples)."""
    recovery: asyncio.Task[None] | None = None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RayInferencePool:
    """`InferenceService` over `num_actors` Ray actors, for asyncio callers on one event loop.

    Each actor takes at most `max_in_flight_per_actor` requests (default 2: one running, one queued
    behind it, so the next frame is already there when the actor frees up). With every healthy actor
    full, `infer` fails at once: a frame that has to queue is a frame that will be late.
    Actors are created with `max_task_retries=0` — a retried inference would be late anyway — and
    `max_restarts` (default -1: Ray restarts a dead actor for as long as the pool lives).
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        num_actors: int = 1,
        max_in_flight_per_actor: int = 2,
        intra_op_threads: int = 1,
        providers: Sequence[str] | None = None,
        max_restarts: int = -1,
        warmup_runs: int = 3,
        start_timeout_s: float = 60.0,
        canary_timeout_s: float = 30.0,
        recovery_backoff_s: tuple[float, float] = (0.2, 5.0),
        actor_name_prefix: str = "infer",
    ) -> None:
        if num_actors < 1 or max_in_flight_per_actor < 1:
            raise ValueError("num_actors and max_in_flight_per_actor must be >= 1")
        self._model_path = os.fspath(model_path)
        self._num_actors = num_actors
        self._max_in_flight = max_in_flight_per_actor
        self._intra_op_threads = intra_op_threads
        self._providers = list(providers) if providers else None
        self._max_restarts = max_restarts
        self._warmup_runs = warmup_runs
        self._start_timeout_s = start_timeout_s
        self._canary_timeout_s = canary_timeout_s
        self._backoff = recovery_backoff_s
        self._prefix = actor_name_prefix
        self._slots: list[_Slot] = []
        self._latency = LatencyWindow()
        self._running = False
        self._owns_ray = False

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Validate the model, create the actors and wait until each answers a canary inference.

        Raises ConfigError for a missing or invalid model, InferenceError when no actor is ready
        within `start_timeout_s`. Actors not ready by then stay in recovery (probed in the background).
        If Ray is not initialised yet, this initialises a local instance (`include_dashboard=False`,
        `log_to_driver=False`, `num_cpus=num_actors`), blocking the event loop while it starts, and
        `close()` shuts it down again; normally the caller initialises Ray.
        """
        if self._running:
            return
        # Fail in the driver with a clear ConfigError rather than as an actor that dies in __init__.
        await asyncio.to_thread(load_model_meta, self._model_path)
        if not ray.is_initialized():
            ray.init(num_cpus=self._num_actors, include_dashboard=False, log_to_driver=False)
            self._owns_ray = True
        actor_cls = InferenceActor.options(  # type: ignore[attr-defined]
            max_restarts=self._max_restarts, max_task_retries=0, max_concurrency=1
        )
        self._slots = []
        for i in range(self._num_actors):
            name = f"{self._prefix}-{i}"
            handle = actor_cls.remote(
                self._model_path, name, self._intra_op_threads, self._providers, self._warmup_runs
            )
            self._slots.append(_Slot(name=name, handle=handle))
        self._running = True
        outcomes = await asyncio.gather(
            *(self._probe(s, self._start_timeout_s) for s in self._slots), return_exceptions=True
        )
        if not any(s.healthy for s in self._slots):
            await self.close()
            first = next(o for o in outcomes if isinstance(o, BaseException))
            raise InferenceError(f"no inference actor became ready: {_first_line(first)}") from first
        for slot, outcome in zip(self._slots, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.warning("inference actor %s not ready at start: %s", slot.name, _first_line(outcome))
                self._begin_recovery(slot)

    async def close(self) -> None:
        """Stop admitting requests, stop probing, kill the actors (in-flight requests fail)."""
        self._running = False
        for slot in self._slots:
            slot.healthy = False
            if slot.recovery is not None:
                slot.recovery.cancel()
        await asyncio.gather(*(s.recovery for s in self._slots if s.recovery), return_exceptions=True)
        for slot in self._slots:
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception as exc:  # already gone, or Ray already shut down: nothing to free
                log.debug("killing %s: %s", slot.name, exc)
        self._slots = []
        if self._owns_ray:
            ray.shutdown()
            self._owns_ray = False

    async def __aenter__(self) -> RayInferencePool:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # -- InferenceService --------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._running and any(s.healthy for s in self._slots)

    @property
    def expected_latency_s(self) -> float:
        """Recent p95 service time × (1 + requests queued on the least-loaded actor); +inf when no
        actor would admit a request now."""
        open_slots = self._usable_slots()
        if not open_slots:
            return math.inf
        return self._latency.expected(min(s.outstanding for s in open_slots))

    async def infer(self, image: Image, deadline: float) -> InferenceResult:
        if not self._running:
            raise InferenceError("ray inference pool is not running")
        now = time.monotonic()
        if deadline <= now:
            raise InferenceError(f"deadline passed {now - deadline:.3f} s before submission")
        slots = self._usable_slots()
        if not slots:
            healthy = sum(s.healthy for s in self._slots)
            raise InferenceError(
                f"no inference actor has capacity ({healthy}/{len(self._slots)} healthy, "
                f"max {self._max_in_flight} in flight each)"
            )
        slot = min(slots, key=lambda s: s.outstanding)
        slot.outstanding += 1
        submitted = time.monotonic()
        try:
            ref = slot.handle.infer_batch.remote([image])
        except Exception as exc:
            slot.outstanding -= 1
            raise InferenceError(f"actor {slot.name}: submit failed: {_first_line(exc)}") from exc
        fut = asyncio.wrap_future(ref.future())
        # The slot stays occupied until the actor really finishes, even if the caller gives up:
        # the actor is still busy with it, and admission must not overcommit it.
        fut.add_done_callback(partial(self._finished, slot, submitted))
        try:
            # shield: a timeout abandons the late result; it must not cancel the future whose
            # completion releases the slot.
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the caller's cancellation.
            async with asyncio.timeout(deadline - time.monotonic()):
                results: list[InferenceResult] = await asyncio.shield(fut)
        except TimeoutError:
            raise InferenceError(f"late: actor {slot.name} had no result by the deadline") from None
        except RayTaskError as exc:
            # An exception raised inside the engine (e.g. a frame the model cannot take).
            cause = exc.cause if exc.cause is not None else exc
            raise InferenceError(f"actor {slot.name} failed: {_first_line(cause)}") from exc
        except RayActorError as exc:
            raise InferenceError(f"actor {slot.name} died or is unreachable: {_first_line(exc)}") from exc
        except RayError as exc:
            raise InferenceError(f"actor {slot.name}: ray error: {_first_line(exc)}") from exc
        return results[0]

    # -- introspection (tests, status) -------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Requests submitted and not yet finished by an actor (abandoned late ones included)."""
        return sum(s.outstanding for s in self._slots)

    @property
    def actor_handles(self) -> list[Any]:
        return [s.handle for s in self._slots]

    @property
    def healthy_actors(self) -> list[str]:
        return [s.name for s in self._slots if s.healthy]

    # -- internals ---------------------------------------------------------------------------

    def _usable_slots(self) -> list[_Slot]:
        if not self._running:
            return []
        return [s for s in self._slots if s.healthy and s.outstanding < self._max_in_flight]

    def _finished(self, slot: _Slot, submitted: float, fut: asyncio.Future[Any]) -> None:
        slot.outstanding -= 1
        now = time.monotonic()
        if fut.cancelled():
            return
        exc = fut.exception()  # also marks it retrieved: an abandoned late failure is not an error
        if exc is None:
            # The actor is serial: a request queued behind another starts when that one finishes,
            # so its own service time runs from the later of submission and the previous completion.
            self._latency.add(now - max(submitted, slot.last_done))
            slot.last_done = now
        elif isinstance(exc, RayActorError) and self._running:
            slot.last_done = now
            if slot.healthy:
                log.warning("inference actor %s failed: %s", slot.name, _first_line(exc))
            slot.healthy = False
            self._begin_recovery(slot)

    def _begin_recovery(self, slot: _Slot) -> None:
        if slot.recovery is None or slot.recovery.done():
            slot.recovery = asyncio.get_running_loop().create_task(self._recover(slot), name=f"recover-{slot.name}")

    async def _probe(self, slot: _Slot, limit_s: float) -> None:
        """Wait for the actor to be up, then time one canary inference; marks the slot healthy on
        success, raises on failure."""
        t_end = time.monotonic() + limit_s
        # Readiness first, so the timed canary measures an inference, not a (re)start and warmup.
        await asyncio.wait_for(asyncio.wrap_future(slot.handle.pid.remote().future()), limit_s)
        submitted = time.monotonic()
        ref = slot.handle.canary.remote()
        await asyncio.wait_for(asyncio.wrap_future(ref.future()), max(0.0, t_end - submitted))
        now = time.monotonic()
        self._latency.add(now - submitted)
        slot.last_done = now
        slot.healthy = True

    async def _recover(self, slot: _Slot) -> None:
        """Probe until the actor answers (Ray restarts it meanwhile); back off between failures."""
        delay, max_delay = self._backoff
        while self._running:
            try:
                await self._probe(slot, self._canary_timeout_s)
                log.info("inference actor %s is healthy again", slot.name)
                return
            except Exception as exc:  # whatever the failure, this loop must keep probing
                log.debug("inference actor %s still down: %s", slot.name, _first_line(exc))
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)
