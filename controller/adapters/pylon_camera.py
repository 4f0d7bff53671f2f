"""`FrameSource` for a real Basler camera (pypylon) on a hardware frame trigger.

Responsible for: finding and opening the camera, configuring the frame-start trigger, running one grab
thread that copies each image out of pylon's buffer and hands it to the event loop, counting what is
lost (failed grabs, gaps in the camera's frame counter, queue overflow), and translating pylon errors
into `CameraError`.

Not responsible for: exposure, gain, ROI or pixel-format tuning (done once with pylon Viewer and saved
in the camera's user set), matching frames to triggers (controller core), or reconnecting after a
failure (the caller re-enters `async with` on a fresh or the same `PylonCamera`).

Threading: pylon's `RetrieveResult` blocks, so it runs on a dedicated thread; every other blocking pylon
call (open, trigger, close) runs via `asyncio.to_thread`. Camera emulation for tests: set
`PYLON_CAMEMU=<n>` before the first device enumeration.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import Any

import numpy as np

with warnings.catch_warnings():
    # pypylon's SWIG extension warns while it initialises; under `-W error` (our pytest config) that
    # warning becomes an exception inside the C module init and crashes the interpreter (segfault).
    warnings.filterwarnings(
        "ignore", message=r"builtin type Swig\w* has no __module__ attribute", category=DeprecationWarning
    )
    from pypylon import pylon  # no type stubs: every pylon object below is Any

from controller.errors import CameraError
from controller.ports import Frame, Image

# Pixel formats whose buffers are the `Image` the controller expects (uint8, (H, W) or (H, W, 3)).
_SUPPORTED_PIXEL_FORMATS = frozenset({"Mono8", "RGB8", "RGB8Packed"})


class PylonCamera:
    """One Basler camera as an async `FrameSource`. Use as `async with PylonCamera(...) as cam:`.

    `frames()` yields every successfully grabbed exposure in order. Lost exposures are not yielded but
    counted in `dropped`. After a camera failure, queued frames are still yielded and then `frames()`
    raises `CameraError`; after `aclose()` it simply ends.
    """

    def __init__(
        self,
        serial: str | None = None,
        *,
        trigger_source: str = "Line1",
        queue_size: int = 32,
        grab_timeout_ms: int = 1000,
    ) -> None:
        """Cheap: touches no hardware. `serial=None` takes the first camera found (bench use only).

        `grab_timeout_ms` bounds how long the grab thread blocks without a frame before it re-checks
        for device removal; it is not a frame deadline (a stopped line sends no triggers).
        """
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size}")
        if grab_timeout_ms < 1:
            raise ValueError(f"grab_timeout_ms must be >= 1, got {grab_timeout_ms}")
        self._serial = serial
        self._trigger_source = trigger_source
        self._queue_size = queue_size
        self._grab_timeout_ms = grab_timeout_ms

        self._cam: Any = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        # Overflow policy: bounded at `queue_size`; when full, the NEWEST frame is dropped and counted
        # (`queue_overflows`). Older frames belong to triggers already being tracked, so keeping them
        # preserves exposure order and lets the newest part fail safe instead of shifting every match.
        self._queue: deque[Frame] = deque()
        self._wakeup = asyncio.Event()
        self._closed = True
        self._failure: tuple[str, BaseException | None] | None = None

        # Written by the grab thread only (grab_failures, counter_gaps) or the loop only
        # (queue_overflows), so plain ints need no lock; readers may see a value one frame old.
        self._grab_failures = 0
        self._counter_gaps = 0
        self._queue_overflows = 0
        self._last_counter: int | None = None

    # -- identity and counters -------------------------------------------------------------------

    @property
    def name(self) -> str:
        """How errors and logs name this camera."""
        return f"camera {self._serial!r}" if self._serial else "camera (first found)"

    @property
    def dropped(self) -> int:
        """Exposures that were never yielded: failed grabs + counter gaps + queue overflows."""
        return self._grab_failures + self._counter_gaps + self._queue_overflows

    @property
    def grab_failures(self) -> int:
        """Grab results pylon reported as failed (incomplete frame, buffer underrun, ...)."""
        return self._grab_failures

    @property
    def counter_gaps(self) -> int:
        """Exposures the camera counted but pylon never delivered (skipped frame counter values)."""
        return self._counter_gaps

    @property
    def queue_overflows(self) -> int:
        """Frames grabbed but dropped because the consumer was `queue_size` frames behind."""
        return self._queue_overflows

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> PylonCamera:
        if not self._closed:
            raise RuntimeError(f"{self.name} is already open")
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        self._queue.clear()
        self._wakeup = asyncio.Event()
        self._failure = None
        self._last_counter = None
        self._cam = await _uncancellable_to_thread(
            self._open_blocking, cleanup=lambda cam: self._close_blocking(cam, None, quiet=True)
        )
        self._closed = False
        self._thread = threading.Thread(
            target=self._grab_loop,
            args=(self._cam,),
            name=f"pylon-grab-{self._serial or 'first'}",
            # Daemon only as a last resort for a caller that never closes: aclose() always joins it.
            daemon=True,
        )
        self._thread.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop grabbing, join the grab thread and close the device. Idempotent.

        Returns only once the grab thread has ended. Raises CameraError if pylon fails to close the
        device; the thread is joined regardless."""
        if self._cam is None:
            return
        cam, self._cam = self._cam, None
        thread, self._thread = self._thread, None
        self._closed = True
        self._wakeup.set()  # let a waiting frames() see the end
        self._stopping.set()
        # Uncancellable: a half-done close would leave the device locked for the next open.
        await _uncancellable_to_thread(lambda: self._close_blocking(cam, thread))

    # -- FrameSource -----------------------------------------------------------------------------

    async def frames(self) -> AsyncIterator[Frame]:
        """Yield frames in exposure order until closed. Raises CameraError when the camera fails.

        Meant for one consumer: two concurrent iterators would split the frames between them."""
        if self._closed and not self._queue:
            raise RuntimeError(f"{self.name} is not open: use `async with` first")
        while True:
            if self._queue:
                yield self._queue.popleft()
                continue
            if self._failure is not None:
                message, cause = self._failure
                raise CameraError(message) from cause
            if self._closed:
                return
            self._wakeup.clear()
            await self._wakeup.wait()

    async def trigger_software(self, ready_timeout_ms: int = 1000) -> None:
        """Fire one software frame trigger (needs `trigger_source="Software"`).

        Waits up to `ready_timeout_ms` for the camera to accept a trigger, because a trigger sent
        while it is still exposing or reading out is silently ignored by the camera."""
        cam = self._cam
        if cam is None:
            raise RuntimeError(f"{self.name} is not open: use `async with` first")

        def trigger() -> None:
            try:
                ready = cam.WaitForFrameTriggerReady(ready_timeout_ms, pylon.TimeoutHandling_Return)
                if not ready:
                    raise CameraError(
                        f"{self.name} not ready for a frame trigger within {ready_timeout_ms} ms"
                    )
                cam.ExecuteSoftwareTrigger()
            except pylon.GenericException as exc:
                raise CameraError(f"{self.name}: software trigger failed: {_one_line(exc)}") from exc

        await asyncio.to_thread(trigger)

    # -- blocking helpers (worker threads) ---------------------------------------------------------

    def _open_blocking(self) -> Any:
        try:
            factory = pylon.TlFactory.GetInstance()
            devices = list(factory.EnumerateDevices())
        except pylon.GenericException as exc:
            raise CameraError(f"{self.name}: device enumeration failed: {_one_line(exc)}") from exc
        if self._serial is not None:
            matching = [d for d in devices if d.GetSerialNumber() == self._serial]
        else:
            matching = devices[:1]
        if not matching:
            seen = ", ".join(sorted(d.GetSerialNumber() for d in devices)) or "none"
            raise CameraError(f"{self.name} not found (cameras visible: {seen})")

        cam = pylon.InstantCamera()
        try:
            cam.Attach(factory.CreateDevice(matching[0]))
            cam.Open()
            self._configure(cam)
            cam.StartGrabbing(pylon.GrabStrategy_OneByOne)
        except (pylon.GenericException, CameraError) as exc:
            self._close_blocking(cam, None, quiet=True)
            if isinstance(exc, CameraError):
                raise
            raise CameraError(f"{self.name}: open failed: {_one_line(exc)}") from exc
        return cam

    def _configure(self, cam: Any) -> None:
        # InstantCamera's default configuration switches triggers off on Open(), so this must run after.
        steps: list[tuple[str, Callable[[], None]]] = [
            ("TriggerSelector=FrameStart", lambda: setattr(cam.TriggerSelector, "Value", "FrameStart")),
            ("TriggerMode=On", lambda: setattr(cam.TriggerMode, "Value", "On")),
            (
                f"TriggerSource={self._trigger_source}",
                lambda: setattr(cam.TriggerSource, "Value", self._trigger_source),
            ),
        ]
        for what, step in steps:
            try:
                step()
            except pylon.GenericException as exc:
                raise CameraError(f"{self.name}: cannot set {what}: {_one_line(exc)}") from exc
        pixel_format = str(cam.PixelFormat.Value)
        if pixel_format not in _SUPPORTED_PIXEL_FORMATS:
            raise CameraError(
                f"{self.name}: PixelFormat is {pixel_format}; set one of "
                f"{', '.join(sorted(_SUPPORTED_PIXEL_FORMATS))} in the camera's user set"
            )

    def _close_blocking(self, cam: Any, thread: threading.Thread | None, *, quiet: bool = False) -> None:
        error: BaseException | None = None
        try:
            # StopGrabbing makes a RetrieveResult blocked in the grab thread return at once.
            cam.StopGrabbing()
        except pylon.GenericException as exc:
            error = exc
        finally:
            if thread is not None:
                thread.join()
        for step in (cam.Close, cam.DestroyDevice):  # each attempted: a failed Close must not leak the device
            try:
                step()
            except pylon.GenericException as exc:
                error = error or exc
        if error is not None and not quiet and self._failure is None:
            # After a reported failure (device removed) a failing close is expected, not news.
            raise CameraError(f"{self.name}: close failed: {_one_line(error)}") from error

    def _grab_loop(self, cam: Any) -> None:
        """Grab thread: retrieve, copy, release, post to the loop. Ends on stop or on a camera failure."""
        while not self._stopping.is_set():
            try:
                result = cam.RetrieveResult(self._grab_timeout_ms, pylon.TimeoutHandling_Return)
            except pylon.GenericException as exc:
                if not self._stopping.is_set():
                    self._post(self._fail, f"{self.name}: grab failed: {_one_line(exc)}", exc)
                return
            if not result.IsValid():
                # Timeout (no trigger for a while: normal) or grabbing stopped under us.
                if self._stopping.is_set():
                    return
                if cam.IsCameraDeviceRemoved():
                    self._post(self._fail, f"{self.name}: device removed", None)
                    return
                if not cam.IsGrabbing():
                    self._post(self._fail, f"{self.name}: grabbing stopped unexpectedly", None)
                    return
                continue
            try:
                if result.GrabSucceeded():
                    counter = int(result.BlockID)
                    # The one copy: the driver reuses this buffer as soon as the result is released.
                    with result.GetArrayZeroCopy() as view:
                        image: Image = np.array(view, dtype=np.uint8, copy=True)
                        del view  # pypylon refuses to leave the block while the view is referenced
                    self._note_counter(counter)
                    # Stamped here, not when the event loop gets to it: association needs the arrival
                    # time without the loop's lag (controller/core/frame_matching.py).
                    self._post(self._deliver, counter, image, time.monotonic())
                else:
                    self._grab_failures += 1
                    # Remember its counter so the next good frame does not count this loss again as a gap.
                    self._note_counter(int(result.BlockID), count_gap=False)
            finally:
                result.Release()

    def _note_counter(self, counter: int, *, count_gap: bool = True) -> None:
        last = self._last_counter
        if last is not None and counter <= last:
            # Counter went backwards: a camera reset, or the 16-bit GigE block ID wrapping (65535 -> 1).
            # The gap size is unknowable, so count nothing and restart from here.
            self._last_counter = counter
            return
        if count_gap and last is not None:
            self._counter_gaps += counter - last - 1
        self._last_counter = counter

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:
            # The loop is closed: nobody is left to deliver to, so there is nothing to report either.
            self._stopping.set()

    # -- loop-side callbacks ---------------------------------------------------------------------

    def _deliver(self, counter: int, image: Image, received_at: float) -> None:
        if self._closed:
            return
        if len(self._queue) >= self._queue_size:
            self._queue_overflows += 1  # drop newest (see the policy where the queue is created)
            return
        self._queue.append(Frame(counter=counter, image=image, received_at=received_at))
        self._wakeup.set()

    def _fail(self, message: str, cause: BaseException | None) -> None:
        if self._closed or self._failure is not None:
            return
        self._failure = (message, cause)
        self._wakeup.set()


async def _uncancellable_to_thread(
    func: Callable[[], Any], cleanup: Callable[[Any], None] | None = None
) -> Any:
    """Run `func` in a thread and wait for it even if the caller is cancelled meanwhile.

    A pylon open or close cannot be interrupted; abandoning it would leave a device open (and locked
    against the next open) with nobody owning it. On cancellation, a successful result is handed to
    `cleanup` before the cancellation propagates."""
    task = asyncio.ensure_future(asyncio.to_thread(func))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            result = await task
        except Exception:
            raise asyncio.CancelledError from None  # the open failed anyway: nothing to clean up
        if cleanup is not None:
            await asyncio.to_thread(cleanup, result)
        raise


def _one_line(exc: BaseException) -> str:
    """pylon messages span several lines and end in the C++ source location; keep the first line."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
