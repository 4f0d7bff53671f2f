"""The `VisionSystem` object: the OPC UA Machine Vision companion model (OPC 40100-1) as far as it
fits an always-on inline inspection, built into the HMI server's address space.

    Objects/VisionSystem
      VisionStateMachine   CurrentState (Preoperational, Halted, Error, Operational),
                           OperationalState (Ready, ContinuousExecution), methods Halt, Reset,
                           StartContinuous, Stop
      ResultManagement     LastResultId; methods GetResultById, GetResultImage;
                           a ResultReadyEventType event per part (emitted by VisionSystem)
      ShadowMode           ShadowRequested, ShadowMode (the PLC's); method RequestShadowMode
      Alarms               one object per alarm, the ConditionId of its AlarmConditionType events;
                           Acknowledge / Confirm are the standard condition methods
      UserManagement       methods AddUser, RemoveUser, ListUsers (admin)
      OperatorActions      the last operator actions (the journal's audit table has them all)

Names come from the companion spec where it has one (VisionSystem, VisionStateMachine and its
states and methods, ResultManagement, ResultId, PartId, CreationTime, ProcessingTimes,
ResultReadyEventType); the types are the base OPC UA types (the companion NodeSet is not loaded)
and results are flat fields, not the spec's ResultDataType structure. docs/hmi.md lists every
departure.

Every method that changes the line is forwarded to the controller (`Controller.command`), which
checks the state, applies it, audits it and answers; the role check happened before (hmi/access.py).
Every method returns (Done: Boolean, Detail: String): a refusal for the line's state is Done=false
with the reason, never a silent no-op.

Not here: security and limits (hmi/access.py, hmi/security.py), the `Line` status variables (hmi/server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import sqlite3
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from asyncua import Node, Server, ua
from asyncua.server.event_generator import EventGenerator

from controller.alarms import Condition
from controller.operator import Action
from controller.status import LineStatus, PartResult
from hmi.access import Caller, MethodRights, current_caller
from hmi.security import Role, SecurityError, UserStore

_log = logging.getLogger(__name__)

MV_NAMESPACE = "http://opcfoundation.org/UA/MachineVision"
RESULTS_KEPT = 5000
"""Results answered from memory by GetResultById; older ones are read from the journal."""
MAX_IMAGE_BYTES = 4 * 1024 * 1024
STATE_NUMBERS = {"Preoperational": 1, "Halted": 2, "Error": 3, "Operational": 4, "Initialized": 5, "Ready": 6,
                 "SingleExecution": 7, "ContinuousExecution": 8}  # fmt: skip
"""The companion spec's StateNumber of each state (VisionStateMachineType, and its automatic mode)."""
ROLE_OF: dict[Action, Role] = {
    Action.HALT: Role.OPERATOR, Action.RESET: Role.OPERATOR, Action.START_CONTINUOUS: Role.OPERATOR,
    Action.STOP: Role.OPERATOR, Action.ACKNOWLEDGE: Role.OPERATOR, Action.CONFIRM: Role.OPERATOR,
    Action.FLAG_RESULT: Role.OPERATOR,
    Action.REQUEST_SHADOW: Role.ENGINEER, Action.PREPARE_RECIPE: Role.ENGINEER,
}  # fmt: skip
"""The least role for each command: registered with the access rules, and checked again by the
handler (a SecurityPolicy None session, where asyncua applies no access rules, can act on nothing)."""
COMMAND_TIMEOUT_S = 5.0
RECIPE_ANSWER_S = 20.0
"""Preparing a recipe starts its model's workers and checks them: seconds to minutes (TensorRT).
The engineer is answered within this (a session unused for 30 s is closed, and a call in progress
does not count as use); what it came to is in ActiveRecipe and OperatorActions."""


class Controller(Protocol):
    """How the HMI reaches the controller (in the HMI process: the pipe to it)."""

    async def command(self, action: Action, argument: str, caller: Caller) -> tuple[bool, str]: ...

    def audit(self, action: str, argument: str, result: str, detail: str, caller: Caller) -> None: ...


_DONE = [ua.Argument(Name="Done", DataType=ua.NodeId(ua.ObjectIds.Boolean), ValueRank=-1),
         ua.Argument(Name="Detail", DataType=ua.NodeId(ua.ObjectIds.String), ValueRank=-1)]  # fmt: skip


def _arg(name: str, dtype: int, description: str) -> ua.Argument:
    return ua.Argument(Name=name, DataType=ua.NodeId(dtype), ValueRank=-1,
                       Description=ua.LocalizedText(description, "en"))  # fmt: skip


def _done(ok: bool, detail: str) -> list[ua.Variant]:
    return [ua.Variant(ok, ua.VariantType.Boolean), ua.Variant(detail, ua.VariantType.String)]


RESULT_FIELDS: tuple[tuple[str, ua.VariantType], ...] = (
    ("ResultId", ua.VariantType.String), ("PartId", ua.VariantType.String),
    ("CreationTime", ua.VariantType.DateTime), ("Outcome", ua.VariantType.String),
    ("Reason", ua.VariantType.String), ("DefectClass", ua.VariantType.Int32), ("Score", ua.VariantType.Double),
    ("ModelVersion", ua.VariantType.String), ("FrameMs", ua.VariantType.Double),
    ("InferenceMs", ua.VariantType.Double), ("ProcessingTimeMs", ua.VariantType.Double),
)  # fmt: skip
"""The ResultReadyEventType's own fields (flat; -1 / NaN where a part has no value)."""


class VisionSystem:
    def __init__(self, server: Server, own_ns: int, rights: MethodRights, controller: Controller,
                 users: UserStore, journal: Path | None) -> None:  # fmt: skip
        self._server, self._own, self._rights = server, own_ns, rights
        self._controller, self._users, self._journal = controller, users, journal
        self._mv = 0
        self._vars: dict[str, Node] = {}
        self._written: dict[str, Any] = {}
        self._results: OrderedDict[str, PartResult] = OrderedDict()
        self._result_event: EventGenerator | None = None
        self.node: Node | None = None
        self._alarms_folder: Node | None = None
        self._conditions: dict[str, tuple[Node, EventGenerator, Condition]] = {}
        self._condition_by_node: dict[ua.NodeId, str] = {}
        self.events_emitted = 0

    # -- building --------------------------------------------------------------------------------

    async def build(self) -> None:
        server = self._server
        self._mv = await server.register_namespace(MV_NAMESPACE)
        mv, own = self._mv, self._own
        objects = server.nodes.objects
        vs = await objects.add_object(ua.NodeId("VisionSystem", own), ua.QualifiedName("VisionSystem", mv))
        self.node = vs

        sm = await self._object(vs, "VisionStateMachine", mv)
        await self._var(sm, "CurrentState", ua.LocalizedText("Preoperational"), ua.VariantType.LocalizedText, mv)
        await self._var(sm, "OperationalState", ua.LocalizedText(""), ua.VariantType.LocalizedText, own)
        await self._var(sm, "StateNumber", STATE_NUMBERS["Preoperational"], ua.VariantType.UInt32, own)
        for name, action, what in (
            ("Halt", Action.HALT, "Halt inspection: the PLC rejects every part until Reset."),
            ("Reset", Action.RESET, "Leave Halted (or Error): inspect again once healthy."),
            ("StartContinuous", Action.START_CONTINUOUS, "Inspect every part (from Ready)."),
            ("Stop", Action.STOP, "Stop inspecting (to Ready): the PLC rejects every part."),
        ):
            await self._command_method(sm, name, mv, action, ROLE_OF[action], what)

        rm = await self._object(vs, "ResultManagement", mv)
        await self._var(rm, "LastResultId", "", ua.VariantType.String, own)
        await self._method(rm, "GetResultById", mv, Role.VIEWER, self._get_result,
                           [_arg("ResultId", ua.ObjectIds.String, "epoch/seq, as in ResultReadyEventType")],
                           [_arg("Found", ua.ObjectIds.Boolean, "the result is known"),
                            _arg("Result", ua.ObjectIds.String, "the result as a JSON object")])  # fmt: skip
        await self._method(rm, "GetResultImage", own, Role.VIEWER, self._get_image,
                           [_arg("ResultId", ua.ObjectIds.String, "epoch/seq")],
                           [_arg("Found", ua.ObjectIds.Boolean, "the part's frame is still in the journal"),
                            _arg("Image", ua.ObjectIds.ByteString, "the frame as PNG")], per_request=4)  # fmt: skip
        await self._method(rm, "FlagResult", own, ROLE_OF[Action.FLAG_RESULT], self._flag_result,
                           [_arg("ResultId", ua.ObjectIds.String, "epoch/seq"),
                            _arg("TrueClass", ua.ObjectIds.String, "what the part really is: good, scratch, ... or a "
                                 "new defect type's name (lowercase)"),
                            _arg("Note", ua.ObjectIds.String, "optional: what the operator saw")], _DONE)  # fmt: skip
        fields = [(name, vtype) for name, vtype in RESULT_FIELDS]
        # Our namespace, not the companion spec's: its ResultReadyEventType carries a ResultDataType
        # structure, this one flat fields (docs/hmi.md).
        etype = await server.create_custom_event_type(own, "ResultReadyEventType", ua.ObjectIds.BaseEventType, fields)
        self._result_event = await server.get_event_generator(etype, vs)

        recipes = await self._object(vs, "RecipeManagement", mv)
        await self._var(recipes, "Recipes", [], ua.VariantType.String, own, array=True)
        await self._var(recipes, "ActiveRecipe", "", ua.VariantType.String, own)
        await self._method(recipes, "PrepareRecipe", mv, ROLE_OF[Action.PREPARE_RECIPE], self._prepare_recipe,
                           [_arg("RecipeId", ua.ObjectIds.String, "an id from Recipes")], _DONE)  # fmt: skip

        shadow = await self._object(vs, "ShadowMode", own)
        await self._var(shadow, "ShadowRequested", False, ua.VariantType.Boolean, own)
        await self._var(shadow, "ShadowMode", False, ua.VariantType.Boolean, own)
        await self._method(shadow, "RequestShadowMode", own, ROLE_OF[Action.REQUEST_SHADOW], self._request_shadow,
                           [_arg("On", ua.ObjectIds.Boolean, "ask the PLC for shadow mode (true) or out of it")],
                           _DONE)  # fmt: skip

        self._alarms_folder = await vs.add_folder(ua.NodeId("VisionSystem.Alarms", own),
                                                  ua.QualifiedName("Alarms", own))  # fmt: skip
        for method, action in ((ua.ObjectIds.AcknowledgeableConditionType_Acknowledge, Action.ACKNOWLEDGE),
                               (ua.ObjectIds.AcknowledgeableConditionType_Confirm, Action.CONFIRM)):  # fmt: skip
            self._rights.allow(ua.NodeId(method), ROLE_OF[action], action.value.capitalize())
            server.link_method(server.get_node(method), _answering(self._condition_method(action)))

        users = await self._object(vs, "UserManagement", own)
        await self._method(users, "AddUser", own, Role.ADMIN, self._add_user,
                           [_arg("Name", ua.ObjectIds.String, "user name"),
                            _arg("Role", ua.ObjectIds.String, "viewer, operator, engineer or admin"),
                            _arg("Password", ua.ObjectIds.String, "at least 8 characters")], _DONE)  # fmt: skip
        await self._method(users, "RemoveUser", own, Role.ADMIN, self._remove_user,
                           [_arg("Name", ua.ObjectIds.String, "user name")], _DONE)  # fmt: skip
        await self._method(users, "ListUsers", own, Role.ADMIN, self._list_users, [],
                           [_arg("Users", ua.ObjectIds.String, "name:role, one per user")])  # fmt: skip
        await self._var(vs, "OperatorActions", [], ua.VariantType.String, own, array=True)

    async def _object(self, parent: Node, name: str, ns: int) -> Node:
        return await parent.add_object(ua.NodeId(f"{parent.nodeid.Identifier}.{name}", self._own),
                                       ua.QualifiedName(name, ns))  # fmt: skip

    async def _var(self, parent: Node, name: str, value: Any, vtype: ua.VariantType, ns: int, *,
                   array: bool = False) -> Node:  # fmt: skip
        nid = ua.NodeId(f"{parent.nodeid.Identifier}.{name}", self._own)
        node = await parent.add_variable(nid, ua.QualifiedName(name, ns), ua.Variant(value, vtype), varianttype=vtype)
        if array:
            rank = ua.DataValue(ua.Variant(ua.ValueRank.OneDimension, ua.VariantType.Int32))
            await node.write_attribute(ua.AttributeIds.ValueRank, rank)
        self._vars[name] = node
        return node

    async def _method(self, parent: Node, name: str, ns: int, role: Role, handler: Callable[..., Awaitable[Any]],
                      inputs: list[ua.Argument], outputs: list[ua.Argument], *,
                      per_request: int | None = None) -> Node:  # fmt: skip
        nid = ua.NodeId(f"{parent.nodeid.Identifier}.{name}", self._own)
        node = await parent.add_method(nid, ua.QualifiedName(name, ns), _answering(handler), inputs, outputs)
        self._rights.allow(node.nodeid, role, name, per_request=per_request)
        return node

    async def _command_method(self, parent: Node, name: str, ns: int, action: Action, role: Role, what: str) -> None:
        async def handler(_parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant]:
            return _done(*await self._command(action, ""))

        node = await self._method(parent, name, ns, role, handler, [], _DONE)
        await node.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(what, "en"))))

    async def _command(self, action: Action, argument: str) -> tuple[bool, str]:
        caller = current_caller()
        if caller.role < ROLE_OF[action]:
            raise ua.UaStatusCodeError(ua.StatusCodes.BadUserAccessDenied)
        command = asyncio.ensure_future(self._controller.command(action, argument, caller))
        try:
            if action is Action.PREPARE_RECIPE:
                done, _ = await asyncio.wait({command}, timeout=RECIPE_ANSWER_S)
                if not done:  # it goes on in the controller; the answer is in ActiveRecipe and OperatorActions
                    return True, f"accepted: still preparing {argument} after {RECIPE_ANSWER_S:.0f} s"
                return command.result()
            return await asyncio.wait_for(command, COMMAND_TIMEOUT_S)
        except TimeoutError:
            raise ua.UaStatusCodeError(ua.StatusCodes.BadTimeout) from None

    # -- method handlers ---------------------------------------------------------------------------

    async def _prepare_recipe(self, _parent: ua.NodeId, recipe: ua.Variant | str) -> list[ua.Variant]:
        rid = str(recipe.Value if isinstance(recipe, ua.Variant) else recipe)
        return _done(*await self._command(Action.PREPARE_RECIPE, rid[:128]))

    async def _flag_result(self, _parent: ua.NodeId, result_id: ua.Variant | str, true_class: ua.Variant | str,
                           note: ua.Variant | str) -> list[ua.Variant]:  # fmt: skip
        rid, cls, text = (str(v.Value if isinstance(v, ua.Variant) else v) for v in (result_id, true_class, note))
        # Tab-separated: an empty or two-word class must be refused as such, not taken from the note.
        fields = "\t".join((rid.strip(), cls.strip(), " ".join(text.split())))
        return _done(*await self._command(Action.FLAG_RESULT, fields))

    async def _request_shadow(self, _parent: ua.NodeId, on: ua.Variant | bool) -> list[ua.Variant]:
        value = on.Value if isinstance(on, ua.Variant) else on
        return _done(*await self._command(Action.REQUEST_SHADOW, "on" if value else "off"))

    def _condition_method(self, action: Action) -> Callable[..., Awaitable[Any]]:
        async def handler(condition_id: ua.NodeId, *args: Any) -> ua.StatusCode:
            name = self._condition_by_node.get(condition_id)
            if name is None:
                return ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown)
            ok, detail = await self._command(action, name)
            if ok:
                return ua.StatusCode()
            state_error = ua.StatusCodes.BadConditionBranchAlreadyAcked if action is Action.ACKNOWLEDGE \
                else ua.StatusCodes.BadConditionBranchAlreadyConfirmed  # fmt: skip
            return ua.StatusCode(state_error if "already" in detail else ua.StatusCodes.BadInvalidState)

        return handler

    async def _get_result(self, _parent: ua.NodeId, result_id: ua.Variant | str) -> list[ua.Variant]:
        rid = str(result_id.Value if isinstance(result_id, ua.Variant) else result_id)
        found = self._results.get(rid)
        row: dict[str, Any] | None = asdict(found) if found else await asyncio.to_thread(self._journal_row, rid)
        if row is not None:
            row["result_id"] = rid
        return [ua.Variant(row is not None, ua.VariantType.Boolean),
                ua.Variant(json.dumps(row, sort_keys=True) if row else "", ua.VariantType.String)]  # fmt: skip

    async def _get_image(self, _parent: ua.NodeId, result_id: ua.Variant | str) -> list[ua.Variant]:
        rid = str(result_id.Value if isinstance(result_id, ua.Variant) else result_id)
        png = await asyncio.to_thread(self._journal_png, rid)
        return [ua.Variant(png is not None, ua.VariantType.Boolean), ua.Variant(png or b"", ua.VariantType.ByteString)]

    async def _add_user(self, _parent: ua.NodeId, *args: ua.Variant) -> list[ua.Variant]:
        _require(Role.ADMIN)
        name, role, password = (str(a.Value if isinstance(a, ua.Variant) else a) for a in args)
        try:
            self._users.add(name, Role.parse(role), password)
            ok, detail = True, f"user {name} is {role}"
        except (SecurityError, ValueError) as exc:
            ok, detail = False, str(exc)
        self._controller.audit("add_user", f"{name} {role}", "done" if ok else "refused", detail, current_caller())
        return _done(ok, detail)

    async def _remove_user(self, _parent: ua.NodeId, name: ua.Variant | str) -> list[ua.Variant]:
        _require(Role.ADMIN)
        user = str(name.Value if isinstance(name, ua.Variant) else name)
        ok = user != current_caller().user and self._users.remove(user)
        detail = f"user {user} removed" if ok else f"no user {user} to remove (or it is you)"
        self._controller.audit("remove_user", user, "done" if ok else "refused", detail, current_caller())
        return _done(ok, detail)

    async def _list_users(self, _parent: ua.NodeId) -> list[ua.Variant]:
        _require(Role.ADMIN)
        lines = "\n".join(f"{u.name}:{u.role.name.lower()}" for u in self._users.users())
        return [ua.Variant(lines, ua.VariantType.String)]

    def _journal_row(self, rid: str) -> dict[str, Any] | None:
        key = _parse_result_id(rid)
        if key is None or self._journal is None:
            return None
        with _read_only(self._journal) as db:
            db.row_factory = sqlite3.Row
            row = db.execute("SELECT * FROM parts WHERE epoch = ? AND seq = ?", key).fetchone()
        return dict(row) if row else None

    def _journal_png(self, rid: str) -> bytes | None:
        from PIL import Image

        from controller.adapters.journal import read_image

        key = _parse_result_id(rid)
        if key is None or self._journal is None:
            return None
        with _read_only(self._journal) as db:
            pixels = read_image(db, *key)
        if pixels is None:
            return None
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="PNG")
        png = out.getvalue()
        return png if len(png) <= MAX_IMAGE_BYTES else None

    # -- live updates ------------------------------------------------------------------------------

    async def update(self, status: LineStatus, stamp: datetime) -> None:
        top, _, sub = status.vision_state.partition(".")
        await self._write("CurrentState", ua.LocalizedText(top), ua.VariantType.LocalizedText, stamp)
        await self._write("OperationalState", ua.LocalizedText(sub), ua.VariantType.LocalizedText, stamp)
        await self._write("StateNumber", STATE_NUMBERS[sub or top], ua.VariantType.UInt32, stamp)
        await self._write("ShadowRequested", status.shadow_requested, ua.VariantType.Boolean, stamp)
        await self._write("ShadowMode", status.shadow_mode, ua.VariantType.Boolean, stamp)
        await self._write("OperatorActions", list(status.recent_actions), ua.VariantType.String, stamp)
        await self._write("Recipes", [r.describe() for r in status.recipes], ua.VariantType.String, stamp)
        await self._write("ActiveRecipe", status.active_recipe, ua.VariantType.String, stamp)
        await self._update_conditions(status.conditions)

    async def _write(self, name: str, value: Any, vtype: ua.VariantType, stamp: datetime) -> None:
        if self._written.get(name) == value:
            return
        await self._vars[name].write_value(ua.DataValue(ua.Variant(value, vtype), SourceTimestamp=stamp,
                                                        ServerTimestamp=stamp))  # fmt: skip
        self._written[name] = value

    async def add_results(self, results: list[PartResult]) -> None:
        assert self._result_event is not None
        event = self._result_event.event
        for r in results:
            rid = r.result_id
            self._results[rid] = r
            self._results.move_to_end(rid)
            if len(self._results) > RESULTS_KEPT:
                self._results.popitem(last=False)
            created = datetime.fromisoformat(r.wall_utc)
            nan = float("nan")
            values = {"ResultId": rid, "PartId": rid, "CreationTime": created, "Outcome": r.outcome,
                      "Reason": r.reason, "DefectClass": -1 if r.defect_class is None else r.defect_class,
                      "Score": nan if r.score is None else r.score, "ModelVersion": r.model_version,
                      "FrameMs": nan if r.frame_ms is None else r.frame_ms,
                      "InferenceMs": nan if r.inference_ms is None else r.inference_ms,
                      "ProcessingTimeMs": nan if r.total_ms is None else r.total_ms}  # fmt: skip
            for name, value in values.items():
                setattr(event, name, value)
            event.Severity = 100 if r.outcome == "pass" else 300
            await self._result_event.trigger(created, f"part {rid}: {r.outcome} ({r.reason})")
            self.events_emitted += 1
        if results:
            await self._write("LastResultId", results[-1].result_id, ua.VariantType.String, datetime.now(UTC))

    async def _update_conditions(self, conditions: tuple[Condition, ...]) -> None:
        now = {c.name: c for c in conditions}
        for name, c in now.items():
            known = self._conditions.get(name)
            if known is None:
                await self._new_condition(c)
                continue
            _node, _gen, last = known
            if c.raised > last.raised and not c.active:
                # Raised and cleared between two snapshots: the raise is shown first, never skipped.
                await self._emit(name, Condition(**{**asdict(c), "active": True, "acked": False, "confirmed": False}))
            if c != last:
                await self._emit(name, c)
        for name in [n for n in self._conditions if n not in now]:
            _node, _gen, last = self._conditions[name]
            if last.retained:  # it ended (acknowledged and confirmed, and cleared): the last event says so
                await self._emit(name, Condition(**{**asdict(last), "active": False, "acked": True, "confirmed": True}))

    async def _new_condition(self, c: Condition) -> None:
        assert self._alarms_folder is not None and self.node is not None
        node = await self._alarms_folder.add_object(ua.NodeId(f"VisionSystem.Alarms.{c.name}", self._own),
                                                    ua.QualifiedName(c.name, self._own))  # fmt: skip
        gen = await self._server.get_event_generator(ua.ObjectIds.AlarmConditionType, self.node)
        gen.event.NodeId = node.nodeid  # the ConditionId: Acknowledge/Confirm are called on it
        gen.event.ConditionName = c.name
        gen.event.SourceName = "VisionSystem"
        self._condition_by_node[node.nodeid] = c.name
        self._conditions[c.name] = (node, gen, c)
        if c.raised > 1 or not c.active:  # first seen after it was already cleared (an HMI restart, or a 1-cycle fault)
            await self._emit(c.name, Condition(**{**asdict(c), "active": True, "acked": False, "confirmed": False}))
        await self._emit(c.name, c)

    async def _emit(self, name: str, c: Condition) -> None:
        node, gen, _ = self._conditions[name]
        e = gen.event
        e.Severity = c.severity.opcua
        e.Retain = c.retained
        e.ActiveState = ua.LocalizedText("Active" if c.active else "Inactive")
        setattr(e, "ActiveState/Id", c.active)
        e.AckedState = ua.LocalizedText("Acknowledged" if c.acked else "Unacknowledged")
        setattr(e, "AckedState/Id", c.acked)
        e.ConfirmedState = ua.LocalizedText("Confirmed" if c.confirmed else "Unconfirmed")
        setattr(e, "ConfirmedState/Id", c.confirmed)
        e.EnabledState = ua.LocalizedText("Enabled")
        setattr(e, "EnabledState/Id", True)
        e.ClientUserId = c.by
        text = f"{name} ({c.severity.value}): {c.detail or 'no detail'}"
        await gen.trigger(datetime.fromisoformat(c.changed_utc), text)
        self._conditions[name] = (node, gen, c)
        self.events_emitted += 1


def _answering(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A handler's refusal as the call's status code (asyncua turns any exception into
    BadUnexpectedError, with a traceback in the log)."""

    async def call(*args: Any) -> Any:
        try:
            return await handler(*args)
        except ua.UaStatusCodeError as exc:
            return ua.StatusCode(exc.code)

    return call


def _require(role: Role) -> None:
    if current_caller().role < role:
        raise ua.UaStatusCodeError(ua.StatusCodes.BadUserAccessDenied)


def _parse_result_id(rid: str) -> tuple[int, int] | None:
    epoch, _, seq = rid.partition("/")
    try:
        return int(epoch), int(seq)
    except ValueError:
        return None


def _read_only(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A read-only connection to the journal (the controller's writer is never blocked by it: WAL)."""
    return contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0))
