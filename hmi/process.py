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

Parts' results (`publish_result()`, also sync and O(1)) queue up to `RESULTS_KEPT`; beyond that the
oldest are dropped and counted (`results_dropped`): a panel that missed them reads them by id from
the journal. Replies to commands go first, then results, then the newest status.

The child runs `nice` +19 (by default) from the controller's priority, and its only way back to the
controller is its stdout, read as the same bounded, validated frames: "listening on <endpoint>",
operator commands (handed to `on_command`, at most `COMMANDS_IN_FLIGHT` at a time, answered in
order of completion) and what the HMI handled itself (handed to `on_audit`, for the audit trail).

Not here: OPC UA (hmi/server.py), the child's own loop (hmi/child.py), the wire format (hmi/messages.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import random
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import IO

import structlog

from controller.status import LineStatus, PartResult
from hmi.messages import (
    MAX_RESULTS_PER_FRAME,
    AuditMessage,
    ChannelError,
    CommandMessage,
    ListeningMessage,
    ReplyMessage,
    ResultsMessage,
    decode_from_hmi,
    encode,
    encode_status,
    read_frame,
)  # fmt: skip

log = structlog.get_logger("lineinspect.hmi")

STOP_TIMEOUT_S = 5.0
"""A child asked to stop (stdin closed, then SIGTERM) gets this long before it is killed."""
PIPE_BYTES = 4096
"""Kernel buffer of the snapshot pipe (Linux default 64 KiB): a few snapshots at most, so a child
that resumes after a stall shows the newest status at once instead of catching up on old ones."""
RESULTS_KEPT = 2000
"""Parts' results waiting for the HMI: 100 s of a 20 parts/s line."""
COMMANDS_IN_FLIGHT = 4
"""Operator commands being handled at once; more are answered "busy" without being applied."""
AUDITS_IN_FLIGHT = 64
"""Audit entries from the HMI being written at once (the HMI limits refusals to 5 a second)."""

CommandHandler = Callable[[CommandMessage], Awaitable[tuple[bool, str]]]
AuditHandler = Callable[[AuditMessage], Awaitable[None]]

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
        settings_json: str = "{}",
        on_command: CommandHandler | None = None,
        on_audit: AuditHandler | None = None,
    ) -> None:
        """Cheap: nothing starts until `async with`. `backoff_s` is the first and the largest delay
        before a restart; a child that served `healthy_after_s` resets it. The child logs (warnings
        only) to `stderr`: by default the controller's own. `settings_json` is the HMI's settings
        (security, paths), handed to the child as they are."""
        self._endpoint = endpoint
        self._settings_json = settings_json
        self._on_command = on_command
        self._on_audit = on_audit
        self._results: deque[PartResult] = deque(maxlen=RESULTS_KEPT)
        self._replies: deque[ReplyMessage] = deque(maxlen=COMMANDS_IN_FLIGHT * 16)
        """Bounded: a child that sends commands without reading its replies loses the oldest."""
        self._audits: set[asyncio.Task[None]] = set()
        self._commands: set[asyncio.Task[None]] = set()
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
        self.metrics_url: str | None = None
        """The HMI process's Prometheus endpoint while it listens (None: none configured)."""
        self.results_dropped = 0
        """Results dropped unsent because `RESULTS_KEPT` newer ones were waiting."""
        self.commands_busy = 0
        """Commands answered "busy" (more than `COMMANDS_IN_FLIGHT` at once)."""
        self.feed_busy_s = 0.0
        self.feed_busy_max_s = 0.0
        """The controller's own time spent on the HMI: encoding and writing frames (its event loop's)."""
        self.audits_dropped = 0
        """Audit messages not journaled because `COMMANDS_IN_FLIGHT` were being handled already."""

    # -- the controller's side: never blocks ------------------------------------------------------

    def publish(self, status: LineStatus) -> None:
        """Offer the newest status. Sync, O(1), never blocks, never raises (for the HMI's sake)."""
        if self._pending is not None:
            self.dropped += 1
        self._pending = (status, time.time())
        self._wake.set()

    def publish_result(self, result: PartResult) -> None:
        """Queue a part's result for the panels. Sync, O(1), never blocks, never raises."""
        if len(self._results) == RESULTS_KEPT:
            self.results_dropped += 1
        self._results.append(result)
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
        pending = self._commands | self._audits
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
        log.info("hmi_stopped", sent=self.sent, dropped=self.dropped, restarts=self.restarts,
                 results_dropped=self.results_dropped, commands_busy=self.commands_busy,
                 audits_dropped=self.audits_dropped, feed_busy_ms=round(self.feed_busy_s * 1000, 1),
                 feed_busy_max_ms=round(self.feed_busy_max_s * 1000, 3))  # fmt: skip

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
            "--settings", self._settings_json,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self._stderr,
        )  # fmt: skip
        self._proc = proc
        self._replies.clear()  # answers to the previous process's commands mean nothing to this one
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
        if self._pending is None and not self._results and not self._replies:
            self._wake.clear()
        else:
            self._wake.set()  # a restarted child gets the newest status at once
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._replies or self._results or self._pending is not None:
                started = time.perf_counter()
                frame = self._next_frame()
                if frame is None:
                    continue
                try:
                    stdin.write(frame)
                except (BrokenPipeError, ConnectionResetError):
                    self.dropped += 1
                    return  # the child is gone: the supervisor sees it exit and starts another
                busy = time.perf_counter() - started
                self.feed_busy_s += busy
                self.feed_busy_max_s = max(self.feed_busy_max_s, busy)
                try:
                    await stdin.drain()
                except (BrokenPipeError, ConnectionResetError):
                    self.dropped += 1
                    return

    def _next_frame(self) -> bytes | None:
        """Replies first, then results (oldest first), then the newest status."""
        try:
            if self._replies:
                return encode(self._replies.popleft())
            if self._results:
                batch = [self._results.popleft() for _ in range(min(len(self._results), MAX_RESULTS_PER_FRAME))]
                return encode(ResultsMessage.model_construct(type="results", results=batch))
            assert self._pending is not None
            (status, at), self._pending = self._pending, None
            frame = encode_status(status, at)
            self.sent += 1
            return frame
        except ChannelError as exc:  # too long to send: the child would refuse it
            self.dropped += 1
            log.warning("hmi_message_not_sent", error=str(exc))
            return None

    async def _listen(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        try:
            while (body := await read_frame(proc.stdout)) is not None:
                message = decode_from_hmi(body)
                if isinstance(message, ListeningMessage):
                    self._served_endpoint = message.endpoint
                    self.metrics_url = message.metrics_url or None
                    self._listening.set()
                    event = "hmi_recovered" if self._failing else "hmi_listening"
                    self._failing = False
                    log.info(event, endpoint=message.endpoint, pid=proc.pid, restarts=self.restarts)
                elif isinstance(message, CommandMessage):
                    self._start_command(message)
                elif self._on_audit is not None and len(self._audits) < AUDITS_IN_FLIGHT:
                    self._spawn(self._on_audit(message), self._audits)
                else:  # the HMI process already limits these: more means it misbehaves
                    self.audits_dropped += 1
        except ChannelError as exc:
            # Whatever the HMI process sends is untrusted (it faces the panel network): one bad frame
            # and it is stopped; the supervisor starts a fresh one.
            log.error("hmi_channel_invalid", error=str(exc), pid=proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()


    def _start_command(self, command: CommandMessage) -> None:
        if self._on_command is None or len(self._commands) >= COMMANDS_IN_FLIGHT:
            self.commands_busy += 1
            self._reply(ReplyMessage(id=command.id, ok=False, detail="busy: too many commands at once"))
            return
        handler = self._on_command

        async def handle() -> None:
            try:
                ok, detail = await handler(command)
            except Exception as exc:  # a bug in a handler must not end the HMI's channel
                log.exception("hmi_command_failed", action=command.action.value)
                ok, detail = False, f"failed: {exc}"
            self._reply(ReplyMessage(id=command.id, ok=ok, detail=detail[:512]))

        self._spawn(handle())

    def _spawn(self, job: Awaitable[None], tasks: set[asyncio.Task[None]] | None = None) -> None:
        into = self._commands if tasks is None else tasks
        task = asyncio.ensure_future(job)
        into.add(task)
        task.add_done_callback(into.discard)

    def _reply(self, reply: ReplyMessage) -> None:
        self._replies.append(reply)
        self._wake.set()


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
