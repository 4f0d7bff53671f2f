"""`InferenceService` on Ray actors: each actor holds one engine (ONNX Runtime, or TensorRT on a GPU)
in its own process, so a crash in the runtime costs one actor (which Ray restarts), not the controller.

Responsible for: creating and warming actors (on GPUs, spread over nodes, where asked),
least-outstanding routing, bounded in-flight admission, micro-batching, deadlines, translating Ray
failures into InferenceError, health (an actor that failed is out of rotation until a canary
inference succeeds on it again), the latency estimate, and swapping the model while serving.
Not responsible for: preprocessing or scoring (the engines), or what to do with a failed frame (the
controller). Ray itself is the caller's to initialise; see `RayInferencePool.start`.

Micro-batching, per actor (which runs one call at a time): a frame for an idle actor is sent at
once, alone. Frames that arrive while the actor is busy form the next batch, which is sent when the
actor frees up, when it holds `max_batch` frames, or when its earliest deadline can wait no longer
(that deadline minus the actor's p95 call time), whichever comes first. A batch sent while the actor
is still busy waits in Ray's queue for it, and later frames start a new batch.

Dispatch, per pool (`dispatch=`): "compiled" sends each batch through one Ray Compiled Graph per
actor (shared-memory channels, frames read in place by the actor; see `ray_compiled`); "actor"
(the default) makes a plain actor call per batch (task spec over gRPC). The pool's admission,
batching, deadlines, health and model swap are the same for both. What decides: a compiled graph
cuts the dispatch overhead on a quiet machine (p50 2.8 → 1.2 ms per frame on this 2-core machine,
workers.bench_dispatch; its p99, and everything with busy processes alongside, is no better in
repeated runs) but its channel readers spin while they wait, so where the actors share the cores
with the controller and the line it serves, the spinning costs the line more than the hop saves
(here a 100-part line at 50 parts/s went from p50 15 ms with plain calls to 19–53 ms, with
spurious/no_frame parts). Use "compiled" where the actors have cores of their own (a GPU node, a
worker node); keep "actor" where they share the controller's. It also restarts slower
after an actor death (≈ +1.5 s: a new graph, and torch imported in the new process). Readiness
probes are plain calls in both modes; the canary goes through the graph in "compiled" mode.

Priority: Ray starts worker processes at nice 15 (its `worker_niceness` default, applied by the
core worker at start). The actors here ask for `RAY_worker_niceness=0` in their runtime_env, as
Ray's own job supervisor does, so they run at the raylet's priority, which for the local Ray the
controller starts is the controller's own. No privilege is needed: nothing is ever lowered, Ray
just does not raise it. An actor found below the controller's priority anyway (a cluster whose
raylet runs niced) is logged once per probe.

Both `controller` and `workers` must be importable in Ray's worker processes (installed package, or
the driver's working directory, which Ray puts on the workers' path for a local cluster).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Any, Literal

import ray
from ray.exceptions import RayActorError, RayError, RayTaskError

from controller.adapters.memory_lock import lock_memory
from controller.errors import InferenceError
from controller.ports import Image, InferenceResult
from workers._latency import LatencyWindow
from workers.model_meta import load_model_meta
from workers.onnx_engine import OnnxRuntimeEngine, canary_frame
from workers.ray_compiled import CompiledGraphChannel, CompiledGraphClosed
from workers.tensorrt_engine import TensorRTEngine

log = logging.getLogger(__name__)

EngineKind = Literal["onnx", "tensorrt"]
Dispatch = Literal["actor", "compiled"]
DISPATCHES: tuple[Dispatch, ...] = ("actor", "compiled")

WORKER_ENV = {"RAY_worker_niceness": "0"}
"""Environment of the actors' worker processes: Ray's default niceness for workers is 15, below the
controller and the line it serves; 0 keeps them at the raylet's (the controller's) priority."""


@dataclass(frozen=True)
class EngineSpec:
    """Which engine an actor builds, and how (sent to the actor, so it rebuilds the same one when
    Ray restarts it)."""

    kind: EngineKind = "onnx"
    intra_op_threads: int = 1
    providers: tuple[str, ...] | None = None
    engine_cache_dir: str | None = None
    max_batch: int = 4
    warmup_runs: int = 3

    def build(self, model_path: str, name: str) -> OnnxRuntimeEngine | TensorRTEngine:
        if self.kind == "tensorrt":
            assert self.engine_cache_dir is not None  # checked by the pool
            # Ray sets CUDA_VISIBLE_DEVICES for the actor: its GPU is device 0 here.
            return TensorRTEngine(
                model_path, engine_cache_dir=self.engine_cache_dir, max_batch=self.max_batch, name=name
            )
        return OnnxRuntimeEngine(
            model_path, intra_op_threads=self.intra_op_threads, providers=self.providers, name=name
        )


@ray.remote(num_cpus=1, runtime_env={"env_vars": WORKER_ENV})
class InferenceActor:
    """One engine in one Ray worker process. The pool creates it with `max_concurrency=1`: calls
    run one after another, in submission order, which is what its queue-depth arithmetic assumes."""

    def __init__(self, model_path: str, name: str, spec: EngineSpec) -> None:
        self._engine = spec.build(model_path, f"{name}@{socket.gethostname()}:{os.getpid()}")
        # Warm up here, not on request: after a restart the actor must be fast before its first frame.
        self._engine.warmup(spec.warmup_runs)
        lock_memory()  # its model and code never paged out by the host (where permitted)

    def infer_batch(self, frames: list[Image]) -> list[InferenceResult]:
        return self._engine.infer_batch(frames)

    def canary(self) -> InferenceResult:
        return self._engine.canary()

    def pid(self) -> int:
        return os.getpid()

    def niceness(self) -> int:
        return os.getpriority(os.PRIO_PROCESS, 0)

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


@dataclass(eq=False)
class _Request:
    """One admitted frame; its caller awaits `result` (and cancels it on giving up)."""

    image: Image
    deadline: float
    result: asyncio.Future[InferenceResult]


@dataclass(eq=False)
class _Slot:
    """The pool's book-keeping for one actor."""

    name: str
    handle: Any
    latency: LatencyWindow = field(default_factory=LatencyWindow)
    """Service time of this actor's calls: its own, because actors may sit on different hardware."""
    queued: list[_Request] = field(default_factory=list)
    """Admitted frames not sent yet: the batch being formed."""
    calls: int = 0
    """Calls sent to the actor and not finished (one runs, any others wait in Ray's queue)."""
    sent: int = 0
    """Frames in those calls."""
    healthy: bool = False
    generation: int = 0
    """How often the actor has entered rotation. A call sent to an earlier generation may fail
    after a restarted actor already passed its canary ("the actor was restarted"): that failure
    says nothing about the actor now serving and must not take it out of rotation again."""
    last_done: float = 0.0
    """Monotonic time the actor last finished a call (for service-time samples)."""
    timer: asyncio.TimerHandle | None = None
    """When the forming batch must be sent at the latest."""
    recovery: asyncio.Task[None] | None = None
    channel: CompiledGraphChannel | None = None
    """The actor's compiled graph, with dispatch="compiled", from its first probe on; else None."""
    canary: Image | None = None
    """Its model's canary frame: what its compiled graph is warmed and timed with."""

    @property
    def outstanding(self) -> int:
        return self.sent + len(self.queued)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, RayActorError) and exc.actor_init_failed:
        # "The actor died because of an error raised in its creation task", then a traceback whose
        # last line is the exception that __init__ raised: that one says what is wrong.
        return text.splitlines()[-1]
    return text.splitlines()[0] if text else type(exc).__name__


def _inference_error(actor: str, exc: BaseException) -> InferenceError:
    """A fresh InferenceError for one caller (one exception object must not be raised in several tasks)."""
    if isinstance(exc, RayTaskError):
        # An exception raised inside the engine (e.g. a frame the model cannot take).
        cause = exc.cause if exc.cause is not None else exc
        message = f"actor {actor} failed: {_first_line(cause)}"
    elif isinstance(exc, RayActorError):
        message = f"actor {actor} died or is unreachable: {_first_line(exc)}"
    elif isinstance(exc, CompiledGraphClosed):
        message = f"actor {actor} is out of rotation: {_first_line(exc)}"
    elif isinstance(exc, RayError):
        message = f"actor {actor}: ray error: {_first_line(exc)}"
    else:
        message = f"actor {actor}: submit failed: {_first_line(exc)}"
    error = InferenceError(message)
    error.__cause__ = exc
    return error


class RayInferencePool:
    """`InferenceService` over `num_actors` Ray actors, for asyncio callers on one event loop.

    Each actor takes at most `max_in_flight_per_actor` frames (default 2: one running, one waiting
    behind it; raise it to let batches of up to `max_batch` form). With every healthy actor full,
    `infer` fails at once: a frame that has to queue is a frame that will be late.
    `engine` picks the actors' engine; "tensorrt" needs `engine_cache_dir` and `num_gpus` > 0 (1:
    one actor per GPU; a fraction: several actors share one). `spread` asks Ray to place the actors
    on different nodes. Actors are created with `max_task_retries=0` — a retried inference would be
    late anyway — and `max_restarts` (default -1: Ray restarts a dead actor for as long as the pool
    lives).
    `dispatch` picks how batches reach the actors: "compiled" (a Ray Compiled Graph per actor) or
    "actor" (plain actor calls); see the module docstring for when each fits.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        num_actors: int = 1,
        max_in_flight_per_actor: int = 2,
        max_batch: int = 4,
        engine: EngineKind = "onnx",
        num_gpus: float = 0,
        engine_cache_dir: str | os.PathLike[str] | None = None,
        spread: bool = False,
        intra_op_threads: int = 1,
        providers: Sequence[str] | None = None,
        max_restarts: int = -1,
        warmup_runs: int = 3,
        start_timeout_s: float = 60.0,
        canary_timeout_s: float = 30.0,
        recovery_backoff_s: tuple[float, float] = (0.2, 5.0),
        actor_name_prefix: str = "infer",
        dispatch: Dispatch = "actor",
    ) -> None:
        if num_actors < 1 or max_in_flight_per_actor < 1 or max_batch < 1:
            raise ValueError("num_actors, max_in_flight_per_actor and max_batch must be >= 1")
        if engine not in ("onnx", "tensorrt"):
            raise ValueError(f"unknown engine {engine!r}")
        if engine == "tensorrt" and (engine_cache_dir is None or num_gpus <= 0):
            raise ValueError("engine='tensorrt' needs engine_cache_dir and num_gpus > 0")
        if dispatch not in DISPATCHES:
            raise ValueError(f"unknown dispatch {dispatch!r}; known: {list(DISPATCHES)}")
        self._dispatch_mode = dispatch
        self._model_path = os.fspath(model_path)
        self._model_version = ""
        self._num_actors = num_actors
        self._max_in_flight = max_in_flight_per_actor
        self._max_batch = max_batch
        self._spec = EngineSpec(
            kind=engine,
            intra_op_threads=intra_op_threads,
            providers=tuple(providers) if providers else None,
            engine_cache_dir=os.fspath(engine_cache_dir) if engine_cache_dir is not None else None,
            max_batch=max_batch,
            warmup_runs=warmup_runs,
        )
        self._num_gpus = num_gpus
        self._spread = spread
        self._max_restarts = max_restarts
        self._start_timeout_s = start_timeout_s
        self._canary_timeout_s = canary_timeout_s
        self._backoff = recovery_backoff_s
        self._prefix = actor_name_prefix
        self._slots: list[_Slot] = []
        self._generation = 0
        self._swap_lock = asyncio.Lock()
        self._batch_sizes: Counter[int] = Counter()
        self._call_done = asyncio.Event()
        """Set whenever an actor finishes a call (or the pool closes): what draining waits for."""
        self._running = False
        self._owns_ray = False
        self._canary: Image | None = None
        """The serving model's canary frame (set at start and by a swap)."""

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Validate the model, create the actors and wait until each answers a canary inference.

        Raises ConfigError for a missing or invalid model, InferenceError when no actor is ready
        within `start_timeout_s` (a TensorRT engine not in the cache yet is built then: build it
        ahead for a real model). Actors not ready by then stay in recovery (probed in the background).
        If Ray is not initialised yet, this initialises a local instance (`include_dashboard=False`,
        `log_to_driver=False`, `num_cpus=2 * num_actors`: room for a swap's second set of actors),
        blocking the event loop while it starts, and `close()` shuts it down again; normally the
        caller initialises Ray.
        """
        if self._running:
            return
        # Fail in the driver with a clear ConfigError rather than as an actor that dies in __init__.
        meta = await asyncio.to_thread(load_model_meta, self._model_path)
        if not ray.is_initialized():
            ray.init(num_cpus=2 * self._num_actors, include_dashboard=False, log_to_driver=False)
            self._owns_ray = True
        self._model_version = meta.version
        self._canary = canary_frame(meta)
        self._slots = self._create_slots(self._model_path)
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
        """Stop admitting requests, stop probing, kill the actors (queued and in-flight requests fail)."""
        self._running = False
        self._call_done.set()  # a swap draining the old actors stops waiting
        for slot in self._slots:
            slot.healthy = False
            if slot.recovery is not None:
                slot.recovery.cancel()
            self._fail_queued(slot, "the inference pool closed")
        await asyncio.gather(*(s.recovery for s in self._slots if s.recovery), return_exceptions=True)
        slots, self._slots = self._slots, []
        await self._stop(slots)
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

    async def swap_model(self, model_path: str | os.PathLike[str]) -> str:
        """Serve `model_path` instead of the current model, without a gap; returns its version.

        Starts a new set of actors beside the serving ones and waits until every one answers a
        canary; then routes requests to them from the next request on (one assignment on the event
        loop, so the switch falls between two requests). Requests already admitted finish on the old
        actors, which are killed once drained. Raises ConfigError (invalid model) or InferenceError (a
        new actor not ready within `start_timeout_s`); either way the old model keeps serving. Needs
        room (CPUs, GPU fractions) for both sets of actors at once; one swap runs at a time.
        """
        async with self._swap_lock:
            if not self._running:
                raise InferenceError("ray inference pool is not running")
            path = os.fspath(model_path)
            meta = await asyncio.to_thread(load_model_meta, path)
            self._generation += 1
            new = self._create_slots(path, canary_frame(meta))
            try:
                outcomes = await asyncio.gather(
                    *(self._probe(s, self._start_timeout_s) for s in new), return_exceptions=True
                )
            except asyncio.CancelledError:
                self._kill(new)
                raise
            failed = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if failed is not None or not self._running:
                await self._stop(new)
                why = _first_line(failed) if failed is not None else "the pool closed"
                raise InferenceError(
                    f"model {meta.version} not swapped in, {self._model_version} still serving: {why}"
                ) from failed
            old, self._slots = self._slots, new
            self._model_path, self._model_version = path, meta.version
            self._canary = canary_frame(meta)
            await self._retire(old)
            return meta.version

    # -- InferenceService --------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._running and any(s.healthy for s in self._slots)

    @property
    def expected_latency_s(self) -> float:
        """The least-loaded actor's p95 call time × (1 + calls ahead of a new frame); +inf when no
        actor would admit a request now."""
        open_slots = self._usable_slots()
        if not open_slots:
            return math.inf
        return self._expected(self._pick(open_slots))

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
        slot = self._pick(slots)
        request = _Request(image, deadline, asyncio.get_running_loop().create_future())
        slot.queued.append(request)
        self._dispatch(slot)
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the caller's cancellation.
            # Giving up cancels `request.result`, which tells the dispatcher not to send the frame.
            async with asyncio.timeout(deadline - time.monotonic()):
                return await request.result
        except TimeoutError:
            raise InferenceError(f"late: actor {slot.name} had no result by the deadline") from None
        finally:
            # Not sent yet: free its place now. Sent: it keeps its place in `sent` until the actor
            # is done with it, so admission never overcommits the actor.
            if request in slot.queued:
                slot.queued.remove(request)

    # -- introspection (tests, status) -------------------------------------------------------

    @property
    def model_version(self) -> str:
        """Version of the model that new requests are routed to."""
        return self._model_version

    @property
    def in_flight(self) -> int:
        """Frames admitted and not yet finished by an actor (abandoned late ones included)."""
        return sum(s.outstanding for s in self._slots)

    @property
    def batch_sizes(self) -> Counter[int]:
        """How many engine calls of each batch size the pool has made (canaries excluded)."""
        return self._batch_sizes.copy()

    @property
    def actor_handles(self) -> list[Any]:
        return [s.handle for s in self._slots]

    @property
    def healthy_actors(self) -> list[str]:
        return [s.name for s in self._slots if s.healthy]

    # -- internals: actors -------------------------------------------------------------------

    def _create_slots(self, model_path: str, canary: Image | None = None) -> list[_Slot]:
        """Actors for `model_path`; `canary` (its model's canary frame; default: the current
        model's) is what a compiled graph is warmed and timed with."""
        options: dict[str, Any] = {
            "num_cpus": 1,
            "num_gpus": self._num_gpus,
            "max_restarts": self._max_restarts,
            "max_task_retries": 0,
            "max_concurrency": 1,
        }
        if self._spread:
            options["scheduling_strategy"] = "SPREAD"
        actor_cls = InferenceActor.options(**options)  # type: ignore[attr-defined]
        suffix = f"-g{self._generation}" if self._generation else ""
        slots = []
        for i in range(self._num_actors):
            name = f"{self._prefix}-{i}{suffix}"
            slot = _Slot(name=name, handle=actor_cls.remote(model_path, name, self._spec))
            slot.canary = canary if canary is not None else self._canary
            slots.append(slot)
        return slots

    def _kill(self, slots: Sequence[_Slot]) -> None:
        """Kill the actors now (a compiled graph is torn down first, on its own thread)."""
        for slot in slots:
            if slot.timer is not None:
                slot.timer.cancel()
            if slot.channel is not None:
                slot.channel.close(kill_actor=True)
                continue
            try:
                ray.kill(slot.handle, no_restart=True)
            except Exception as exc:  # already gone, or Ray already shut down: nothing to free
                log.debug("killing %s: %s", slot.name, exc)

    async def _stop(self, slots: Sequence[_Slot]) -> None:
        """`_kill`, then wait (bounded) until every compiled graph's thread has ended."""
        self._kill(slots)
        channels = [s.channel for s in slots if s.channel is not None]
        # Teardown waits up to Ray's own timeout (30 s) for a hung actor's loop; never longer.
        ended = await asyncio.gather(*(asyncio.to_thread(c.join, 40.0) for c in channels))
        for slot, done in zip([s for s in slots if s.channel is not None], ended, strict=True):
            if not done:
                log.warning("compiled graph of %s did not tear down in 40 s", slot.name)

    async def _retire(self, slots: Sequence[_Slot]) -> None:
        """Let replaced actors finish the frames they were given, then kill them. Bounded by
        `canary_timeout_s`: an actor that hangs is killed anyway (its callers have given up)."""
        for slot in slots:
            slot.healthy = False
            if slot.recovery is not None:
                slot.recovery.cancel()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._canary_timeout_s):
                while self._running and any(s.outstanding for s in slots):
                    self._call_done.clear()
                    await self._call_done.wait()
        await self._stop(slots)

    # -- internals: routing and batching -----------------------------------------------------

    def _usable_slots(self) -> list[_Slot]:
        if not self._running:
            return []
        return [s for s in self._slots if s.healthy and s.outstanding < self._max_in_flight]

    @staticmethod
    def _pick(slots: list[_Slot]) -> _Slot:
        return min(slots, key=lambda s: s.outstanding)

    def _expected(self, slot: _Slot) -> float:
        # A new frame joins the forming batch, behind the calls already sent and any full batches.
        return slot.latency.expected(slot.calls + len(slot.queued) // self._max_batch)

    def _dispatch(self, slot: _Slot) -> None:
        """Send the forming batch if it should not wait; otherwise look again when it must go."""
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None
        slot.queued = [r for r in slot.queued if not r.result.done()]  # drop frames given up on
        while slot.queued:
            # Only frames of one shape and type share a batch, so an odd frame fails alone.
            first = slot.queued[0].image
            batch = [r for r in slot.queued if r.image.shape == first.shape and r.image.dtype == first.dtype]
            batch = batch[: self._max_batch]
            if slot.calls and len(batch) < self._max_batch:
                # The actor is busy: wait for more frames, but only while the earliest deadline allows.
                delay = min(r.deadline for r in batch) - slot.latency.p95() - time.monotonic()
                if delay > 0:
                    slot.timer = asyncio.get_running_loop().call_later(delay, self._dispatch, slot)
                    return
            slot.queued = [r for r in slot.queued if r not in batch]
            self._send(slot, batch)

    def _send(self, slot: _Slot, batch: list[_Request]) -> None:
        slot.calls += 1
        slot.sent += len(batch)
        self._batch_sizes[len(batch)] += 1
        submitted = time.monotonic()
        fut: asyncio.Future[list[InferenceResult]]
        frames = [r.image for r in batch]
        try:
            if slot.channel is not None:
                fut = asyncio.wrap_future(slot.channel.submit(frames))
            else:
                fut = asyncio.wrap_future(slot.handle.infer_batch.remote(frames).future())
        except Exception as exc:  # e.g. Ray shut down under the pool
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
        fut.add_done_callback(partial(self._finished, slot, slot.generation, batch, submitted))

    def _finished(
        self,
        slot: _Slot,
        generation: int,
        batch: list[_Request],
        submitted: float,
        fut: asyncio.Future[list[InferenceResult]],
    ) -> None:
        slot.calls -= 1
        slot.sent -= len(batch)
        now = time.monotonic()
        # exception() also marks it retrieved: an abandoned late failure is not an error.
        exc = InferenceError("call cancelled") if fut.cancelled() else fut.exception()
        if exc is None:
            # The actor is serial: a call queued behind another starts when that one finishes, so
            # its own service time runs from the later of submission and the previous completion.
            slot.latency.add(now - max(submitted, slot.last_done))
            slot.last_done = now
            for request, result in zip(batch, fut.result(), strict=True):
                if not request.result.done():
                    request.result.set_result(result)
        else:
            for request in batch:
                if not request.result.done():
                    request.result.set_exception(_inference_error(slot.name, exc))
            current = generation == slot.generation and self._running and slot in self._slots
            if current and self._is_actor_failure(exc):
                slot.last_done = now
                if slot.healthy:
                    log.warning("inference actor %s failed: %s", slot.name, _first_line(exc))
                slot.healthy = False
                # Frames waiting for it would only wait for a restart; fail them now.
                self._fail_queued(slot, f"actor {slot.name} failed before the frame was sent")
                self._begin_recovery(slot)
        self._dispatch(slot)
        self._call_done.set()

    def _is_actor_failure(self, exc: BaseException) -> bool:
        """Does `exc` take the actor out of rotation? Its death, always; with a compiled graph also
        anything but the engine's own exception, because Ray shuts the graph down on any other."""
        if isinstance(exc, RayActorError):
            return True
        return self._dispatch_mode == "compiled" and not isinstance(exc, RayTaskError | InferenceError)

    def _fail_queued(self, slot: _Slot, why: str) -> None:
        for request in slot.queued:
            if not request.result.done():
                request.result.set_exception(InferenceError(why))
        slot.queued = []
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None

    # -- internals: health -------------------------------------------------------------------

    def _begin_recovery(self, slot: _Slot) -> None:
        if slot.recovery is None or slot.recovery.done():
            slot.recovery = asyncio.get_running_loop().create_task(self._recover(slot), name=f"recover-{slot.name}")

    async def _probe(self, slot: _Slot, limit_s: float) -> None:
        """Wait for the actor to be up, then time one canary inference; marks the slot healthy on
        success, raises on failure."""
        t_end = time.monotonic() + limit_s
        # Readiness first, so the timed canary measures an inference, not a (re)start and warmup.
        nice = await asyncio.wait_for(asyncio.wrap_future(slot.handle.niceness.remote().future()), limit_s)
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        if nice > ours:
            log.warning("inference actor %s runs at nice %d, below the controller's priority (nice %d): "
                        "start its node's raylet at the controller's niceness", slot.name, nice, ours)  # fmt: skip
        if self._dispatch_mode == "compiled":
            await self._open_graph(slot, t_end)
        submitted = time.monotonic()
        if slot.channel is not None:
            # Timed through the path the frames take.
            canary = slot.channel.submit([slot.canary])
        else:
            canary = slot.handle.canary.remote().future()
        await asyncio.wait_for(asyncio.wrap_future(canary), max(0.0, t_end - submitted))
        now = time.monotonic()
        slot.latency.add(now - submitted)
        slot.last_done = now
        slot.generation += 1
        slot.healthy = True

    async def _open_graph(self, slot: _Slot, t_end: float) -> None:
        """(Re)compile the actor's graph (only on an actor that answers: compiling against a dead
        one waits for Ray) and run one untimed frame through it: a graph's first execution
        registers its channels (~1 s here), which must not land on a line's frame or in the
        latency estimate."""
        if slot.channel is None:
            # A batch takes far less than a canary may, so the canary's bound also says when an
            # actor is hung.
            slot.channel = CompiledGraphChannel(slot.handle, slot.name, call_timeout_s=self._canary_timeout_s)
        assert slot.canary is not None  # set with the slot
        channel = slot.channel
        await asyncio.wait_for(asyncio.wrap_future(channel.open()), max(0.0, t_end - time.monotonic()))
        warm = channel.submit([slot.canary])
        await asyncio.wait_for(asyncio.wrap_future(warm), max(0.0, t_end - time.monotonic()))

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
