"""`lineinspect`: the command line. Parses arguments, then hands over to the composition root.

Every expected failure (bad config, unreachable PLC, contract mismatch, missing model) ends as one
line `lineinspect: error: …` and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.errors import ConfigError, ControllerError

if TYPE_CHECKING:
    from controller.app import LineController


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _sim(args: argparse.Namespace) -> int:
    from rich.console import Console

    from controller import logs
    from sim.runner import SimRun, scenario_names

    # SIGTERM (a CI timeout, `kill`) as Ctrl-C: the runner's cleanup then stops the simulator, the
    # controller process and Ray; Python's default would leave them running without a parent.
    signal.signal(signal.SIGTERM, _interrupt)
    parts = args.parts if args.duration is None else max(1, round(args.duration * args.rate))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    logs.configure(args.log_level, file=workdir / "controller.log")
    console = Console(stderr=True)
    if args.load < 0:
        raise ControllerError(f"--load must be 0 or more busy processes, got {args.load}")
    names = scenario_names() if args.scenario == "all" else [args.scenario]
    if not set(names) <= set(scenario_names()):
        raise ControllerError(f"unknown scenario {args.scenario!r}; known: all, {', '.join(scenario_names())}")
    if args.scenario == "all":
        names = _runnable_here(names, console)
    summaries = []
    for name in names:
        run = SimRun(
            parts=parts, seed=args.seed, speed_mm_s=args.speed, decision_mm=args.decision_mm,
            rate_parts_s=args.rate, workdir=workdir / name if len(names) > 1 else workdir,
            inference=args.inference, actors=args.actors, hmi=not args.no_hmi, scenario=name,
            ray_address=args.ray_address, kill_actor_after=args.kill_actor_after,
            swap_model=Path(args.swap_model) if args.swap_model else None, swap_model_after=args.swap_model_after,
            load=args.load, model=Path(args.model) if args.model else None,
            registry=Path(args.registry) if args.registry else None, product=args.product,
        )  # fmt: skip
        summaries.append(_run_with_progress(run, console))
        if len(names) == 1:
            _print_summary(console, summaries[0])
    if len(names) > 1:
        _print_scenarios(console, summaries)
    if args.json:
        Path(args.json).write_text(json.dumps(summaries[0] if len(names) == 1 else summaries, indent=2))
    return 0 if all(s["ok"] for s in summaries) else 1


def _runnable_here(names: list[str], console: Any) -> list[str]:
    """`all` without the scenarios this machine cannot stage (the journal's disk faults mount
    filesystems: root and a loop device), each named with why; a scenario asked for by name is
    always run, and says itself why it cannot."""
    from sim.runner import unstageable

    skipped, why = unstageable(names)
    if skipped:
        console.print(f"[yellow]skipped {', '.join(skipped)}: this machine cannot mount their filesystems ({why})")
    return [n for n in names if n not in skipped]


def _run_with_progress(run: Any, console: Any) -> dict[str, Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from sim.runner import Progress as LineProgress
    from sim.runner import run_simulated_line

    with Progress(TextColumn(f"[bold]{run.scenario}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[info]}"), console=console, transient=False) as bar:  # fmt: skip
        task = bar.add_task("parts", total=run.parts, info="starting: simulator, Ray, model…")

        def progress(p: LineProgress, total: int) -> None:
            bar.update(task, completed=p.decided, total=total, info=p.info)

        summary: dict[str, Any] = asyncio.run(run_simulated_line(run, progress=progress, announce=console.print))
        bar.update(task, completed=summary["parts"], info="done" if summary["ok"] else "[red]FAILED")
    return summary


def _print_scenarios(console: Any, summaries: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table(title="scenarios")
    for col in ("scenario", "parts", "fail-safe by reason", "misassoc.", "pass w/o PASS", "journal ≠ gate",
                "deadline misses", "margin min / p1 / p50 ms", "latency p99 ms", "alarms raised/cleared", "verdict"):
        t.add_column(col)
    for s in summaries:
        m = s["verdict_margin_ms"]
        t.add_row(
            s["scenario"], str(s["parts"]), str(s["failsafe_by_reason"] or "-"), str(s["misassociations"]),
            str(s["passed_without_own_in_time_pass"]), str(s["journal_disagrees_with_gate"]),
            str(s["deadline_misses"]), f"{m['min']:.0f} / {m['p1']:.0f} / {m['p50']:.0f}",
            f"{s['latency_ms']['p99']:.1f}", _alarms_text(s),
            "[green]pass" if s["ok"] else f"[red]FAIL {s['failsafe_unexplained'] or ''} {s['alarms_unexpected'] or ''}",
        )  # fmt: skip
    console.print(t, width=200)
    for s in summaries:
        console.print(f"[bold]{s['scenario']}[/bold] passes when: {s['criterion']}")


def _alarms_text(s: dict[str, Any]) -> str:
    return ", ".join(f"{name} {n['raised']}/{n['cleared']}" for name, n in sorted(s["alarms"].items())) or "-"


def _print_summary(console: Any, s: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title="simulated line", show_header=False)
    lat, margin = s["latency_ms"], s["verdict_margin_ms"]
    rows = [
        ("parts", s["parts"]), ("defective parts", s["parts_defective"]),
        ("correct passes", s["correct_passes"]), ("correct rejects", s["correct_rejects"]),
        ("escapes through the gate (model miss / other)", "{total} ({model_miss} / {other})".format(**s["escapes"])),
        ("false rejects", s["false_rejects"]),
        ("fail-safe rejects", f"{s['gate']['reject_failsafe']} {s['failsafe_by_reason'] or ''}"),
        ("misassociations", s["misassociations"]),
        ("passed without own in-time PASS", s["passed_without_own_in_time_pass"]),
        ("triggers without exactly one outcome", s["triggers_without_outcome"] + s["outcomes_without_trigger"]),
        ("journal ≠ gate", s["journal_disagrees_with_gate"]), ("deadline misses", s["deadline_misses"]),
        ("latency trigger → verdict in PLC", "p50 {p50:.1f} ms  p99 {p99:.1f} ms  max {max:.1f} ms".format(**lat)),
        ("verdict margin before gate", "min {min:.0f} ms  p1 {p1:.0f} ms  p50 {p50:.0f} ms".format(**margin)),
        ("alarms raised/cleared", _alarms_text(s)),
        ("pass criterion", s["criterion"]),
        ("throughput", f"{s['throughput_parts_per_s']:.1f} parts/s"),
        ("load", f"{s['load']['processes']} busy processes at nice {s['load']['nice']}" if s["load"]["started"]
         else "none"),
    ]  # fmt: skip
    if (m := s.get("metrics")) is not None:
        counts = ", ".join(f"{k} {v}" for k, v in m["parts_total"].items())
        agrees = "= judge" if m["agrees_with_judge"] else "≠ judge"
        rows.append(("metrics at the end", f"{m['url']}: {counts} ({agrees})"))
    if (sh := s.get("shadow")) is not None:
        o = sh["overall"]
        rows += [
            ("shadow: vision vs existing inspection", f"agree {o['agreement']['rate']:.1%}; only vision rejects "
             f"{o['vision_only_reject']}, only the existing rejects {o['reference_only_reject']}"),
            ("shadow: escapes vision / existing", f"{o['vision_escapes']['k']} / {o['reference_escapes']['k']} "
             f"of {o['defective']} defective"),
            ("shadow: false rejects vision / existing", f"{o['vision_false_rejects']['k']} / "
             f"{o['reference_false_rejects']['k']} of {o['good']} good"),
            ("shadow: go-live", sh["readiness"]["verdict"]),
        ]  # fmt: skip
        if (r := s.get("shadow_report")) is not None:
            rows.append(("shadow report", f"{r['html']} ({'= judge' if r['matches_judge'] else '≠ judge'})"))
    rows.append(("verdict", "[green]OK" if s["ok"] else "[red]FAILED"))
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)


def _sim_line(args: argparse.Namespace) -> int:
    from sim.runner import serve_simulated_line

    return serve_simulated_line(
        parts=args.parts, seed=args.seed, speed_mm_s=args.speed, decision_mm=args.decision_mm,
        pitch_mm=args.pitch_mm, out=Path(args.out), plc_port=args.plc_port, camera_port=args.camera_port,
        wait_s=args.wait_s, scenario=args.scenario, hold=args.hold,
    )  # fmt: skip


def run_stats(c: LineController) -> dict[str, Any]:
    """A finished run's own numbers, beside what the judge sees from outside."""
    return {
        "frames_dropped": c.frames_dropped, "spurious_frames": c.matcher.spurious_frames,
        "gate_corrections": dict(c.gate_corrections), "gate_inferred_by_order": c.gate_ambiguous,
        "write_margin_ms": c.tracker.margins.write_s * 1000, "verdict_queue_p50_ms": c.budget.queue_s * 1000,
        "drift": dict(c.drift.figures), "gate_decisions_missed": c.decisions.missed,
    }  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    import structlog

    from controller import logs
    from controller.bootstrap import run_controller
    from controller.config import load_config

    logs.configure(args.log_level, file=Path(args.log_file) if args.log_file else None, json=args.log_format == "json")
    cfg = load_config(Path(args.config))

    async def until_signalled() -> None:
        # SIGTERM (systemd, the simulator) or SIGINT: stop cleanly, recording every open part.
        # Installed again once running: starting Ray replaces the SIGTERM handler with its own.
        loop, stop = asyncio.get_running_loop(), asyncio.Event()
        running: asyncio.Future[Any] = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        controller = asyncio.create_task(run_controller(cfg, stop=stop, started=running))
        await asyncio.wait({controller, running}, return_when=asyncio.FIRST_COMPLETED)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        structlog.get_logger("lineinspect.cli").info("controller_stopped", **run_stats(await controller))

    asyncio.run(until_signalled())
    return 0


def _roi(text: str | None) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    try:
        x, y, w, h = (int(v) for v in text.split(","))
    except ValueError:
        raise ControllerError(f"--roi must be x,y,w,h (four integers), got {text!r}") from None
    return x, y, w, h


def _train(args: argparse.Namespace) -> int:
    from models.dataset import DatasetError
    from models.train import train

    try:
        parent = Path(args.from_) if args.from_ else None
        if parent is not None and parent.is_dir():
            parent = parent / "model.pt"
        if parent is not None and not parent.is_file():
            raise ConfigError(f"--from {args.from_}: no checkpoint there (a training run's model.pt, or its folder)")
        result = train(Path(args.dataset), Path(args.out), epochs=args.epochs, seed=args.seed,
                       target_frr=args.target_frr, roi=_roi(args.roi), pretrained=not args.no_pretrained,
                       init_from=parent, min_steps=args.min_steps)  # fmt: skip
    except DatasetError as exc:
        raise ControllerError(str(exc)) from None
    if args.export:
        from models.export import export_onnx, write_card

        name = args.name or Path(args.dataset).resolve().name
        onnx_path = export_onnx(result.checkpoint, Path(args.out) / "model.onnx", name=name)
        write_card(args.out, onnx_path, result.report)
        validation = result.report["validation_good_files"]
        if len(validation) >= 100:  # the drift watch needs a reference worth the name
            from models.drift_reference import good_frames_of, write_drift_reference

            write_drift_reference(onnx_path, good_frames_of(Path(args.dataset), files=validation))
        print(onnx_path)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from models.dataset import DatasetError
    from models.evaluate import evaluate

    try:
        report = evaluate(Path(args.model), Path(args.dataset), Path(args.out), threads=args.threads,
                          threshold=args.threshold, frr=args.frr)  # fmt: skip
    except (DatasetError, ValueError) as exc:
        raise ControllerError(str(exc)) from None
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"accuracy {report['accuracy']:.4f}  detection {report['detection_rate']:.4f}  "
              f"false-reject {report['false_reject_rate']:.4f}  AUROC {report['auroc']:.4f}  at threshold "
              f"{report['threshold']:.4g} ({report['threshold_source']}) on {report['images']} images")
        for name, c in report["per_class"].items():
            seen = "" if c["seen_in_training"] else "  (not seen in training)"
            print(f"  {name:<12} {c['images']:>6} images  rejected {c['reject_rate']:.4f}{seen}")
        top = report["check_labels"][:3]
        if top:
            print("check these labels (highest-scoring good images): "
                  + ", ".join(f"{Path(c['file']).name} {c['score']:.3f}" for c in top))
        print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    """Engine latency per batch size, then a short simulated line for the controller's overhead."""
    from rich.console import Console

    from controller import logs
    from controller.config import SHIPPED_MODEL
    from sim.runner import SimRun, run_simulated_line
    from workers.bench import bench_engines, controller_overhead, format_table, write_report

    console = Console(stderr=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    logs.configure("info", file=out / "controller.log")
    model = Path(args.model) if args.model else SHIPPED_MODEL
    batches = tuple(int(b) for b in args.batch_sizes.split(","))
    rows = bench_engines(model, engines=tuple(args.engines.split(",")), batch_sizes=batches,
                         iterations=args.iterations, threads=args.threads, progress=console.print)  # fmt: skip
    overhead = None
    if args.line_parts > 0:
        console.print(f"simulated line, {args.line_parts} parts, for the controller's overhead …")
        summary = asyncio.run(run_simulated_line(SimRun(parts=args.line_parts, workdir=out / "line", model=model,
                                                        hmi=False)))  # fmt: skip
        overhead = controller_overhead(summary, rows)
    print(format_table(rows, overhead))
    files = write_report(rows, overhead, out)
    console.print(f"report: {files['json']}  plot: {files['png']}")
    return 0


def _bench_journal(args: argparse.Namespace) -> int:
    """How long a record takes to become durable on the journal's disk (it is on every PASS's path)."""
    from rich.console import Console

    from controller.adapters.journal_probe import probe_journal

    console = Console(stderr=True)
    result = asyncio.run(probe_journal(Path(args.dir), seconds=args.seconds, rate_hz=args.rate, progress=console.print))
    print(json.dumps(result, indent=2))
    return 0


def _report_shadow(args: argparse.Namespace) -> int:
    """Vision against the existing inspection over the parts decided in shadow mode: HTML, JSON, plots."""
    from controller.shadow_report import Shifts, shadow_report

    out = Path(args.out) if args.out else Path(args.journal).resolve().parent / "shadow-report"
    result = shadow_report(Path(args.journal), out, Shifts(args.shift_hours, args.shift_start))
    ready = result["readiness"]
    print(json.dumps({"verdict": ready["verdict"], "overall": result["overall"], "criteria": ready["criteria"],
                      "html": str(out / "shadow.html")}, indent=2))  # fmt: skip
    return 0


def _review_serve(args: argparse.Namespace) -> int:
    """The review page on this machine until Ctrl-C."""
    from models.review import Review, serve

    model = Path(args.model) if args.model else None
    server = serve(Review(Path(args.journal), args.user, model), port=args.port)
    print(f"review: http://127.0.0.1:{server.server_address[1]}/  (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _review_list(args: argparse.Namespace) -> int:
    from models.review import Review

    print(json.dumps(Review(Path(args.journal), args.user).queue(), indent=2))
    return 0


def _review_flag(args: argparse.Namespace) -> int:
    """An operator's flag from a terminal: the label only (the HMI's FlagResult also keeps the frame)."""
    from controller.labels import add_labels, parse_flag

    try:
        flags = [parse_flag(f"{result} {args.true_class}") for result in args.results]
        add_labels(Path(args.journal), [(e, s, c) for e, s, c, _ in flags], source="operator", labeled_by=args.user,
                   note=args.note)  # fmt: skip
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    print(json.dumps({"labelled": [f"{e}/{s}" for e, s, _, _ in flags], "label": args.true_class,
                      "labeled_by": args.user}))  # fmt: skip
    return 0


def _dataset_add_from_journal(args: argparse.Namespace) -> int:
    from models.from_journal import add_from_journal

    roi = tuple(int(v) for v in args.roi.split(",")) if args.roi else None
    if roi is not None and len(roi) != 4:
        raise ConfigError(f"--roi is x,y,w,h, got {args.roi!r}")
    result = add_from_journal(Path(args.journal), Path(args.dataset), sources=tuple(args.sources.split(",")),
                              line=args.line, roi=roi)  # fmt: skip
    print(result.pop("check"), file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0 if result["check_ok"] else 1


def _registry_add(args: argparse.Namespace) -> int:
    """A training run's model into the registry, with its lineage and export parity."""
    from controller import registry
    from workers.model_meta import load_model_meta

    run = Path(args.run)
    meta = load_model_meta(run / "model.onnx")
    report = json.loads((run / "train_report.json").read_text()) if (run / "train_report.json").is_file() else {}
    parity = None
    if (run / "model.pt").is_file():
        from models.export import golden_frames
        from models.export import parity as export_parity
        from models.train import load_checkpoint

        golden = golden_frames(load_checkpoint(run / "model.pt")[1])
        parity = export_parity(run / "model.pt", run / "model.onnx", golden)
    entry = {"classes": list(meta.classes), "train_data_hash": report.get("train_data_hash"), "parity": parity,
             "init_from": report.get("init_from"), "validation": report.get("val")}  # fmt: skip
    try:
        path = registry.register(Path(args.registry), args.product, run, meta.version, entry, by=args.user)
    except registry.RegistryError as exc:
        raise ConfigError(str(exc)) from exc
    print(json.dumps({"version": meta.version, "model": str(path), "parity": parity}, indent=2))
    return 0


def _registry_list(args: argparse.Namespace) -> int:
    from controller import registry

    reg = Path(args.registry)
    active = registry.read_active(reg, args.product)
    print(json.dumps({"product": args.product, "active": active.version if active else None,
                      "previous": list(active.previous) if active else [],
                      "versions": {v: {k: e.get(k) for k in ("registered_utc", "registered_by", "train_data_hash")}
                                   | {"promotable": e.get("candidate", {}).get("promotable")}
                                   for v in registry.versions(reg, args.product)
                                   for e in [registry.read_entry(reg, args.product, v)]},
                      "history": registry.history(reg, args.product)[-10:]}, indent=2))  # fmt: skip
    return 0


def _candidate(args: argparse.Namespace) -> int:
    """Compare a registered version with the active one; the verdict goes into its entry."""
    from controller import registry
    from models.candidate import compare

    reg = Path(args.registry)
    try:
        entry = registry.read_entry(reg, args.product, args.version)
        active = registry.read_active(reg, args.product)
        if active is None:
            raise registry.RegistryError(f"{args.product} has no active version to compare with")
    except registry.RegistryError as exc:
        raise ConfigError(str(exc)) from exc
    result = compare(reg / args.product / args.version / registry.MODEL, active.model,
                     dataset=Path(args.held_out) if args.held_out else None,
                     journal=Path(args.journal) if args.journal else None, replay_last=args.replay,
                     frr=args.frr, parity=entry.get("parity"))  # fmt: skip
    result["by"] = args.user
    registry.write_entry(reg, args.product, args.version, {**entry, "candidate": result})
    registry.note(reg, args.product, {"event": "candidate", "version": args.version, "against": active.version,
                                      "by": args.user, "promotable": result["promotable"],
                                      "reasons": result["reasons"]})  # fmt: skip
    print(json.dumps(result, indent=2))
    return 0 if result["promotable"] else 1


def _promote(args: argparse.Namespace) -> int:
    from controller import registry

    try:
        if args.command == "rollback":
            active = registry.rollback(Path(args.registry), args.product, by=args.user)
        else:
            active = registry.promote(Path(args.registry), args.product, args.version, by=args.user)
    except registry.RegistryError as exc:
        raise ConfigError(str(exc)) from exc
    print(json.dumps({"product": args.product, "active": active.version, "by": active.by, "action": active.action,
                      "previous": list(active.previous)}))  # fmt: skip
    return 0


def _model_set_threshold(args: argparse.Namespace) -> int:
    from models.dataset import DatasetError
    from models.recalibrate import CalibrationRefused, set_threshold

    out = Path(args.out) if args.out else Path(args.model)
    try:
        result = set_threshold(Path(args.model), Path(args.good), args.frr, out,
                               accept_unsupported=args.accept_unsupported, user=args.user)  # fmt: skip
    except (CalibrationRefused, DatasetError) as exc:
        raise ControllerError(str(exc)) from None
    lo, hi = result["realized_frr_90"]
    print(f"{result['out']}: threshold {result['previous_threshold']:.6g} -> {result['cut']:.6g} for a "
          f"{args.frr:.2%} false-reject rate on {result['n_good']} good images (realized 90 % within {lo:.2%}.."
          f"{hi:.2%}: {'holds' if result['holds'] else 'does NOT hold'}); version {result['version']}")  # fmt: skip
    return 0


def _dataset_check(args: argparse.Namespace) -> int:
    from models.dataset_check import check_dataset

    report = check_dataset(Path(args.path))
    print(report.text())
    return 0 if report.ok else 1


def _build_engine(args: argparse.Namespace) -> int:
    from workers.tensorrt_engine import build_engine

    path = build_engine(Path(args.model), Path(args.cache), max_batch=args.max_batch, fp16=not args.fp32)
    print(path)
    return 0


def _hmi(args: argparse.Namespace) -> int:
    from hmi import admin

    if args.hmi_command == "trust":
        print(admin.trust(args.config, args.cert))
    elif args.hmi_command == "certificate":
        print(admin.certificate(args.config))
    elif args.hmi_command == "client-certificate":
        print(admin.client_certificate(args.config, args.uri, args.out))
    elif args.user_command == "add":
        print(admin.add_user(args.config, args.name, args.role, args.password_stdin))
    elif args.user_command == "remove":
        print(admin.remove_user(args.config, args.name))
    else:
        print(admin.list_users(args.config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lineinspect", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("sim", help="run the whole line simulated on loopback and judge the run")
    s.add_argument("--parts", type=int, default=2000)
    s.add_argument("--scenario", default="steady", help="a named line condition or fault, or 'all'")
    s.add_argument("--duration", type=float, default=None, help="seconds (overrides --parts)")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--speed", type=float, default=1000.0, help="conveyor speed, mm/s")
    s.add_argument("--decision-mm", type=float, default=400.0, help="photo-eye to decision point")
    s.add_argument("--rate", type=float, default=20.0, help="mean parts per second")
    s.add_argument("--inference", choices=("ray", "local"), default="ray")
    s.add_argument("--actors", type=int, default=1, help="inference actors (Ray)")
    s.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    s.add_argument("--kill-actor-after", type=int, metavar="N", help="fault: kill an inference actor after N parts")
    s.add_argument("--model", metavar="PATH", help="the model to run (default: the shipped one)")
    s.add_argument("--registry", metavar="DIR", help="run the product's active version of this model registry "
                   "and follow its promotions and rollbacks")
    s.add_argument("--product", default="default", help="with --registry: the product")
    s.add_argument("--swap-model", metavar="PATH", help="hot-swap to this model mid-run")
    s.add_argument("--swap-model-after", type=int, default=0, metavar="N", help="… after N parts")
    s.add_argument("--no-hmi", action="store_true")
    s.add_argument("--load", type=int, default=0, metavar="N",
                   help="keep N busy processes at the controller's priority while the line runs")  # fmt: skip
    s.add_argument("--workdir", default="runs/latest")
    s.add_argument("--json", metavar="PATH", help="write the summary as JSON")
    s.add_argument("--log-level", default="info")
    s.set_defaults(fn=_sim)

    sl = sub.add_parser("sim-line", help="serve a simulated PLC and camera for another controller process")
    sl.add_argument("--parts", type=int, default=2000)
    sl.add_argument("--seed", type=int, default=1)
    sl.add_argument("--speed", type=float, default=1000.0)
    sl.add_argument("--decision-mm", type=float, default=400.0)
    sl.add_argument("--pitch-mm", type=float, default=50.0, help="mean part pitch")
    sl.add_argument("--plc-port", type=int, default=0, help="0: any free port (announced on stdout)")
    sl.add_argument("--camera-port", type=int, default=0)
    sl.add_argument("--wait-s", type=float, default=120.0, help="how long to wait for a controller")
    sl.add_argument("--out", default="sim-report.json")
    sl.add_argument("--scenario", default="steady")
    sl.add_argument("--hold", action="store_true",
                    help='start the conveyor only once a "go" line arrives on stdin (and the controller is ready)')
    sl.set_defaults(fn=_sim_line)

    r = sub.add_parser("run", help="run the controller against a real (or simulated) PLC and camera")
    r.add_argument("--config", required=True)
    r.add_argument("--log-level", default="info")
    r.add_argument("--log-file", metavar="PATH", help="log to this file, rotated at 50 MB, 5 kept (default: stderr)")
    r.add_argument("--log-format", choices=("json", "console"), default="json",
                   help="JSON lines (default: for journald, files and log shippers) or lines for a person")
    r.set_defaults(fn=_run)

    t = sub.add_parser("train", help="train a model on a dataset folder (needs the 'train' extra)")
    t.add_argument("dataset")
    t.add_argument("--out", default="runs/model")
    t.add_argument("--epochs", type=int, default=15, help="at most this many rounds (early stopping)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--target-frr", type=float, default=0.01, help="false-reject rate the threshold is set for")
    t.add_argument("--roi", help="x,y,w,h of the part on the image (default: the dataset's dataset.json, or all)")
    t.add_argument("--no-pretrained", action="store_true", help="start from random weights, not ImageNet")
    t.add_argument("--no-export", dest="export", action="store_false", help="keep only the checkpoint")
    t.add_argument("--name", help="model name, the version's prefix (default: the dataset folder's name)")
    t.add_argument("--from", dest="from_", help="fine-tune a sibling model (its model.pt or folder) instead of "
                   "starting from ImageNet: shared layers and shared classes' rows are kept")
    t.add_argument("--min-steps", type=int, default=300, help="at least this many updates in all")
    t.set_defaults(fn=_train)

    v = sub.add_parser("evaluate", help="detection and false rejects of an ONNX model on a dataset; HTML report")
    v.add_argument("model")
    v.add_argument("dataset")
    v.add_argument("--out", default="runs/evaluate")
    v.add_argument("--threads", type=int, default=2)
    v.add_argument("--json", action="store_true", help="print the whole report as JSON")
    at = v.add_mutually_exclusive_group()
    at.add_argument("--threshold", type=float, help="report at this threshold instead of the model's")
    at.add_argument("--frr", type=float, help="report at the cut rejecting at most this share of the good images here")
    v.set_defaults(fn=_evaluate)
    b = sub.add_parser("bench", help="benchmark: engine latency per batch size and the controller's overhead")
    b.add_argument("--model", help="ONNX model (default: the shipped one)")
    b.add_argument("--engines", default="onnx,tensorrt", help="comma-separated; unavailable ones are skipped")
    b.add_argument("--batch-sizes", default="1,2,4,8")
    b.add_argument("--iterations", type=int, default=200)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--line-parts", type=int, default=300, help="simulated line length for the overhead; 0: skip")
    b.add_argument("--out", default="runs/bench")
    b.set_defaults(fn=_bench)

    bj = sub.add_parser("bench-journal", help="benchmark: durable-record latency on the journal's disk")
    bj.add_argument("--dir", default="runs", help="a folder on the disk the journal will live on")
    bj.add_argument("--seconds", type=float, default=60.0)
    bj.add_argument("--rate", type=float, default=20.0, help="records per second (the line's part rate)")
    bj.set_defaults(fn=_bench_journal)

    rp = sub.add_parser("report", help="reports from a line's journal").add_subparsers(dest="report", required=True)
    rs = rp.add_parser("shadow", help="shadow mode: vision vs the existing inspection vs the truth, and go-live")
    rs.add_argument("--journal", required=True, help="the controller's journal (SQLite file)")
    rs.add_argument("--out", help="output folder (default: shadow-report beside the journal)")
    rs.add_argument("--shift-hours", type=float, default=8.0, help="length of a shift")
    rs.add_argument("--shift-start", type=float, default=6.0, help="hour of the day (UTC) a shift starts at")
    rs.set_defaults(fn=_report_shadow)
    def registry_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--registry", required=True, help="the model registry folder")
        sp.add_argument("--product", required=True, help="the product (recipe) whose models these are")
        sp.add_argument("--user", default=os.environ.get("USER", "unknown"), help="who does it (default: $USER)")

    rg = sub.add_parser("registry", help="the model registry").add_subparsers(dest="registry_command", required=True)
    ra = rg.add_parser("add", help="a training run's model into the registry (with its export parity)")
    ra.add_argument("run", help="the training run's folder (model.onnx, model.pt, train_report.json)")
    registry_args(ra)
    ra.set_defaults(fn=_registry_add)
    rl = rg.add_parser("list", help="versions, the active one, the last events")
    registry_args(rl)
    rl.set_defaults(fn=_registry_list)
    cd = sub.add_parser("candidate", help="compare a registered version with the active one: held-out and replay")
    cd.add_argument("version")
    registry_args(cd)
    cd.add_argument("--held-out", help="a fixed held-out dataset folder")
    cd.add_argument("--journal", help="replay the journal's last frames (with people's labels)")
    cd.add_argument("--replay", type=int, default=500, help="how many of the journal's last frames")
    cd.add_argument("--frr", type=float, default=0.01, help="the false-reject rate both are compared at")
    cd.set_defaults(fn=_candidate)
    pm = sub.add_parser("promote", help="make a compared, promotable version the line's model (hot swap)")
    pm.add_argument("version")
    registry_args(pm)
    pm.set_defaults(fn=_promote)
    rb = sub.add_parser("rollback", help="back to the version active before this one")
    registry_args(rb)
    rb.set_defaults(fn=_promote)
    rv = sub.add_parser("review", help="label the parts the line queued for review").add_subparsers(
        dest="review_command", required=True)
    for name, fn, helptext in (("serve", _review_serve, "a keyboard-driven review page on 127.0.0.1"),
                               ("list", _review_list, "the review queue and its labels as JSON"),
                               ("flag", _review_flag, "label one part: an operator flag from a terminal")):  # fmt: skip
        sp = rv.add_parser(name, help=helptext)
        sp.add_argument("--journal", required=True, help="the controller's journal (only read)")
        sp.add_argument("--user", default=os.environ.get("USER", "unknown"), help="who labels (default: $USER)")
        sp.set_defaults(fn=fn)
        if name == "serve":
            sp.add_argument("--model", help="show this model's defect map beside each frame")
            sp.add_argument("--port", type=int, default=8765)
        if name == "flag":
            sp.add_argument("results", nargs="+", metavar="RESULT", help="epoch/seq, as the HMI's ResultId")
            sp.add_argument("--class", dest="true_class", required=True,
                            help="what they really are: good, a defect class, or a new type's name (lowercase)")
            sp.add_argument("--note", default="")
    mo = sub.add_parser("model", help="model tools").add_subparsers(dest="model_command", required=True)
    mt = mo.add_parser("set-threshold", help="re-calibrate an exported model for a false-reject rate, no retraining")
    mt.add_argument("model", help="the ONNX model")
    mt.add_argument("--good", required=True, help="a dataset folder whose good/ images the model never trained on")
    mt.add_argument("--frr", type=float, required=True, help="target false-reject rate, e.g. 0.01")
    mt.add_argument("--out", help="write the re-calibrated model here (default: replace MODEL)")
    mt.add_argument("--accept-unsupported", action="store_true",
                    help="write it even if the images cannot hold the target (marked as not holding)")
    mt.add_argument("--user", help="who re-calibrates (default: this login)")
    mt.set_defaults(fn=_model_set_threshold)
    ds = sub.add_parser("dataset", help="dataset tools").add_subparsers(dest="dataset_command", required=True)
    dc = ds.add_parser("check", help="counts, balance, sizes, duplicates, unreadable files, missing masks")
    dc.add_argument("path")
    dc.set_defaults(fn=_dataset_check)
    da = ds.add_parser("add-from-journal", help="labelled production frames into a dataset folder, never twice")
    da.add_argument("--journal", required=True, help="the controller's journal (only read) and its label store")
    da.add_argument("--dataset", required=True, help="the dataset folder (created if missing)")
    da.add_argument("--sources", default="operator,review", help="whose labels: operator, review, simulator")
    da.add_argument("--line", help="the line's name in each image's provenance (default: this host's name)")
    da.add_argument("--roi", help="x,y,w,h for a new dataset folder")
    da.set_defaults(fn=_dataset_add_from_journal)

    h = sub.add_parser("hmi", help="secure the HMI: trust panels' certificates, manage users")
    hs = h.add_subparsers(dest="hmi_command", required=True)
    ht = hs.add_parser("trust", help="trust a panel's certificate (DER or PEM), e.g. one from <pki>/rejected/")
    ht.add_argument("cert")
    hc = hs.add_parser("certificate", help="the server's certificate (for panels to trust) and its thumbprint")
    hk = hs.add_parser("client-certificate", help="a trusted key and certificate for a client that makes none")
    hk.add_argument("--uri", required=True, help="the client's application URI (it must match the certificate)")
    hk.add_argument("--out", required=True, help="folder for client-key.pem and client-cert.der")
    hu = hs.add_parser("user", help="HMI users and their roles").add_subparsers(dest="user_command", required=True)
    ua_ = hu.add_parser("add", help="add a user (or change one's role and password)")
    ua_.add_argument("name")
    ua_.add_argument("--role", required=True, choices=("viewer", "operator", "engineer", "admin"))
    ua_.add_argument("--password-stdin", action="store_true", help="read the password from stdin (no prompt)")
    ur = hu.add_parser("remove", help="remove a user")
    ur.add_argument("name")
    ul = hu.add_parser("list", help="list the users and their roles")
    for parser in (ht, hc, hk, ua_, ur, ul):
        parser.add_argument("--config", help="the line's config (default: the built-in one, beside ./lineinspect.db)")
        parser.set_defaults(fn=_hmi)

    e = sub.add_parser("build-engine", help="build (or reuse) a TensorRT engine for an ONNX model (needs 'gpu')")
    e.add_argument("model")
    e.add_argument("--cache", default="runs/engines", help="engine cache folder")
    e.add_argument("--max-batch", type=int, default=8)
    e.add_argument("--fp32", action="store_true", help="no FP16 (TensorRT 10; 11 follows the model's types)")
    e.set_defaults(fn=_build_engine)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.fn(args))
    except ControllerError as exc:
        print(f"lineinspect: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
