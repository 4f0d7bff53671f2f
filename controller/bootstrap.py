"""The composition root: reads the configuration, builds the real or simulated parts, connects them
in parallel under one AsyncExitStack, and runs the controller. The only runtime module that may
import `sim/` (enforced by import-linter in pyproject.toml).

Not here: any per-part logic (controller/app.py), argument parsing (controller/cli.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from controller.app import LineController, Timing
from controller.config import LineConfig, StreamCameraConfig
from controller.errors import ConfigError, ControllerError
from controller.frame_matching import MatchWindow
from controller.frame_stream import StreamCamera
from controller.journal import SqliteJournal
from controller.plc_link import Snap7PlcLink
from controller.ports import FrameSource
from controller.status import LineStatus
from controller.tracking import Margins

log = structlog.get_logger("lineinspect.bootstrap")


class NotConnectedError(ControllerError):
    """One or more devices failed to connect; the message names each of them."""


def _build_camera(cfg: LineConfig) -> Any:
    cam = cfg.camera
    if isinstance(cam, StreamCameraConfig):
        return StreamCamera(cam.host, cam.port, host_clock=cam.host_clock)
    from controller.pylon_camera import PylonCamera  # pypylon loads its transport layers on import

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
        ray.init(
            address=inf.ray_address or "local", include_dashboard=False, log_to_driver=False,
            num_cpus=None if inf.ray_address else max(2, inf.actors), configure_logging=False,
        )  # fmt: skip
    return RayInferencePool(
        inf.model, num_actors=inf.actors, max_in_flight_per_actor=max(inf.max_in_flight_per_actor, inf.max_batch),
        engine=inf.engine, num_gpus=inf.num_gpus, max_batch=inf.max_batch, spread=inf.spread,
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
    injection uses it to kill a worker or swap the model mid-run. `wrap_inference` puts a
    simulated fault on the inference path (sim/slow_inference.py)."""
    inference = _build_inference(cfg)
    if wrap_inference is not None:
        inference = wrap_inference(inference)
    plc = Snap7PlcLink(
        cfg.plc.host, cfg.plc.port, rack=cfg.plc.rack, slot=cfg.plc.slot, db_in=cfg.plc.db_plc_to_vision,
        db_out=cfg.plc.db_vision_to_plc, timeout_s=cfg.plc.request_timeout_ms / 1000,
        connect_timeout_s=cfg.plc.connect_timeout_s,
    )  # fmt: skip
    camera: FrameSource = _build_camera(cfg)
    journal = SqliteJournal(cfg.journal.path, max_images=cfg.journal.max_images)
    async with AsyncExitStack() as stack:
        await _connect_all(stack, {"plc": plc, "camera": camera, "inference": inference, "journal": journal})
        publishers = [on_status] if on_status else []
        if cfg.hmi.enabled:
            from hmi.server import HmiServer

            hmi = await stack.enter_async_context(HmiServer(cfg.hmi.endpoint))
            publishers.append(hmi.publish)
        d = cfg.deadline
        controller = LineController(
            plc, camera, inference, journal,
            margins=Margins(write_s=d.write_margin_ms / 1000, plc_cycle_s=d.plc_cycle_ms / 1000),
            window=MatchWindow(cfg.match.frame_latency_ms / 1000, cfg.match.tolerance_ms / 1000),
            timing=Timing(
                poll_s=cfg.plc.poll_ms / 1000, heartbeat_s=cfg.plc.heartbeat_ms / 1000,
                stale_s=cfg.plc.stale_ms / 1000, min_part_pitch_counts=d.min_part_pitch_counts,
            ),
            on_status=lambda status: _publish_all(publishers, status),
        )  # fmt: skip
        log.info("controller_started", plc=plc.name, camera=type(camera).__name__, hmi=cfg.hmi.enabled)
        run = asyncio.create_task(controller.run(), name="controller")
        if started is not None:
            started.set_result((controller, inference))
        waiter = asyncio.create_task((stop or asyncio.Event()).wait(), name="stop")
        await asyncio.wait({run, waiter}, return_when=asyncio.FIRST_COMPLETED)
        waiter.cancel()
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        return controller


def _publish_all(publishers: list[Callable[[LineStatus], None]], status: LineStatus) -> None:
    for publish in publishers:
        publish(status)


# ---------------------------------------------------------------------- the simulated line
@dataclass
class SimRun:
    parts: int = 200
    seed: int = 1
    speed_mm_s: float = 1000.0
    decision_mm: float = 400.0
    rate_parts_s: float = 20.0
    workdir: Path = Path("runs/latest")
    inference: str = "ray"
    actors: int = 1
    model: Path | None = None
    """None: the shipped model."""
    hmi: bool = True
    scenario: str = "steady"
    """A named line condition or fault (sim/scenarios.py)."""
    ray_address: str | None = None
    kill_actor_after: int | None = None
    """Fault: kill one inference actor once this many parts have their outcome."""
    swap_model_after: int | None = None
    swap_model: Path | None = None
    """Hot-swap to this model once `swap_model_after` parts have their outcome."""
    extra: dict[str, Any] = field(default_factory=dict)


_INFERENCE_DOWN = frozenset({"inference_failed", "inference_unavailable", "no_budget", "late", "not_ready"})
"""Fail-safe reasons a killed worker or a model swap may cause."""


class _SimFaults:
    """Faults injected into the controller's own side during a simulated run, by part count."""

    def __init__(self, run: SimRun, started: asyncio.Future[tuple[LineController, Any]], stall_s: float) -> None:
        self.run, self.started = run, started
        self.done: dict[str, Any] = {}
        """Faults on the inference side (their fail-safe reasons are allowed once injected)."""
        self.stall_s = stall_s
        self.stalled_after: int | None = None

    async def inject(self, status: LineStatus) -> None:
        if not self.started.done():
            return
        _, inference = self.started.result()
        decided = status.passes + status.rejects + status.failsafe
        run = self.run
        if self.stall_s > 0 and self.stalled_after is None and decided >= run.parts // 3:
            from sim.stall import freeze

            self.stalled_after = decided
            log.warning("fault_injected", fault="controller_stall", seconds=self.stall_s, after_parts=decided)
            freeze(self.stall_s)
        if run.kill_actor_after is not None and "kill_actor" not in self.done and decided >= run.kill_actor_after:
            import ray

            ray.kill(inference.actor_handles[0], no_restart=False)  # Ray restarts it (max_restarts)
            self.done["kill_actor"] = {"after_parts": decided}
            log.warning("fault_injected", fault="kill_actor", after_parts=decided)
        if run.swap_model is not None and "swap_model" not in self.done and decided >= (run.swap_model_after or 0):
            self.done["swap_model"] = {"after_parts": decided, "version": await inference.swap_model(run.swap_model)}
            log.info("model_swapped", after_parts=decided, version=self.done["swap_model"]["version"])


def scenario_names() -> list[str]:
    from sim.scenarios import SCENARIOS

    return list(SCENARIOS)


def serve_simulated_line(
    *, parts: int, seed: int, speed_mm_s: float, decision_mm: float, pitch_mm: float, out: Path,
    plc_port: int, camera_port: int, wait_s: float, scenario: str = "steady",
) -> int:  # fmt: skip
    """`lineinspect sim-line`: the simulated PLC and camera for a controller in another process."""
    from sim.line import serve
    from sim.plant import PlantConfig

    spread = pitch_mm * 0.3  # uniform pitch in ±30 % of the mean
    cfg = PlantConfig(speed_mm_s=speed_mm_s, decision_mm=decision_mm, parts=parts, seed=seed,
                      pitch_mm=(pitch_mm - spread, pitch_mm + spread))  # fmt: skip
    return serve(cfg, out=out, plc_port=plc_port, camera_port=camera_port, wait_s=wait_s, scenario=scenario)


def _fresh_workdir(workdir: Path) -> Path:
    """A run's folder with no journal from an earlier run; returns the journal path."""
    workdir.mkdir(parents=True, exist_ok=True)
    journal_path = workdir / "journal.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{journal_path}{suffix}").unlink(missing_ok=True)
    return journal_path


def _alarms_unexpected(seen: dict[str, dict[str, int]], expected: frozenset[str]) -> dict[str, str]:
    """Each expected alarm raised exactly once and cleared exactly once; no other alarm at all."""
    out = {}
    for name in sorted(expected | set(seen)):
        got = seen.get(name, {"raised": 0, "cleared": 0})
        want = (1, 1) if name in expected else (0, 0)
        if (got["raised"], got["cleared"]) != want:
            out[name] = f"raised {got['raised']}, cleared {got['cleared']} (want {want[0]}, {want[1]})"
    return out


def _merged(base: dict[str, Any], override: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`base` with each section of `override` laid over the section of the same name."""
    return {**base, **{k: {**base.get(k, {}), **v} for k, v in override.items()}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def run_simulated_line(
    run: SimRun, *, progress: Callable[[LineStatus, int], None] | None = None
) -> dict[str, Any]:
    """`lineinspect sim`: the line simulator as its own process over S7 and the frame stream, the
    controller here, then the judge's summary."""
    from sim.judge import judge
    from sim.plots import plot_run
    from sim.scenarios import SCENARIOS

    scenario = SCENARIOS[run.scenario]
    if scenario.kill_actor_after is not None and run.kill_actor_after is None:
        # A third into a short run at the latest, so the worker is back before the line ends.
        run = replace(run, kill_actor_after=min(scenario.kill_actor_after, run.parts // 3))

    journal_path = _fresh_workdir(run.workdir)
    report_path = run.workdir / "sim-report.json"
    mean_pitch = run.speed_mm_s / run.rate_parts_s
    cmd = [
        sys.executable, "-m", "controller.cli", "sim-line", "--parts", str(run.parts), "--seed", str(run.seed),
        "--speed", str(run.speed_mm_s), "--decision-mm", str(run.decision_mm),
        "--pitch-mm", str(mean_pitch), "--out", str(report_path), "--scenario", run.scenario,
    ]  # fmt: skip
    with (run.workdir / "sim-line.log").open("wb") as sim_log:
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=sim_log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    assert proc.stdout is not None
    try:
        hello = json.loads(await asyncio.wait_for(proc.stdout.readline(), 60))
        if hello.get("event") != "listening":
            raise ControllerError(f"line simulator failed to start: {hello}")
        cfg = LineConfig.model_validate(_merged({
            "plc": {"port": hello["plc_port"]},
            "camera": {"type": "stream", "port": hello["camera_port"], "host_clock": True},
            "inference": {
                "type": run.inference,
                **({"actors": run.actors, "ray_address": run.ray_address} if run.inference == "ray" else {}),
                **({"model": str(run.model)} if run.model else {}),
            },
            "journal": {"path": str(journal_path)},
            "hmi": {"enabled": run.hmi, "endpoint": f"opc.tcp://127.0.0.1:{_free_port()}/lineinspect/"},
            "deadline": {"min_part_pitch_counts": int(mean_pitch * 0.7 * 10)},
            **run.extra,
        }, scenario.controller))  # fmt: skip
        stop = asyncio.Event()
        latest: list[LineStatus] = []
        running: asyncio.Future[tuple[LineController, Any]] = asyncio.get_running_loop().create_future()
        wrap = None
        if scenario.inference.slow_rate > 0:
            from sim.slow_inference import SimSlowInference

            def wrap(inner: Any) -> Any:
                return SimSlowInference(inner, scenario.inference, seed=run.seed)

        ctl_task = asyncio.create_task(run_controller(cfg, stop=stop, on_status=latest.append, started=running,
                                                      wrap_inference=wrap))  # fmt: skip
        faults = _SimFaults(run, running, scenario.stall_controller_s)

        async def watch_sim() -> dict[str, Any]:
            assert proc.stdout is not None
            while line := await proc.stdout.readline():
                msg = json.loads(line)
                if msg["event"] in ("done", "error"):
                    return dict(msg)
            return {"event": "error", "error": "line simulator exited"}

        sim_task = asyncio.create_task(watch_sim())
        started = time.monotonic()
        while not sim_task.done():
            if ctl_task.done():
                sim_task.cancel()
                await ctl_task  # raises the controller's start-up error
                raise ControllerError("controller stopped before the run ended")
            if latest:
                if progress:
                    progress(latest[-1], run.parts)
                await faults.inject(latest[-1])
                latest[:] = latest[-1:]
            await asyncio.sleep(0.25)
        end = sim_task.result()
        stop.set()
        controller = await ctl_task
        assert proc.stdin is not None
        proc.stdin.close()  # the simulator may go now
        if end["event"] != "done":
            raise ControllerError(f"line simulator: {end.get('error')}")
        report = json.loads(report_path.read_text())
        summary = judge(report, journal_path)
        summary["controller"] = {
            "frames_dropped": controller.frames_dropped,
            "spurious_frames": controller.matcher.spurious_frames,
            "alarms_raised": controller.alarms.raised_count,
            "gate_corrections": dict(controller.gate_corrections),
            "gate_inferred_by_order": controller.gate_ambiguous,
            "write_margin_ms": controller.tracker.margins.write_s * 1000,
            "verdict_queue_p95_ms": controller.queue_s * 1000,
            "wall_s": time.monotonic() - started,
        }
        summary["faults"] = faults.done
        slowed = getattr(running.result()[1], "slowed", None) if running.done() else None
        if slowed is not None:
            summary["controller"]["inferences_slowed"] = slowed
        if faults.stalled_after is not None:
            summary["controller"]["stalled"] = {"seconds": faults.stall_s, "after_parts": faults.stalled_after}
        summary["scenario"] = scenario.name
        # Fail-safe rejects are acceptable only where the scenario's fault explains their reason.
        allowed = scenario.failsafe_allowed | (_INFERENCE_DOWN if faults.done else frozenset())
        unexplained = {r: n for r, n in summary["failsafe_by_reason"].items() if r not in allowed}
        summary["failsafe_unexplained"] = unexplained
        summary["alarms"] = {name: {"raised": n, "cleared": controller.alarms.cleared_count.get(name, 0)}
                             for name, n in controller.alarms.raised_count.items()}  # fmt: skip
        summary["alarms_unexpected"] = _alarms_unexpected(summary["alarms"], scenario.alarms)
        summary["criterion"] = (
            "nothing lost (0 misassociations, 0 passes without own in-time PASS, one outcome per trigger, "
            "journal = gate); fail-safe only for " + (", ".join(sorted(allowed)) or "nothing") + "; alarms "
            + (", ".join(f"{a} raised and cleared once" for a in sorted(scenario.alarms)) or "none") + ", no other"
        )  # fmt: skip
        summary["ok"] = summary["nothing_lost"] and not unexplained and not summary["alarms_unexpected"]
        summary["journal"] = str(journal_path)
        summary["plot"] = str(plot_run(report, run.workdir / "timing.png"))
        return summary
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
