"""The HMI's security and its Machine Vision object, through a real asyncua client over loopback:
who gets a session, the role matrix (every method × every role), the audit trail, alarms as
conditions (raised → acknowledged → cleared, a one-cycle fault latched), result events and results
read back by id with their image.

The HMI server runs in this process (the HMI process adds nothing here: hmi/process.py is tested on
its own); the controller behind it is `LineStub`, the controller's own operator rules
(controller/operator.py) and alarm latch (controller/alarms.py) without a line.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
from asyncua import Client, Node, ua
from hmi_helpers import NAMESPACE, connected, secure_hmi_server
from PIL import Image

from controller.adapters.journal import SqliteJournal
from controller.alarms import Alarms
from controller.operator import Action, OperatorControl, Refused
from controller.ports import PartRecord
from controller.status import LineStatus, PartResult
from hmi.access import Caller
from hmi.security import Pki, Role, trust_certificate
from hmi.server import HmiServer
from sim.hmi_demo import DemoAccess, secure_client

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

ROLES = ("viewer", "operator", "engineer", "admin")


class LineStub:
    """The controller's side of the HMI port: its real operator rules and alarm latch, no line."""

    def __init__(self) -> None:
        self.alarms = Alarms()
        self.operator = OperatorControl()
        self.commands: list[tuple[Action, str, Caller]] = []
        self.audits: list[tuple[str, str, str, Caller]] = []
        self.server: HmiServer | None = None

    async def command(self, action: Action, argument: str, caller: Caller) -> tuple[bool, str]:
        self.commands.append((action, argument, caller))
        state = self.operator.state(started=True, healthy=True)
        try:
            ok, detail = True, self.operator.apply(action, argument, state=state, alarms=self.alarms, by=caller.user)
        except Refused as exc:
            ok, detail = False, str(exc)
        self.audit(action.value, argument, "done" if ok else "refused", detail, caller)
        self.publish()
        return ok, detail

    def audit(self, action: str, argument: str, result: str, detail: str, caller: Caller) -> None:
        self.audits.append((action, argument, result, caller))

    def publish(self) -> None:
        assert self.server is not None
        state = self.operator.state(started=True, healthy=True)
        self.server.publish(LineStatus(vision_state=state.value, shadow_requested=self.operator.shadow_requested,
                                       conditions=self.alarms.conditions, alarms=self.alarms.active))  # fmt: skip


@dataclasses.dataclass
class Hmi:
    server: HmiServer
    access: DemoAccess
    line: LineStub
    journal: Path
    tmp: Path

    async def client(self, role: str = "viewer", **kw: Any) -> Client:
        return await secure_client(self.access, role, **kw)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def hmi(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Hmi]:
    tmp = tmp_path_factory.mktemp("hmi")
    journal = tmp / "journal.db"
    line = LineStub()
    async with secure_hmi_server(tmp, line, journal=journal) as (server, access):
        line.server = server
        line.publish()
        yield Hmi(server, access, line, journal, tmp)


async def _eventually(check: Callable[[], Any], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def _node(client: Client, path: str) -> Node:
    return client.get_node(ua.NodeId(path, await client.get_namespace_index(NAMESPACE)))


# -- who gets a session ----------------------------------------------------------------------------


async def _refused(client: Client) -> str:
    try:
        await client.connect()
    except Exception as exc:
        code = getattr(exc, "code", None)
        return ua.StatusCode(code).name if code is not None else type(exc).__name__
    await client.disconnect()
    return "ADMITTED"


async def test_no_session_without_security_a_known_user_and_a_trusted_certificate(hmi: Hmi) -> None:
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    # No SecurityPolicy None endpoint, hence no anonymous session either.
    assert await _refused(Client(hmi.access.endpoint, timeout=5)) != "ADMITTED"
    endpoints = await Client(hmi.access.endpoint, timeout=5).connect_and_get_server_endpoints()
    assert {e.SecurityPolicyUri.rsplit("#")[1] for e in endpoints} == {
        "Basic256Sha256", "Aes256_Sha256_RsaPss", "Aes128_Sha256_RsaOaep"}  # fmt: skip
    assert {e.SecurityMode for e in endpoints} == {ua.MessageSecurityMode.Sign, ua.MessageSecurityMode.SignAndEncrypt}
    for endpoint in endpoints:
        kinds = {t.TokenType for t in endpoint.UserIdentityTokens}
        assert kinds == {ua.UserTokenType.UserName}, kinds
    assert await _refused(await hmi.client("operator", password="not-the-password")) == "BadUserAccessDenied"
    assert await _refused(await hmi.client("nobody", password="whatever-it-is")) == "BadUserAccessDenied"

    key, cert = hmi.tmp / "stranger-key.pem", hmi.tmp / "stranger-cert.der"
    await setup_self_signed_certificate(key, cert, "urn:lineinspect:sim:panel", "localhost",
                                        [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "stranger"})  # fmt: skip
    stranger = await hmi.client("operator", cert=str(cert), key=str(key))
    assert await _refused(stranger) != "ADMITTED"
    kept = Pki(hmi.server.settings.pki_dir).rejected
    assert [p.name for p in kept.iterdir()], "a refused certificate is kept for an engineer to inspect"
    # Trusted by an engineer (`lineinspect hmi trust`), it is admitted without a restart.
    trust_certificate(Pki(hmi.server.settings.pki_dir), cert)
    assert await _refused(await hmi.client("operator", cert=str(cert), key=str(key))) == "ADMITTED"


async def test_every_policy_and_mode_admits_a_known_user(hmi: Hmi) -> None:
    for policy in ("Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss"):
        for mode in ("Sign", "SignAndEncrypt"):
            client = Client(hmi.access.endpoint, timeout=5)
            client.application_uri = "urn:lineinspect:sim:panel"
            await client.set_security_string(f"{policy},{mode},{hmi.access.cert},{hmi.access.key}")
            client.set_user("viewer")
            client.set_password(hmi.access.users["viewer"])
            assert await _refused(client) == "ADMITTED", (policy, mode)


# -- the role matrix -------------------------------------------------------------------------------

MATRIX: dict[str, tuple[str, str, Callable[[str], list[ua.Variant]]]] = {
    # method: (least role, its object, its arguments for a caller of a role)
    "Halt": ("operator", "VisionSystem.VisionStateMachine", lambda r: []),
    "Reset": ("operator", "VisionSystem.VisionStateMachine", lambda r: []),
    "StartContinuous": ("operator", "VisionSystem.VisionStateMachine", lambda r: []),
    "Stop": ("operator", "VisionSystem.VisionStateMachine", lambda r: []),
    "GetResultById": ("viewer", "VisionSystem.ResultManagement", lambda r: [ua.Variant("1/1")]),
    "GetResultImage": ("viewer", "VisionSystem.ResultManagement", lambda r: [ua.Variant("1/1")]),
    "FlagResult": ("operator", "VisionSystem.ResultManagement",
                   lambda r: [ua.Variant("1/1"), ua.Variant("scratch"), ua.Variant("seen at the gate")]),
    "RequestShadowMode": ("engineer", "VisionSystem.ShadowMode", lambda r: [ua.Variant(False)]),
    "PrepareRecipe": ("engineer", "VisionSystem.RecipeManagement", lambda r: [ua.Variant("no-such-recipe")]),
    "Acknowledge": ("operator", "VisionSystem.Alarms.matrix",
                    lambda r: [ua.Variant(b"", ua.VariantType.ByteString), ua.Variant(ua.LocalizedText(r))]),
    "Confirm": ("operator", "VisionSystem.Alarms.matrix",
                lambda r: [ua.Variant(b"", ua.VariantType.ByteString), ua.Variant(ua.LocalizedText(r))]),
    "AddUser": ("admin", "VisionSystem.UserManagement",
                lambda r: [ua.Variant(f"temp-{r}"), ua.Variant("viewer"), ua.Variant("temporary-pw")]),
    "RemoveUser": ("admin", "VisionSystem.UserManagement", lambda r: [ua.Variant(f"temp-{r}")]),
    "ListUsers": ("admin", "VisionSystem.UserManagement", lambda r: []),
}
_METHOD_IDS = {"Acknowledge": ua.ObjectIds.AcknowledgeableConditionType_Acknowledge,
               "Confirm": ua.ObjectIds.AcknowledgeableConditionType_Confirm}  # fmt: skip


async def test_the_role_matrix_is_exact_for_every_method_and_role(hmi: Hmi) -> None:
    assert {name: role.name.lower() for name, role in hmi.server.rights.matrix().items()} == {
        name: least for name, (least, _, _) in MATRIX.items()}  # fmt: skip
    hmi.line.alarms.set("matrix", True, "an alarm to acknowledge")
    hmi.line.publish()
    outcomes: dict[tuple[str, str], str] = {}
    for role in ROLES:
        async with connected(hmi.access, role) as client:
            await _eventually(lambda c=client: _exists(c, "VisionSystem.Alarms.matrix"))
            for name, (_least, parent, args) in MATRIX.items():
                obj = await _node(client, parent)
                own = name not in _METHOD_IDS
                method = await _node(client, f"{parent}.{name}") if own else ua.NodeId(_METHOD_IDS[name])
                try:
                    await obj.call_method(method, *args(role))
                    outcomes[name, role] = "called"
                except ua.UaStatusCodeError as exc:
                    outcomes[name, role] = ua.StatusCode(exc.code).name
    for (name, role), outcome in outcomes.items():
        least = MATRIX[name][0]
        if Role.parse(role) < Role.parse(least):
            assert outcome == "BadUserAccessDenied", (name, role, outcome)
        else:
            assert outcome != "BadUserAccessDenied", (name, role, outcome)


async def _exists(client: Client, path: str) -> bool:
    try:
        await (await _node(client, path)).read_browse_name()
        return True
    except ua.UaStatusCodeError:
        return False


async def test_every_operator_action_is_audited_with_who_and_from_where(hmi: Hmi) -> None:
    before = len(hmi.line.audits)
    async with connected(hmi.access, "operator") as operator, connected(hmi.access, "viewer") as viewer:
        sm = await _node(operator, "VisionSystem.VisionStateMachine")
        halt = await _node(operator, "VisionSystem.VisionStateMachine.Halt")
        reset = await _node(operator, "VisionSystem.VisionStateMachine.Reset")
        assert await sm.call_method(halt) == [True, "halted: the PLC rejects every part until Reset"]
        done, why = await sm.call_method(halt)  # refused for the state: said, and audited too
        assert (done, why) == (False, "already halted")
        with pytest.raises(ua.UaStatusCodeError):
            await (await _node(viewer, "VisionSystem.VisionStateMachine")).call_method(
                await _node(viewer, "VisionSystem.VisionStateMachine.Reset"))  # fmt: skip
        assert (await sm.call_method(reset))[0] is True
        state = await _node(operator, "VisionSystem.VisionStateMachine.CurrentState")
        await _eventually(lambda: _reads(state, ua.LocalizedText("Operational")))
        peer = operator.uaclient.protocol.transport.get_extra_info("sockname")
    audits = hmi.line.audits[before:]
    assert [(a[0], a[2], a[3].user, a[3].role.name.lower()) for a in audits] == [
        ("halt", "done", "operator", "operator"),
        ("halt", "refused", "operator", "operator"),
        ("Reset", "refused", "viewer", "viewer"),
        ("reset", "done", "operator", "operator"),
    ]
    assert audits[0][3].peer == f"{peer[0]}:{peer[1]}"


async def _reads(node: Node, value: Any) -> bool:
    return bool(await node.read_value() == value)


# -- alarms as conditions --------------------------------------------------------------------------


class _Events:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue()

    def event_notification(self, event: Any) -> None:
        self.queue.put_nowait(event)

    async def next(self, where: Callable[[Any], bool] = lambda e: True) -> Any:
        while True:
            event = await asyncio.wait_for(self.queue.get(), 5)
            if where(event):
                return event


def _state(event: Any) -> tuple[bool, bool, bool, bool]:
    return (getattr(event, "ActiveState/Id"), getattr(event, "AckedState/Id"), getattr(event, "ConfirmedState/Id"),
            event.Retain)  # fmt: skip


async def test_an_alarm_is_raised_acknowledged_confirmed_and_cleared_in_order_and_a_one_cycle_trip_latches(
    hmi: Hmi,
) -> None:
    events = _Events()
    async with connected(hmi.access, "operator") as client:
        vs = await _node(client, "VisionSystem")
        sub = await client.create_subscription(20, events)
        await sub.subscribe_events(vs, ua.ObjectIds.AlarmConditionType)
        named: Callable[[str], Callable[[Any], bool]] = lambda name: lambda e: e.ConditionName == name  # noqa: E731

        # A trip that comes and goes between two status snapshots: still raised once, then latched.
        hmi.line.alarms.set("plc_watchdog", True, "PLC watchdog tripped")
        hmi.line.alarms.set("plc_watchdog", False)
        hmi.line.publish()
        raised = await events.next(named("plc_watchdog"))
        assert _state(raised) == (True, False, False, True) and raised.Severity == 800
        assert "PLC watchdog tripped" in raised.Message.Text
        cleared = await events.next(named("plc_watchdog"))
        assert _state(cleared) == (False, False, False, True)  # inactive, but kept until acknowledged

        condition = await _node(client, "VisionSystem.Alarms.plc_watchdog")
        ack = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
        confirm = ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Confirm)
        comment = ua.Variant(ua.LocalizedText("seen"))
        with pytest.raises(ua.UaStatusCodeError):  # not before it is acknowledged
            await condition.call_method(confirm, ua.Variant(raised.EventId, ua.VariantType.ByteString), comment)
        await condition.call_method(ack, ua.Variant(raised.EventId, ua.VariantType.ByteString), comment)
        acked = await events.next(named("plc_watchdog"))
        assert _state(acked) == (False, True, False, True) and acked.ClientUserId == "operator"
        with pytest.raises(ua.UaStatusCodeError) as again:
            await condition.call_method(ack, ua.Variant(raised.EventId, ua.VariantType.ByteString), comment)
        assert again.value.code == ua.StatusCodes.BadConditionBranchAlreadyAcked
        await condition.call_method(confirm, ua.Variant(raised.EventId, ua.VariantType.ByteString), comment)
        done = await events.next(named("plc_watchdog"))
        assert _state(done) == (False, True, True, False)  # over: no longer retained

        # An alarm raised, acknowledged while active, then cleared: events in that order.
        hmi.line.alarms.set("camera", True, "grab timeout")
        hmi.line.publish()
        assert _state(await events.next(named("camera"))) == (True, False, False, True)
        await (await _node(client, "VisionSystem.Alarms.camera")).call_method(
            ack, ua.Variant(b"", ua.VariantType.ByteString), comment)  # fmt: skip
        assert _state(await events.next(named("camera"))) == (True, True, False, True)
        hmi.line.alarms.set("camera", False)
        hmi.line.publish()
        assert _state(await events.next(named("camera"))) == (False, True, False, True)
        await sub.delete()


# -- results ----------------------------------------------------------------------------------------


async def test_each_result_is_an_event_and_readable_by_id_with_its_image(hmi: Hmi) -> None:
    pixels = (np.arange(64 * 48, dtype=np.uint32) % 251).astype(np.uint8).reshape(48, 64)
    async with SqliteJournal(hmi.journal) as journal:
        await journal.record(PartRecord(epoch=3, seq=41, outcome="reject", reason="model_reject", trigger_pos=0,
                                        defect_class=2, score=0.97, model_version="m1", wall_utc="2026-11-28T10:00:00",
                                        image=pixels))  # fmt: skip
        await asyncio.sleep(0.5)  # images are stored lazily, after the record
    events = _Events()
    async with connected(hmi.access, "viewer") as client:
        ns = await client.get_namespace_index(NAMESPACE)
        etype = await client.nodes.base_event_type.get_child(f"{ns}:ResultReadyEventType")
        sub = await client.create_subscription(20, events)
        await sub.subscribe_events(await _node(client, "VisionSystem"), etype)
        results = [PartResult(3, seq, "2026-11-28T10:00:00.000+00:00", "pass", "model_pass", 0, 0.01, "m1",
                              1.0, 5.0, 12.5) for seq in range(38, 41)]  # fmt: skip
        results.append(PartResult(3, 41, "2026-11-28T10:00:01.000+00:00", "reject", "model_reject", 2, 0.97, "m1",
                                  1.0, 5.0, 13.0))  # fmt: skip
        hmi.server.publish_results(results)
        received = [await events.next() for _ in results]
        assert [e.ResultId for e in received] == ["3/38", "3/39", "3/40", "3/41"]
        assert (received[-1].Outcome, received[-1].DefectClass, received[-1].ProcessingTimeMs) == ("reject", 2, 13.0)

        rm = await _node(client, "VisionSystem.ResultManagement")
        found, text = await rm.call_method(await _node(client, "VisionSystem.ResultManagement.GetResultById"), "3/40")
        assert found and json.loads(text)["seq"] == 40
        image_method = await _node(client, "VisionSystem.ResultManagement.GetResultImage")
        found, png = await rm.call_method(image_method, "3/41")
        assert found
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png))), pixels)
        assert (await rm.call_method(image_method, "3/999"))[0] is False
        assert (await rm.call_method(image_method, "not-an-id"))[0] is False
        await sub.delete()


async def test_a_password_without_a_trusted_channel_certificate_gets_no_session(hmi: Hmi) -> None:
    # An unsecured channel (asyncua's server opens one for discovery even when it offers no None
    # endpoint, and applies no access rules on it) with a valid password in clear: refused.
    plain = Client(hmi.access.endpoint, timeout=5)
    await plain.connect_socket()
    try:
        await plain.send_hello()
        await plain.open_secure_channel()
        session = ua.CreateSessionParameters()
        session.ClientDescription = ua.ApplicationDescription(ApplicationUri="urn:intruder",
                                                              ApplicationType=ua.ApplicationType.Client)
        session.EndpointUrl, session.SessionName = hmi.access.endpoint, "intruder"
        session.ClientNonce, session.RequestedSessionTimeout = b"\0" * 32, 10_000
        await plain.uaclient.create_session(session)
        params = ua.ActivateSessionParameters()
        params.UserIdentityToken = ua.UserNameIdentityToken(
            PolicyId="username", UserName="operator", Password=hmi.access.users["operator"].encode())
        with pytest.raises(ua.UaStatusCodeError) as refused:
            await plain.uaclient.activate_session(params)
        assert refused.value.code == ua.StatusCodes.BadUserAccessDenied
    finally:
        plain.disconnect_socket()
    # The login checks the channel's own certificate (asyncua checks the one a client puts in
    # CreateSession, if any, and never ties it to the channel).
    manager, password = hmi.server.user_manager, hmi.access.users["operator"]
    trusted = await asyncio.to_thread(Path(hmi.access.cert).read_bytes)
    assert manager.get_user(None, "operator", password, certificate=trusted) is not None
    assert manager.get_user(None, "operator", password, certificate=None) is None
    assert manager.get_user(None, "operator", password, certificate=b"junk") is None


async def test_a_session_cannot_touch_another_sessions_subscriptions(hmi: Hmi) -> None:
    async with connected(hmi.access, "operator") as operator, connected(hmi.access, "viewer") as viewer:
        events = _Events()
        mine = await operator.create_subscription(50, events)
        await mine.subscribe_events(await _node(operator, "VisionSystem"), ua.ObjectIds.AlarmConditionType)
        params = ua.DeleteSubscriptionsParameters(SubscriptionIds=[mine.subscription_id])
        with pytest.raises(ua.UaStatusCodeError) as refused:
            await viewer.uaclient.delete_subscriptions(params.SubscriptionIds)
        assert refused.value.code == ua.StatusCodes.BadUserAccessDenied
        refresh = ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh)
        with pytest.raises(ua.UaStatusCodeError):
            await viewer.nodes.server.call_method(refresh, ua.Variant(mine.subscription_id, ua.VariantType.UInt32))
        # Still the operator's, and still delivering.
        hmi.line.alarms.set("inference", True, "no healthy inference worker")
        hmi.line.publish()
        event = await events.next(lambda e: e.ConditionName == "inference")
        assert getattr(event, "ActiveState/Id") is True
        await mine.delete()
