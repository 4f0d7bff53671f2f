"""Contract of `PylonCamera` against pylon's camera emulation (no hardware needed).

The emulated camera ("0815-0000") behaves like a real one on the points that matter here: frame-start
trigger, a BlockID per exposure, driver-owned grab buffers that are reused, and a test image that
changes with every exposure.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from controller.adapters.pylon_camera import PylonCamera
from controller.errors import CameraError
from controller.ports import Frame, FrameSource

EMULATED_SERIAL = "0815-0000"
EMULATED_SHAPE = (1040, 1024)  # Height x Width of the emulator's default Mono8 image

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _camera_emulation(monkeypatch: pytest.MonkeyPatch) -> None:
    # pylon reads this when it enumerates devices, so setting it per test is early enough.
    monkeypatch.setenv("PYLON_CAMEMU", "2")


def _camera(*, trigger_source: str = "Software", queue_size: int = 32) -> PylonCamera:
    # A short grab timeout keeps idle polling (and so close) fast; it is not a frame deadline.
    return PylonCamera(
        EMULATED_SERIAL, trigger_source=trigger_source, queue_size=queue_size, grab_timeout_ms=100
    )


async def _next(frames: AsyncIterator[Frame], within: float = 2.0) -> Frame:
    return await asyncio.wait_for(anext(frames), within)


def _grab_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pylon-grab")]


async def test_is_a_frame_source() -> None:
    source: FrameSource = PylonCamera()  # the constructor touches no hardware
    assert isinstance(source, PylonCamera)


async def test_software_triggered_frames_arrive_in_order_with_the_camera_shape() -> None:
    async with _camera() as cam:
        # Trigger mode is really on: nothing arrives without a trigger.
        with pytest.raises(TimeoutError):
            await _next(cam.frames(), within=0.3)

        frames = cam.frames()
        got = []
        for _ in range(5):
            before = time.monotonic()
            await cam.trigger_software()
            frame = await _next(frames)
            assert before <= frame.received_at <= time.monotonic()
            got.append(frame)

    counters = [f.counter for f in got]
    assert counters == list(range(counters[0], counters[0] + 5)), counters
    for frame in got:
        assert frame.image.shape == EMULATED_SHAPE
        assert frame.image.dtype == np.uint8
    assert cam.dropped == 0


async def test_frame_images_are_owned_copies_not_driver_buffers() -> None:
    # pylon cycles through ~10 grab buffers; 14 exposures make it reuse every one of them, so an
    # image aliasing a driver buffer would be overwritten by a later exposure.
    async with _camera() as cam:
        frames = cam.frames()
        await cam.trigger_software()
        first = await _next(frames)
        snapshot = first.image.copy()
        later = []
        for _ in range(13):
            await cam.trigger_software()
            later.append(await _next(frames))

    assert first.image.flags.owndata and first.image.base is None
    assert not any(np.shares_memory(first.image, f.image) for f in later)
    assert any(not np.array_equal(snapshot, f.image) for f in later), "emulator images should differ"
    np.testing.assert_array_equal(first.image, snapshot)


async def test_full_queue_drops_the_newest_frame_and_counts_it() -> None:
    async with _camera(queue_size=2) as cam:
        for _ in range(4):
            await cam.trigger_software()
        deadline = time.monotonic() + 3.0
        # Overflows are counted on the loop as frames arrive from the grab thread; there is no event.
        while cam.queue_overflows < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        assert cam.queue_overflows == 2
        assert cam.dropped == 2

        frames = cam.frames()
        kept = [await _next(frames), await _next(frames)]
        assert kept[1].counter == kept[0].counter + 1  # the two oldest survived, in order
        with pytest.raises(TimeoutError):
            await _next(frames, within=0.2)


async def test_unknown_serial_raises_camera_error_naming_the_serial() -> None:
    with pytest.raises(CameraError, match="no-such-serial") as info:
        async with PylonCamera("no-such-serial", trigger_source="Software"):
            pass
    assert "0815-0000" in str(info.value)  # tells the engineer what *is* connected
    assert not _grab_threads()


async def test_invalid_trigger_source_raises_camera_error_and_releases_the_device() -> None:
    with pytest.raises(CameraError, match=r"TriggerSource=Line99") as info:
        async with _camera(trigger_source="Line99"):
            pass
    assert info.value.__cause__ is not None  # translated from pylon's exception, not swallowed
    async with _camera():  # the failed open left the device closed and reusable
        pass


async def test_camera_failure_ends_frames_with_camera_error() -> None:
    async with _camera() as cam:
        frames = cam.frames()
        await cam.trigger_software()
        await _next(frames)
        # Grabbing stopping behind the controller's back looks like a lost camera.
        await asyncio.to_thread(cam._cam.StopGrabbing)
        with pytest.raises(CameraError, match=EMULATED_SERIAL):
            await _next(frames)


async def test_close_ends_frames_and_leaves_no_grab_thread() -> None:
    assert not _grab_threads()
    cam = _camera()
    async with cam:
        assert len(_grab_threads()) == 1
        waiting = asyncio.create_task(_next(cam.frames(), within=5.0))
        await asyncio.sleep(0.05)  # let it block waiting for a frame
    assert not _grab_threads()
    with pytest.raises(StopAsyncIteration):  # the iterator ended because the source closed
        await waiting
    await cam.aclose()  # idempotent

    async with cam:  # and it can be reopened
        await cam.trigger_software()
        frame = await _next(cam.frames())
        assert frame.image.shape == EMULATED_SHAPE
    assert not _grab_threads()
