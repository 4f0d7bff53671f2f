"""The OPC UA server operator panels (HMIs) use: the controller's live `LineStatus`, the Machine
Vision `VisionSystem` (state machine, results, alarms as conditions, shadow mode, users:
hmi/vision_system.py), secure by default.

Responsible for: the `Line` object (one variable per `LineStatus` field, stable string node ids
`ns=<urn:lineinspect>;s=Line.<Name>`), keeping the address space up to date without ever slowing
the controller (`publish()` and `publish_results()` only store; a background task copies the latest
status and the queued results into the address space at a bounded rate), and security: only the
configured policies (Sign / SignAndEncrypt; SecurityPolicy None only when the settings ask for it,
with a warning at every start), a server certificate generated on first start, client certificates
checked against the trusted folder, username/password logins with roles, no anonymous access
(hmi/security.py), and per-role access to every service and method (hmi/access.py).

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
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import urlparse

from asyncua import Node, Server, ua
from asyncua.common.connection import TransportLimits
from asyncua.server.internal_session import InternalSession

from controller.errors import ControllerError
from controller.status import LineStatus, PartResult
from hmi.access import AccessRules, Caller, MethodRights
from hmi.security import HmiUserManager, Pki, SecurityError, TrustListValidator, UserStore, load_server_identity
from hmi.settings import HmiSettings
from hmi.vision_system import Controller, VisionSystem

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


def _json_float_object(value: dict[str, float]) -> str:
    return json.dumps({k: round(v, 4) for k, v in sorted(value.items())}, separators=(",", ":"))


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
    StatusVariable("product_id", "ProductId", _I64, "The product the PLC says the line runs (0: it does not say)."),
    StatusVariable(
        "shadow_counts", "ShadowAgreementJson", _STR,
        "Vision against the existing inspection since start, as a JSON object: both_pass, both_reject, "
        "vision_only_reject, reference_only_reject, no_reference, decided, shadow (parts decided in shadow mode).",
        _json_object,
    ),
    StatusVariable(
        "drift", "DriftJson", _STR,
        "The serving model's drift figures as a JSON object: brightness_change (relative), focus_log_ratio, "
        "high_score_share (passed parts above the validation good parts' 95th percentile); the drift alarm says "
        "when one is beyond its limit.",
        _json_float_object,
    ),
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
    StatusVariable("plc_connected", "PlcConnected", _BOOL, "The S7 link to the PLC works."),
    StatusVariable("inference_in_flight", "InferenceInFlight", _I64, "Parts waiting for or in inference."),
    StatusVariable("log_lines_dropped", "LogLinesDropped", _I64,
                   "Log lines the controller dropped because its log writer fell behind (a disk stall)."),
)
"""Every `LineStatus` field, in declaration order (a test checks that none is missing)."""

# Not a LineStatus field: when the controller last published, so a panel can tell a frozen
# controller (old timestamp) from a quiet line (fresh timestamp, same counts).
SHOWN_ELSEWHERE = frozenset({"vision_state", "shadow_requested", "conditions", "recent_actions", "recipes",
                             "active_recipe"})  # fmt: skip
"""`LineStatus` fields the `VisionSystem` object shows (hmi/vision_system.py), not `Line`."""

UPDATED_AT = StatusVariable("", "UpdatedAt", ua.VariantType.DateTime, "When this status was published (UTC).")


@dataclasses.dataclass(frozen=True, slots=True)
class HmiLimits:
    """What one panel network may ask of the server. A panel needs one or two sessions and requests
    of a few dozen nodes (the `Line` object has 27 variables): every limit is far above that."""

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


class HmiServer:
    """`async with HmiServer(settings, controller) as hmi: ... hmi.publish(status)`: serves the line to panels."""

    def __init__(
        self,
        settings: HmiSettings,
        controller: Controller | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        update_rate_hz: float = 5.0,
        limits: HmiLimits | None = None,
    ) -> None:
        """Cheap: nothing listens until `async with`. `controller` receives the operators' commands
        (none: every command is answered "no controller").

        `update_rate_hz` caps how often the address space is rewritten (and so how often subscribed
        panels are notified), however often `publish()` is called."""
        if update_rate_hz <= 0:
            raise ValueError(f"update_rate_hz must be > 0, got {update_rate_hz}")
        url = urlparse(settings.endpoint)
        if url.scheme != "opc.tcp" or not url.hostname or url.port is None:
            raise ValueError(f"endpoint must look like opc.tcp://host:port/path, got {settings.endpoint!r}")
        self.settings = settings
        self._endpoint = settings.endpoint
        self._namespace = namespace
        self._period_s = 1.0 / update_rate_hz
        self._limits = limits or HmiLimits(max_sessions=settings.max_sessions,
                                           max_request_bytes=settings.max_request_bytes)  # fmt: skip
        self._controller = controller or _NoController()
        self.users = UserStore(settings.users_file)
        self.pki = Pki(settings.pki_dir)
        self.validator = TrustListValidator(self.pki)
        self.user_manager = HmiUserManager(self.users, self.validator.is_trusted_der,
                                           allow_unsecured=settings.allow_unsecured)  # fmt: skip
        self.rights = MethodRights()
        self.vision: VisionSystem | None = None
        self._results: deque[PartResult] = deque(maxlen=RESULTS_QUEUED)
        self.results_dropped = 0

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

    def publish_results(self, results: list[PartResult]) -> None:
        """Queue parts' results for their ResultReady events (oldest dropped beyond `RESULTS_QUEUED`)."""
        overflow = len(self._results) + len(results) - RESULTS_QUEUED
        if overflow > 0:
            self.results_dropped += overflow
        self._results.extend(results)
        self._pending.set()

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
        server = Server(user_manager=self.user_manager)  # type: ignore[arg-type]
        await server.init()  # loads the standard address space: ~1-3 s of CPU, once per start
        server.set_endpoint(self._endpoint)
        server.set_server_name("lineinspect HMI")
        app_uri = f"{self._namespace}:hmi"
        await server.set_application_uri(app_uri)
        try:
            await self.pki.ensure_server_certificate(app_uri)
            await load_server_identity(server, self.pki)
            self.users.users()  # a broken users file stops the start here, with its name
        except (OSError, ValueError, SecurityError) as exc:
            raise ControllerError(f"HMI security cannot start: {exc}") from exc
        if not self.users.users():
            _log.warning("no HMI users in %s: nobody can log in (add one with `lineinspect hmi user add`)",
                         self.settings.users_file)  # fmt: skip
        policies = [getattr(ua.SecurityPolicyType, name) for name in self.settings.security]
        if self.settings.allow_unsecured:
            policies.append(ua.SecurityPolicyType.NoSecurity)
            _log.warning("HMI offers SecurityPolicy None (hmi.allow_unsecured): anyone on %s can read "
                         "the traffic and passwords; for commissioning only", self._endpoint)  # fmt: skip
        rules = AccessRules(self._limits.max_nodes_per_request, self._limits.max_nodes_per_second,
                            roles=self.user_manager.roles, methods=self.rights, on_refused=self._refused,
                            role_now=self.users.role_of)  # fmt: skip
        server.set_security_policy(policies, permission_ruleset=rules)
        server.set_identity_tokens([ua.UserNameIdentityToken])  # no anonymous, no certificate users
        server.set_certificate_validator(self.validator)  # type: ignore[arg-type]
        server.allow_remote_admin(False)
        _apply_limits(server, self._limits)
        try:
            await _advertise_limits(server, self._limits)
            await self._build_address_space(server)
            self.vision = VisionSystem(server, self._ns, self.rights, self._controller, self.users,
                                       self.settings.journal)  # fmt: skip
            await self.vision.build()
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

    def _refused(self, caller: Caller, method: str, why: str) -> None:
        self._controller.audit(method, "", "refused", why, caller)

    async def _build_address_space(self, server: Server) -> None:
        idx = self._ns = await server.register_namespace(self._namespace)
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
                while self._results and self.vision is not None:
                    batch = [self._results.popleft() for _ in range(min(len(self._results), 100))]
                    await self.vision.add_results(batch)
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
        if self.vision is not None:
            await self.vision.update(status, stamp)
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
RESULTS_QUEUED = 2000
"""Results waiting for their events (100 s of a 20 parts/s line); beyond, the oldest are dropped."""


class _NoController:
    async def command(self, action: Any, argument: str, caller: Caller) -> tuple[bool, str]:
        return False, "no controller attached to this HMI"

    def audit(self, action: str, argument: str, result: str, detail: str, caller: Caller) -> None:
        _log.info("audit (no controller): %s %s %s %s by %s", action, argument, result, detail, caller)


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
    for name in ("MaxNodesPerRead", "MaxNodesPerBrowse", "MaxNodesPerRegisterNodes", "MaxNodesPerMethodCall",
                 "MaxNodesPerTranslateBrowsePathsToNodeIds", "MaxMonitoredItemsPerCall"):  # fmt: skip
        node = server.get_node(ua.NodeId(getattr(ids, f"Server_ServerCapabilities_OperationLimits_{name}")))
        await node.write_value(ua.Variant(limits.max_nodes_per_request, ua.VariantType.UInt32))
    # Writes and node management are refused whatever their size (0 would mean "no limit").


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
