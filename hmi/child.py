"""The HMI process: `python -m hmi.child --endpoint URL`, started and fed by hmi/process.py.

It serves `HmiServer` (hmi/server.py) with the snapshots it reads from stdin (hmi/messages.py frames),
and says once on stdout that it listens, on which endpoint. Everything a panel client can cost (CPU
for a huge Browse, sockets, memory for sessions) is spent here, at a lower priority than the
controller, never in the controller's process.

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
import signal
import sys
import time
from datetime import UTC, datetime

from controller.errors import ControllerError
from hmi.messages import ChannelError, ListeningMessage, decode_to_hmi, encode, read_frame
from hmi.server import HmiServer

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


def configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("hmi %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(ThrottleAsyncua())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)


async def serve(endpoint: str) -> int:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out_transport, out_protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
    out = asyncio.StreamWriter(out_transport, out_protocol, None, loop)
    terminated = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, terminated.set)
    try:
        async with HmiServer(endpoint) as server:
            out.write(encode(ListeningMessage(endpoint=server.endpoint)))
            await out.drain()
            feed = asyncio.create_task(_apply_snapshots(reader, server), name="hmi-snapshots")
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


async def _apply_snapshots(reader: asyncio.StreamReader, server: HmiServer) -> None:
    """Until stdin ends. Each snapshot is complete: the server keeps only the newest."""
    while (body := await read_frame(reader)) is not None:
        message = decode_to_hmi(body)
        server.publish(message.status, datetime.fromtimestamp(message.published_at, UTC))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hmi.child", description=__doc__.split("\n")[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--nice", type=int, default=19, help="added to the controller's nice value")
    args = parser.parse_args(argv)
    os.nice(args.nice)  # here rather than preexec_fn, which would cost the controller a fork instead of a vfork
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging()
    try:
        return asyncio.run(serve(args.endpoint))
    except ControllerError as exc:  # cannot listen: one line, the controller retries later
        _log.error("%s", exc)
        return EXIT_CANNOT_LISTEN
    except KeyboardInterrupt:  # pragma: no cover - SIGINT is ignored
        return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
