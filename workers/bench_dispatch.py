"""Dispatch benchmark: what it costs, per frame, to get a frame to an engine and its result back,
beside the engine's own time, for each way the controller can reach an engine.

Dispatches: "local" (LocalInferencePool: a worker thread in this process), "ray-actor"
(RayInferencePool with plain actor calls) and "ray-compiled" (RayInferencePool with one Ray
Compiled Graph per actor). Each is measured through its `InferenceService.infer`, as the controller
calls it: one frame at a time, batch 1, `gap_s` between frames (a line sends one frame per part,
not a burst), on realistic frames (`models.synthetic`, fixed seed). Per frame:
round trip = `infer` returning − `infer` called, engine = the result's `infer_s` (preprocessing +
model run, timed inside the engine), overhead = round trip − engine. Percentiles are of the
per-frame overhead itself (not a difference of percentiles).

Also the CPU each dispatch burns: this process's CPU time per frame (it includes the event loop
and any dispatch thread) and, for Ray, the actor process's (from /proc; local node only), plus the
actor's CPU share while no frame is in flight (a compiled graph's reader spins; a plain actor sleeps).

`load` busy processes (pure-Python spin loops at this process's priority, each ending by itself
after the configuration's time limit, and killed when it is done) run alongside when asked, to
see the dispatch on a machine that has no core to spare.

Responsible for: measuring and presenting those numbers. Not responsible for: the engines' batch
benchmark (workers.bench) or the simulated line. A benchmark reports numbers, it is not a test.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

DISPATCHES = ("local", "ray-actor", "ray-compiled")
TIME_LIMIT_S = 60.0
"""Default wall-clock bound of one (dispatch, load) configuration, pool start-up included."""
IDLE_WINDOW_S = 1.0
"""How long the worker's idle CPU is watched, with no frame in flight."""

Progress = Callable[[str], None]


def _cpu_s_of(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far, or None where /proc cannot say."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime in ticks


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


@contextmanager
def busy_processes(count: int, limit_s: float) -> Iterator[list[subprocess.Popen[bytes]]]:
    """`count` processes spinning on a core each, at this process's priority, for at most
    `limit_s` seconds (they end by themselves even if this process is killed); killed on exit."""
    spin = f"import time\nt = time.monotonic() + {limit_s:.1f}\nwhile time.monotonic() < t: pass\n"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(count)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait(timeout=10)


def _stats_ms(samples_s: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return {"p50": float(np.percentile(a, 50)), "p99": float(np.percentile(a, 99)), "max": float(a.max())}


def _make_pool(dispatch: str, model_path: str, threads: int) -> Any:
    if dispatch == "local":
        from workers.local_pool import LocalInferencePool

        return LocalInferencePool(model_path, threads=1, intra_op_threads=threads)
    from workers.ray_pool import RayInferencePool

    mode = "compiled" if dispatch == "ray-compiled" else "actor"
    return RayInferencePool(model_path, num_actors=1, intra_op_threads=threads, dispatch=mode)


async def _worker_pid(pool: Any) -> int | None:
    handles = getattr(pool, "actor_handles", None)
    if not handles:
        return None  # the local pool's worker is this process
    pid: int = await asyncio.wait_for(asyncio.wrap_future(handles[0].pid.remote().future()), 30)
    return pid


async def _measure(
    dispatch: str,
    model_path: str,
    frames: list[np.ndarray],
    count: int,
    warmup: int,
    gap_s: float,
    threads: int,
    time_limit_s: float,
) -> dict[str, Any]:
    t_end = time.monotonic() + time_limit_s
    async with _make_pool(dispatch, model_path, threads) as pool:
        worker = await _worker_pid(pool)
        for i in range(warmup):
            await pool.infer(frames[i % len(frames)], time.monotonic() + 5.0)
            await asyncio.sleep(gap_s)
        round_trip: list[float] = []
        engine: list[float] = []
        failed = 0
        own0, worker0 = _own_cpu_s(), _cpu_s_of(worker) if worker else None
        for i in range(count):
            if time.monotonic() > t_end:
                break
            t0 = time.perf_counter()
            try:
                result = await pool.infer(frames[i % len(frames)], time.monotonic() + 5.0)
            except Exception:  # counted, not measured: a benchmark reports, it does not stop
                failed += 1
                continue
            round_trip.append(time.perf_counter() - t0)
            engine.append(result.infer_s)
            await asyncio.sleep(gap_s)
        own1, worker1 = _own_cpu_s(), _cpu_s_of(worker) if worker else None
        done = max(1, len(round_trip) + failed)
        # Idle: no frame in flight; what does the worker burn while it waits for the next part?
        idle0 = _cpu_s_of(worker) if worker else None
        await asyncio.sleep(IDLE_WINDOW_S)
        idle1 = _cpu_s_of(worker) if worker else None
    if not round_trip:
        raise RuntimeError(f"{dispatch}: no frame came back ({failed} failed)")
    overhead = [r - e for r, e in zip(round_trip, engine, strict=True)]
    return {
        "frames": len(round_trip),
        "failed": failed,
        "round_trip_ms": _stats_ms(round_trip),
        "engine_ms": _stats_ms(engine),
        "overhead_ms": _stats_ms(overhead),
        "cpu_ms_per_frame": {
            "this_process": (own1 - own0) * 1000.0 / done,
            "worker": (worker1 - worker0) * 1000.0 / done if worker0 is not None and worker1 is not None else None,
        },
        "worker_idle_cpu_pct": (
            100.0 * (idle1 - idle0) / IDLE_WINDOW_S if idle0 is not None and idle1 is not None else None
        ),
    }


def bench_dispatch(
    model_path: str | os.PathLike[str],
    *,
    dispatches: Iterable[str] = DISPATCHES,
    loads: Iterable[int] = (0,),
    frames: int = 300,
    warmup: int = 20,
    gap_s: float = 0.01,
    threads: int = 1,
    time_limit_s: float = TIME_LIMIT_S,
    seed: int = 0,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """One row per (load, dispatch): {dispatch, load, frames, failed, round_trip_ms, engine_ms,
    overhead_ms (each {p50, p99, max}), cpu_ms_per_frame {this_process, worker}, worker_idle_cpu_pct}
    (worker figures None for "local", whose worker is this process), or {dispatch, load, skipped}
    where the dispatch cannot run here (no Ray). Ray, when not initialised yet, is started locally
    for the Ray dispatches (2 CPUs) and shut down afterwards. Every configuration is bounded by
    `time_limit_s` and `frames`. Raises ValueError for bad arguments, ConfigError for a bad model."""
    kinds = list(dict.fromkeys(dispatches))
    unknown = [k for k in kinds if k not in DISPATCHES]
    if unknown or not kinds:
        raise ValueError(f"unknown or no dispatch(es) {unknown or kinds}; known: {list(DISPATCHES)}")
    load_list = list(dict.fromkeys(loads))
    if frames < 1 or warmup < 0 or gap_s < 0 or threads < 1 or not time_limit_s > 0 or any(n < 0 for n in load_list):
        raise ValueError("frames and threads must be >= 1; warmup, gap_s and loads >= 0; time_limit_s > 0")
    from workers.bench import _render_frames
    from workers.model_meta import load_model_meta

    say = progress or (lambda _msg: None)
    path = os.fspath(model_path)
    images = _render_frames(32, seed, load_model_meta(path).color)
    ray_mod, reason, own_ray = None, None, False
    if any(k.startswith("ray") for k in kinds):
        try:
            import ray as ray_mod
        except ImportError as exc:
            reason = f"ray is not installed: {exc}"
        if ray_mod is not None and not ray_mod.is_initialized():
            ray_mod.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            own_ray = True
    rows: list[dict[str, Any]] = []
    try:
        for load in load_list:
            for kind in kinds:
                if kind.startswith("ray") and ray_mod is None:
                    rows.append({"dispatch": kind, "load": load, "skipped": reason})
                    continue
                say(f"{kind}, {load} busy processes: {warmup} warmup + {frames} frames ...")
                with busy_processes(load, time_limit_s + 10):
                    row = asyncio.run(_measure(kind, path, images, frames, warmup, gap_s, threads, time_limit_s))
                rows.append({"dispatch": kind, "load": load, **row})
                o = row["overhead_ms"]
                say(f"{kind}, load {load}: overhead p50 {o['p50']:.3f} ms, p99 {o['p99']:.3f} ms")
    finally:
        if own_ray and ray_mod is not None:
            ray_mod.shutdown()
    return rows


def format_dispatch_table(rows: Sequence[dict[str, Any]]) -> str:
    """Plain-text table of `bench_dispatch` rows."""
    header = ("dispatch", "load", "frames", "engine p50", "overhead p50", "p99", "max",
              "cpu/frame here", "worker", "worker idle")  # fmt: skip

    def num(v: float | None, unit: str = "") -> str:
        return "-" if v is None or not math.isfinite(v) else f"{v:.3f}{unit}" if unit != "%" else f"{v:.0f}%"

    body: list[tuple[str, ...]] = []
    for r in rows:
        if "skipped" in r:
            body.append((r["dispatch"], str(r["load"]), "-", "-", "-", "-", "-", "-", "-", f"skipped: {r['skipped']}"))
            continue
        o, cpu = r["overhead_ms"], r["cpu_ms_per_frame"]
        body.append((
            r["dispatch"], str(r["load"]), str(r["frames"]), num(r["engine_ms"]["p50"]),
            num(o["p50"]), num(o["p99"]), num(o["max"]), num(cpu["this_process"]), num(cpu["worker"]),
            num(r["worker_idle_cpu_pct"], "%"),
        ))  # fmt: skip
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for b in body:
        lines.append("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths, strict=True))))
    lines.append("times in ms; overhead = infer() round trip - engine time, per frame; cpu in ms per frame")
    return "\n".join(line.rstrip() for line in lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m workers.bench_dispatch`: the dispatch table on the shipped model (until
    `lineinspect bench` has a flag for it); writes dispatch.json into --out."""
    import argparse
    import json

    from controller.config import SHIPPED_MODEL
    from workers.bench import _json_safe

    p = argparse.ArgumentParser(prog="python -m workers.bench_dispatch", description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(SHIPPED_MODEL))
    p.add_argument("--dispatch", default=",".join(DISPATCHES), help="comma-separated: " + ", ".join(DISPATCHES))
    p.add_argument("--load", default="0,2", help="comma-separated numbers of busy processes alongside")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--gap-ms", type=float, default=10.0, help="pause between frames")
    p.add_argument("--out", default="runs/bench")
    args = p.parse_args(argv)
    rows = bench_dispatch(
        args.model, dispatches=args.dispatch.split(","), loads=[int(n) for n in args.load.split(",")],
        frames=args.frames, gap_s=args.gap_ms / 1000.0, progress=lambda m: print(m, file=sys.stderr),
    )  # fmt: skip
    print(format_dispatch_table(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dispatch.json").write_text(json.dumps(_json_safe({"rows": rows}), indent=2, allow_nan=False) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
