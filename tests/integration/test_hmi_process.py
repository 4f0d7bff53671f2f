"""The controller's side of the HMI process (hmi/process.py): whatever the HMI process does (stalls,
dies, sends garbage), `publish()` never blocks the controller's event loop, and the HMI comes back.

Real child processes and a real asyncua client; a stalled HMI is a SIGSTOPped process. The wire
format's guards (hmi/messages.py) and the config check of the endpoint are tested here too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import ua
from hmi_helpers import secure_hmi_process

from controller.config import parse_config
from controller.errors import ConfigError
from controller.status import Health, LineStatus
from hmi.messages import (
    MAX_FRAME_BYTES,
    ChannelError,
    ListeningMessage,
    decode_from_hmi,
    decode_to_hmi,
    encode,
    encode_status,
    read_frame,
)
from hmi.process import HmiProcess
from sim.hmi_demo import DemoAccess, secure_client

pytestmark = [pytest.mark.timeout(90)]

ANY_PORT = "opc.tcp://127.0.0.1:0/lineinspect/"
STATUS = LineStatus(state=Health.READY, triggers=1, alarms=("plc_link",), failsafe_by_reason={"late": 2})


@pytest_asyncio.fixture
async def hmi_and_access(tmp_path: Path) -> AsyncIterator[tuple[HmiProcess, DemoAccess]]:
    async with secure_hmi_process(tmp_path, backoff_s=(0.2, 1.0)) as running:
        yield running


@pytest.fixture
def hmi(hmi_and_access: tuple[HmiProcess, DemoAccess]) -> HmiProcess:
    return hmi_and_access[0]


@pytest.fixture
def access(hmi_and_access: tuple[HmiProcess, DemoAccess]) -> DemoAccess:
    return hmi_and_access[1]


async def _eventually(check: Callable[[], Awaitable[bool]], within: float = 20.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def _shows_triggers(hmi: HmiProcess, access: DemoAccess, triggers: int) -> None:
    """Wait until a fresh panel client reads `triggers` from whatever HMI process now listens."""
    endpoint = await asyncio.wait_for(hmi.wait_listening(), 30)
    async with await secure_client(access.with_endpoint(endpoint)) as client:
        node = client.get_node(ua.NodeId("Line.TriggerCount", await client.get_namespace_index("urn:lineinspect")))

        async def shown() -> bool:
            return bool(await node.read_value() == triggers)

        await _eventually(shown)


async def _publish_while_ticking(hmi: HmiProcess, count: int) -> int:
    """Publish `count` snapshots, yielding to the loop after each, beside a ticker task; returns how
    often the ticker ran. A publisher that blocked would block the ticker too (one thread)."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    try:
        for n in range(count):
            hmi.publish(dataclasses.replace(STATUS, triggers=n))
            await asyncio.sleep(0)
    finally:
        task.cancel()
        await asyncio.wait({task})
    return ticks


async def test_the_hmi_process_runs_at_a_lower_priority(hmi: HmiProcess) -> None:
    assert hmi.pid is not None and hmi.pid != os.getpid()
    assert os.getpriority(os.PRIO_PROCESS, hmi.pid) > os.getpriority(os.PRIO_PROCESS, 0)
    # Also against other sessions, where the kernel shares CPU by session first (autogroup).
    assert os.getsid(hmi.pid) != os.getsid(0)
    assert _autogroup_nice(hmi.pid) in (None, 19)


def _autogroup_nice(pid: int) -> int | None:
    """The nice value of a process's autogroup; None where the kernel has none."""
    try:
        return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])
    except OSError:
        return None


async def test_a_stalled_hmi_never_blocks_the_publisher_and_shows_the_latest_when_it_resumes(
    hmi: HmiProcess, access: DemoAccess
) -> None:
    pid = hmi.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        sent_before = hmi.sent
        # ~2.5 MB of snapshots: far more than a pipe holds, so a blocking writer would hang here.
        ticks = await _publish_while_ticking(hmi, 5000)
        assert ticks >= 4000  # the loop kept running all along
        assert hmi.dropped > 4000  # superseded while the stopped HMI could not take them
        assert hmi.sent - sent_before < 100  # only what the small pipe holds got through
    finally:
        os.kill(pid, signal.SIGCONT)
    hmi.publish(dataclasses.replace(STATUS, triggers=777_777))
    await _shows_triggers(hmi, access, 777_777)
    assert hmi.pid == pid  # the same process: a stall is not a crash


async def test_a_killed_hmi_never_blocks_the_publisher_and_is_started_again(
    hmi: HmiProcess, access: DemoAccess
) -> None:
    pid = hmi.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    ticks = await _publish_while_ticking(hmi, 2000)
    assert ticks >= 1500

    async def restarted() -> bool:
        return hmi.restarts >= 1 and hmi.pid not in (None, pid)

    await _eventually(restarted)
    hmi.publish(dataclasses.replace(STATUS, triggers=424_242))
    await _shows_triggers(hmi, access, 424_242)  # the new process got the newest status


async def test_the_hmi_process_ends_with_its_controller(hmi: HmiProcess) -> None:
    pid = hmi.pid
    assert pid is not None
    await hmi.aclose()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


# -- the wire format ------------------------------------------------------------------------------


def test_a_status_round_trips_through_a_frame() -> None:
    frame = encode_status(STATUS, 1234.5)
    (size,) = struct.unpack(">I", frame[:4])
    message = decode_to_hmi(frame[4 : 4 + size])
    assert message.status == STATUS and message.published_at == 1234.5


def test_messages_are_validated_strictly() -> None:
    body = encode_status(STATUS, 1.0)[4:]
    with pytest.raises(ChannelError, match=r"status\.epoch"):
        decode_to_hmi(body.replace(b'"epoch":0', b'"epoch":"0"'))
    with pytest.raises(ChannelError, match=r"status\.extra"):
        decode_to_hmi(body.replace(b'"epoch":0', b'"epoch":0,"extra":1'))
    with pytest.raises(ChannelError):
        decode_from_hmi(body)  # a status is not something the HMI may send
    with pytest.raises(ChannelError):
        decode_from_hmi(b"\x80\x04pickle?")
    assert decode_from_hmi(encode(ListeningMessage(endpoint="opc.tcp://h:1/"))[4:]).endpoint == "opc.tcp://h:1/"


async def test_an_oversized_frame_is_refused_before_it_is_read() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(struct.pack(">I", MAX_FRAME_BYTES + 1))  # nothing follows: it must not wait for it
    with pytest.raises(ChannelError, match="exceeds"):
        await asyncio.wait_for(read_frame(reader), 5)
    huge = dataclasses.replace(STATUS, alarms=("x" * 1000,) * 100)
    with pytest.raises(ChannelError, match="exceeds"):
        encode_status(huge, 0.0)


def test_a_non_opc_tcp_endpoint_is_one_config_error_naming_the_key() -> None:
    for bad in ("http://127.0.0.1:4840/lineinspect/", "opc.tcp://127.0.0.1/lineinspect/", "opc.tcp://h:99999/"):
        with pytest.raises(ConfigError, match=r"^config: hmi\.endpoint: .*opc\.tcp://host:port/path") as err:
            parse_config({"hmi": {"endpoint": bad}})
        assert "\n" not in str(err.value)
    assert parse_config({"hmi": {"endpoint": ANY_PORT}}).hmi.endpoint == ANY_PORT
