"""What each HMI session may ask: the services, the methods by role, and how much work per request.

Checked per request, before asyncua decodes or serves it (`AccessRules.check_validity`, asyncua's
permission hook), so it also covers the standard server nodes, not just ours:
- services: read, browse, subscribe and Call; no Write, HistoryUpdate, node management,
  HistoryRead (nothing is writable or historised) or TransferSubscriptions;
- subscriptions: a session acts only on its own (asyncua's subscription service is shared by all
  sessions and checks no owner: a viewer could otherwise delete an operator panel's);
- Call: each method needs a role (`MethodRights`, filled by the address space as it adds methods);
  a method nobody registered is refused to everyone, except the few standard ones a viewer needs
  (ConditionRefresh, GetMonitoredItems). A refusal is BadUserAccessDenied for the whole request and
  is reported to `on_refused` (the audit trail);
- size: nodes per request for every service that takes a list (Browse, Read, RegisterNodes, ...:
  refused whole with BadTooManyOperations), and nodes served per second by all clients together
  (BadServerTooBusy beyond); serving one Browse of 10,000 nodes took asyncua 38 s of CPU.

The caller of the request being served (user, role, address) is kept in a context variable for the
method handlers (`current_caller()`): asyncua serves each connection's requests in order in one
task, and hands method handlers neither the session nor the user.

Not here: users and certificates (hmi/security.py), the methods themselves (hmi/vision_system.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from asyncua import ua
from asyncua.common.utils import Buffer, ServiceError
from asyncua.crypto.permission_rules import SimpleRoleRuleset, User
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary

from hmi.security import Role


@dataclass(frozen=True, slots=True)
class Caller:
    user: str
    role: Role
    peer: str


_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("hmi_caller", default=None)


def current_caller() -> Caller:
    """Who sent the request being served (inside a method handler)."""
    return _CALLER.get() or Caller("?", Role.VIEWER, "?")


def _connection() -> Any:
    """The connection (asyncua's protocol object) whose message loop is the task serving this
    request: asyncua hands the permission hook neither the address nor the session (asyncua 2.1;
    tests pin both uses)."""
    task = asyncio.current_task()
    frame = getattr(task.get_coro(), "cr_frame", None) if task else None
    return frame.f_locals.get("self") if frame else None


def _peer() -> str:
    peer = getattr(_connection(), "peer_name", None)
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return "?"


def _session() -> Any:
    return getattr(getattr(_connection(), "processor", None), "session", None)


def _not_owned(ids: list[int]) -> bool:
    """Some of these subscriptions belong to another session (asyncua's subscription service is
    one for the whole server and checks no owner: a viewer could delete an operator panel's)."""
    session = _session()
    if session is None:
        return bool(ids)
    subscriptions = session.subscription_service.subscriptions
    return any(i in subscriptions and subscriptions[i].session_id != session.session_id for i in ids)


_SUBSCRIPTION_IDS: dict[str, tuple[type, Callable[[Any], list[int]]]] = {
    "ModifySubscription": (ua.ModifySubscriptionParameters, lambda p: [p.SubscriptionId]),
    "SetPublishingMode": (ua.SetPublishingModeParameters, lambda p: list(p.SubscriptionIds)),
    "DeleteSubscriptions": (ua.DeleteSubscriptionsParameters, lambda p: list(p.SubscriptionIds)),
    "Republish": (ua.RepublishParameters, lambda p: [p.SubscriptionId]),
    "CreateMonitoredItems": (ua.CreateMonitoredItemsParameters, lambda p: [p.SubscriptionId]),
    "ModifyMonitoredItems": (ua.ModifyMonitoredItemsParameters, lambda p: [p.SubscriptionId]),
    "SetMonitoringMode": (ua.SetMonitoringModeParameters, lambda p: [p.SubscriptionId]),
    "SetTriggering": (ua.SetTriggeringParameters, lambda p: [p.SubscriptionId]),
    "DeleteMonitoredItems": (ua.DeleteMonitoredItemsParameters, lambda p: [p.SubscriptionId]),
}
"""Services that act on subscriptions, and where their subscription ids are."""


class MethodRights:
    """Method NodeId → the least role that may call it."""

    VIEWER_STANDARD = (ua.ObjectIds.ConditionType_ConditionRefresh, ua.ObjectIds.ConditionType_ConditionRefresh2,
                       ua.ObjectIds.Server_GetMonitoredItems)  # fmt: skip

    def __init__(self) -> None:
        self._least: dict[ua.NodeId, Role] = {ua.NodeId(i): Role.VIEWER for i in self.VIEWER_STANDARD}
        self.names: dict[ua.NodeId, str] = {}
        self.per_request: dict[ua.NodeId, int] = {}
        """Methods that cost much (an image) may be called only this many times in one request."""

    def allow(self, method: ua.NodeId, role: Role, name: str, *, per_request: int | None = None) -> None:
        self._least[method] = role
        self.names[method] = name
        if per_request is not None:
            self.per_request[method] = per_request

    def least(self, method: ua.NodeId) -> Role | None:
        return self._least.get(method)

    def matrix(self) -> dict[str, Role]:
        return dict(sorted((name, self._least[nid]) for nid, name in self.names.items()))


def _skip(n: int) -> Callable[[Buffer], None]:
    return lambda buf: buf.skip(n)


def _skip_view_then(n: int) -> Callable[[Buffer], None]:
    def skip(buf: Buffer) -> None:
        nodeid_from_binary(buf)  # ViewDescription.ViewId
        buf.skip(8 + 4 + n)  # .Timestamp, .ViewVersion, then n bytes of the request's own fields

    return skip


# For each service that takes a list: how to skip the request's fields before its (first) list, as
# encoded by OPC UA Binary (Part 6), so its length can be read without decoding the request.
_LIST_AFTER: dict[str, Callable[[Buffer], None]] = {
    "Browse": _skip_view_then(4),  # RequestedMaxReferencesPerNode, then NodesToBrowse
    "BrowseNext": _skip(1),  # ReleaseContinuationPoints, then ContinuationPoints
    "Read": _skip(8 + 4),  # MaxAge, TimestampsToReturn, then NodesToRead
    "TranslateBrowsePathsToNodeIds": _skip(0),
    "RegisterNodes": _skip(0),
    "UnregisterNodes": _skip(0),
    "CreateMonitoredItems": _skip(4 + 4),  # SubscriptionId, TimestampsToReturn
    "ModifyMonitoredItems": _skip(4 + 4),
    "SetMonitoringMode": _skip(4 + 4),  # SubscriptionId, MonitoringMode
    "SetTriggering": _skip(4 + 4),  # SubscriptionId, TriggeringItemId, then LinksToAdd (LinksToRemove follows)
    "DeleteMonitoredItems": _skip(4),
    "DeleteSubscriptions": _skip(0),
    "TransferSubscriptions": _skip(0),
    "Publish": _skip(0),  # SubscriptionAcknowledgements
    "Call": _skip(0),  # MethodsToCall
}
_BUDGETED = frozenset({"Browse", "BrowseNext", "Read", "TranslateBrowsePathsToNodeIds", "RegisterNodes",
                       "CreateMonitoredItems"})  # fmt: skip
"""Services whose nodes cost the server work to serve; a subscription's Publish is not one of them.
Calls are budgeted per method (`_may_call`): an operator's Halt never waits for a viewer's reads."""

_INT32 = struct.Struct("<i")


def _list_length(buf: Buffer) -> int:
    (n,) = _INT32.unpack(buf.read(4))
    return max(n, 0)  # -1: a null array


def _request_id(service: str) -> ua.NodeId:
    return ua.NodeId(getattr(ua.ObjectIds, f"{service}Request_Encoding_DefaultBinary"))


_CALL = _request_id("Call")


class AccessRules(SimpleRoleRuleset):
    """asyncua's permission hook; see the module docstring."""

    _ALLOWED = frozenset(
        _request_id(service)
        for service in (
            "CreateSession", "ActivateSession", "CloseSession", "GetEndpoints", "FindServers", "Read",
            "Browse", "BrowseNext", "TranslateBrowsePathsToNodeIds", "RegisterNodes", "UnregisterNodes",
            "CreateSubscription", "ModifySubscription", "DeleteSubscriptions",
            "SetPublishingMode", "Publish", "Republish", "CreateMonitoredItems", "ModifyMonitoredItems",
            "DeleteMonitoredItems", "SetMonitoringMode", "SetTriggering", "CloseSecureChannel", "Call",
        )
    )  # fmt: skip
    _LISTS: ClassVar[dict[ua.NodeId, Callable[[Buffer], None]]] = {
        _request_id(service): skip for service, skip in _LIST_AFTER.items()
    }
    _COSTLY: ClassVar[frozenset[ua.NodeId]] = frozenset(_request_id(service) for service in _BUDGETED)
    _OWNED: ClassVar[dict[ua.NodeId, tuple[type, Callable[[Any], list[int]]]]] = {
        _request_id(service): how for service, how in _SUBSCRIPTION_IDS.items()
    }
    _REFRESH = frozenset({ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
                          ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh2)})  # fmt: skip

    def __init__(
        self, max_nodes_per_request: int, max_nodes_per_second: float, *, roles: dict[str, Role],
        methods: MethodRights, on_refused: Callable[[Caller, str, str], None] = lambda caller, what, why: None,
        role_now: Callable[[str], Role | None] = lambda name: None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.max_nodes = max_nodes_per_request
        self.rate = max_nodes_per_second
        self.roles = roles
        """Logged-in user name → role (filled by the user manager at each login)."""
        self.methods = methods
        self.on_refused = on_refused
        self.role_now = role_now
        """A user's role in the users file now (None: removed): a call acts with today's role."""
        self._tokens = max_nodes_per_second
        self._refilled_at = time.monotonic()

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        if action_type_id not in self._ALLOWED:
            return False
        caller = None
        if user is not None and user.name is not None and user.name in self.roles:
            caller = Caller(user.name, self.roles[user.name], _peer())
        _CALLER.set(caller)
        skip = self._LISTS.get(action_type_id)
        if skip is not None:
            self._check_list_lengths(action_type_id, skip, body)
        if action_type_id == _CALL:
            if caller is not None:
                now = self.role_now(caller.user)
                caller = None if now is None else Caller(caller.user, min(now, caller.role), caller.peer)
                _CALLER.set(caller)
            return self._may_call(caller, body)
        owned = self._OWNED.get(action_type_id)
        if owned is not None:
            kind, ids = owned
            try:
                params = struct_from_binary(kind, body.copy())
            except Exception:
                return True  # malformed: asyncua's own decoding refuses it
            return not _not_owned(ids(params))
        return True

    def _may_call(self, caller: Caller | None, body: Buffer) -> bool:
        try:
            params = struct_from_binary(ua.CallParameters, body.copy())
        except Exception:
            return True  # malformed: asyncua's own decoding refuses it
        counts: dict[ua.NodeId, int] = {}
        for call in params.MethodsToCall:
            counts[call.MethodId] = counts.get(call.MethodId, 0) + 1
            if counts[call.MethodId] > self.methods.per_request.get(call.MethodId, self.max_nodes):
                raise ServiceError(ua.StatusCodes.BadTooManyOperations)
            if call.MethodId in self._REFRESH and call.InputArguments:  # a refresh of someone else's events
                with contextlib.suppress(TypeError, ValueError):
                    if _not_owned([int(call.InputArguments[0].Value)]):
                        return False
            least = self.methods.least(call.MethodId)
            if caller is None or least is None or caller.role < least:
                name = self.methods.names.get(call.MethodId, call.MethodId.to_string())
                why = "no such method for panels" if least is None else f"needs role {least.name.lower()}"
                self.on_refused(caller or Caller("?", Role.VIEWER, _peer()), name, why)
                return False
        readers = sum(n for method, n in counts.items() if self.methods.least(method) == Role.VIEWER)
        if readers:
            self._spend(readers)  # viewers' calls share the read budget; operators' never wait for it
        return True

    def _check_list_lengths(self, service: ua.NodeId, skip: Callable[[Buffer], None], body: Buffer) -> None:
        """Refuse a request with too many nodes before asyncua decodes and serves it. Reads only a
        copy of the body."""
        buf = body.copy()
        try:
            skip(buf)
            lengths = [_list_length(buf)]
            if service == _request_id("SetTriggering"):
                buf.skip(4 * lengths[0])  # LinksToAdd: UInt32 each
                lengths.append(_list_length(buf))
        except Exception:
            return  # malformed: asyncua's own decoding refuses it
        if max(lengths) > self.max_nodes:
            raise ServiceError(ua.StatusCodes.BadTooManyOperations)
        if service in self._COSTLY:
            self._spend(max(sum(lengths), 1))

    def _spend(self, nodes: int) -> None:
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._refilled_at) * self.rate)
        self._refilled_at = now
        if nodes > self._tokens:
            raise ServiceError(ua.StatusCodes.BadServerTooBusy)
        self._tokens -= nodes
