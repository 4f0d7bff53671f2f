"""OPC UA server that lets an operator panel (HMI) watch the line: the controller's live `LineStatus`,
read-only.

Responsible for: the address space (object `Line`, one variable per `LineStatus` field, stable string
node ids `ns=<urn:lineinspect>;s=Line.<Name>`), keeping it up to date without ever slowing the
controller (`publish()` only stores; a background task copies the latest status into the address space
at a bounded rate), and refusing every client request that would change anything.

Not responsible for (yet): security (signing/encryption, user authentication), write access or method
nodes for operators, alarms & conditions, history. Until security arrives the server accepts anonymous
clients on an unencrypted endpoint, and therefore lets them do nothing but read, browse and subscribe.

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
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

from asyncua import Node, Server, ua
from asyncua.crypto.permission_rules import SimpleRoleRuleset, User

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
    StatusVariable(
        "latency_p99_ms", "LatencyP99Ms", _F64, "99th-percentile trigger-to-verdict latency (ms)."
    ),
    StatusVariable(
        "plc_rejects_vision", "PlcRejectsVision", _I64, "Rejects the PLC executed on a vision verdict."
    ),
    StatusVariable(
        "plc_rejects_failsafe", "PlcRejectsFailsafe", _I64, "Rejects the PLC executed fail-safe (no verdict)."
    ),
    StatusVariable(
        "plc_verdicts_late", "PlcVerdictsLate", _I64, "Verdicts the PLC received too late to use."
    ),
    StatusVariable("plc_watchdog_trips", "PlcWatchdogTrips", _I64, "Watchdog trips counted by the PLC."),
    StatusVariable("alarms", "Alarms", _STR, "Active alarm texts (empty when none).", list, array=True),
    StatusVariable("model_version", "ModelVersion", _STR, "Version of the inspection model in use."),
)
"""Every `LineStatus` field, in declaration order (a test checks that none is missing)."""

# Not a LineStatus field: when the controller last published, so a panel can tell a frozen
# controller (old timestamp) from a quiet line (fresh timestamp, same counts).
UPDATED_AT = StatusVariable("", "UpdatedAt", ua.VariantType.DateTime, "When this status was published (UTC).")


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

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        return action_type_id in self._ALLOWED


class HmiServer:
    """`async with HmiServer() as hmi: ... hmi.publish(status)`: serves the latest status read-only."""

    def __init__(
        self,
        endpoint: str = DEFAULT_ENDPOINT,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        update_rate_hz: float = 5.0,
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

    def publish(self, status: LineStatus) -> None:
        """Offer the newest status. Sync, O(1), never blocks; call it from the event loop's thread.

        Works before start and after stop too (the value is then shown at the next start, or dropped)."""
        self._latest = status
        self._latest_at = datetime.now(UTC)
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
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity], permission_ruleset=_ReadOnlyServices())
        server.set_identity_tokens([ua.AnonymousIdentityToken])
        server.allow_remote_admin(False)
        try:
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
        line = await server.nodes.objects.add_object(
            ua.NodeId(LINE_OBJECT, idx), ua.QualifiedName(LINE_OBJECT, idx)
        )
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


def _zero(variant_type: ua.VariantType) -> Any:
    return {
        ua.VariantType.Int64: 0,
        ua.VariantType.Double: 0.0,
        ua.VariantType.Boolean: False,
        ua.VariantType.String: "",
        ua.VariantType.DateTime: datetime.fromtimestamp(0, UTC),
    }[variant_type]


async def _describe(node: Node, text: str) -> None:
    await node.write_attribute(
        ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(text, "en")))
    )
