"""The composition root: reads the configuration, builds the parts, connects them in parallel under
one AsyncExitStack, and runs the controller. It never imports `sim/`: the simulator's PLC and
camera are reached over the network like real ones (import-linter in pyproject.toml checks it).

Not here: any per-part logic (controller/app.py), argument parsing (controller/cli.py), running
the simulated line (sim/runner.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, TypeVar

import structlog

from controller.adapters.exclusive_lock import hold_exclusive_lock, plc_lock_path
from controller.adapters.frame_stream import StreamCamera
from controller.adapters.journal import Retention, SqliteJournal
from controller.adapters.memory_lock import lock_memory
from controller.adapters.plc_link import Snap7PlcLink
from controller.adapters.systemd import SystemdNotifier
from controller.app import LineController, Timing
from controller.config import LineConfig, StreamCameraConfig
from controller.core.drift import DriftReference
from controller.core.frame_matching import MatchWindow
from controller.core.tracking import Margins
from controller.errors import ConfigError, ControllerError
from controller.ports import FrameSource
from controller.registry import Active, products, read_active
from controller.status import LineStatus, PartResult, Recipe

_T = TypeVar("_T")
log = structlog.get_logger("lineinspect.bootstrap")


class NotConnectedError(ControllerError):
    """One or more devices failed to connect; the message names each of them."""


def _build_camera(cfg: LineConfig) -> Any:
    cam = cfg.camera
    if isinstance(cam, StreamCameraConfig):
        return StreamCamera(cam.host, cam.port, host_clock=cam.host_clock)
    from controller.adapters.pylon_camera import PylonCamera  # pypylon loads its transport layers on import

    return PylonCamera(cam.serial, trigger_source=cam.trigger_source)


def _build_inference(cfg: LineConfig) -> Any:
    inf = cfg.inference
    if not inf.model.is_file():
        raise ConfigError(f"model file {inf.model} not found (inference.model)")
    if inf.type == "local":
        from workers.local_pool import LocalInferencePool

        return LocalInferencePool(inf.model, threads=inf.threads)
    import ray

    from workers.ray_pool import RayInferencePool

    if not ray.is_initialized():
        # "local": always a fresh local Ray, never an unrelated cluster found running on this host.
        # Its driver-side loggers reach ours (configure_logging=False); its actors log JSON into
        # Ray's session folder (log_to_driver=False: nothing unformatted on our stderr).
        ray.init(
            address=inf.ray_address or "local", include_dashboard=False, log_to_driver=False,
            num_cpus=None if inf.ray_address else max(2, inf.actors), configure_logging=False,
            logging_config=ray.LoggingConfig(encoding="JSON", log_level="WARNING"),
        )  # fmt: skip
    return RayInferencePool(
        inf.model, num_actors=inf.actors, max_in_flight_per_actor=max(inf.max_in_flight_per_actor, inf.max_batch),
        engine=inf.engine, num_gpus=inf.num_gpus, max_batch=inf.max_batch, spread=inf.spread, dispatch=inf.dispatch,
        engine_cache_dir=inf.engine_cache_dir if inf.engine == "tensorrt" else None,
    )  # fmt: skip


async def _connect_all(stack: AsyncExitStack, devices: dict[str, Any]) -> None:
    """Enter every device's context in parallel; report every failure by name, keep nothing half-open."""

    async def enter(name: str, dev: Any) -> tuple[str, AsyncExitStack]:
        sub = AsyncExitStack()
        await sub.enter_async_context(dev)
        return name, sub

    results = await asyncio.gather(*(enter(n, d) for n, d in devices.items()), return_exceptions=True)
    failures = [f"{name}: {r}" for name, r in zip(devices, results, strict=True) if isinstance(r, BaseException)]
    for r in results:
        if not isinstance(r, BaseException):
            stack.push_async_callback(r[1].aclose)
    if failures:
        await stack.aclose()
        raise NotConnectedError("; ".join(failures))


async def run_controller(
    cfg: LineConfig, *, stop: asyncio.Event | None = None,
    on_status: Callable[[LineStatus], None] | None = None,
    started: asyncio.Future[tuple[LineController, Any]] | None = None,
    wrap_inference: Callable[[Any], Any] | None = None,
) -> LineController:  # fmt: skip
    """Connect everything, run until `stop` is set (or forever), and shut down cleanly.
    `started` receives (controller, inference service) once running: the simulator's fault
    injection uses it to kill a worker or swap the model mid-run. `wrap_inference` lets it put a
    fault on the inference path (sim/slow_inference.py)."""
    # Before anything is built or connects (Ray included): a second controller of this line stops
    # here, with one line, and disturbs nothing of the one running.
    c = cfg.plc
    plc_lock = hold_exclusive_lock(plc_lock_path(c.host, c.port, c.rack, c.slot),
                                   f"PLC {c.host}:{c.port} (rack {c.rack}, slot {c.slot})")  # fmt: skip
    try:
        return await _run_locked(cfg, stop, on_status, started, wrap_inference)
    finally:
        os.close(plc_lock)


async def _run_locked(
    cfg: LineConfig, stop: asyncio.Event | None, on_status: Callable[[LineStatus], None] | None,
    started: asyncio.Future[tuple[LineController, Any]] | None, wrap_inference: Callable[[Any], Any] | None,
) -> LineController:  # fmt: skip
    cfg, started_on = _from_registry(cfg)
    inference = _build_inference(cfg)
    if wrap_inference is not None:
        inference = wrap_inference(inference)
    plc = Snap7PlcLink(
        cfg.plc.host, cfg.plc.port, rack=cfg.plc.rack, slot=cfg.plc.slot, db_in=cfg.plc.db_plc_to_vision,
        db_out=cfg.plc.db_vision_to_plc, timeout_s=cfg.plc.request_timeout_ms / 1000,
        connect_timeout_s=cfg.plc.connect_timeout_s,
    )  # fmt: skip
    camera: FrameSource = _build_camera(cfg)
    j = cfg.journal
    retention = Retention(images_days=j.keep_images_days, records_days=j.keep_records_days,
                          max_bytes=int(j.max_size_mb * 1e6) if j.max_size_mb else None)  # fmt: skip
    journal = SqliteJournal(j.path, max_images=j.max_images, stall_s=j.stall_ms / 1000, check_every_s=j.check_every_s,
                            retention=retention)  # fmt: skip
    async with AsyncExitStack() as stack:
        await _connect_all(stack, {"plc": plc, "camera": camera, "inference": inference, "journal": journal})
        publishers = [on_status] if on_status else []
        result_sinks: list[Callable[[PartResult], None]] = []
        operated: list[LineController] = []  # the controller, once built: the HMI's commands go to it
        if cfg.hmi.enabled:
            # Its own process (asyncua never runs in this event loop), fed snapshots, restarted when
            # it dies; the controller neither waits for it to listen nor notices when it is down.
            from hmi.process import HmiProcess
            from hmi.settings import hmi_settings

            settings = hmi_settings(cfg.hmi, cfg.journal.path).model_dump_json()
            hmi = await stack.enter_async_context(HmiProcess(
                cfg.hmi.endpoint, settings_json=settings,
                on_command=lambda c: _operate(operated, c), on_audit=lambda a: _audit(operated, a),
            ))  # fmt: skip
            publishers.append(hmi.publish)
            result_sinks.append(hmi.publish_result)
        from workers.recipes import scan_recipes

        inf = cfg.inference
        # With a registry its products are the recipes, each at its active version: only a promotion
        # puts a version on the line.
        recipes: tuple[Recipe, ...] = ()
        if inf.registry is not None:
            recipes = await asyncio.to_thread(_registry_recipes, inf.registry)
        elif inf.recipes_dir is not None:
            recipes = await asyncio.to_thread(scan_recipes, inf.recipes_dir)
        else:
            recipes = await asyncio.to_thread(scan_recipes, inf.model.resolve().parent.parent)
        d = cfg.deadline
        controller = LineController(
            plc, camera, inference, journal,
            margins=Margins(write_s=d.write_margin_ms / 1000, plc_cycle_s=d.plc_cycle_ms / 1000),
            window=MatchWindow(cfg.match.frame_latency_ms / 1000, cfg.match.tolerance_ms / 1000,
                               cfg.match.same_part_ms / 1000, cfg.match.frame_delay_ms / 1000),
            timing=Timing(
                poll_s=cfg.plc.poll_ms / 1000, heartbeat_s=cfg.plc.heartbeat_ms / 1000,
                stale_s=cfg.plc.stale_ms / 1000, min_part_pitch_counts=d.min_part_pitch_counts,
                plc_max_cycle_s=d.plc_max_cycle_ms / 1000, trigger_latency_s=d.trigger_latency_ms / 1000,
            ),
            on_status=lambda status: _publish_all(publishers, status),
            on_result=lambda result: _publish_all(result_sinks, result), recipes=recipes,
            drift_references=_drift_references([inf.model, *(Path(r.model) for r in recipes)]),
            label_store=cfg.journal.path,
            registry=(inf.registry, inf.product) if inf.registry is not None else None, products=inf.products,
        )  # fmt: skip
        controller.operator.shadow_requested = cfg.plc.request_shadow
        if started_on is not None:
            controller.registry_seen = (started_on.version, started_on.utc)
        operated.append(controller)
        log.info("controller_started", plc=plc.name, camera=type(camera).__name__, hmi=cfg.hmi.enabled)
        systemd = SystemdNotifier()
        stack.callback(systemd.close)
        stack.callback(systemd.stopping)
        publishers.append(lambda status: systemd.watchdog())  # the status loop runs: the event loop lives
        systemd.ready(f"inspecting for PLC {plc.name}")
        gc_pauses = _settle_gc()
        unlocked = lock_memory()
        log.info("memory_locked", locked=unlocked is None, **({"why_not": unlocked} if unlocked else {}))
        run = asyncio.create_task(controller.run(), name="controller")
        if started is not None:
            started.set_result((controller, inference))
        waiter = asyncio.create_task((stop or asyncio.Event()).wait(), name="stop")
        try:
            await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:  # also when we are cancelled: the controller records its open parts before the journal closes
            waiter.cancel()
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
            gc_pauses.report()
        return controller


class _GcPauses:
    """The garbage collector's pauses (gc.callbacks), reported once as one log event."""

    def __init__(self, settle_ms: float) -> None:
        self.settle_ms, self.started = settle_ms, 0.0
        self.max_ms, self.count = [0.0, 0.0, 0.0], [0, 0, 0]
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        gen, ms = info["generation"], (time.perf_counter() - self.started) * 1000
        self.max_ms[gen], self.count[gen] = max(self.max_ms[gen], ms), self.count[gen] + 1

    def report(self) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self)
            log.info("gc_pauses", max_ms=[round(ms, 2) for ms in self.max_ms], collections=self.count,
                     thresholds=gc.get_threshold(), frozen=gc.get_freeze_count(),
                     settle_full_ms=round(self.settle_ms, 2))  # fmt: skip


GC_THRESHOLDS = (10_000, 10, 10)
"""Young collections every 10,000 net allocations, not Python's 700: each scans only objects born
since the last one (about a millisecond), and a full one comes 14 times less often."""


def _from_registry(cfg: LineConfig) -> tuple[LineConfig, Active | None]:
    """With a registry, the line starts on its product's active version."""
    inf = cfg.inference
    if inf.registry is None:
        if inf.products:
            raise ConfigError("inference.products maps the PLC's product ids to registry products: "
                              "it needs inference.registry")  # fmt: skip
        return cfg, None
    try:
        active = read_active(inf.registry, inf.product)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"inference.registry {inf.registry}: {inf.product}'s ACTIVE.json is unreadable: "
                          f"{exc}") from exc
    if active is None:
        raise ConfigError(f"inference.registry {inf.registry} has no active version of product {inf.product!r}: "
                          "`lineinspect registry add` one first")  # fmt: skip
    log.info("model_from_registry", product=inf.product, version=active.version, since=active.utc, by=active.by)
    return cfg.model_copy(update={"inference": inf.model_copy(update={"model": active.model})}), active


def _registry_recipes(registry: Path) -> tuple[Recipe, ...]:
    """Each registry product at its active version, as a recipe the HMI can pick."""
    out = []
    for product in products(registry):
        active = read_active(registry, product)
        if active is not None:
            out.append(Recipe(product, str(active.model), version=active.version))
    return tuple(out)


def _drift_references(models: Sequence[Path]) -> list[DriftReference]:
    """The validation statistics written beside each model (`<model>.drift.json`, by training or
    `python -m models.drift_reference`); a model without them is not watched for drift."""
    found = []
    for model in dict.fromkeys(m.resolve() for m in models):
        path = model.with_suffix(".drift.json")
        if not path.is_file():
            log.info("no_drift_reference", model=str(model))
            continue
        try:
            found.append(DriftReference.from_json(json.loads(path.read_text())))
        except (ValueError, OSError) as exc:  # json.JSONDecodeError is a ValueError
            log.warning("drift_reference_unusable", path=str(path), error=str(exc))  # drift is a warning, not a stop
    return found


def _settle_gc() -> _GcPauses:
    """Once started (models loaded, connections up), everything allocated so far lives as long as
    the process: collect once, then freeze it out of the collector's reach, so a full collection
    scans only what the run itself keeps (it took 167-417 ms over the whole heap, inside a part's
    budget). Returns the pause recorder, whose report the run logs at its end: with that one full
    collection's time, what a full collection cost before the freeze."""
    started = time.perf_counter()
    gc.collect()
    settle_ms = (time.perf_counter() - started) * 1000
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return _GcPauses(settle_ms)


def _publish_all(publishers: Sequence[Callable[[_T], None]], item: _T) -> None:
    for publish in publishers:
        publish(item)


async def _operate(operated: list[LineController], c: Any) -> tuple[bool, str]:
    """An operator's command from the HMI process (hmi.messages.CommandMessage, validated there)."""
    if not operated:
        return False, "the controller is still starting"
    return await operated[0].operate(c.action, c.argument, user=c.user, role=c.role, peer=c.peer)


async def _audit(operated: list[LineController], a: Any) -> None:
    """What the HMI process handled itself (hmi.messages.AuditMessage): into the audit table."""
    if operated:
        await operated[0].audit(user=a.user, role=a.role, peer=a.peer, action=a.action, argument=a.argument,
                                result=a.result, detail=a.detail)  # fmt: skip
