"""`lineinspect sim`: the line simulator as its own process over S7 and the frame stream, the
controller beside it (sim/controllers.py), a scenario's fault injected by part count, then the
judge's summary with the scenario's pass criterion. Also `lineinspect sim-line`, the simulated line
alone for a controller started by hand.

Not here: the simulated line itself (sim/line.py), scoring (sim/judge.py), the controller
(controller/).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import structlog

from controller.config import LineConfig
from controller.errors import ControllerError
from controller.labels import add_labels
from controller.shadow_report import shadow_report
from hmi.settings import hmi_settings
from models.synthetic import ALL_CLASSES
from sim.controllers import ControllerProcess, InProcessController, Progress
from sim.hmi_demo import provision_demo
from sim.hmi_flood import SimHmiFlood
from sim.hmi_panel import PanelLog, SimPanel
from sim.journal_faults import MOUNTING, SimJournalFaults, cannot_mount
from sim.judge import judge
from sim.load import SimLoad
from sim.plant import PlantConfig
from sim.plots import plot_run
from sim.scenarios import SCENARIOS, Scenario

log = structlog.get_logger("lineinspect.sim")


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
    registry: Path | None = None
    """A model registry: the controller runs `product`'s active version and follows it."""
    product: str = "default"
    hmi: bool = True
    scenario: str = "steady"
    """A named line condition or fault (sim/scenarios.py)."""
    ray_address: str | None = None
    kill_actor_after: int | None = None
    """Fault: kill one inference actor once this many parts have their outcome."""
    swap_model_after: int | None = None
    swap_model: Path | None = None
    """Hot-swap to this model once `swap_model_after` parts have their outcome."""
    load: int = 0
    """Busy processes at the controller's priority while the line runs (sim/load.py)."""
    extra: dict[str, Any] = field(default_factory=dict)


PANEL_SUBSCRIBE_S = 90.0
"""How long the line waits for its panel to subscribe (a secure login to the nice +19 HMI on a loaded
machine takes seconds); then it runs, and a panel that never subscribed fails the scenario."""
SIM_LINE_WAIT_S = PANEL_SUBSCRIBE_S + 60.0
"""`sim-line --wait-s` with a panel: longer than the runner holds it, so it is the runner that decides."""
_INFERENCE_DOWN = frozenset({"inference_failed", "inference_unavailable", "no_budget", "late", "not_ready"})
"""Fail-safe reasons a killed worker or a model swap may cause."""


class _InferenceFaults:
    """Faults injected on an in-process controller's inference side, by part count."""

    def __init__(self, run: SimRun, controller: InProcessController) -> None:
        self.run, self.controller = run, controller
        self.done: dict[str, Any] = {}

    @property
    def fault_struck(self) -> bool:
        return (self.run.kill_actor_after is None or "kill_actor" in self.done) and (
            self.run.swap_model is None or "swap_model" in self.done)

    async def inject(self, decided: int) -> None:
        if not self.controller.started.done():
            return
        _, inference = self.controller.started.result()
        run = self.run
        if run.kill_actor_after is not None and "kill_actor" not in self.done and decided >= run.kill_actor_after:
            import ray

            ray.kill(inference.actor_handles[0], no_restart=False)  # Ray restarts it (max_restarts)
            self.done["kill_actor"] = {"after_parts": decided}
            log.warning("fault_injected", fault="kill_actor", after_parts=decided)
        if run.swap_model is not None and "swap_model" not in self.done and decided >= (run.swap_model_after or 0):
            self.done["swap_model"] = {"after_parts": decided, "version": await inference.swap_model(run.swap_model)}
            log.info("model_swapped", after_parts=decided, version=self.done["swap_model"]["version"])


def serve_simulated_line(
    *, parts: int, seed: int, speed_mm_s: float, decision_mm: float, pitch_mm: float, out: Path,
    plc_port: int, camera_port: int, wait_s: float, scenario: str = "steady", hold: bool = False,
) -> int:  # fmt: skip
    """`lineinspect sim-line`: the simulated PLC and camera for a controller in another process."""
    from sim.line import serve

    spread = pitch_mm * 0.3  # uniform pitch in ±30 % of the mean
    cfg = PlantConfig(speed_mm_s=speed_mm_s, decision_mm=decision_mm, parts=parts, seed=seed,
                      pitch_mm=(pitch_mm - spread, pitch_mm + spread))  # fmt: skip
    return serve(cfg, out=out, plc_port=plc_port, camera_port=camera_port, wait_s=wait_s, scenario=scenario,
                 hold=hold)


class _Faults:
    """The run's fault injectors: the controller's (process or inference) and the journal's."""

    def __init__(self, main: Any, journal: SimJournalFaults) -> None:
        self.main, self.journal = main, journal

    @property
    def fault_struck(self) -> bool:
        return bool(self.main.fault_struck) and self.journal.fault_struck

    async def inject(self, decided: int) -> None:
        await self.main.inject(decided)
        await self.journal.inject(decided)


def _fresh_workdir(workdir: Path) -> Path:
    """A run's folder with no journal from an earlier run; returns the journal path."""
    workdir.mkdir(parents=True, exist_ok=True)
    journal_path = workdir / "journal.db"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{journal_path}{suffix}").unlink(missing_ok=True)
    return journal_path


def _alarms_unexpected(seen: dict[str, dict[str, int]], expected: frozenset[str], strikes: int = 1,
                       stay: frozenset[str] = frozenset()) -> dict[str, str]:  # fmt: skip
    """Each expected alarm raised exactly once and cleared exactly once, each of `stay` raised once
    and never cleared; no other alarm at all. With a fault that strikes several times: once per
    strike at most, and cleared as often."""
    out = {}
    for name in sorted(expected | stay | set(seen)):
        got = seen.get(name, {"raised": 0, "cleared": 0})
        want = (1, 0) if name in stay else (1, 1) if name in expected else (0, 0)
        if strikes > 1 and name in expected and 1 <= got["raised"] <= strikes and got["cleared"] == got["raised"]:
            continue
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


def _controller_config(run: SimRun, scenario: Scenario, hello: dict[str, Any], journal_path: Path) -> LineConfig:
    mean_pitch = run.speed_mm_s / run.rate_parts_s
    return LineConfig.model_validate(_merged({
        "plc": {"port": hello["plc_port"]},
        "camera": {"type": "stream", "port": hello["camera_port"], "host_clock": True},
        "inference": {
            "type": run.inference,
            **({"actors": run.actors, "ray_address": run.ray_address} if run.inference == "ray" else {}),
            **({"model": str(run.model)} if run.model else {}),
            **({"registry": str(run.registry), "product": run.product} if run.registry else {}),
        },
        "journal": {"path": str(journal_path)},
        # The HMI's certificates and users in the workdir, never on a journal filesystem a fault fills.
        "hmi": {"enabled": run.hmi, "endpoint": f"opc.tcp://127.0.0.1:{_free_port()}/lineinspect/",
                "pki_dir": str(run.workdir / "hmi-pki"), "users_file": str(run.workdir / "hmi-users.json"),
                "metrics": f"127.0.0.1:{_free_port()}"},
        # The simulator's PLC is a Python scan thread (1 ms, real-time priority where permitted): on
        # 2 loaded cores a scan still comes up to ~22 ms late (`plc_max_cycle_ms` in the summary
        # says what it kept). An edge reaches the block at the next scan: the same bound.
        "deadline": {"min_part_pitch_counts": int(mean_pitch * 0.7 * 10), "plc_max_cycle_ms": 25.0,
                     "trigger_latency_ms": 25.0},
        # The simulated camera stamps each exposure with its photo-eye edge's instant (2 ms for the
        # clocks' jitter); a part is in view for half the smallest pitch.
        "match": {"tolerance_ms": 2.0, "same_part_ms": 0.5 * mean_pitch * 0.7 / run.speed_mm_s * 1000,
                  "frame_delay_ms": 10.0},  # the simulated camera renders and sends a frame in a few ms
        **run.extra,
    }, {**scenario.controller, **({"plc": {"request_shadow": True}} if scenario.shadow else {})}))  # fmt: skip


async def _hold_for(panel: SimPanel, controller: InProcessController | ControllerProcess) -> None:
    """Until the panel is ready, PANEL_SUBSCRIBE_S at most, watching the controller meanwhile (a
    crash at start shows as itself, and a controller process's systemd pings are drained)."""
    deadline = time.monotonic() + PANEL_SUBSCRIBE_S
    while not panel.ready:
        if time.monotonic() > deadline:
            panel.give_up(f"not subscribed within {PANEL_SUBSCRIBE_S:g} s")
            return
        await controller.check()
        await asyncio.sleep(0.25)


def _panel_vs_journal(log: PanelLog, journal: Path) -> dict[str, Any]:
    """What the panel saw and did beside what the journal holds: every part's result event with its
    recorded outcome, and every operator action in the audit table."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
        parts = {f"{e}/{s}": o for e, s, o in db.execute("SELECT epoch, seq, outcome FROM parts")}
        audit = [list(row) for row in db.execute("SELECT user, role, action, result FROM audit ORDER BY rowid")]
    def key(rid: str) -> tuple[int, int]:
        epoch, seq = rid.split("/")
        return int(epoch), int(seq)

    # The line held its conveyor until the panel had subscribed: every part's event must be there.
    missing = sorted(set(parts) - set(log.results), key=key)
    differs = sorted(rid for rid, outcome in log.results.items() if rid in parts and parts[rid] != outcome)
    return {"events": log.events, "results": len(log.results), "missing": len(missing), "missing_first": missing[:5],
            "outcome_differs": len(differs), "differs_first": differs[:5],
            "unknown": len(set(log.results) - set(parts)), "actions": log.actions, "audit": audit,
            "error": log.error}  # fmt: skip


def label_ground_truth(journal: Path, report: dict[str, Any]) -> int:
    """The simulator knows every part's truth: into the journal's label store, as a plant's
    inspectors' labels would be, so `lineinspect report shadow` and the review tools see it (0
    where the disk cannot take it: a scenario that broke its filesystem)."""
    truth = [(d["epoch"], d["seq"], ALL_CLASSES[d["truth"]]) for d in report["decisions"]]
    try:
        return add_labels(journal, truth, source="simulator", labeled_by="simulator ground truth")
    except (sqlite3.Error, OSError):
        return 0


def _shadow_report_vs_judge(journal: Path, workdir: Path, judged: dict[str, Any]) -> dict[str, Any]:
    """The report from the journal against the judge's count from the simulator's gate log."""
    result = shadow_report(journal, workdir / "shadow-report")
    differs = [key for key in ("overall", "by_class") if result[key] != judged[key]]
    return {"html": str(workdir / "shadow-report" / "shadow.html"), "verdict": result["readiness"]["verdict"],
            "matches_judge": not differs, "differs_in": differs}


def _metrics_url(cfg: LineConfig) -> str:
    return f"http://{cfg.hmi.metrics}/metrics"


async def _scrape_when_settled(url: str, parts: int, within_s: float = 15.0) -> dict[str, float] | None:
    """The controller's metrics once every part has its outcome (or the same twice in a row after
    `within_s`): what a Prometheus scrape after the run would read."""
    deadline, last = time.monotonic() + within_s, None
    while time.monotonic() < deadline:
        try:
            samples = await asyncio.to_thread(_scrape, url)
        except OSError:
            samples = None
        if samples is not None:
            decided = sum(v for k, v in samples.items() if k.startswith("lineinspect_parts_total{"))
            if decided >= parts or samples == last:
                return samples
            last = samples
        await asyncio.sleep(0.5)
    return last


def _scrape(url: str) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _metrics_vs_judge(samples: dict[str, float], summary: dict[str, Any], url: str) -> dict[str, Any]:
    """Per-outcome and per-reason counters from the metrics beside the judge's own counts."""
    def total(prefix: str, label: str) -> dict[str, int]:
        out: dict[str, int] = {}
        for name, value in samples.items():
            if name.startswith(prefix + "{"):
                key = name.split(f'{label}="', 1)[1].split('"', 1)[0]
                out[key] = out.get(key, 0) + int(value)
        return out

    outcomes = total("lineinspect_parts_total", "outcome")
    reasons = {k: v for k, v in total("lineinspect_failsafe_total", "reason").items() if v}
    gate = summary["gate"]
    judged = {"pass": gate["pass"], "reject": gate["reject_vision"], "failsafe": gate["reject_failsafe"]}
    return {"url": url, "parts_total": outcomes, "failsafe_total": reasons,
            "agrees_with_judge": outcomes == judged and reasons == summary["failsafe_by_reason"]}  # fmt: skip


def _needs_in_process(run: SimRun, scenario: Scenario) -> bool:
    """Faults on the inference side reach inside the controller (kill an actor, slow or swap the
    model): only those runs keep it in this process. Every other run gives it its own process, as
    at a line, so the progress bar, the judge and the simulator's plumbing here never share its
    event loop, its GIL or its garbage collector."""
    return (run.kill_actor_after is not None or run.swap_model is not None
            or scenario.kill_actor_after is not None or scenario.inference.slow_rate > 0)  # fmt: skip


def scenario_names() -> list[str]:
    return list(SCENARIOS)


def unstageable(names: list[str]) -> tuple[list[str], str]:
    """Those of `names` this machine cannot stage (their journal's filesystem cannot be mounted
    here), and why; ([], "") when it can."""
    mounting = [n for n in names if (fault := SCENARIOS[n].journal) is not None and fault.kind in MOUNTING]
    why = cannot_mount() if mounting else None
    return (mounting, why) if why else ([], "")


async def run_simulated_line(
    run: SimRun, *, progress: Callable[[Progress, int], None] | None = None,
    announce: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The whole line on loopback, run to the end and judged; returns the summary. `progress` gets
    the controller's progress and the number of parts the run will have; `announce` a line for a
    person (where the HMI and the metrics are)."""
    scenario = SCENARIOS[run.scenario]
    parts = max(int(scenario.plant.get("parts", run.parts)), scenario.min_parts)  # type: ignore[call-overload]
    run = replace(run, parts=parts)
    if scenario.kill_actor_after is not None and run.kill_actor_after is None:
        # A third into a short run at the latest, so the worker is back before the line ends.
        run = replace(run, kill_actor_after=min(scenario.kill_actor_after, parts // 3))

    journal_path = _fresh_workdir(run.workdir)
    report_path = run.workdir / "sim-report.json"
    cmd = [
        sys.executable, "-m", "controller.cli", "sim-line", "--parts", str(run.parts), "--seed", str(run.seed),
        "--speed", str(run.speed_mm_s), "--decision-mm", str(run.decision_mm),
        "--pitch-mm", str(run.speed_mm_s / run.rate_parts_s), "--out", str(report_path), "--scenario", run.scenario,
    ]  # fmt: skip
    if scenario.panel is not None:  # the conveyor waits until the panel is subscribed (below)
        cmd += ["--hold", "--wait-s", str(SIM_LINE_WAIT_S)]
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
        # The journal's fault (and filesystem) outlives the controller: the judge reads it after.
        journal = SimJournalFaults(scenario.journal, run.workdir, parts)
        async with journal:
            cfg = _controller_config(run, scenario, hello, journal.controller_journal)
            access = None
            if cfg.hmi.enabled:
                access, credentials = await provision_demo(hmi_settings(cfg.hmi, cfg.journal.path), run.workdir)
                if announce is not None:
                    announce(f"HMI (OPC UA): {cfg.hmi.endpoint}  users, passwords, client certificate: {credentials}")
                    announce(f"metrics (Prometheus): {_metrics_url(cfg)}")
            controller: InProcessController | ControllerProcess
            if not _needs_in_process(run, scenario):
                controller = ControllerProcess(cfg, run.workdir, scenario.process, parts)
                faults: Any = controller
            else:
                wrap = None
                if scenario.inference.slow_rate > 0:
                    from sim.slow_inference import SimSlowInference

                    def wrap(inner: Any) -> Any:
                        return SimSlowInference(inner, scenario.inference, seed=run.seed)

                controller = InProcessController(cfg, wrap)
                faults = _InferenceFaults(run, controller)
            started = time.monotonic()
            # The simulator bounds the line's own time; this bounds ours if it hangs (and the load's).
            timeout_s = parts / run.rate_parts_s * 4 + 300
            faults = _Faults(faults, journal)
            panel = SimPanel(access, scenario.panel, timeout_s) if access and scenario.panel else None
            async with controller:
                if panel is not None:
                    panel.start()
                    await _hold_for(panel, controller)  # (its failure is judged after the run)
                if scenario.panel is not None:
                    assert proc.stdin is not None
                    proc.stdin.write(b"go\n")  # the held conveyor may start
                flood_at = run.workdir / "hmi-demo" / "access.json" if scenario.hmi_flood and access else None
                with (
                    SimLoad(run.load, seconds=timeout_s) as load,
                    SimHmiFlood(flood_at, seed=run.seed, workdir=run.workdir, seconds=timeout_s) as flood,
                ):

                    def on_running() -> None:
                        load.start(priority_of=controller.pid)
                        flood.start()
                        if panel is not None:
                            panel.line_running()

                    end = await _drive(proc, controller, faults, lambda p: progress(p, parts) if progress else None,
                                       timeout_s, on_running=on_running)  # fmt: skip
                    scraped = await _scrape_when_settled(_metrics_url(cfg), parts) if access else None
                    panel_log = await panel.stop() if panel is not None else None
                stats = await controller.stop()
        assert proc.stdin is not None
        proc.stdin.close()  # the simulator may go now
        if end["event"] != "done":
            raise ControllerError(f"line simulator: {end.get('error')}")
        report = json.loads(report_path.read_text())
        summary = judge(report, journal_path)
        summary["truth_labels"] = label_ground_truth(journal_path, report)
        if "shadow" in summary:
            summary["shadow_report"] = _shadow_report_vs_judge(journal_path, run.workdir, summary["shadow"])
        summary["controller"] = {**stats, "wall_s": time.monotonic() - started}
        summary["load"] = load.summary()
        if scenario.hmi_flood:
            summary["hmi_flood"] = flood.summary()
        if panel_log is not None:
            summary["hmi_panel"] = _panel_vs_journal(panel_log, journal_path)
        if scraped is not None:
            summary["metrics"] = _metrics_vs_judge(scraped, summary, _metrics_url(cfg))
        if scenario.journal is not None:
            summary["journal_fault"] = journal.done
        if isinstance(faults.main, _InferenceFaults):
            summary["faults"] = faults.main.done
            running = faults.main.controller.started
            slowed = getattr(running.result()[1], "slowed", None) if running.done() else None
            if slowed is not None:
                summary["controller"]["inferences_slowed"] = slowed
        return _criterion(summary, scenario, faults, run.workdir, report)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _drive(
    sim: asyncio.subprocess.Process, controller: InProcessController | ControllerProcess, faults: Any,
    progress: Callable[[Progress], None], timeout_s: float, *, on_running: Callable[[], None] = lambda: None,
) -> dict[str, Any]:  # fmt: skip
    """Until the simulator says the line is done: watch the controller, show progress, inject the
    scenario's fault by part count. `on_running` is called once the line is up (controller ready,
    conveyor started). Returns the simulator's last message."""

    async def watch_sim() -> dict[str, Any]:
        assert sim.stdout is not None
        while line := await sim.stdout.readline():
            msg = json.loads(line)
            if msg["event"] == "running":
                on_running()
            if msg["event"] in ("done", "error"):
                return dict(msg)
        return {"event": "error", "error": "line simulator exited"}

    sim_task = asyncio.create_task(watch_sim())
    deadline = time.monotonic() + timeout_s
    try:
        while not sim_task.done():
            if time.monotonic() > deadline:
                raise ControllerError(f"the simulated line did not end within {timeout_s:.0f} s")
            await controller.check()
            if (p := controller.progress()) is not None:
                progress(p)
                await faults.inject(p.decided)
            await asyncio.sleep(0.25)
        return sim_task.result()
    finally:
        sim_task.cancel()


def _criterion(
    summary: dict[str, Any], scenario: Scenario, faults: Any, workdir: Path, report: dict[str, Any]
) -> dict[str, Any]:  # fmt: skip
    """The scenario's pass criterion, applied to the judge's summary."""
    summary["scenario"] = scenario.name
    # Fail-safe rejects are acceptable only where the scenario's fault explains their reason.
    inference_faulted = isinstance(faults.main, _InferenceFaults) and bool(faults.main.done)
    allowed = scenario.failsafe_allowed | (_INFERENCE_DOWN if inference_faulted else frozenset())
    unexplained = {r: n for r, n in summary["failsafe_by_reason"].items() if r not in allowed}
    summary["failsafe_unexplained"] = unexplained
    strikes = len(getattr(faults.main, "strikes", [])) or 1
    summary["alarms_unexpected"] = _alarms_unexpected(summary["alarms"], scenario.alarms, strikes, scenario.alarms_stay)
    summary["criterion"] = (
        "nothing lost (0 misassociations, 0 passes without own in-time PASS, one outcome per trigger, "
        "journal = gate); fail-safe only for " + (", ".join(sorted(allowed)) or "nothing") + "; alarms "
        + (", ".join([f"{a} raised and cleared once" for a in sorted(scenario.alarms)]
                     + [f"{a} raised once and kept" for a in sorted(scenario.alarms_stay)]) or "none") + ", no other"
    )  # fmt: skip
    # A fault scenario proves nothing if its fault never struck (the run was too short for it).
    summary["fault_struck"] = faults.fault_struck and summary.get("hmi_flood", {}).get("struck", True)
    panel = summary.get("hmi_panel")
    if panel is not None:
        summary["criterion"] += "; the panel got every part's result event, with its recorded outcome"
        if scenario.panel and scenario.panel.halt_at_s is not None:
            summary["criterion"] += ", and its Halt and Reset were done and audited"
    summary["panel_failed"] = panel is not None and (
        bool(panel["missing"] or panel["outcome_differs"] or panel["error"])
        or (scenario.panel is not None and scenario.panel.halt_at_s is not None
            and ([tuple(a[:2]) for a in panel["actions"]] != [("Halt", True), ("Reset", True)]
                 or [tuple(a[2:]) for a in panel["audit"]] != [("halt", "done"), ("reset", "done")])))  # fmt: skip
    flood = summary.get("hmi_flood", {}).get("counts", {})
    summary["hmi_breached"] = flood.get("intruders_admitted", 0) + flood.get("huge_browse_served", 0)
    if scenario.hmi_flood:
        summary["criterion"] += "; the HMI admits no intruder and serves no oversized request"
    # The metrics count one controller's outcomes: they equal the judge's when it ran the whole line.
    metrics_disagree = scenario.process is None and not summary.get("metrics", {}).get("agrees_with_judge", True)
    if "metrics" in summary and scenario.process is None:
        summary["criterion"] += "; the metrics' outcome counters equal the judge's"
    shadow_failed = scenario.shadow and not summary.get("shadow_report", {}).get("matches_judge", False)
    if scenario.shadow:
        summary["criterion"] += ("; the gate follows the existing inspection, never vision; the shadow report "
                                 "from the journal equals the judge's count from the ground truth")
    summary["ok"] = (summary["nothing_lost"] and not unexplained and not summary["alarms_unexpected"]
                     and not shadow_failed and summary["fault_struck"] and not summary["hmi_breached"]
                     and not metrics_disagree and not summary["panel_failed"])  # fmt: skip
    summary["journal"] = str(workdir / "journal.db")
    summary["plot"] = str(plot_run(report, workdir / "timing.png"))
    return summary


__all__ = ["Progress", "SimRun", "run_simulated_line", "scenario_names", "serve_simulated_line", "unstageable"]
