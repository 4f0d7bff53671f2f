"""A minimal frame stream over TCP: how a camera that is not a Basler device (the line simulator's
camera, or a frame grabber bridge) hands frames to the controller.

Wire format, one message per exposure, big-endian: magic `LIFS`, u8 version (1), u8 channels,
u16 height, u16 width, u64 frame counter, f64 exposure time (sender's clock, informational),
then height × width × channels bytes of 8-bit pixels. A message that breaks the format ends the
connection with a CameraError naming the problem; nothing is guessed.
Not here: association of frames with triggers (controller/core/frame_matching.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import AsyncIterator
from types import TracebackType

import numpy as np

from controller.errors import CameraError
from controller.ports import Frame, Image

MAGIC = b"LIFS"
VERSION = 1
HEADER = struct.Struct(">4sBBHHQd")
MAX_PIXELS = 4096 * 4096 * 3


def encode_frame(counter: int, image: Image, exposed_at: float) -> bytes:
    channels = 1 if image.ndim == 2 else image.shape[2]
    h, w = image.shape[:2]
    head = HEADER.pack(MAGIC, VERSION, channels, h, w, counter, exposed_at)
    return head + np.ascontiguousarray(image, dtype=np.uint8).tobytes()


def decode_header(data: bytes) -> tuple[int, int, int, int, float]:
    """→ (counter, height, width, channels, exposed_at); raises CameraError on a malformed header."""
    magic, version, channels, h, w, counter, exposed_at = HEADER.unpack(data)
    if magic != MAGIC:
        raise CameraError(f"frame stream: bad magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise CameraError(f"frame stream: version {version}, this controller speaks {VERSION}")
    if channels not in (1, 3) or h == 0 or w == 0 or h * w * channels > MAX_PIXELS:
        raise CameraError(f"frame stream: implausible frame {h}x{w}x{channels}")
    return counter, h, w, channels, exposed_at


class StreamCamera:
    """FrameSource reading the frame stream from `host:port` (a TCP client)."""

    def __init__(
        self, host: str, port: int, *, connect_timeout_s: float = 5.0, host_clock: bool = False
    ) -> None:
        self.host, self.port = host, port
        self.host_clock = host_clock
        """The sender stamps exposures in this host's CLOCK_MONOTONIC (a sender on the same host)."""
        self.connect_timeout_s = connect_timeout_s
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> StreamCamera:
        await self._connect()
        return self

    async def _connect(self) -> None:
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        except (OSError, TimeoutError) as exc:
            raise CameraError(f"camera stream {self.host}:{self.port} unreachable: {exc}") from exc

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = self._reader = None

    async def frames(self) -> AsyncIterator[Frame]:
        """Frames until the stream fails (CameraError); iterating again reconnects."""
        if self._reader is None:
            await self._connect()
        reader = self._reader
        assert reader is not None
        while True:
            try:
                head = await reader.readexactly(HEADER.size)
                counter, h, w, c, exposed_at = decode_header(head)
                pixels = await reader.readexactly(h * w * c)
            except asyncio.IncompleteReadError as exc:
                await self._close()
                raise CameraError(f"camera stream {self.host}:{self.port} closed") from exc
            except (OSError, CameraError) as exc:
                await self._close()
                raise CameraError(f"camera stream {self.host}:{self.port}: {exc}") from exc
            shape = (h, w) if c == 1 else (h, w, c)
            image = np.frombuffer(pixels, dtype=np.uint8).reshape(shape)
            yield Frame(counter, image, time.monotonic(), exposed_at if self.host_clock else None)
