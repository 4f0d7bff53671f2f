"""The HMI process: `python -m hmi.child --endpoint URL --settings JSON`, fed by hmi/process.py.

It serves `HmiServer` (hmi/server.py) with the snapshots and results it reads from stdin
(hmi/messages.py frames), says once on stdout that it listens, on which endpoint, and sends the
operators' commands the other way (`ControllerPipe`), each answered by the controller. Everything
a panel client can cost (CPU for a huge Browse, sockets, memory for sessions, RSA handshakes) is
spent here, at a lower priority than the controller, never in the controller's process.

It ends when stdin ends (the controller closed it, or died, even by SIGKILL), on SIGTERM, or on an
invalid frame (exit 3: the controller restarts it). Ctrl-C in a terminal is the controller's to
handle: the controller stops this process itself.

Logging: asyncua logs every refused request, refused connection or oversized message, one line
each, refusals at ERROR. A client that sends thousands would fill the log and cost CPU, so those
records are throttled here (`ThrottleAsyncua`) and refusals logged as what they are, warnings.
Not here: the OPC UA address space or limits (hmi/server.py), restarts (hmi/process.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError

from controller import logs
from controller.errors import ControllerError
from controller.operator import Action
from hmi.access import Caller
from hmi.messages import (
    AuditMessage,
    ChannelError,
    CommandMessage,
    ListeningMessage,
    ReplyMessage,
    ResultsMessage,
    StatusMessage,
    decode_to_hmi,
    encode,
    read_frame,
)  # fmt: skip
from hmi.metrics import Metrics, MetricsServer
from hmi.server import HmiServer
from hmi.settings import HmiSettings

_log = logging.getLogger("hmi.child")

EXIT_CANNOT_LISTEN = 2
EXIT_BAD_CHANNEL = 3


class ThrottleAsyncua(logging.Filter):
    """Per asyncua message template: the first record passes, then at most one per `window_s`, which
    says how many were suppressed since. Refusals (the server doing what it is configured to do)
    pass as WARNING, not ERROR. Memory is bounded by the number of templates asyncua has."""

    REFUSALS = (
        "sending service fault response",  # any refused request (BadUserAccessDenied, BadTooManyOperations)
        "Message size",  # a request longer than max_request_bytes
        "Number of message chunks",
        "Refusing connection",  # over the connection limit
        "%s attempted to do something",
        "Not trusted certificate used",  # asyncua logs it with a traceback; the refusal is ours to tell
    )
    MAX_TEMPLATES = 512

    def __init__(self, window_s: float = 10.0) -> None:
        super().__init__()
        self.window_s = window_s
        self._seen: dict[tuple[str, str], list[float]] = {}  # template -> [last passed at, suppressed since]

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("asyncua"):
            return True
        template = str(record.msg)
        if record.levelno > logging.WARNING and template.startswith(self.REFUSALS):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        key = (record.name, template)
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.window_s:
            seen[1] += 1
            return False
        if seen is not None and seen[1]:
            record.msg = f"{template} (and {int(seen[1])} more like it in {now - seen[0]:.0f} s)"
        if seen is not None or len(self._seen) < self.MAX_TEMPLATES:
            self._seen[key] = [now, 0]
        return True


def lower_priority(nice: int) -> None:
    """Nice `nice` against everything on the machine, not only against the controller.

    With the kernel's autogroup scheduling (the default on desktop and many server kernels), CPU is
    shared fairly between sessions first, and a process's nice value only counts inside its own
    session: a nice +19 HMI in the controller's session, busy with 50 TLS-style handshakes while the
    controller sleeps, took a whole session's share from the simulated PLC (an S7 request waited
    over 100 ms). So it starts a session of its own and sets that session's nice too."""
    os.nice(nice)
    with contextlib.suppress(OSError):
        os.setsid()
    with contextlib.suppress(OSError):  # no autogroup (disabled, or not Linux): the nice value is enough
        Path("/proc/self/autogroup").write_text(str(min(max(nice, -20), 19)))


def configure_logging() -> None:
    """JSON lines on stderr (the controller's: its service log), warnings and up, asyncua's throttled."""
    logs.configure("warning")
    for handler in logging.getLogger().handlers:
        handler.addFilter(ThrottleAsyncua())


class ControllerPipe:
    """The controller as the HMI server sees it: commands out on stdout, replies back on stdin.
    Refusals are audited at most `AUDITS_PER_S`, so a client calling forbidden methods in a loop
    cannot fill the controller's journal: beyond, they are counted and the count is audited with the
    next one that passes. What was done (a user added) is always audited."""

    AUDITS_PER_S = 5.0

    def __init__(self, out: asyncio.StreamWriter) -> None:
        self._out = out
        self._next_id = secrets.randbits(40)  # a restarted HMI never takes a reply meant for its predecessor
        self._waiting: dict[int, asyncio.Future[tuple[bool, str]]] = {}
        self._tokens = self.AUDITS_PER_S
        self._refilled = time.monotonic()
        self.audits_suppressed = 0

    async def command(self, action: Action, argument: str, caller: Caller) -> tuple[bool, str]:
        self._next_id += 1
        cid = self._next_id
        reply: asyncio.Future[tuple[bool, str]] = asyncio.get_running_loop().create_future()
        self._waiting[cid] = reply
        try:
            self._send(CommandMessage(id=cid, action=action, argument=argument, user=caller.user,
                                      role=caller.role.name.lower(), peer=caller.peer))  # type: ignore[arg-type]
            return await reply
        finally:
            self._waiting.pop(cid, None)

    def audit(self, action: str, argument: str, result: str, detail: str, caller: Caller) -> None:
        now = time.monotonic()
        self._tokens = min(self.AUDITS_PER_S, self._tokens + (now - self._refilled) * self.AUDITS_PER_S)
        self._refilled = now
        if result == "refused" and self._tokens < 1:  # what was done is always audited
            self.audits_suppressed += 1
            return
        self._tokens -= 1
        if self.audits_suppressed:
            detail = f"{detail} (and {self.audits_suppressed} more not audited: too many)"
            self.audits_suppressed = 0
        self._send(AuditMessage(action=action[:128], argument=argument[:128], result=result,  # type: ignore[arg-type]
                                detail=detail[:128], user=caller.user[:128], role=caller.role.name.lower(),
                                peer=caller.peer[:128]))  # fmt: skip

    def answered(self, reply: ReplyMessage) -> None:
        waiting = self._waiting.get(reply.id)
        if waiting is not None and not waiting.done():
            waiting.set_result((reply.ok, reply.detail))

    def _send(self, message: CommandMessage | AuditMessage) -> None:
        # Never awaited: a stalled controller must not stall the HMI. Commands are few and small;
        # the pipe holds 64 KiB of them before the transport buffers.
        self._out.write(encode(message))


async def serve(settings: HmiSettings) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out_transport, out_protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
    out = asyncio.StreamWriter(out_transport, out_protocol, None, loop)
    terminated = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, terminated.set)
    try:
        pipe = ControllerPipe(out)
        metrics = Metrics()
        async with HmiServer(settings, pipe) as server, contextlib.AsyncExitStack() as stack:
            url = ""
            if settings.metrics:
                url = (await stack.enter_async_context(MetricsServer(metrics, settings.metrics))).url
            out.write(encode(ListeningMessage(endpoint=server.endpoint, metrics_url=url)))
            await out.drain()
            feed = asyncio.create_task(_apply_messages(reader, server, pipe, metrics), name="hmi-snapshots")
            stop = asyncio.create_task(terminated.wait(), name="hmi-sigterm")
            try:
                await asyncio.wait({feed, stop}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                feed.cancel()
                stop.cancel()
                await asyncio.wait({feed, stop})
            if not feed.cancelled():
                feed.result()  # stdin ended (None), or the ChannelError below
    except ChannelError as exc:
        _log.error("invalid frame from the controller, stopping: %s", exc)
        return EXIT_BAD_CHANNEL
    finally:
        out.close()
    return 0


async def _apply_messages(reader: asyncio.StreamReader, server: HmiServer, pipe: ControllerPipe,
                          metrics: Metrics) -> None:  # fmt: skip
    """Until stdin ends. Each snapshot is complete: the server keeps only the newest."""
    while (body := await read_frame(reader)) is not None:
        message = decode_to_hmi(body)
        if isinstance(message, StatusMessage):
            server.publish(message.status, datetime.fromtimestamp(message.published_at, UTC))
            metrics.on_status(message.status)
            metrics.results_dropped = server.results_dropped
        elif isinstance(message, ResultsMessage):
            server.publish_results(message.results)
            metrics.on_results(message.results)
        else:
            pipe.answered(message)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmi.child", description=__doc__.split("\n")[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--settings", default="{}", help="HmiSettings as JSON (its endpoint is --endpoint)")
    parser.add_argument("--nice", type=int, default=19, help="added to the controller's nice value")
    args = parser.parse_args(argv)
    lower_priority(args.nice)  # here rather than preexec_fn, which would cost the controller a fork, not a vfork
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging()
    try:
        settings = HmiSettings.model_validate_json(args.settings).model_copy(update={"endpoint": args.endpoint})
    except ValidationError as exc:
        _log.error("invalid --settings: %s", exc.errors()[0]["msg"])
        return EXIT_CANNOT_LISTEN
    try:
        return asyncio.run(serve(settings))
    except ControllerError as exc:  # cannot listen: one line, the controller retries later
        _log.error("%s", exc)
        return EXIT_CANNOT_LISTEN
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is ignored
        return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
