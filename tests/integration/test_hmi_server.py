"""`HmiServer` seen through a real asyncua client over loopback TCP, on OS-chosen ports.

One server (and client) is shared by the module's tests because starting asyncua's server costs a few
seconds of CPU; every test publishes its own distinctive status and waits for exactly that.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Client, Node, ua

from controller.errors import ControllerError
from controller.status import Health, LineStatus
from hmi.server import STATUS_VARIABLES, UPDATED_AT, HmiServer

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

ANY_PORT = "opc.tcp://127.0.0.1:0/lineinspect/"
NAMESPACE = "urn:lineinspect"

STATUS = LineStatus(
    state=Health.DEGRADED,
    ready_bit=True,
    epoch=7,
    line_running=True,
    vision_enabled=True,
    shadow_mode=False,
    watchdog_tripped=True,
    speed_counts_per_s=1234.5,
    triggers=1001,
    passes=900,
    rejects=90,
    failsafe=11,
    failsafe_by_reason={"no_frame": 1, "late": 10},
    latency_p50_ms=12.5,
    latency_p99_ms=48.25,
    plc_rejects_vision=89,
    plc_rejects_failsafe=11,
    plc_verdicts_late=2,
    plc_watchdog_trips=1,
    alarms=("camera: grab timeout", "inference degraded"),
    model_version="effnet-lite0-2026.03",
)


@dataclasses.dataclass
class Hmi:
    server: HmiServer
    client: Client
    ns: int

    def node(self, name: str) -> Node:
        return self.client.get_node(ua.NodeId(f"Line.{name}", self.ns))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hmi() -> AsyncIterator[Hmi]:
    async with HmiServer(ANY_PORT) as server:
        async with Client(server.endpoint) as client:
            yield Hmi(server, client, await client.get_namespace_index(NAMESPACE))
    # Checked here rather than in a test of its own, to save a server start (seconds of CPU):
    # once stopped, the server no longer listens.
    with pytest.raises(OSError):
        async with Client(server.endpoint, timeout=1):
            pass


async def _eventually(check: Callable[[], Any], within: float = 3.0) -> None:
    """Poll an async predicate: the server applies statuses asynchronously, at its own rate."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_every_status_field_is_a_described_read_only_variable(hmi: Hmi) -> None:
    assert {v.field for v in STATUS_VARIABLES} == {f.name for f in dataclasses.fields(LineStatus)}

    line = hmi.client.get_node(ua.NodeId("Line", hmi.ns))
    children = {(await n.read_browse_name()).Name: n for n in await line.get_children()}
    assert set(children) == {v.name for v in (*STATUS_VARIABLES, UPDATED_AT)}
    for name, node in children.items():
        description = (await node.read_attribute(ua.AttributeIds.Description)).Value.Value.Text
        assert description, f"{name} has no description"
        for attribute in (ua.AttributeIds.AccessLevel, ua.AttributeIds.UserAccessLevel):
            level = (await node.read_attribute(attribute)).Value.Value
            assert level & ua.AccessLevel.CurrentRead.mask, name
            assert not level & ua.AccessLevel.CurrentWrite.mask, f"{name} is writable"
    assert await children["Alarms"].read_attribute(ua.AttributeIds.ValueRank) is not None
    assert (await children["Alarms"].read_value_rank()) == ua.ValueRank.OneDimension


async def test_published_status_is_readable_by_a_client(hmi: Hmi) -> None:
    hmi.server.publish(STATUS)

    async def applied() -> bool:
        return await hmi.node("ModelVersion").read_value() == STATUS.model_version

    await _eventually(applied)
    expected: dict[str, Any] = {
        "Health": "DEGRADED",
        "ReadyToPlc": True,
        "Epoch": 7,
        "LineRunning": True,
        "VisionEnabled": True,
        "ShadowMode": False,
        "WatchdogTripped": True,
        "LineSpeed": 1234.5,
        "TriggerCount": 1001,
        "PassCount": 900,
        "RejectCount": 90,
        "FailsafeCount": 11,
        "LatencyP50Ms": 12.5,
        "LatencyP99Ms": 48.25,
        "PlcRejectsVision": 89,
        "PlcRejectsFailsafe": 11,
        "PlcVerdictsLate": 2,
        "PlcWatchdogTrips": 1,
        "Alarms": ["camera: grab timeout", "inference degraded"],
        "ModelVersion": "effnet-lite0-2026.03",
    }
    for name, value in expected.items():
        assert await hmi.node(name).read_value() == value, name
    failsafe = json.loads(await hmi.node("FailsafeByReasonJson").read_value())
    assert failsafe == {"no_frame": 1, "late": 10}
    assert await hmi.node("UpdatedAt").read_value() is not None


async def test_subscribed_client_receives_a_datachange(hmi: Hmi) -> None:
    received: asyncio.Queue[int] = asyncio.Queue()

    class Handler:
        def datachange_notification(self, node: Node, value: int, data: object) -> None:
            received.put_nowait(value)

    subscription = await hmi.client.create_subscription(50, Handler())
    try:
        await subscription.subscribe_data_change(hmi.node("TriggerCount"))
        first = await asyncio.wait_for(received.get(), 3)  # the current value arrives first
        hmi.server.publish(dataclasses.replace(STATUS, triggers=first + 5))
        assert await asyncio.wait_for(received.get(), 3) == first + 5
    finally:
        await subscription.delete()


async def test_client_writes_are_refused(hmi: Hmi) -> None:
    node = hmi.node("RejectCount")
    before = await node.read_value()
    with pytest.raises(ua.UaStatusCodeError) as refused:
        await node.write_value(ua.Variant(before + 1, ua.VariantType.Int64))
    assert refused.value.code in (ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadNotWritable)
    # Not only values: no attribute of any node may be changed either.
    with pytest.raises(ua.UaStatusCodeError):
        await node.write_attribute(
            ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText("x")))
        )
    assert await node.read_value() == before
    # Nor may methods be called, not even the standard server's own.
    with pytest.raises(ua.UaStatusCodeError) as refused:
        await hmi.client.nodes.server.call_method("0:GetMonitoredItems", ua.Variant(1, ua.VariantType.UInt32))
    assert refused.value.code == ua.StatusCodes.BadUserAccessDenied


async def test_publish_flood_is_cheap_rate_limited_and_latest_wins(hmi: Hmi) -> None:
    start_writes = hmi.server.updates_written
    started = time.monotonic()
    published = 0
    t0 = time.perf_counter()
    while time.monotonic() - started < 1.0:
        for _ in range(100):
            published += 1
            hmi.server.publish(dataclasses.replace(STATUS, triggers=published))
        await asyncio.sleep(0.001)
    publish_cost_s = time.perf_counter() - t0
    elapsed = time.monotonic() - started

    async def latest_shown() -> bool:
        return await hmi.node("TriggerCount").read_value() == published

    await _eventually(latest_shown)
    writes = hmi.server.updates_written - start_writes
    assert published > 10_000
    assert writes <= 5 * elapsed + 2, f"{writes} address-space updates in {elapsed:.2f} s at 5 Hz"
    assert writes >= 2  # and it kept updating during the flood, not just at the end
    assert publish_cost_s < 2.0  # the loop mostly slept; publish itself is far below a millisecond


async def test_real_port_is_reported_and_a_busy_port_is_a_controller_error(hmi: Hmi) -> None:
    endpoint = hmi.server.endpoint
    assert not endpoint.endswith(":0/lineinspect/")
    second = HmiServer(endpoint)
    with pytest.raises(ControllerError, match="cannot listen"):
        async with second:
            pass
    second.publish(STATUS)  # harmless when not running
