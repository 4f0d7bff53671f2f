"""One Ray Compiled Graph per inference actor, and the thread that drives it.

A compiled graph (`InputNode → actor.infer_batch`, `experimental_compile()`) replaces the per-call
task submission of a plain actor call (task spec, gRPC, the actor's task queue) by two
shared-memory channels set up once: frames go to the actor through one, results come back through
the other. Frames are numpy arrays written once into the input channel's shared-memory buffer; the
actor reads them in place (zero-copy, read-only views), where a plain call copies a small frame
into the task spec, over gRPC and into the worker's heap.

Responsible for: compiling the graph, running batches through it one at a time in submission
order, tearing it down (after a failure, on close) and compiling it again on request. Not
responsible for: routing, admission, deadlines or health (ray_pool does those; it hands batches
here and gets `concurrent.futures.Future`s back, exactly like `ObjectRef.future()`).

Why a thread of our own and not `experimental_compile(enable_asyncio=True)`: compiling blocks
(~0.1 s here, seconds on a busy cluster), tearing down blocks for up to Ray's teardown timeout
(30 s) on a hung actor, and the asyncio variant must be compiled and torn down on the event loop
that uses it, so a rebuild after an actor death would stall the controller's loop. With the
synchronous variant on this thread, nothing on the loop ever waits for Ray. Both variants cross
threads twice per frame (Ray's asyncio variant reads and writes its channels from thread pools);
side by side on a trivial actor method here they cost about the same (p50 0.40 ms on this thread,
0.50 ms with enable_asyncio).

Costs to know about (Ray 2.60, CPU channels), measured by workers.bench_dispatch:
- a channel reader waits by spinning (`sem_trywait` + `sched_yield` in `_raylet.so`): an idle actor
  in a compiled graph keeps one core busy (≈100 % of a core on a quiet machine; it yields to other
  runnable processes), and so does this thread while a batch is in flight;
- the graph's first execution in a new actor process imports torch there (Ray's tensor channels),
  1–6 s: the pool runs one untimed canary through a freshly compiled graph before it counts the
  actor as healthy, so that cost is part of a (re)start, never of a frame.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from typing import Any

import ray
from ray.dag import InputNode
from ray.exceptions import RayTaskError

from controller.ports import Image, InferenceResult

log = logging.getLogger(__name__)


class CompiledGraphClosed(RuntimeError):
    """The actor's compiled graph is not open (torn down after a failure, or never compiled)."""


class CompiledGraphChannel:
    """Drives `handle.infer_batch` through a compiled graph on a dedicated thread.

    `open()` compiles (again, after a failure); `submit(frames)` returns a future of the batch's
    results; a failure other than the engine's own exception (`RayTaskError`, after which Ray keeps
    the graph usable) tears the graph down, so the next batch fails with `CompiledGraphClosed`
    until the pool has probed the actor and called `open()` again. `close()` tears down, optionally
    kills the actor, and ends the thread; `join()` waits for that. `call_timeout_s` bounds how long
    one batch may take before the actor counts as hung (the graph is torn down, like after a death).
    """

    def __init__(self, handle: Any, name: str, *, call_timeout_s: float) -> None:
        self._handle = handle
        self._name = name
        self._call_timeout_s = call_timeout_s
        self._dag: Any = None
        self._kill_on_close = False
        self._closing = threading.Event()
        # Unbounded on purpose: the pool admits at most max_in_flight_per_actor frames per actor,
        # so at most that many batches (plus one open) ever wait here.
        self._jobs: queue.SimpleQueue[tuple[str, Any, concurrent.futures.Future[Any]] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"cgraph-{name}", daemon=True)
        self._thread.start()

    # -- called on the event loop (never block) ------------------------------------------------

    def open(self) -> concurrent.futures.Future[None]:
        """Compile the graph (after tearing down a previous one); the future is done when ready."""
        return self._put("open", None)

    def submit(self, frames: list[Image]) -> concurrent.futures.Future[list[InferenceResult]]:
        return self._put("run", frames)

    def close(self, *, kill_actor: bool) -> None:
        """Fail what is still queued, tear the graph down and end the thread (in the background);
        with `kill_actor`, kill the actor after the teardown (killing it first would make the
        teardown wait for a dead actor's loop)."""
        self._kill_on_close = kill_actor
        self._closing.set()  # batches still queued fail at once instead of running
        self._jobs.put(None)

    def join(self, timeout: float) -> bool:
        """Wait (blocking: call it in a thread) for the thread to end; True if it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _put(self, kind: str, arg: Any) -> concurrent.futures.Future[Any]:
        fut: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._jobs.put((kind, arg, fut))
        return fut

    # -- the channel's thread ------------------------------------------------------------------

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            kind, arg, fut = job
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                if self._closing.is_set():
                    raise CompiledGraphClosed(f"compiled graph of {self._name} is closing")
                fut.set_result(self._compile() if kind == "open" else self._execute(arg))
            except BaseException as exc:  # handed to the pool's callback, which translates it
                fut.set_exception(exc)
        self._teardown()
        while True:  # jobs put after close: nobody will run them
            try:
                late = self._jobs.get_nowait()
            except queue.Empty:
                break
            if late is not None and late[2].set_running_or_notify_cancel():
                late[2].set_exception(CompiledGraphClosed(f"compiled graph of {self._name} closed"))
        if self._kill_on_close:
            try:
                ray.kill(self._handle, no_restart=True)
            except Exception as exc:  # already gone, or Ray already shut down: nothing to free
                log.debug("killing %s: %s", self._name, exc)

    def _compile(self) -> None:
        self._teardown()
        with InputNode() as frames:
            dag = self._handle.infer_batch.bind(frames)
        self._dag = dag.experimental_compile()

    def _execute(self, frames: list[Image]) -> list[InferenceResult]:
        if self._dag is None:
            raise CompiledGraphClosed(f"compiled graph of {self._name} is not open")
        try:
            results: list[InferenceResult] = ray.get(self._dag.execute(frames), timeout=self._call_timeout_s)
            return results
        except RayTaskError:
            raise  # the engine raised: Ray keeps the graph usable
        except BaseException:
            # Actor death, a channel error or a hung actor: Ray has shut the graph down (or will);
            # drop it so the next batch fails fast until the pool reopens it.
            self._teardown()
            raise

    def _teardown(self) -> None:
        dag, self._dag = self._dag, None
        if dag is None:
            return
        try:
            dag.teardown()
        except Exception as exc:  # a dead actor or a Ray already shut down: nothing left to free
            log.debug("tearing down the compiled graph of %s: %s", self._name, exc)
