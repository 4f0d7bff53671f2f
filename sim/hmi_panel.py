"""A simulated operator panel on the line's HMI, for the scenarios that use the HMI as a plant does.

`SimPanel` logs in over Basic256Sha256 SignAndEncrypt with the demo access, subscribes to the
`ResultReadyEventType` events of the `VisionSystem` (every part's ResultId and outcome), and, when
the scenario says so, acts as an operator: Halt at one moment, Reset a few seconds later (the PLC
must reject every part in between, and both actions must be in the journal's audit table).

It runs in the runner's process (a few calls and one subscription), starts as soon as the HMI
answers, and is bounded in time: whatever it has not done by `seconds` is not done. The line holds
its conveyor until the panel is `ready` (subscribed), as a plant's panels are up before
production starts: on CI's loaded 2 cores the secure login to the nice +19 HMI took longer than a
100-part run, and a panel that never subscribed saw no part at all.

Not here: judging what it saw (sim/runner.py compares it with the journal).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Any

from asyncua import ua

from hmi.server import DEFAULT_NAMESPACE
from sim.hmi_demo import DemoAccess, secure_client

NAMESPACE = DEFAULT_NAMESPACE


@dataclass(frozen=True)
class PanelPlan:
    halt_at_s: float | None = None
    """Seconds after the line runs when the operator halts inspection (None: never)."""
    halt_for_s: float = 3.0


@dataclass
class PanelLog:
    results: dict[str, str] = field(default_factory=dict)
    """ResultId → outcome of its last event."""
    events: int = 0
    actions: list[tuple[str, bool, str]] = field(default_factory=list)
    """(method, done, detail) of each operator action."""
    error: str | None = None


class SimPanel:
    def __init__(self, access: DemoAccess, plan: PanelPlan, seconds: float) -> None:
        self.access, self.plan, self.seconds = access, plan, seconds
        self.log = PanelLog()
        self._task: asyncio.Task[None] | None = None
        self._running = asyncio.Event()
        self._subscribed = asyncio.Event()

    def start(self) -> None:
        """Connect and subscribe now (before the line runs, so no part's result is missed)."""
        self._task = asyncio.create_task(self._run(), name="sim-panel")

    @property
    def ready(self) -> bool:
        """Subscribed to the results, or failed (its error is in the log): the line need not wait."""
        return self._subscribed.is_set()

    def give_up(self, reason: str) -> None:
        """The line went on without this panel (it never became ready): the reason fails the scenario."""
        self.log.error = self.log.error or reason

    def line_running(self) -> None:
        self._running.set()

    async def stop(self) -> PanelLog:
        """Let the last events arrive, then disconnect; returns what the panel saw and did."""
        if self._task is not None:
            await asyncio.sleep(1.0)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.log

    async def _run(self) -> None:
        viewer = None
        try:
            async with asyncio.timeout(self.seconds):
                viewer = await self._connect("viewer")
                await self._subscribe(viewer)
                self._subscribed.set()
                if self.plan.halt_at_s is not None:
                    await self._operate()
                await asyncio.sleep(self.seconds)
        except TimeoutError:
            return
        except Exception as exc:  # the panel's failure is reported, never raised into the run
            self.log.error = f"{type(exc).__name__}: {exc}"
        finally:
            self._subscribed.set()  # (or failed): the line need not wait for it any longer
            if viewer is not None:
                with contextlib.suppress(Exception):
                    await viewer.disconnect()

    async def _connect(self, role: str) -> Any:
        """Until the HMI (started with the controller) takes the login."""
        while True:
            client = await secure_client(self.access, role)
            try:
                await client.connect()
                return client
            except (OSError, TimeoutError, ua.UaError):
                await asyncio.sleep(0.3)

    async def _subscribe(self, client: Any) -> None:
        panel = self

        class Handler:
            def event_notification(self, event: Any) -> None:
                panel.log.events += 1
                panel.log.results[event.ResultId] = event.Outcome

        ns = await client.get_namespace_index(NAMESPACE)
        etype = await client.nodes.base_event_type.get_child(f"{ns}:ResultReadyEventType")
        subscription = await client.create_subscription(50, Handler())
        await subscription.subscribe_events(client.get_node(ua.NodeId("VisionSystem", ns)), etype, queuesize=1000)

    async def _operate(self) -> None:
        await self._running.wait()
        assert self.plan.halt_at_s is not None
        await asyncio.sleep(self.plan.halt_at_s)
        async with await secure_client(self.access, "operator") as operator:
            ns = await operator.get_namespace_index(NAMESPACE)
            machine = operator.get_node(ua.NodeId("VisionSystem.VisionStateMachine", ns))
            for method, pause in (("Halt", self.plan.halt_for_s), ("Reset", 0.0)):
                done, detail = await machine.call_method(ua.NodeId(f"VisionSystem.VisionStateMachine.{method}", ns))
                self.log.actions.append((method, done, detail))
                await asyncio.sleep(pause)
