"""`InferenceService` on a thread pool in this process, for machines and images without Ray.

Responsible for: bounded in-flight admission, deadlines, turning engine failures into
InferenceError, the latency estimate, and swapping the model while serving. Not responsible for:
isolating a crashing runtime (a segfault in ONNX Runtime takes the controller with it — use
`ray_pool` where that matters), restarting anything, or micro-batching (each request is one engine
call; batching pays on GPUs, which this pool does not drive).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType

from controller.errors import InferenceError
from controller.ports import Image, InferenceResult
from workers._latency import LatencyWindow
from workers.onnx_engine import OnnxRuntimeEngine


class LocalInferencePool:
    """Runs one shared `OnnxRuntimeEngine` (ORT sessions are thread-safe) on `threads` threads.

    At most `max_in_flight` requests (default 2 per thread: one running, one ready to start) are
    admitted; beyond that `infer` fails at once instead of queueing, because a queued frame is a
    frame that will be late. A request that misses its deadline is abandoned by its caller, but keeps
    its slot until the engine really finishes it, so admission never overcommits the threads.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        threads: int = 1,
        max_in_flight: int | None = None,
        intra_op_threads: int = 1,
        providers: Sequence[str] | None = None,
        warmup_runs: int = 3,
    ) -> None:
        if threads < 1:
            raise ValueError("threads must be >= 1")
        self._model_path = os.fspath(model_path)
        self._threads = threads
        self._max_in_flight = max_in_flight if max_in_flight is not None else 2 * threads
        if self._max_in_flight < 1:
            raise ValueError("max_in_flight must be >= 1")
        self._intra_op_threads = intra_op_threads
        self._providers = providers
        self._warmup_runs = warmup_runs
        self._engine: OnnxRuntimeEngine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._in_flight = 0
        self._latency = LatencyWindow()
        self._closed = False
        self._swap_lock = asyncio.Lock()

    async def start(self) -> None:
        """Load and warm the model (in a thread: loading a real model takes seconds).
        Raises ConfigError for a missing or invalid model."""
        if self._engine is not None:
            return
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="infer")
        loop = asyncio.get_running_loop()
        try:
            engine = await loop.run_in_executor(self._executor, self._load, self._model_path)
            # Seed the estimate with a measured canary through the same path requests take.
            t0 = time.monotonic()
            await loop.run_in_executor(self._executor, engine.canary)
            self._latency.add(time.monotonic() - t0)
        except BaseException:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            raise
        self._engine = engine

    async def swap_model(self, model_path: str | os.PathLike[str]) -> str:
        """Serve `model_path` instead of the current model, without a gap; returns its version.

        Loads and warms the new engine in a thread of its own (the inference threads keep serving),
        then switches: requests admitted from then on run on it, those already admitted finish on
        the old one. Raises ConfigError (invalid model) or InferenceError (it fails its warm-up);
        either way the old model keeps serving. One swap runs at a time.
        """
        async with self._swap_lock:
            if not self.healthy:
                raise InferenceError("local inference pool is not running")
            path = os.fspath(model_path)

            def load_and_time() -> tuple[OnnxRuntimeEngine, float]:
                engine = self._load(path)
                t0 = time.monotonic()
                engine.canary()
                return engine, time.monotonic() - t0

            engine, canary_s = await asyncio.to_thread(load_and_time)
            if not self.healthy:
                raise InferenceError("local inference pool closed during the model swap")
            # The old model's service times say nothing about the new one's.
            latency = LatencyWindow()
            latency.add(canary_s)
            self._engine, self._latency, self._model_path = engine, latency, path
            return engine.meta.version

    def _load(self, path: str) -> OnnxRuntimeEngine:
        engine = OnnxRuntimeEngine(
            path, intra_op_threads=self._intra_op_threads, providers=self._providers, name=f"local@{os.getpid()}"
        )
        engine.warmup(self._warmup_runs)
        return engine

    async def close(self) -> None:
        """Stop admitting requests, drop queued ones (their callers get InferenceError), and wait for
        the running one(s) to finish so no worker thread outlives the pool."""
        self._closed = True
        self._engine = None
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
            # Joining blocks for at most one inference; do it off the event loop.
            await asyncio.to_thread(executor.shutdown, wait=True)

    async def __aenter__(self) -> LocalInferencePool:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def healthy(self) -> bool:
        return self._engine is not None and not self._closed

    @property
    def model_version(self) -> str:
        """Version of the model that new requests run on ("" before start)."""
        return self._engine.meta.version if self._engine is not None else ""

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def expected_latency_s(self) -> float:
        """p95 service time × (1 + requests a new one would wait behind); +inf when none is admitted."""
        if not self.healthy or self._in_flight >= self._max_in_flight:
            return math.inf
        ahead = 0 if self._in_flight < self._threads else self._in_flight - self._threads + 1
        return self._latency.expected(math.ceil(ahead / self._threads))

    async def infer(self, image: Image, deadline: float) -> InferenceResult:
        # Bound once: a model swap while this request runs leaves it on the engine it started on.
        engine, executor, latency = self._engine, self._executor, self._latency
        if engine is None or executor is None or self._closed:
            raise InferenceError("local inference pool is not running")
        now = time.monotonic()
        if deadline <= now:
            raise InferenceError(f"deadline passed {now - deadline:.3f} s before submission")
        if self._in_flight >= self._max_in_flight:
            raise InferenceError(f"local inference pool full ({self._in_flight} in flight)")

        started: list[float] = []

        def job() -> InferenceResult:
            # Service time starts when a thread picks the job up, so the estimate excludes queueing.
            started.append(time.monotonic())
            if started[0] >= deadline:
                # Already useless: its caller has given up. Skip it to free the thread sooner.
                raise InferenceError("skipped: deadline passed while queued")
            return engine.infer_batch([image])[0]

        self._in_flight += 1
        fut = asyncio.get_running_loop().run_in_executor(executor, job)

        def finished(f: asyncio.Future[InferenceResult]) -> None:
            self._in_flight -= 1
            if not f.cancelled() and f.exception() is None:
                latency.add(time.monotonic() - started[0])

        fut.add_done_callback(finished)
        try:
            # shield: a timeout abandons the result but must not cancel the future, whose
            # completion releases the slot.
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the caller's cancellation.
            async with asyncio.timeout(deadline - time.monotonic()):
                return await asyncio.shield(fut)
        except TimeoutError:
            raise InferenceError(f"late: {engine.name} had no result by the deadline") from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if fut.cancelled() and task is not None and not task.cancelling():
                # close() dropped the queued job; that is the pool failing, not our caller cancelling.
                raise InferenceError("local inference pool closed before the frame ran") from None
            raise
        except InferenceError:
            raise
        except Exception as exc:
            raise InferenceError(f"{engine.name} failed: {exc}") from exc
