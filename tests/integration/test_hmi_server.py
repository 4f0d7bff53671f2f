"""The HMI as the controller runs it: `HmiProcess` (the asyncua server in its own process, fed
snapshots), seen through a real asyncua client over loopback TCP, on OS-chosen ports, logged in as
a viewer over Basic256Sha256 SignAndEncrypt (the simulator's demo access).

One HMI process (and client) is shared by the module's tests because starting asyncua's server costs
a few seconds of CPU; every test publishes its own distinctive status and waits for exactly that.
The HMI process's log goes to a file, so that the tests can read what a flood of refusals logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Client, Node, ua
from hmi_helpers import NAMESPACE, connected, secure_hmi_process

from controller.status import Health, LineStatus
from hmi.process import HmiProcess
from hmi.server import SHOWN_ELSEWHERE, STATUS_VARIABLES, UPDATED_AT, HmiLimits
from sim.hmi_demo import DemoAccess, secure_client

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]


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
    server: HmiProcess
    client: Client
    ns: int
    log: Path
    access: DemoAccess

    async def new_client(self) -> Client:
        return await secure_client(self.access)

    def node(self, name: str) -> Node:
        return self.client.get_node(ua.NodeId(f"Line.{name}", self.ns))


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hmi() -> AsyncIterator[Hmi]:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "hmi.log"
        with log.open("wb") as stderr:
            async with secure_hmi_process(Path(tmp), stderr=stderr) as (server, access):
                async with connected(access) as client:
                    yield Hmi(server, client, await client.get_namespace_index(NAMESPACE), log, access)
        # Checked here rather than in a test of its own, to save a server start (seconds of CPU):
        # once stopped, the HMI process no longer listens.
        with pytest.raises(OSError):
            async with Client(access.endpoint, timeout=1):
                pass


async def _eventually(check: Callable[[], Any], within: float = 3.0) -> None:
    """Poll an async predicate: the server applies statuses asynchronously, at its own rate."""
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_every_status_field_is_a_described_read_only_variable(hmi: Hmi) -> None:
    assert {v.field for v in STATUS_VARIABLES} | SHOWN_ELSEWHERE == {f.name for f in dataclasses.fields(LineStatus)}

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
        await node.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText("x"))))
    assert await node.read_value() == before
    # Nor may a viewer call methods beyond reading, not even the standard server's own.
    with pytest.raises(ua.UaStatusCodeError) as refused:
        await hmi.client.nodes.server.call_method("0:ResendData", ua.Variant(1, ua.VariantType.UInt32))
    assert refused.value.code == ua.StatusCodes.BadUserAccessDenied


async def test_publish_flood_is_cheap_and_latest_wins(hmi: Hmi) -> None:
    sent, dropped = hmi.server.sent, hmi.server.dropped
    started = time.monotonic()
    published = 0
    t0 = time.perf_counter()
    while time.monotonic() - started < 1.0:
        for _ in range(100):
            published += 1
            hmi.server.publish(dataclasses.replace(STATUS, triggers=published))
        await asyncio.sleep(0.001)
    publish_cost_s = time.perf_counter() - t0

    async def latest_shown() -> bool:
        return await hmi.node("TriggerCount").read_value() == published

    await _eventually(latest_shown)
    assert published > 10_000
    # Every snapshot was either written or superseded by a newer one (latest value only).
    assert (hmi.server.sent - sent) + (hmi.server.dropped - dropped) == published
    assert hmi.server.dropped - dropped > 0
    assert publish_cost_s < 2.0  # the loop mostly slept; publish itself is far below a millisecond


async def test_real_port_is_reported_and_a_busy_port_is_retried_not_raised(hmi: Hmi) -> None:
    endpoint = hmi.server.endpoint
    assert not endpoint.endswith(":0/lineinspect/")
    # A second HMI on the same port cannot listen: its process exits and is started again later,
    # and nothing of it reaches its caller (the controller).
    with (hmi.log.parent / "second.log").open("wb") as stderr:
        tmp = hmi.log.parent
        settings = json.dumps({"pki_dir": str(tmp / "pki"), "users_file": str(tmp / "users.json")})
        async with HmiProcess(endpoint, backoff_s=(0.2, 0.4), stderr=stderr, settings_json=settings) as second:
            second.publish(STATUS)

            async def retried() -> bool:
                return second.restarts >= 1

            await _eventually(retried, within=20)
            second.publish(STATUS)
    assert "cannot listen" in (hmi.log.parent / "second.log").read_text()
    assert await hmi.node("Epoch").read_value() is not None  # the first one still serves


async def test_too_many_nodes_in_one_request_are_refused_cheaply(hmi: Hmi) -> None:
    limit = HmiLimits().max_nodes_per_request
    objects = ua.NodeId(ua.ObjectIds.ObjectsFolder)

    def browse(n: int) -> ua.BrowseParameters:
        params = ua.BrowseParameters()
        params.NodesToBrowse = [ua.BrowseDescription(NodeId=objects, ResultMask=63) for _ in range(n)]
        return params

    assert len(await hmi.client.uaclient.browse(browse(limit))) == limit
    with pytest.raises(ua.UaStatusCodeError) as refused:
        await hmi.client.uaclient.browse(browse(limit + 1))
    assert refused.value.code == ua.StatusCodes.BadTooManyOperations
    read = ua.ReadParameters()
    read.NodesToRead = [ua.ReadValueId(NodeId=objects, AttributeId=ua.AttributeIds.BrowseName)] * (limit + 1)
    with pytest.raises(ua.UaStatusCodeError) as refused:
        await hmi.client.uaclient.read(read)
    assert refused.value.code == ua.StatusCodes.BadTooManyOperations

    # 10,000 nodes do not even fit in a request: the transport refuses it, undecoded, and closes
    # that client's connection; everyone else is served as before.
    async with await hmi.new_client() as attacker:
        with pytest.raises((ua.UaError, ConnectionError, TimeoutError)):
            await attacker.uaclient.browse(browse(10_000))
    assert await hmi.node("ModelVersion").read_value() is not None


async def test_nodes_served_per_second_are_budgeted_for_all_clients_together(hmi: Hmi) -> None:
    limits = HmiLimits()
    params = ua.BrowseParameters()
    params.NodesToBrowse = [
        ua.BrowseDescription(NodeId=ua.NodeId(ua.ObjectIds.ObjectsFolder)) for _ in range(limits.max_nodes_per_request)
    ]
    outcomes = []
    for _ in range(int(limits.max_nodes_per_second / limits.max_nodes_per_request) * 3):
        try:
            await hmi.client.uaclient.browse(params)
            outcomes.append("served")
        except ua.UaStatusCodeError as exc:
            outcomes.append(ua.StatusCode(exc.code).name)
    assert "BadServerTooBusy" in outcomes and set(outcomes) <= {"served", "BadServerTooBusy"}, outcomes

    async def served_again() -> bool:
        try:
            await hmi.client.uaclient.browse(params)
            return True
        except ua.UaStatusCodeError:
            return False

    await _eventually(served_again)


async def test_sessions_beyond_the_limit_are_refused(hmi: Hmi) -> None:
    limit = HmiLimits().max_sessions
    clients: list[Client] = []
    try:
        for _ in range(limit - 1):  # the module's client holds one session already
            client = await hmi.new_client()
            await client.connect()
            clients.append(client)
        extra = await hmi.new_client()
        with pytest.raises((ua.UaError, ConnectionError, TimeoutError)):
            await extra.connect()
        with contextlib.suppress(Exception):  # half-connected: whatever is left, close it
            await extra.disconnect()
    finally:
        for client in clients:
            await client.disconnect()
    # Closed sessions free their places.
    async with await hmi.new_client() as again:
        assert await again.get_namespace_index(NAMESPACE) == hmi.ns


async def test_a_flood_of_refused_requests_logs_a_few_warnings_not_an_error_each(hmi: Hmi) -> None:
    node = hmi.node("RejectCount")
    for _ in range(50):
        with pytest.raises(ua.UaStatusCodeError):
            await node.write_value(ua.Variant(1, ua.VariantType.Int64))
    # No wait needed: asyncua logs a refusal before it answers, and stderr is line-buffered.
    lines = [json.loads(line) for line in hmi.log.read_text().splitlines() if "sending service fault" in line]
    assert 1 <= len(lines) <= 3, lines
    assert {line["level"] for line in lines} == {"warning"}
    assert not [line for line in hmi.log.read_text().splitlines() if '"level": "error"' in line]
