"""OPC UA server that lets an operator panel (HMI) watch the line: the controller's live `LineStatus`,
read-only.

Responsible for: the address space (object `Line`, one variable per `LineStatus` field, stable string
node ids `ns=<urn:lineinspect>;s=Line.<Name>`), keeping it up to date without ever slowing the
controller (`publish()` only stores; a background task copies the latest status into the address space
at a bounded rate), and refusing every client request that would change anything.

Not responsible for (yet): security (signing/encryption, user authentication), write access or method
nodes for operators, alarms & conditions, history. Until security arrives the server accepts anonymous
clients on an unencrypted endpoint, and therefore lets them do nothing but read, browse and subscribe.

Limits (`HmiLimits`), so that no client can make the server do unbounded work: sessions and TCP
connections, request size (checked by the transport before a request is decoded), nodes per request
for every service that takes a list (Browse, Read, RegisterNodes, ...: refused whole with
BadTooManyOperations, and advertised in ServerCapabilities/OperationLimits so well-behaved clients
split their requests), nodes served per second by all clients together (BadServerTooBusy beyond),
session timeout and time to activate a session. A Browse returns every
matching reference of each node (asyncua ignores RequestedMaxReferencesPerNode): bounded, since the
address space is fixed (node management is refused), by the nodes per request.

Not here: running in its own process, away from the controller (hmi/process.py, hmi/child.py), and
how the refusals asyncua logs are kept from flooding the log (hmi/child.py).

Binding: the endpoint's host is the interface it listens on (default loopback: nothing off-box can
connect until the endpoint names the panel network). Port 0 asks the OS for a free port (asyncua
supports it); `endpoint` then reports the real one. Endpoint descriptions sent to clients echo the
address the client used (asyncua's default), so port 0 does not leak into discovery.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, ClassVar
from urllib.parse import urlparse

from asyncua import Node, Server, ua
from asyncua.common.connection import TransportLimits
from asyncua.common.utils import Buffer, ServiceError
from asyncua.crypto.permission_rules import SimpleRoleRuleset, User
from asyncua.server.internal_session import InternalSession
from asyncua.ua.ua_binary import nodeid_from_binary

from controller.errors import ControllerError
from controller.status import LineStatus

_log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "opc.tcp://127.0.0.1:4840/lineinspect/"
DEFAULT_NAMESPACE = "urn:lineinspect"
LINE_OBJECT = "Line"


@dataclasses.dataclass(frozen=True, slots=True)
class StatusVariable:
    """How one `LineStatus` field appears to the HMI."""

    field: str
    """The `LineStatus` attribute."""
    name: str
    """BrowseName and DisplayName; the node id is `Line.<name>`."""
    variant_type: ua.VariantType
    description: str
    encode: Callable[[Any], Any] = lambda value: value
    """Field value -> OPC UA value (for the fields that have no direct OPC UA type)."""
    array: bool = False


def _json_object(value: dict[str, int]) -> str:
    # Sorted keys: the same counts always give the same string, so an HMI sees no spurious changes.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


_I64 = ua.VariantType.Int64  # counters: Int64 so no realistic run length can overflow them
_F64 = ua.VariantType.Double
_BOOL = ua.VariantType.Boolean
_STR = ua.VariantType.String

STATUS_VARIABLES: tuple[StatusVariable, ...] = (
    StatusVariable("state", "Health", _STR, "Controller health: STARTING, READY, DEGRADED or FAILED.", str),
    StatusVariable("ready_bit", "ReadyToPlc", _BOOL, "Ready bit the controller currently sends the PLC."),
    StatusVariable("epoch", "Epoch", _I64, "Part-tracking epoch shared with the PLC."),
    StatusVariable("line_running", "LineRunning", _BOOL, "The PLC reports the line as running."),
    StatusVariable("vision_enabled", "VisionEnabled", _BOOL, "Vision inspection is enabled."),
    StatusVariable(
        "shadow_mode", "ShadowMode", _BOOL, "Shadow mode: verdicts are computed and recorded, not enforced."
    ),
    StatusVariable("watchdog_tripped", "WatchdogTripped", _BOOL, "The controller/PLC watchdog has tripped."),
    StatusVariable("speed_counts_per_s", "LineSpeed", _F64, "Conveyor speed in encoder counts per second."),
    StatusVariable("triggers", "TriggerCount", _I64, "Part triggers seen by the controller."),
    StatusVariable("passes", "PassCount", _I64, "Parts the controller judged good."),
    StatusVariable("rejects", "RejectCount", _I64, "Parts the controller judged defective."),
    StatusVariable("failsafe", "FailsafeCount", _I64, "Parts rejected fail-safe (no timely verdict)."),
    StatusVariable(
        "failsafe_by_reason",
        "FailsafeByReasonJson",
        _STR,
        'Fail-safe rejects per reason as a JSON object, e.g. {"late":3,"no_frame":1}.',
        _json_object,
    ),
    StatusVariable("latency_p50_ms", "LatencyP50Ms", _F64, "Median trigger-to-verdict latency (ms)."),
    StatusVariable("latency_p99_ms", "LatencyP99Ms", _F64, "99th-percentile trigger-to-verdict latency (ms)."),
    StatusVariable("plc_rejects_vision", "PlcRejectsVision", _I64, "Rejects the PLC executed on a vision verdict."),
    StatusVariable(
        "plc_rejects_failsafe", "PlcRejectsFailsafe", _I64, "Rejects the PLC executed fail-safe (no verdict)."
    ),
    StatusVariable("plc_verdicts_late", "PlcVerdictsLate", _I64, "Verdicts the PLC received too late to use."),
    StatusVariable("plc_watchdog_trips", "PlcWatchdogTrips", _I64, "Watchdog trips counted by the PLC."),
    StatusVariable("alarms", "Alarms", _STR, "Active alarm texts (empty when none).", list, array=True),
    StatusVariable("model_version", "ModelVersion", _STR, "Version of the inspection model in use."),
)
"""Every `LineStatus` field, in declaration order (a test checks that none is missing)."""

# Not a LineStatus field: when the controller last published, so a panel can tell a frozen
# controller (old timestamp) from a quiet line (fresh timestamp, same counts).
UPDATED_AT = StatusVariable("", "UpdatedAt", ua.VariantType.DateTime, "When this status was published (UTC).")


@dataclasses.dataclass(frozen=True, slots=True)
class HmiLimits:
    """What one panel network may ask of the server. A panel needs one or two sessions and requests
    of a few dozen nodes (the `Line` object has 22 variables): every limit is far above that."""

    max_sessions: int = 20
    """Activated sessions; one more is refused with BadMaxConnectionsReached."""
    spare_connections: int = 4
    """TCP connections beyond `max_sessions` (discovery, a session being set up); more are closed at once."""
    max_request_bytes: int = 64 * 1024
    """Largest request message (all chunks); a longer one is refused by the transport, undecoded."""
    max_nodes_per_request: int = 100
    """Nodes (or items) in one Browse, Read, TranslateBrowsePaths, RegisterNodes, monitored-item call."""
    max_session_timeout_s: float = 30.0
    """A session nobody uses is closed after at most this long, whatever its client asked for."""
    activation_timeout_s: float = 5.0
    """A connection that has not activated a session by then is closed."""
    max_subscriptions: int = 40
    max_nodes_per_second: float = 1000.0
    """Nodes served per second by Browse, Read, ..., all clients together (a token bucket holding one
    second's worth); beyond it, BadServerTooBusy. Serving 10,000 Types-folder nodes costs this process
    ~1.2 s of CPU: the budget keeps a flood of well-formed requests to a fraction of a core."""


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
}
_BUDGETED = frozenset({"Browse", "BrowseNext", "Read", "TranslateBrowsePathsToNodeIds", "RegisterNodes",
                       "CreateMonitoredItems"})  # fmt: skip
"""Services whose nodes cost the server work to serve; a subscription's Publish is not one of them."""


def _list_length(buf: Buffer) -> int:
    (n,) = _INT32.unpack(buf.read(4))
    return max(n, 0)  # -1: a null array


_INT32 = struct.Struct("<i")


class _ReadOnlyServices(SimpleRoleRuleset):
    """Whoever the client is: read, browse and subscribe only. No Write, Call, HistoryUpdate, node
    management or HistoryRead (nothing is historised).

    Enforced per request before asyncua looks at node access levels, so it also covers the standard
    server nodes, not just ours. Replace with role-based rules when authenticated users arrive."""

    _ALLOWED = frozenset(
        ua.NodeId(getattr(ua.ObjectIds, f"{service}Request_Encoding_DefaultBinary"))
        for service in (
            "CreateSession",
            "ActivateSession",
            "CloseSession",
            "GetEndpoints",
            "FindServers",
            "Read",
            "Browse",
            "BrowseNext",
            "TranslateBrowsePathsToNodeIds",
            "RegisterNodes",
            "UnregisterNodes",
            "CreateSubscription",
            "ModifySubscription",
            "DeleteSubscriptions",
            "TransferSubscriptions",
            "SetPublishingMode",
            "Publish",
            "Republish",
            "CreateMonitoredItems",
            "ModifyMonitoredItems",
            "DeleteMonitoredItems",
            "SetMonitoringMode",
            "SetTriggering",
            "CloseSecureChannel",
        )
    )

    _LISTS: ClassVar[dict[ua.NodeId, Callable[[Buffer], None]]] = {
        ua.NodeId(getattr(ua.ObjectIds, f"{service}Request_Encoding_DefaultBinary")): skip
        for service, skip in _LIST_AFTER.items()
    }

    _COSTLY: ClassVar[frozenset[ua.NodeId]] = frozenset(
        ua.NodeId(getattr(ua.ObjectIds, f"{service}Request_Encoding_DefaultBinary")) for service in _BUDGETED
    )

    def __init__(self, max_nodes_per_request: int, max_nodes_per_second: float) -> None:
        super().__init__()
        self.max_nodes = max_nodes_per_request
        self.rate = max_nodes_per_second
        self._tokens = max_nodes_per_second
        self._refilled_at = time.monotonic()

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        if action_type_id not in self._ALLOWED:
            return False
        skip = self._LISTS.get(action_type_id)
        if skip is not None:
            self._check_list_lengths(action_type_id, skip, body)
        return True

    def _check_list_lengths(self, service: ua.NodeId, skip: Callable[[Buffer], None], body: Buffer) -> None:
        """Refuse a request with too many nodes before asyncua decodes and serves it (serving one
        Browse of 10,000 nodes took asyncua 38 s of CPU). Reads only a copy of the body."""
        buf = body.copy()
        try:
            skip(buf)
            lengths = [_list_length(buf)]
            if service == ua.NodeId(ua.ObjectIds.SetTriggeringRequest_Encoding_DefaultBinary):
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


class HmiServer:
    """`async with HmiServer() as hmi: ... hmi.publish(status)`: serves the latest status read-only."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        update_rate_hz: float = 5.0,
        limits: HmiLimits = HmiLimits(),  # frozen: one shared default is safe
    ) -> None:
        """Cheap: nothing listens until `async with`.

        `update_rate_hz` caps how often the address space is rewritten (and so how often subscribed
        panels are notified), however often `publish()` is called."""
        if update_rate_hz <= 0:
            raise ValueError(f"update_rate_hz must be > 0, got {update_rate_hz}")
        url = urlparse(endpoint)
        if url.scheme != "opc.tcp" or not url.hostname or url.port is None:
            raise ValueError(f"endpoint must look like opc.tcp://host:port/path, got {endpoint!r}")
        self._endpoint = endpoint
        self._namespace = namespace
        self._period_s = 1.0 / update_rate_hz
        self._limits = limits

        # Overflow policy: latest value wins. publish() overwrites this one slot; statuses the writer
        # never saw are simply superseded (each one is a complete snapshot, so nothing is lost).
        self._latest = LineStatus()
        self._latest_at = datetime.now(UTC)
        self._pending = asyncio.Event()
        self._server: Server | None = None
        self._writer: asyncio.Task[None] | None = None
        self._nodes: dict[str, Node] = {}
        self._written: dict[str, Any] = {}
        self._updates_written = 0

    @property
    def endpoint(self) -> str:
        """The URL clients connect to; while running, with the real port (also when asked for port 0)."""
        if self._server is None or self._server.bserver is None:
            return self._endpoint
        url = urlparse(self._endpoint)
        return url._replace(netloc=f"{url.hostname}:{self._server.bserver.port}").geturl()

    @property
    def updates_written(self) -> int:
        """How many statuses have been written into the address space (not how many were published)."""
        return self._updates_written

    def publish(self, status: LineStatus, published_at: datetime | None = None) -> None:
        """Offer the newest status, published by the controller at `published_at` (default: now).
        Sync, O(1), never blocks; call it from the event loop's thread.

        Works before start and after stop too (the value is then shown at the next start, or dropped)."""
        self._latest = status
        self._latest_at = published_at or datetime.now(UTC)
        self._pending.set()

    # -- lifecycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> HmiServer:
        if self._server is not None:
            raise RuntimeError("HmiServer is already running")
        server = Server()
        await server.init()  # loads the standard address space: ~1-3 s of CPU, once per start
        server.set_endpoint(self._endpoint)
        server.set_server_name("lineinspect HMI")
        await server.set_application_uri(f"{self._namespace}:hmi")
        server.set_security_policy(
            [ua.SecurityPolicyType.NoSecurity],
            permission_ruleset=_ReadOnlyServices(self._limits.max_nodes_per_request, self._limits.max_nodes_per_second),
        )
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        server.allow_remote_admin(False)
        _apply_limits(server, self._limits)
        try:
            await _advertise_limits(server, self._limits)
            await self._build_address_space(server)
            await self._write(self._latest)  # panels never see Null, even before the first publish
            await server.start()  # on failure it has already stopped what it started
        except BaseException as exc:
            self._nodes.clear()
            self._written.clear()
            if isinstance(exc, OSError):  # typically: port in use, or no such interface
                raise ControllerError(f"HMI OPC UA server cannot listen on {self._endpoint}: {exc}") from exc
            raise
        self._server = server
        self._writer = asyncio.create_task(self._write_loop(), name="hmi-status-writer")
        _log.info("HMI OPC UA server listening on %s", self.endpoint)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop writing, disconnect clients and stop listening. Idempotent."""
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.cancel()
            # wait() rather than `await writer`: the writer's own CancelledError is expected, while a
            # cancellation of this caller must still propagate.
            await asyncio.wait([writer])
        server, self._server = self._server, None
        if server is not None:
            await server.stop()
        self._nodes.clear()
        self._written.clear()

    # -- address space ---------------------------------------------------------------------------

    async def _build_address_space(self, server: Server) -> None:
        idx = await server.register_namespace(self._namespace)
        line = await server.nodes.objects.add_object(ua.NodeId(LINE_OBJECT, idx), ua.QualifiedName(LINE_OBJECT, idx))
        await _describe(line, "The inspection line as seen by the vision controller (read-only).")
        for var in (*STATUS_VARIABLES, UPDATED_AT):
            initial = ua.Variant([] if var.array else _zero(var.variant_type), var.variant_type)
            node = await line.add_variable(
                ua.NodeId(f"{LINE_OBJECT}.{var.name}", idx),
                ua.QualifiedName(var.name, idx),
                initial,
                varianttype=var.variant_type,
            )
            if var.array:
                await node.write_attribute(
                    ua.AttributeIds.ValueRank,
                    ua.DataValue(ua.Variant(ua.ValueRank.OneDimension, ua.VariantType.Int32)),
                )
                await node.write_attribute(
                    ua.AttributeIds.ArrayDimensions, ua.DataValue(ua.Variant([0], ua.VariantType.UInt32))
                )
            await node.set_writable(False)  # also the default; stated so browsing clients see intent
            await _describe(node, var.description)
            self._nodes[var.name] = node

    async def _write_loop(self) -> None:
        """Copy the latest status into the address space, at most once per period."""
        while True:
            await self._pending.wait()
            self._pending.clear()
            try:
                await self._write(self._latest)
            except Exception:
                # The HMI is a window, not a control path: log and keep serving; the next status retries.
                _log.exception("HMI status update failed")
            await asyncio.sleep(self._period_s)

    async def _write(self, status: LineStatus) -> None:
        stamp = self._latest_at
        values = {var.name: var.encode(getattr(status, var.field)) for var in STATUS_VARIABLES}
        values[UPDATED_AT.name] = stamp
        types = {var.name: var.variant_type for var in (*STATUS_VARIABLES, UPDATED_AT)}
        for name, value in values.items():
            if self._written.get(name, _UNSET) == value:
                continue  # unchanged: no write, so subscribers get no empty notifications
            dv = ua.DataValue(ua.Variant(value, types[name]), SourceTimestamp=stamp, ServerTimestamp=stamp)
            # Node.write_value (not Server.write_attribute_value) because it raises on a bad status,
            # e.g. a type mismatch, instead of dropping the value silently.
            await self._nodes[name].write_value(dv)
            self._written[name] = value
        self._updates_written += 1


_UNSET = object()


def _apply_limits(server: Server, limits: HmiLimits) -> None:
    buffer = server.limits.max_recv_buffer
    server.limits = TransportLimits(
        max_recv_buffer=buffer,
        max_send_buffer=server.limits.max_send_buffer,
        max_chunk_count=math.ceil(limits.max_request_bytes / buffer),
        max_message_size=limits.max_request_bytes,
    )
    iserver = server.iserver
    iserver.max_connections = limits.max_sessions + limits.spare_connections
    # A class attribute in asyncua (one count per process): this process serves only this server.
    InternalSession.max_connections = limits.max_sessions
    iserver.max_session_timeout_ms = limits.max_session_timeout_s * 1000
    iserver.min_session_timeout_ms = min(iserver.min_session_timeout_ms, iserver.max_session_timeout_ms)
    iserver.max_pending_activation_seconds = limits.activation_timeout_s
    iserver.max_subscriptions = limits.max_subscriptions


async def _advertise_limits(server: Server, limits: HmiLimits) -> None:
    """ServerCapabilities/OperationLimits say 10,000 in asyncua's defaults: tell clients the truth."""
    ids = ua.ObjectIds
    for name in ("MaxNodesPerRead", "MaxNodesPerBrowse", "MaxNodesPerRegisterNodes",
                 "MaxNodesPerTranslateBrowsePathsToNodeIds", "MaxMonitoredItemsPerCall"):  # fmt: skip
        node = server.get_node(ua.NodeId(getattr(ids, f"Server_ServerCapabilities_OperationLimits_{name}")))
        await node.write_value(ua.Variant(limits.max_nodes_per_request, ua.VariantType.UInt32))
    # Writes, calls and node management are refused whatever their size (0 would mean "no limit").


def _zero(variant_type: ua.VariantType) -> Any:
    return {
        ua.VariantType.Int64: 0,
        ua.VariantType.Double: 0.0,
        ua.VariantType.Boolean: False,
        ua.VariantType.String: "",
        ua.VariantType.DateTime: datetime.fromtimestamp(0, UTC),
    }[variant_type]


async def _describe(node: Node, text: str) -> None:
    await node.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(text, "en"))))
