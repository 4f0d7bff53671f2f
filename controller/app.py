"""The line controller: the supervised loops that connect PLC, camera, inference and journal.

    read PLC ──► tracker (new triggers, expiries, what the gate did) ──► frame matcher ◄── frames
                                                                            │ match
                                                                            ▼
          admission ─► inference (deadline) ─► journal (durable) ─► outbox ─► next cycle's write

The PLC exchange is cyclic, as S7 links are meant to be used: per cycle one read of `PlcToVision`,
then one write of `VisionToPlc` carrying the heartbeat and every verdict queued since the last
(controller/core/vision_block.py). One request at a time on the one connection, so a slow link costs
round trips, never a queue of stale requests.

Every trigger ends in exactly one recorded outcome, with its reason. The PLC is the safety layer:
whatever fails here, the part is rejected there; this module's job is to be on time.
Not here: the rules of time and position (controller/core/tracking.py), association
(controller/core/frame_matching.py), building the parts (controller/bootstrap.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from controller import logs
from controller.alarms import Alarms
from controller.core import plc_codec as codec
from controller.core.budget import VerdictBudget
from controller.core.drift import DriftMonitor, DriftReference
from controller.core.frame_matching import FrameMatcher, Match, MatchWindow
from controller.core.gate_decisions import DecisionFollower, vision_rejects
from controller.core.plc_clock import SnapshotClock
from controller.core.resume import another_plc_run, resume
from controller.core.tracking import (
    Finished,
    GateCounters,
    Margins,
    Outcome,
    Part,
    Reason,
    Tracker,
    check_line_geometry,
    wrap_diff,
)  # fmt: skip
from controller.core.vision_block import VisionBlock
from controller.errors import (
    CameraError,
    ConfigError,
    ControllerError,
    InferenceError,
    JournalError,
    PlcError,
    PlcStalledError,
)
from controller.labels import add_labels, parse_flag
from controller.operator import Action, OperatorControl, Refused, VisionState
from controller.ports import (
    AuditEntry,
    Frame,
    FrameSource,
    InferenceResult,
    InferenceService,
    Journal,
    PartRecord,
    PlcLink,
)  # fmt: skip
from controller.registry import Active, RegistryError, read_active
from controller.status import Health, LineStatus, PartResult, Recipe

REGISTRY_POLL_S = 2.0
"""How often the registry's ACTIVE.json is read (a promotion reaches the line within this)."""
PRODUCT_ANSWER_S = 15.0
"""How long an HMI product choice waits for the product's model to serve before it answers."""
REVIEW_BAND = 0.1
"""A part whose score came this close to its model's threshold is queued for a person's review."""

log = structlog.get_logger("lineinspect.controller")

MAX_PENDING_FRAMES = 64
"""Frames waiting for their trigger; beyond this the oldest is dropped and counted."""
_REASON_OF_GATE = {Outcome.PASS: Reason.MODEL_PASS.value, Outcome.REJECT: Reason.MODEL_REJECT.value}
_WRITTEN = frozenset({Reason.MODEL_PASS, Reason.MODEL_REJECT, Reason.PLC_WRITE_FAILED})
"""Outcomes recorded with a verdict written, or about to be (the record is durable first)."""


@dataclass(slots=True)
class Queued:
    """A recorded verdict waiting for the next cycle's write."""

    done: Finished
    entry: codec.VerdictEntry
    frame: Frame
    result: InferenceResult
    t_start: float
    t_end: float
    t_durable: float
    """When its record was durable (the verdict may be written from then on)."""


SLOW_VERDICT_S = 0.050
"""Inference end → verdict in the PLC slower than this is logged with where the time went."""


@dataclass(frozen=True, slots=True)
class Timing:
    poll_s: float = 0.002
    heartbeat_s: float = 0.020
    stale_s: float = 0.100
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 2.0
    min_part_pitch_counts: int = 300
    plc_max_cycle_s: float = 0.020
    """The PLC's longest cycle: how much older than a read's request its values can be."""
    trigger_latency_s: float = 0.005
    """The longest from a photo-eye edge to its ring entry in the block."""


class LineController:
    def __init__(
        self, plc: PlcLink, camera: FrameSource, inference: InferenceService, journal: Journal, *,
        margins: Margins, window: MatchWindow, timing: Timing,
        on_status: Callable[[LineStatus], None] | None = None, clock: Callable[[], float] = time.monotonic,
        on_result: Callable[[PartResult], None] | None = None, recipes: Sequence[Recipe] = (),
        drift_references: Sequence[DriftReference] = (), label_store: Path | None = None,
        registry: tuple[Path, str] | None = None, products: dict[int, str] | None = None,
    ) -> None:  # fmt: skip
        self.plc, self.camera, self.inference, self.journal = plc, camera, inference, journal
        self._now = clock
        """Monotonic seconds; the event loop's clock must agree (tests run the controller in virtual time)."""
        self.timing = timing
        self.tracker = Tracker(margins)
        self.budget = VerdictBudget(margins.write_s)
        """From inference done to the start of the write that carries the verdict (journal + wait)."""
        self._block = VisionBlock()
        self._snapshot_clock = SnapshotClock(plc_cycle_s=timing.plc_max_cycle_s,
                                             trigger_latency_s=timing.trigger_latency_s,
                                             min_pitch_counts=timing.min_part_pitch_counts)
        self._outbox: dict[tuple[int, int], Queued] = {}
        """Recorded verdicts for the next write, by (epoch, seq) (each part is in it at most once)."""
        self._verdict_queued = asyncio.Event()
        """Set when a verdict joins the outbox: the exchange loop writes it without waiting for its next read."""
        self._header_at = 0.0
        self._watchdog_trips: tuple[int, int] | None = None
        """(epoch, the PLC's watchdog_trips) at the last read."""
        self.gate_corrections: Counter[str] = Counter()
        """Recorded outcomes replaced by what the gate did ('pass->failsafe', ...)."""
        self.gate_ambiguous = 0
        self.registry = registry
        self.products = products or {}
        """The PLC's product id → the registry product whose active version inspects it."""
        self.changeover: str | None = None
        """The product the PLC switched to while its model is not serving yet: not ready meanwhile
        (the PLC rejects what it decides), never a part judged by another product's model."""
        self._registry_wake = asyncio.Event()
        self._product_id = 0
        """The PLC's product id last acted on."""
        self._serving_product = registry[1] if registry is not None else ""
        """The registry product whose model serves now (a line starts on its configured product's)."""
        """(registry folder, product): the active version is followed (controller/registry.py)."""
        self.registry_seen: tuple[str, str] | None = None
        """(version, utc) of the last ACTIVE.json acted on, swapped to or refused (at start: the one
        the line started on)."""
        self.label_store = label_store
        """The journal whose label store (controller/labels.py) takes operators' flags; None: no flags."""
        self.drift = DriftMonitor({r.model_version: r for r in drift_references})
        """Is the line still showing each model what it was validated on (the `drift` alarm)?"""
        self.decisions = DecisionFollower()
        """What the gate did with each part (the PLC's decision ring), with the running shadow figures."""
        self.matcher = FrameMatcher(window)
        self.alarms = Alarms(on_change=self._note_alarm)
        self.on_status = on_status or (lambda s: None)
        self.on_result = on_result or (lambda r: None)
        """Every recorded outcome, for panels (sync, must not block: the HMI queues it)."""
        self.operator = OperatorControl()
        self.recipes = tuple(recipes)
        self._actions: deque[str] = deque(maxlen=10)
        self.health = Health.STARTING
        self.outcomes: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.latencies: deque[float] = deque(maxlen=512)
        self.frames_dropped = 0
        self._frames: dict[int, Frame] = {}
        self._life = 0
        self._plc_ok = False
        self._camera_ok = False
        self._snapshot: codec.PlcToVision | None = None
        self._acked_epoch: int | None = None
        """The epoch whose verdict ring we cleared; the only one we acknowledge and write for."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._model_version = ""
        self._resumed_epoch: int | None = None
        self._resume_failed: int | None = None
        """An epoch whose resume failed: its resume point must not move past what was not resumed."""
        self._journal_moved_aside: Path | None = None
        """The corrupt journal file last moved aside that the journal alarm was raised for."""

    # ------------------------------------------------------------------ lifecycle
    async def run(self) -> None:
        """Run until cancelled. Loops are named and supervised; a crash of one ends the run."""
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._exchange_loop(), name="plc-exchange")
                tg.create_task(self._frame_loop(), name="camera-intake")
                tg.create_task(self._status_loop(), name="status")
                if self.registry is not None:
                    tg.create_task(self._registry_loop(), name="registry")
        except ExceptionGroup as group:
            refused = group.subgroup(ConfigError)
            if refused is None:
                raise
            raise _first_leaf(refused) from None  # one clear line, not a traceback of the group
        finally:
            await self._shutdown()

    async def _shutdown(self) -> None:
        # Judges stop; records already on their way to the journal are awaited, never cancelled.
        for task in list(self._tasks):
            if task.get_name().startswith("judge-"):
                task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Parts still open will be rejected by the PLC; record why, so no trigger lacks an outcome.
        for part in list(self.tracker.parts.values()):
            done = self.tracker.finish(part, Outcome.FAILSAFE, Reason.CONTROLLER_STOPPED)
            if done:
                with contextlib.suppress(JournalError):
                    await self._record(done)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def healthy(self) -> bool:
        """Every dependency on the verdict path is healthy."""
        return (self._plc_ok and self._camera_ok and self.inference.healthy and self.journal.healthy
                and self.changeover is None)  # fmt: skip

    @property
    def ready(self) -> bool:
        """The PLC's `ready` bit: healthy, and no operator has halted or stopped inspection."""
        return self.healthy and self.operator.allows_inspection

    @property
    def vision_state(self) -> VisionState:
        return self.operator.state(started=self.health is not Health.STARTING, healthy=self.healthy)

    async def operate(self, action: Action, argument: str, *, user: str, role: str, peer: str) -> tuple[bool, str]:
        """An operator's command (from the HMI, already allowed for `role`): applied, journaled in
        the audit table, and answered with what it did or why not."""
        try:
            if action is Action.PREPARE_RECIPE:
                detail = await self._prepare_recipe(argument)
            elif action is Action.FLAG_RESULT:
                detail = await self._flag_result(argument, user)
            else:
                detail = self.operator.apply(action, argument, state=self.vision_state, alarms=self.alarms, by=user)
            ok = True
        except Refused as exc:
            ok, detail = False, str(exc)
        # Answered and shown at once; the audit entry is queued in the journal's records lane, kept
        # like a record until the disk takes it (a slow disk must not make a done Halt look failed).
        entry = self._noted(user, role, peer, action.value, argument, "done" if ok else "refused", detail)
        self._spawn(self.journal.note_audit(entry), name="audit")
        self._update_health()
        self.on_status(self.status())  # the panel sees the new state at once
        return ok, detail

    async def _flag_result(self, argument: str, user: str) -> str:
        """An operator says a verdict was wrong: the true class into the label store (off the loop,
        never the journal's writer), the part queued for review with its frame kept."""
        try:
            epoch, seq, true_class, note = parse_flag(argument)
        except ValueError as exc:
            raise Refused(str(exc)) from None
        if self.label_store is None:
            raise Refused("this controller keeps no labels (no journal file)")
        recorded = await self.journal.recorded(epoch, seq - 1, seq)
        if not recorded:
            raise Refused(f"no part {epoch}/{seq} in the journal")
        try:
            await asyncio.to_thread(add_labels, self.label_store, [(epoch, seq, true_class)], source="operator",
                                    labeled_by=user, note=note)  # fmt: skip
        except (sqlite3.Error, OSError) as exc:
            raise Refused(f"the label store cannot take it: {exc}") from None
        self._spawn(_settled(self.journal.note_review(epoch, seq, "flagged")), name="review")
        return f"{epoch}/{seq} ({recorded[0].outcome}) labelled {true_class}: queued for review, its frame kept"

    async def _registry_loop(self) -> None:
        """Follow the registry's active version: a promotion or rollback is a hot swap between two
        parts (the inference service's), audited with who did it; a model that does not load is
        refused, audited, and the serving one stays. Reads ACTIVE.json off the loop every 2 s."""
        assert self.registry is not None
        folder, product = self.registry
        while True:
            try:
                active = await asyncio.to_thread(read_active, folder, product)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("registry_unreadable", registry=str(folder), product=product, error=str(exc))
                active = None
            if active is not None and (active.version, active.utc) != self.registry_seen:
                self.registry_seen = (active.version, active.utc)
                if active.version != self._model_version:
                    await self._follow(active, product)
            if active is not None and active.version == self._model_version and self.registry[1] == product:
                self._serving_product = product  # the serving model is this product's
                if self.changeover == product:
                    self.changeover = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._registry_wake.wait(), REGISTRY_POLL_S)
            self._registry_wake.clear()
            folder, product = self.registry

    async def _follow(self, active: Active, product: str) -> None:
        """Swap to `product`'s active version. A changeover ends only if the line still wants that
        product (the PLC may have switched again while the model loaded)."""
        try:
            version = await self.inference.swap_model(active.model)
            ok, detail = True, f"{active.version} serving from the next part (was {self._model_version or 'none'})"
            self._model_version = version
            self._serving_product = product
            if self.changeover == product and self.registry is not None and self.registry[1] == product:
                self.changeover = None
            await self._load_drift_reference(active.model, version)
        except (InferenceError, ConfigError, OSError) as exc:
            why = str(exc).splitlines()[0]
            ok, detail = False, f"{active.version} not loaded, {self._model_version} still serving: {why}"
        log.info("registry_followed", product=self.registry[1] if self.registry else "", version=active.version,
                 action=active.action, by=active.by, ok=ok, detail=detail)  # fmt: skip
        entry = self._noted(active.by, "registry", "registry", active.action, active.version,
                            "done" if ok else "refused", detail)  # fmt: skip
        self._spawn(self.journal.note_audit(entry), name="audit")

    async def _select_product(self, product: str) -> str:
        """An engineer picks the product at the HMI: a changeover to its registry's active version,
        not ready until it serves (as when the PLC's product id changes; the PLC's next change wins)."""
        assert self.registry is not None
        try:
            active = await asyncio.to_thread(read_active, self.registry[0], product)
        except (RegistryError, OSError, ValueError, KeyError) as exc:
            raise Refused(f"product {product!r}: {exc}") from None
        if active is None:
            raise Refused(f"no product {product!r} with an active version in the registry")
        if product == self.registry[1] and self.changeover is None:
            raise Refused(f"product {product} ({self._model_version}) is already serving")
        self.registry, self.registry_seen, self.changeover = (self.registry[0], product), None, product
        self._registry_wake.set()
        self._update_health()
        for _ in range(int(PRODUCT_ANSWER_S / 0.05)):  # bounded: the HMI answers within its own limit
            if self.changeover != product:
                break
            await asyncio.sleep(0.05)
        if self.changeover == product:
            return f"product {product}: {active.version} still loading, not ready until it serves"
        return f"product {product}: {active.version} serving from the next part"

    async def _load_drift_reference(self, model: Path, version: str) -> None:
        """The new model's drift reference; without a usable one its drift is not watched (and an
        alarm about the old model's drift goes)."""
        try:
            reference = await asyncio.to_thread(_drift_reference_of, model)
        except (ValueError, OSError) as exc:  # json.JSONDecodeError is a ValueError
            log.warning("drift_reference_unusable", model=str(model), error=str(exc))
            reference = None
        if reference is not None:
            self.drift.references[reference.model_version] = reference
        elif self.drift.alarm:
            self.drift.alarm, self.drift.detail = False, ""
            self.alarms.set("drift", False)
        log.info("drift_reference", version=version, watched=reference is not None)

    async def _prepare_recipe(self, recipe_id: str) -> str:
        """Load the recipe's model beside the serving one, check it answers, switch between parts.
        With a registry, a recipe is a registry product: its active version (never another)."""
        if self.registry is not None:
            return await self._select_product(recipe_id)
        recipe = next((r for r in self.recipes if r.id == recipe_id), None)
        if recipe is None:
            raise Refused(f"no recipe {recipe_id!r} (installed: {', '.join(r.id for r in self.recipes) or 'none'})")
        if recipe.problem:
            raise Refused(f"recipe {recipe_id} cannot be used: {recipe.problem}")
        if recipe.version and recipe.version == self._model_version:
            raise Refused(f"recipe {recipe_id} ({recipe.version}) is already serving")
        try:
            version = await self.inference.swap_model(Path(recipe.model))
        except (InferenceError, ConfigError) as exc:
            raise Refused(f"recipe {recipe_id} not switched to, {self._model_version or 'the old model'} still "
                          f"serving: {str(exc).splitlines()[0]}") from None  # fmt: skip
        self._model_version = version
        return f"recipe {recipe_id} ({version}) serving from the next part"

    async def audit(self, *, user: str, role: str, peer: str, action: str, argument: str, result: str,
                    detail: str) -> None:  # fmt: skip
        """One operator action (done or refused, here or by the HMI's role check) into the journal."""
        await self.journal.note_audit(self._noted(user, role, peer, action, argument, result, detail))

    def _noted(self, user: str, role: str, peer: str, action: str, argument: str, result: str,
               detail: str) -> AuditEntry:  # fmt: skip
        """Logged and shown on the HMI at once; returned for the journal."""
        entry = AuditEntry(datetime.now(UTC).isoformat(timespec="milliseconds"), user, role, peer, action,
                           argument, result, detail)  # fmt: skip
        log.info("operator_action", user=user, role=role, peer=peer, action=action, argument=argument,
                 result=result, detail=detail)  # fmt: skip
        what = f"{action} {argument}" if argument else action
        self._actions.appendleft(f"{entry.wall_utc} {user} ({role}) from {peer}: {what} -> {result}: {detail}")
        return entry

    def _update_health(self) -> None:
        self.alarms.set("inference", not self.inference.healthy, "no healthy inference worker")
        if self.journal.moved_aside != self._journal_moved_aside:  # found corrupt at open or by its check
            self._journal_moved_aside = self.journal.moved_aside
            self.alarms.set("journal", True, self.journal.error or f"moved aside to {self._journal_moved_aside}")
        self.alarms.set("journal_stalled", self.journal.stalled_s is not None,
                        "a record waits for the journal's disk longer than journal.stall_ms")  # fmt: skip
        new = Health.READY if self.healthy else (Health.STARTING if self.health is Health.STARTING
                                                   and not self._plc_ok else Health.DEGRADED)  # fmt: skip
        if new is not self.health:
            log.info("health_changed", old=self.health.value, new=new.value, alarms=self.alarms.active)
            self.health = new

    # ------------------------------------------------------------------ PLC exchange
    async def _exchange_loop(self) -> None:
        backoff = self.timing.backoff_initial_s
        last_life, life_changed_at = -1, self._now()
        life_confirmed = False
        """The PLC's `life` changed on this connection: only then is the link up (a PLC in STOP
        answers reads with a stuck counter; its first answer after a reconnect proves nothing)."""
        next_poll = self._now()
        while True:
            _stop_if_cancelled()
            started = self._now()
            try:
                snap = codec.decode_plc_to_vision(await self.plc.read_plc_to_vision())
                if snap.epoch != self._acked_epoch:
                    await self._acknowledge_epoch(snap.epoch)
                if snap.life != last_life:
                    life_confirmed = life_confirmed or last_life != -1
                    last_life, life_changed_at = snap.life, started
                elif started - life_changed_at > self.timing.stale_s:
                    raise PlcError(f"PLC life counter stuck at {snap.life} for {started - life_changed_at:.3f} s")
                if life_confirmed:
                    if snap.epoch != self.tracker.epoch and snap.epoch != self._resumed_epoch:
                        await self._resume_epoch(snap)  # the same read the tracker starts from
                    self._on_snapshot(snap, started, self._now())
                    await self._write_cycle()
                    if snap.epoch != self._resume_failed:
                        # Every part decided by this read now has its outcome queued in the journal.
                        self.journal.gate_reconciled(snap.epoch, GateCounters.of(snap))
                    backoff = self.timing.backoff_initial_s
                next_poll = max(next_poll + self.timing.poll_s, self._now())
                await self._idle_until(next_poll, write=life_confirmed)
            except PlcError as exc:
                # Read, stuck PLC or write: the same recovery (a fresh connection after any fault).
                await self._plc_lost(str(exc), link_fault=not isinstance(exc, PlcStalledError))
                backoff = await self._reconnect(backoff)
                # A half-applied or delayed write of the dropped connection may have left anything
                # in the PLC's ring: the next write restores all of it from our image.
                self._block.rewrite_all()
                last_life, life_changed_at, life_confirmed = -1, self._now(), False
                next_poll = self._now()

    async def _idle_until(self, t: float, *, write: bool) -> None:
        """Between two reads: a verdict queued meanwhile is written at once, not a poll later."""
        while (left := t - self._now()) > 0:
            self._verdict_queued.clear()
            try:
                async with asyncio.timeout(left):
                    await self._verdict_queued.wait()
            except TimeoutError:
                return
            if write:
                await self._write_cycle()

    async def _acknowledge_epoch(self, epoch: int) -> None:
        """Clear the whole verdict ring, then acknowledge. A verdict written for the old epoch just
        before we noticed the restart could otherwise sit in the slot of a new part with the same
        sequence number; writes are serialized on the one connection, so the clear comes after it.
        The acknowledgement itself goes with this cycle's header write."""
        # In whole entries per request, each request with its own timeout (a 512-byte write would
        # take two requests on a 480-byte PDU, and twice the round trip on a slow link).
        step = (self.plc.max_write_bytes // codec.VERDICT_ENTRY_SIZE) * codec.VERDICT_ENTRY_SIZE
        for offset in range(codec.VERDICT_RING_OFFSET, codec.VISION_TO_PLC_SIZE, step):
            size = min(step, codec.VISION_TO_PLC_SIZE - offset)
            await self.plc.write_vision_to_plc(offset, bytes(size))
        self._block.clear_ring()
        self._acked_epoch = epoch

    async def _resume_epoch(self, snap: codec.PlcToVision) -> None:
        """At the first read of an epoch: if an earlier controller ran in this epoch (we were
        restarted), record what the gate did since its journal's resume point. Parts triggered but
        still undecided are the tracker's as usual; the ring was just cleared, so none of them can
        pass on an old entry."""
        gate = GateCounters.of(snap)
        self._resumed_epoch = snap.epoch
        try:
            since = await self.journal.resume_point(snap.epoch, gate)
            if since != gate:  # the journal knew this epoch: from this PLC run, or an earlier one?
                since = await self._set_aside_if_reused(snap, since, gate)
            if wrap_diff(gate.decided_seq, since.decided_seq) <= 0:
                if gate.decided_seq != since.decided_seq:
                    log.error("gate_counters_inconsistent", epoch=snap.epoch, on="resume", stored=since.decided_seq,
                              decided_seq=gate.decided_seq)  # fmt: skip
                return  # a new epoch, or nothing decided since
            resumed = resume(since, gate, await self.journal.recorded(snap.epoch, since.decided_seq, gate.decided_seq))
            down, wall = Reason.CONTROLLER_DOWN.value, datetime.now(UTC).isoformat(timespec="milliseconds")
            jobs = [self.journal.amend(snap.epoch, seq, outcome.value, _REASON_OF_GATE.get(outcome, down))
                    for seq, outcome in resumed.corrected]  # fmt: skip
            if resumed.unrecorded:
                jobs.append(self.journal.record_many([
                    PartRecord(epoch=snap.epoch, seq=seq, outcome=Outcome.FAILSAFE.value, reason=down, trigger_pos=0,
                               t_decided=self._now(), wall_utc=wall) for seq in resumed.unrecorded
                ]))  # fmt: skip
            await asyncio.gather(*jobs)
        except JournalError as exc:
            self._resume_failed = snap.epoch
            self.alarms.set("journal", True, str(exc))
            return
        self.reasons[down] += len(resumed.unrecorded)
        self.outcomes[Outcome.FAILSAFE.value] += len(resumed.unrecorded)
        if resumed.inconsistent:
            log.error("gate_counters_inconsistent", epoch=snap.epoch, decided_seq=snap.decided_seq, on="resume")
        log.warning("resumed", epoch=snap.epoch, decided_while_down=len(resumed.unrecorded),
                    corrected=[f"{seq}->{outcome.value}" for seq, outcome in resumed.corrected])  # fmt: skip

    async def _set_aside_if_reused(self, snap: codec.PlcToVision, since: GateCounters,
                                   gate: GateCounters) -> GateCounters:  # fmt: skip
        """A PLC whose epoch number came round again (a restart that reused it): the journal's rows
        of that epoch are an earlier run's, not ours to resume from. Set them aside, say so once,
        and start the epoch afresh. Returns the resume point to use."""
        # Not the oldest slot: the next trigger overwrites it, position first, while we may read it.
        first = max(1, snap.trigger_seq - codec.TRIGGER_RING + 2)
        ring = {s: pos for s in range(first, snap.trigger_seq + 1) if (pos := snap.trigger_pos(s)) is not None}
        seen = await self.journal.recorded(snap.epoch, first - 1, snap.trigger_seq) if ring else []
        why = another_plc_run(since, gate, ring, seen)
        if why is None:
            return since
        moved = await self.journal.supersede_epoch(snap.epoch)
        log.error("plc_epoch_reused", epoch=snap.epoch, why=why, rows_set_aside=moved)
        self.alarms.set("plc_epoch_reused", True, f"epoch {snap.epoch} is in the journal from an earlier PLC run "
                                                  f"({why}): its {moved} rows were set aside")  # fmt: skip
        self.alarms.set("plc_epoch_reused", False)  # an event: raised and cleared at once, in the history
        return await self.journal.resume_point(snap.epoch, gate)

    def _note_alarm(self, name: str, raised: bool, detail: str) -> None:
        self._spawn(self.journal.note_alarm(name, raised, detail), name=f"alarm-{name}")

    async def _plc_lost(self, why: str, *, link_fault: bool = True) -> None:
        """The link is reset. Its alarm only where the link is at fault: after our own stall the
        PLC's watchdog (its alarm) says what happened."""
        if self._plc_ok:
            log.warning("plc_link_lost", error=why, epoch=self.tracker.epoch, link_fault=link_fault)
        self._plc_ok = False
        self._snapshot_clock.forget()
        if link_fault:
            self.alarms.set("plc_link", True, why)
        self._update_health()
        self._finish_all(self.tracker.expire(self._now()))

    async def _reconnect(self, backoff: float) -> float:
        """Capped exponential backoff with jitter; returns the next backoff."""
        await asyncio.sleep(backoff * random.uniform(0.5, 1.0))
        try:
            await self.plc.reconnect()
            log.info("plc_reconnected")
        except PlcError as exc:
            log.debug("plc_reconnect_failed", error=str(exc))
            self.alarms.set("plc_link", True, str(exc))  # whatever ended the last connection, the link is down
            return min(backoff * 2, self.timing.backoff_max_s)
        return self.timing.backoff_initial_s

    def _on_snapshot(self, snap: codec.PlcToVision, started: float, finished: float) -> None:
        if not self._plc_ok:
            try:
                check_line_geometry(snap.decision_offset, self.timing.min_part_pitch_counts)
            except ValueError as exc:
                raise ConfigError(f"the PLC's line geometry is refused: {exc}") from exc
            self._plc_ok = True
            self.alarms.set("plc_link", False)
            self._update_health()
        if snap.epoch != self.tracker.epoch:
            log.info("plc_epoch", epoch=snap.epoch, previous=self.tracker.epoch)
            self.matcher.reset()
            self._snapshot_clock.new_epoch()
        self._snapshot = snap
        self._follow_product(snap)  # before new triggers are accepted: none may meet the old product's model
        upd = self.tracker.on_snapshot(snap, started, accept_parts=self.ready)
        self.alarms.set("trigger_ring_overrun", upd.overrun > 0, f"{upd.overrun} triggers lost")
        self._watch_plc_watchdog(snap)
        self._finish_all(upd.finished)
        # Written parts the restarted PLC no longer tracks: amended, so the record keeps the verdict
        # written, its frame and its scores (a part decided just before the restart, unseen by us,
        # may in fact have passed on that verdict; the new epoch's counters cannot tell).
        revoked = [(written, written.revoked()) for written in upd.revoked]
        self._apply_gate(revoked + upd.corrected, upd.gate_ambiguous, upd.gate_inconsistent)
        self._note_decisions(snap)
        clock = self._snapshot_clock
        clock.observe(started, finished, snap.encoder_pos, snap.speed, snap.life)
        triggers = [(part.seq, clock.trigger_interval(part.trigger_pos if part.latched else None),
                     self.tracker.is_open(part)) for part in upd.seen]  # fmt: skip
        short = clock.saw_triggers([part.trigger_pos if part.latched else None for part in upd.seen])
        if short is not None:
            log.warning("trigger_pitch_below_minimum", counts=short, min_part_pitch_counts=clock.min_pitch_counts)
        self._dispatch(self.matcher.on_triggers(triggers, clock.unseen_after, self._now()))

    def _note_decisions(self, snap: codec.PlcToVision) -> None:
        """The gate's decisions into the journal's lazy lane: in shadow mode, what the line did and
        the existing inspection's verdict beside ours (controller/shadow_report.py reads them)."""
        missed = self.decisions.missed
        decided = self.decisions.on_snapshot(snap)
        if self.decisions.missed != missed:
            log.warning("gate_decisions_missed", epoch=snap.epoch, decided_seq=snap.decided_seq,
                        missed=self.decisions.missed - missed)  # fmt: skip
        if decided:
            jobs = [self.journal.note_gate(snap.epoch, d.seq, d) for d in decided]
            jobs += [self.journal.note_review(snap.epoch, d.seq, "disagrees_with_reference") for d in decided
                     if d.reference != codec.NO_REFERENCE and vision_rejects(d) != (d.reference != codec.PASS)]
            self._spawn(_settled_all(jobs), name=f"gate-{decided[-1].seq}")

    def _follow_product(self, snap: codec.PlcToVision) -> None:
        """The PLC says another product is coming: its model from the registry, not ready until it
        serves. A product id the line has no model for: not ready (0: the PLC does not say)."""
        if not self.products or self.registry is None or snap.product_id in (0, self._product_id):
            return
        self._product_id = snap.product_id
        wanted = self.products.get(snap.product_id)
        if wanted is None:
            self.changeover = f"product id {snap.product_id}"
            result, detail = "refused", f"PLC product {snap.product_id} is not in inference.products: not ready"
        elif wanted == self.registry[1]:
            # back from an unknown id: ready again once this product's model serves (it may still load)
            self.changeover = None if self._serving_product == wanted else wanted
            self._registry_wake.set()
            result, detail = "done", f"PLC product {snap.product_id}: {wanted}, as before"
        else:
            self.registry, self.registry_seen, self.changeover = (self.registry[0], wanted), None, wanted
            result, detail = "done", f"PLC product {snap.product_id}: {wanted}'s model, not ready until it serves"
            self._registry_wake.set()
        log.info("product_changeover", product_id=snap.product_id, product=wanted, result=result)
        self._spawn(self.journal.note_audit(self._noted("plc", "plc", "plc", "product", str(wanted or snap.product_id),
                                                        result, detail)), name="audit")  # fmt: skip
        self._update_health()

    def _watch_plc_watchdog(self, snap: codec.PlcToVision) -> None:
        """The PLC lost our heartbeat (we stalled, or the link did) and rejects every part until it
        sees `life` change with `ready` set. A trip can begin and end between two of our reads (we
        were the ones stalled): its counter tells, and the alarm is raised and cleared at once."""
        trips = (snap.epoch, snap.watchdog_trips)
        last, self._watchdog_trips = self._watchdog_trips, trips
        new_trip = last is not None and last[0] == trips[0] and last[1] != trips[1]
        detail = f"PLC watchdog tripped ({snap.watchdog_trips} times this epoch): every part is rejected"
        self.alarms.set("plc_watchdog", snap.watchdog_tripped or new_trip, detail)
        if not snap.watchdog_tripped:
            self.alarms.set("plc_watchdog", False)

    def _apply_gate(self, corrected: list[tuple[Finished, Finished]], ambiguous: int, inconsistent: bool) -> None:
        """Make the journal say what the gate did with written parts it decided otherwise than
        recorded (a PASS decided after the watchdog tripped, a timed-out write that landed)."""
        if inconsistent:
            log.error("gate_counters_inconsistent", epoch=self.tracker.epoch, decided_seq=self.tracker.decided_seq)
        if ambiguous:
            self.gate_ambiguous += ambiguous
            log.warning("gate_outcome_inferred_by_order", epoch=self.tracker.epoch, parts=ambiguous)
        for recorded, gate in corrected:
            self._uncount(recorded)
            self._count(gate)
            self.gate_corrections[f"{recorded.outcome.value}->{gate.outcome.value}"] += 1
            log.warning("gate_outcome_corrected", epoch=gate.part.epoch, seq=gate.part.seq,
                        recorded=recorded.reason.value, gate=gate.outcome.value, reason=gate.reason.value)  # fmt: skip
            job = self.journal.amend(gate.part.epoch, gate.part.seq, gate.outcome.value, gate.reason.value)
            self._spawn(self._journal_job(job), name=f"amend-{gate.part.seq}")
            self._publish_result(gate, None, None, None, None, corrected=True)  # panels see the correction too

    async def _journal_job(self, job: Awaitable[None]) -> None:
        try:
            await job
        except JournalError as exc:
            self.alarms.set("journal", True, str(exc))
        else:
            self.alarms.set("journal", False)

    async def _write_cycle(self) -> None:
        """This cycle's one write: heartbeat, `ready`, `epoch_ack` and every queued verdict still on
        time. Written only when there is a verdict or the heartbeat is due. Raises PlcError."""
        if self._acked_epoch is None or not self._plc_ok:
            return
        self._update_health()
        now = self._now()
        batch = self._take_outbox(now)
        if not batch and now - self._header_at < self.timing.heartbeat_s:
            return
        for q in batch:
            self._block.put(q.entry)
            q.done.part.writing = True
        self._block.clear_decided(self.tracker.decided_seq)
        self._life = (self._life + 1) % 65536
        command = (codec.READY if self.ready else 0) | (codec.REQUEST_SHADOW if self.operator.shadow_requested else 0)
        self._block.set_header(codec.VisionHeader(self._life, command, codec.INTERFACE_VERSION, self._acked_epoch))
        t_write = self._now()
        try:
            for offset, data in self._block.next_writes(self.plc.max_write_bytes):
                t_request = self._now()
                await self.plc.write_vision_to_plc(offset, data)
                self._learn_write_time(self._now() - t_request)
        except (PlcError, asyncio.CancelledError):
            # It may have landed or not: record fail-safe with the verdict written, take the entries
            # back in the next write, and let the gate counters tell what really happened
            # (Tracker._reconcile; after a stop, a restarted controller's resume).
            for q in batch:
                self._block.retract(q.entry.seq)
                verdict = Outcome.REJECT if q.entry.verdict == codec.REJECT else Outcome.PASS
                failed = self.tracker.write_failed(q.done.part, verdict)
                self._finish_all([failed], q.frame, q.result, q.t_start, q.t_end)
            raise
        t_written = self._now()
        self._block.written()
        self._header_at = t_write
        for q in batch:
            self.budget.learn_queue(t_write - q.t_end)
            p = q.done.part
            if self.tracker.finish(p, q.done.outcome, q.done.reason) is None:
                continue  # the epoch changed meanwhile: already recorded as fail-safe
            self._count(q.done)
            self.latencies.append(t_written - p.seen_at)
            if t_written - q.t_end > SLOW_VERDICT_S:
                log.info("slow_verdict", seq=p.seq, journal_ms=round((q.t_durable - q.t_end) * 1e3, 1),
                         queued_ms=round((t_write - q.t_durable) * 1e3, 1),
                         write_ms=round((t_written - t_write) * 1e3, 1))  # fmt: skip
            # Queued now, before any later record: a restarted controller tells acknowledged writes by it.
            self._spawn(_settled(self.journal.note_written(p.epoch, p.seq, t_written)), name=f"written-{p.seq}")

    def _take_outbox(self, now: float) -> list[Queued]:
        """The queued verdicts that can still be on time; the others fail safe now, never written.
        An entry beyond the first request's reach lands one request later: checked that much later
        (a typical request: the margin itself already covers a slow one)."""
        batch = []
        second = self._block.first_request_end(self.plc.max_write_bytes)
        for key, q in list(self._outbox.items()):
            del self._outbox[key]
            part = q.done.part
            if not self.tracker.is_open(part):
                continue  # already has its outcome (epoch changed, controller stopping)
            lands_after = self.budget.lands_after(codec.verdict_offset(part.seq) >= second)
            late = self.tracker.may_write(part, now + lands_after)
            if late is None and self._acked_epoch != part.epoch:
                late = Reason.EPOCH_CHANGED
            if late is not None:
                part.writing = False
                self._finish_all([self.tracker.finish(part, Outcome.FAILSAFE, late)], q.frame, q.result,
                                 q.t_start, q.t_end)  # fmt: skip
                continue
            batch.append(q)
        return batch

    # ------------------------------------------------------------------ camera
    async def _frame_loop(self) -> None:
        while True:
            _stop_if_cancelled()
            try:
                self._camera_ok = True
                self.alarms.set("camera", False)
                async for frame in self.camera.frames():
                    self._on_frame(frame)
                raise CameraError("camera stream ended")
            except CameraError as exc:
                self._camera_ok = False
                self.alarms.set("camera", True, str(exc))
                self._update_health()
                await asyncio.sleep(0.5)  # the source reconnects when iterated again

    def _on_frame(self, frame: Frame) -> None:
        self._frames[frame.counter] = frame
        while len(self._frames) > MAX_PENDING_FRAMES:
            del self._frames[next(iter(self._frames))]
            self.frames_dropped += 1
        exposed = frame.exposed_at
        if exposed is None:
            exposed = frame.received_at - self.matcher.window.frame_latency_s
        self._dispatch(self.matcher.on_frame(frame.counter, exposed, frame.received_at))

    # ------------------------------------------------------------------ per part
    def _dispatch(self, matches: list[Match]) -> None:
        for m in matches:
            frame = self._frames.pop(m.frame_counter, None)
            part = self.tracker.parts.get(m.seq)
            if frame is None or part is None:
                continue
            part.frame_counter = m.frame_counter
            self._spawn(self._judge(part, frame), name=f"judge-{part.epoch}-{part.seq}")

    async def _judge(self, part: Part, frame: Frame) -> None:
        """Admit, infer, record durably, then queue the verdict — each step only while on time."""
        t_start = self._now()
        # Admission here, not where the frame was matched: between this check and `infer` taking the
        # frame there is no await, so parts matched together see each other's load on the workers.
        refused = self.tracker.admit(part, t_start, self.budget.admission_s(self.inference.expected_latency_s))
        if refused is Reason.NO_BUDGET and not self.inference.healthy:
            refused = Reason.INFERENCE_UNAVAILABLE
        if refused is not None:
            self._finish_all([self.tracker.finish(part, Outcome.FAILSAFE, refused)], frame=frame)
            return
        wait = self.budget.inference_wait(self.tracker.time_left(part, t_start))
        try:
            result = await self.inference.infer(frame.image, t_start + wait)
        except InferenceError as exc:
            reason = Reason.INFERENCE_UNAVAILABLE if not self.inference.healthy else Reason.INFERENCE_FAILED
            now = self._now()
            timed_out = self.inference.healthy and now >= t_start + wait  # too slow, not broken
            if timed_out or self.tracker.may_write(part, now) is Reason.LATE:
                reason = Reason.LATE
            log.info("inference_failed", epoch=part.epoch, seq=part.seq, error=str(exc))
            self._finish_all([self.tracker.finish(part, Outcome.FAILSAFE, reason)], frame=frame)
            return
        t_end = self._now()
        self._model_version = result.model_version
        late = self.tracker.may_write(part, t_end)
        if late is not None:
            self._finish_all([self.tracker.finish(part, Outcome.FAILSAFE, late)], frame, result, t_start, t_end)
            return
        outcome, reason = (Outcome.REJECT, Reason.MODEL_REJECT) if result.reject else (Outcome.PASS, Reason.MODEL_PASS)
        done = Finished(part, outcome, reason)
        try:
            await self._record(done, frame, result, t_start, t_end)
        except JournalError as exc:
            self.alarms.set("journal", True, str(exc))
            self._finish_all([self.tracker.finish(part, Outcome.FAILSAFE, Reason.JOURNAL_FAILED)])
            return
        self.alarms.set("journal", False)
        # The record says PASS/REJECT; if the write cannot happen in time, the record is replaced.
        late = self.tracker.may_write(part, self._now())
        if late is not None or self._acked_epoch != part.epoch:
            self._finish_all([self.tracker.finish(part, Outcome.FAILSAFE, late or Reason.EPOCH_CHANGED)],
                             frame, result, t_start, t_end)  # fmt: skip
            return
        entry = codec.VerdictEntry(
            part.seq, codec.REJECT if result.reject else codec.PASS, result.defect_class,
            codec.score_to_word(result.score),
        )  # fmt: skip
        part.writing = True  # the exchange loop owns its outcome from here
        self._outbox[part.epoch, part.seq] = Queued(done, entry, frame, result, t_start, t_end, self._now())
        self._verdict_queued.set()
        if self.drift.observe(result.model_version, result.brightness, result.focus, result.score, not result.reject):
            self.alarms.set("drift", self.drift.alarm, self.drift.detail)
        if result.threshold is not None and abs(result.score - result.threshold) <= REVIEW_BAND:
            self._spawn(_settled(self.journal.note_review(part.epoch, part.seq, "near_threshold")), name="review")

    def _learn_write_time(self, seconds: float) -> None:
        self.budget.learn_write(seconds)
        if self.budget.write_s != self.tracker.margins.write_s:
            self.tracker.margins = replace(self.tracker.margins, write_s=self.budget.write_s)

    # ------------------------------------------------------------------ outcomes
    def _finish_all(
        self, finished: Sequence[Finished | None], frame: Frame | None = None,
        result: InferenceResult | None = None, t_start: float | None = None, t_end: float | None = None,
    ) -> None:  # fmt: skip
        for done in finished:
            if done is None:
                continue  # already had its outcome
            this_epoch = done.part.epoch == self.tracker.epoch  # the matcher only knows this epoch's triggers
            why = self.matcher.explain(done.part.seq) if this_epoch and done.reason is Reason.NO_FRAME else None
            if this_epoch:
                self.matcher.forget_trigger(done.part.seq)
            self._count(done)
            if done.outcome is Outcome.FAILSAFE:
                log.info("failsafe", epoch=done.part.epoch, seq=done.part.seq, reason=done.reason.value,
                         **({"match": why} if why else {}))
            job = self._record(done, frame, result, t_start, t_end)
            self._spawn(self._journal_job(job), name=f"record-{done.part.seq}")

    def _count(self, done: Finished) -> None:
        self.outcomes[done.outcome.value] += 1
        if done.outcome is Outcome.FAILSAFE:
            self.reasons[done.reason.value] += 1

    def _uncount(self, done: Finished) -> None:
        self.outcomes[done.outcome.value] -= 1
        if done.outcome is Outcome.FAILSAFE:
            self.reasons[done.reason.value] -= 1

    def _record(
        self, done: Finished, frame: Frame | None = None, result: InferenceResult | None = None,
        t_start: float | None = None, t_end: float | None = None,
    ) -> Awaitable[None]:  # fmt: skip
        """Queue the part's record in the journal now (journal order is decision order)."""
        p = done.part
        self._publish_result(done, frame, result, t_start, t_end)
        written = None
        if result is not None and done.reason in _WRITTEN:
            written = Outcome.REJECT.value if result.reject else Outcome.PASS.value
        return self.journal.record(PartRecord(
            epoch=p.epoch, seq=p.seq, outcome=done.outcome.value, reason=done.reason.value,
            trigger_pos=p.trigger_pos, frame_counter=p.frame_counter,
            defect_class=result.defect_class if result else None, score=result.score if result else None,
            model_version=result.model_version if result else None, worker=result.worker if result else None,
            t_trigger_seen=p.seen_at, t_frame=frame.received_at if frame else None,
            t_infer_start=t_start, t_infer_end=t_end, t_decided=self._now(),
            wall_utc=datetime.now(UTC).isoformat(timespec="milliseconds"), written_verdict=written,
            image=frame.image if frame else None,
        ))  # fmt: skip

    def _publish_result(self, done: Finished, frame: Frame | None, result: InferenceResult | None,
                        t_start: float | None, t_end: float | None, *, corrected: bool = False) -> None:  # fmt: skip
        p = done.part

        def ms(a: float | None, b: float | None) -> float | None:
            return round((b - a) * 1000, 3) if a is not None and b is not None else None

        self.on_result(PartResult(
            p.epoch, p.seq, datetime.now(UTC).isoformat(timespec="milliseconds"), done.outcome.value,
            done.reason.value, result.defect_class if result else None, result.score if result else None,
            result.model_version if result else "", ms(p.seen_at, frame.received_at if frame else None),
            ms(t_start, t_end), ms(p.seen_at, self._now()), corrected,
        ))  # fmt: skip

    # ------------------------------------------------------------------ status
    def status(self) -> LineStatus:
        lat = sorted(self.latencies)
        snap = self._snapshot
        return LineStatus(
            state=self.health, ready_bit=self.ready, epoch=self.tracker.epoch or 0,
            line_running=bool(snap and snap.line_running), vision_enabled=bool(snap and snap.vision_enabled),
            shadow_mode=bool(snap and snap.shadow_mode), watchdog_tripped=bool(snap and snap.watchdog_tripped),
            product_id=snap.product_id if snap else 0, shadow_counts=dict(self.decisions.counts),
            drift=dict(self.drift.figures),
            speed_counts_per_s=snap.speed if snap else 0.0,
            triggers=sum(self.outcomes.values()) + len(self.tracker.parts),
            passes=self.outcomes["pass"], rejects=self.outcomes["reject"], failsafe=self.outcomes["failsafe"],
            failsafe_by_reason=dict(self.reasons),
            latency_p50_ms=lat[len(lat) // 2] * 1000 if lat else 0.0,
            latency_p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0,
            plc_rejects_vision=snap.rejects_vision if snap else 0,
            plc_rejects_failsafe=snap.rejects_failsafe if snap else 0,
            plc_verdicts_late=snap.verdicts_late if snap else 0,
            plc_watchdog_trips=snap.watchdog_trips if snap else 0,
            alarms=self.alarms.active, model_version=self._model_version, vision_state=self.vision_state.value,
            plc_connected=self._plc_ok, inference_in_flight=sum(t.get_name().startswith("judge-") for t in self._tasks),
            log_lines_dropped=logs.dropped(),
            shadow_requested=self.operator.shadow_requested, conditions=self.alarms.conditions,
            recipes=self.recipes, active_recipe=next((r.id for r in self.recipes
                                                      if r.version and r.version == self._model_version), ""),
            recent_actions=tuple(self._actions),
        )  # fmt: skip

    async def _status_loop(self) -> None:
        while True:
            self._update_health()  # also while the PLC is unreachable and no exchange runs
            self.on_status(self.status())
            await asyncio.sleep(0.2)


async def _settled(job: Awaitable[None]) -> None:
    await job


def _drift_reference_of(model: Path) -> DriftReference | None:
    path = model.with_suffix(".drift.json")
    return DriftReference.from_json(json.loads(path.read_text())) if path.is_file() else None


async def _settled_all(jobs: list[Awaitable[None]]) -> None:
    await asyncio.gather(*jobs)


def _first_leaf(group: BaseExceptionGroup[ConfigError]) -> ConfigError:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _stop_if_cancelled() -> None:
    """Python 3.11's asyncio.wait_for, used inside python-snap7, can swallow a cancellation that
    arrives as its inner await completes. Supervised loops check at every turn so that a
    requested stop always ends them."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


__all__ = ["ControllerError", "LineController", "Timing"]
