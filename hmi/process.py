"""The controller's side of the HMI: the OPC UA server runs in its own process (hmi/child.py), fed
the controller's `LineStatus` snapshots, so that no panel client can take the controller's event
loop, CPU time or memory (one Browse of 10,000 nodes once stopped the controller for 38 s).

`publish()` is sync and O(1): it only replaces the one pending snapshot. A feeder task writes the
pending snapshot into the child's stdin, one frame at a time (hmi/messages.py), and waits for the
pipe to take it before it writes the next. Overflow policy: latest value only. A snapshot that a
newer one replaces before it was written (the pipe is full because the HMI is stalled, or the HMI is
down) is dropped and counted in `dropped`; nothing ever waits on the HMI but the feeder.

The child is supervised: whenever it exits (crash, kill, a port it cannot bind), it is started again
after a capped exponential backoff with jitter, reset once a child has served for a while. Its
failures are logged at their first occurrence and at recovery, not at every retry; they never change
the controller's health (the HMI is a window onto the line, not part of it).

The child runs `nice` +19 (by default) from the controller's priority, and its only way back to the
controller is its stdout, read as the same bounded, validated frames: today just "listening on
<endpoint>"; an operator command would be one more validated message type there.

Not here: OPC UA (hmi/server.py), the child's own loop (hmi/child.py), the wire format (hmi/messages.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import random
import sys
import time
from types import TracebackType
from typing import IO

import structlog

from controller.status import LineStatus
from hmi.messages import ChannelError, decode_from_hmi, encode_status, read_frame

log = structlog.get_logger("lineinspect.hmi")

STOP_TIMEOUT_S = 5.0
"""A child asked to stop (stdin closed, then SIGTERM) gets this long before it is killed."""
PIPE_BYTES = 4096
"""Kernel buffer of the snapshot pipe (Linux default 64 KiB): a few snapshots at most, so a child
that resumes after a stall shows the newest status at once instead of catching up on old ones."""


class HmiProcess:
    """`async with HmiProcess(endpoint) as hmi: hmi.publish(status)`: the HMI server in a supervised child."""

    def __init__(
        self,
        endpoint: str,
        *,
        nice: int = 19,
        backoff_s: tuple[float, float] = (0.5, 30.0),
        healthy_after_s: float = 60.0,
        stderr: IO[bytes] | int | None = None,
    ) -> None:
        """Cheap: nothing starts until `async with`. `backoff_s` is the first and the largest delay
        before a restart; a child that served `healthy_after_s` resets it. The child logs (warnings
        only) to `stderr`: by default the controller's own."""
        self._endpoint = endpoint
        self._nice = nice
        self._backoff_s = backoff_s
        self._healthy_after_s = healthy_after_s
        self._stderr = stderr
        self._pending: tuple[LineStatus, float] | None = None
        self._wake = asyncio.Event()
        self._listening = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._served_endpoint: str | None = None
        self._failing = False
        self.sent = 0
        """Snapshots written to the HMI process."""
        self.dropped = 0
        """Snapshots superseded before they could be written (HMI stalled, slow or down)."""
        self.restarts = 0
        """Times the HMI process was started again after it exited."""

    # -- the controller's side: never blocks ------------------------------------------------------

    def publish(self, status: LineStatus) -> None:
        """Offer the newest status. Sync, O(1), never blocks, never raises (for the HMI's sake)."""
        if self._pending is not None:
            self.dropped += 1
        self._pending = (status, time.time())
        self._wake.set()

    @property
    def endpoint(self) -> str:
        """Where panels connect: the child's real endpoint while it listens, else the configured one."""
        return self._served_endpoint or self._endpoint

    @property
    def pid(self) -> int | None:
        """The HMI process's id while one runs (tests stop and kill it)."""
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    async def wait_listening(self) -> str:
        """Until the HMI process listens; returns its endpoint. For tests and tools: the controller
        itself never waits for the HMI."""
        await self._listening.wait()
        return self.endpoint

    # -- lifecycle -----------------------------------------------------------------------------------

    async def __aenter__(self) -> HmiProcess:
        if self._supervisor is not None:
            raise RuntimeError("HmiProcess is already running")
        self._supervisor = asyncio.create_task(self._supervise(), name="hmi-supervisor")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the HMI process (stdin closed, SIGTERM, SIGKILL after `STOP_TIMEOUT_S`). Idempotent."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is None:
            return
        supervisor.cancel()
        # wait() rather than `await`: the supervisor's own CancelledError is expected, while a
        # cancellation of this caller must still propagate.
        await asyncio.wait([supervisor])
        log.info("hmi_stopped", sent=self.sent, dropped=self.dropped, restarts=self.restarts)

    # -- supervision -------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        first, cap = self._backoff_s
        delay = first
        while True:
            started = time.monotonic()
            code = await self._run_child()
            if time.monotonic() - started >= self._healthy_after_s:
                delay = first
            pause = delay * random.uniform(0.8, 1.2)  # jitter: no lockstep with anything else restarting
            if not self._failing:  # the first failure; the next ones are the same story until recovery
                self._failing = True
                log.warning("hmi_process_exited", exit_code=code, restart_in_s=round(pause, 2))
            await asyncio.sleep(pause)
            delay = min(delay * 2, cap)
            self.restarts += 1

    async def _run_child(self) -> int | None:
        """Start the HMI process, feed it and listen to it until it exits; returns its exit code."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hmi.child", "--endpoint", self._endpoint, "--nice", str(self._nice),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self._stderr,
        )  # fmt: skip
        self._proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        pipe = proc.stdin.transport.get_extra_info("pipe")
        with contextlib.suppress(OSError, AttributeError):  # Linux only; elsewhere the default size
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        # drain() waits as soon as anything is buffered: at most one frame waits in this process.
        proc.stdin.transport.set_write_buffer_limits(high=0)
        feed = asyncio.create_task(self._feed(proc.stdin), name="hmi-feed")
        listen = asyncio.create_task(self._listen(proc), name="hmi-listen")
        try:
            return await proc.wait()
        finally:
            feed.cancel()
            listen.cancel()
            await asyncio.wait({feed, listen})
            self._listening.clear()
            self._served_endpoint = None
            if proc.returncode is None:  # we are being stopped
                await _stop(proc)
            self._proc = None

    async def _feed(self, stdin: asyncio.StreamWriter) -> None:
        if self._pending is None:
            self._wake.clear()
        else:
            self._wake.set()  # a restarted child gets the newest status at once
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._pending is None:
                continue
            (status, at), self._pending = self._pending, None
            try:
                frame = encode_status(status, at)
            except ChannelError as exc:  # too long to send: the child would refuse it
                self.dropped += 1
                log.warning("hmi_status_not_sent", error=str(exc))
                continue
            try:
                stdin.write(frame)
                await stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                self.dropped += 1
                return  # the child is gone: the supervisor sees it exit and starts another
            self.sent += 1

    async def _listen(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while (body := await read_frame(proc.stdout)) is not None:
                message = decode_from_hmi(body)
                self._served_endpoint = message.endpoint
                self._listening.set()
                event = "hmi_recovered" if self._failing else "hmi_listening"
                self._failing = False
                log.info(event, endpoint=message.endpoint, pid=proc.pid, restarts=self.restarts)
        except ChannelError as exc:
            # Whatever the HMI process sends is untrusted (it faces the panel network): one bad frame
            # and it is stopped; the supervisor starts a fresh one.
            log.error("hmi_channel_invalid", error=str(exc), pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Ask, then insist. Called while being cancelled: each step is bounded and cannot hang."""
    if proc.stdin is not None:
        proc.stdin.close()  # end of stdin: the child stops by itself
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
