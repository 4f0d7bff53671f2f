"""Inference benchmark: how long the engines take per batch on this machine, and how much of the
line's trigger → verdict latency is inference at all.

A benchmark reports numbers, it is not a pass/fail test: nothing here decides whether a number is
good enough. It measures `infer_batch` (preprocessing + model run + scoring, as `InferenceResult.infer_s`
counts it; no queueing, no Ray, no I/O) on realistic frames rendered by `models.synthetic` with a
fixed seed, one batch at a time on one thread of the caller. Both the iteration count and the wall
time per configuration are bounded, and a configuration stopped by its time limit says so in its row.

Responsible for: measuring (`bench_engines`), relating the numbers to a simulated-line summary
(`controller_overhead`), and presenting them (`format_table`, `write_report`). Not responsible for:
running the simulated line (sim.runner.run_simulated_line does), the CLI, or what it costs to get a
frame to an engine and back (workers.bench_dispatch: local thread, plain Ray call, compiled graph).

The other processes on the machine share its cores: numbers taken next to other work are noisier
and slower than on an idle line PC.
"""

from __future__ import annotations

import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from controller.errors import ConfigError, InferenceError

KNOWN_ENGINES = ("onnx", "tensorrt")
TIME_LIMIT_S = 20.0
"""Default wall-clock budget of one (engine, batch size) configuration, warmup included."""
FRAME_POOL = 32
"""Distinct frames rendered per run (at least the largest batch); batches cycle through them."""

Progress = Callable[[str], None]


def _percentiles_ms(samples_s: Sequence[float]) -> dict[str, float]:
    a = np.asarray(samples_s, dtype=np.float64) * 1000.0
    return {
        "p50": float(np.percentile(a, 50)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def _render_frames(count: int, seed: int, color: str) -> list[np.ndarray]:
    """`count` synthetic frames, classes in turn (good, scratch, spot, crack), mid difficulty."""
    from models.synthetic import CLASSES, render_frame  # scikit-image/scipy: only when benchmarking

    rng = np.random.default_rng(seed)
    frames = [render_frame(rng, i % len(CLASSES))[0] for i in range(count)]
    if color != "gray":  # an RGB model gets RGB8 frames of the same scene
        frames = [np.repeat(f[:, :, None], 3, axis=2) for f in frames]
    return frames


def _open_engine(
    kind: str, model_path: str, threads: int, max_batch: int, stack: ExitStack, trt_cache_dir: str | None
) -> tuple[Any, str | None]:
    """(engine, None), or (None, reason) when the engine cannot run on this machine."""
    if kind == "onnx":
        from workers.onnx_engine import OnnxRuntimeEngine

        return OnnxRuntimeEngine(model_path, intra_op_threads=threads, name="bench-onnx"), None
    try:
        import tensorrt  # noqa: F401  (only probing: TensorRTEngine imports it itself)
    except ImportError as exc:
        return None, f"tensorrt is not installed: {exc}"
    from workers.tensorrt_engine import TensorRTEngine

    cache = trt_cache_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="lineinspect-trt-"))
    try:
        return TensorRTEngine(model_path, engine_cache_dir=cache, max_batch=max_batch, name="bench-tensorrt"), None
    except (ConfigError, InferenceError) as exc:  # no CuPy, no GPU, or the model does not build
        return None, f"tensorrt unavailable: {exc}"


def _bench_one(
    engine: Any,
    frames: list[np.ndarray],
    batch_size: int,
    iterations: int,
    warmup: int,
    time_limit_s: float,
) -> dict[str, Any]:
    """Time `iterations` batches after `warmup` untimed ones, all within `time_limit_s` (at least one
    timed batch always runs, so every row has numbers)."""
    n = len(frames)
    start = time.perf_counter()
    deadline = start + time_limit_s
    k = 0  # running batch index, so consecutive batches use different frames

    def next_batch() -> list[np.ndarray]:
        nonlocal k
        first = k * batch_size
        k += 1
        return [frames[(first + j) % n] for j in range(batch_size)]

    warmed = 0
    while warmed < warmup and time.perf_counter() < deadline:
        engine.infer_batch(next_batch())
        warmed += 1
    samples: list[float] = []
    while len(samples) < iterations and (not samples or time.perf_counter() < deadline):
        batch = next_batch()
        t0 = time.perf_counter()
        engine.infer_batch(batch)
        samples.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    stopped = len(samples) < iterations or warmed < warmup
    busy = sum(samples)
    row: dict[str, Any] = {
        "batch_size": batch_size,
        "iterations": len(samples),
        "iterations_requested": iterations,
        "warmup": warmed,
        "latency_ms": _percentiles_ms(samples),
        "per_frame_p50_ms": float(np.percentile(np.asarray(samples) / batch_size, 50) * 1000.0),
        "throughput_fps": len(samples) * batch_size / busy if busy > 0 else math.inf,
        "wall_s": wall,
        "stopped_early": stopped,
    }
    if stopped:
        row["note"] = (
            f"stopped by the {time_limit_s:g} s limit after {warmed}/{warmup} warmup and "
            f"{len(samples)}/{iterations} timed batches"
        )
    return row


def bench_engines(
    model_path: str | os.PathLike[str],
    *,
    engines: Iterable[str] = ("onnx",),
    batch_sizes: Iterable[int] = (1, 2, 4, 8),
    iterations: int = 200,
    warmup: int = 20,
    threads: int = 1,
    progress: Progress | None = None,
    time_limit_s: float = TIME_LIMIT_S,
    seed: int = 0,
    trt_cache_dir: str | os.PathLike[str] | None = None,
) -> list[dict[str, Any]]:
    """Benchmark `infer_batch` of each engine at each batch size; one row per (engine, batch size).

    `engines`: "onnx" (ONNX Runtime on CPU, `threads` intra-op threads: always available) and/or
    "tensorrt" (needs TensorRT, CuPy and a GPU; otherwise one row for the engine with `skipped`
    giving the reason and no numbers). TensorRT's engine is built once with max_batch = the largest
    batch size, in `trt_cache_dir` (default: a temporary directory, so a fresh build per run).

    Each timed row has: engine, batch_size, model_version, threads, iterations (timed batches),
    iterations_requested, warmup (untimed batches run), latency_ms {p50, p99, max} per batch,
    per_frame_p50_ms (p50 of batch latency / batch size), throughput_fps (frames / timed seconds,
    one batch at a time), wall_s, stopped_early, and note when a config hit `time_limit_s`.
    Frames: `FRAME_POOL` (or more, for big batches) seeded `models.synthetic` frames of all classes.

    `progress`, if given, gets one line of text before and after each configuration.
    Raises ValueError for bad arguments and ConfigError when the model cannot be opened.
    """
    kinds = list(dict.fromkeys(engines))
    sizes = sorted(set(batch_sizes))
    unknown = [k for k in kinds if k not in KNOWN_ENGINES]
    if unknown:
        raise ValueError(f"unknown engine(s) {unknown}; known: {list(KNOWN_ENGINES)}")
    if not kinds or not sizes or sizes[0] < 1:
        raise ValueError(f"need at least one engine and batch sizes >= 1, got {kinds}, {sizes}")
    if iterations < 1 or warmup < 0 or threads < 1 or not time_limit_s > 0:
        raise ValueError("iterations and threads must be >= 1, warmup >= 0 and time_limit_s > 0")
    say = progress or (lambda _msg: None)
    path = os.fspath(model_path)
    cache = os.fspath(trt_cache_dir) if trt_cache_dir is not None else None
    rows: list[dict[str, Any]] = []
    frames: list[np.ndarray] | None = None
    with ExitStack() as stack:
        for kind in kinds:
            t_open = time.perf_counter()
            engine, reason = _open_engine(kind, path, threads, sizes[-1], stack, cache)
            if engine is None:
                say(f"{kind}: skipped ({reason})")
                rows.append({"engine": kind, "skipped": reason})
                continue
            setup_s = time.perf_counter() - t_open
            if frames is None:
                frames = _render_frames(max(FRAME_POOL, 2 * sizes[-1]), seed, engine.meta.color)
            engine.warmup()  # first runs allocate and pick kernels; per-size warmup follows
            for bs in sizes:
                say(f"{kind} batch {bs}: {warmup} warmup + {iterations} timed batches ...")
                row = {
                    "engine": kind,
                    "model_version": engine.meta.version,
                    "threads": threads if kind == "onnx" else None,
                    "setup_s": setup_s,
                    **_bench_one(engine, frames, bs, iterations, warmup, time_limit_s),
                }
                rows.append(row)
                lat = row["latency_ms"]
                say(
                    f"{kind} batch {bs}: p50 {lat['p50']:.2f} ms, p99 {lat['p99']:.2f} ms, "
                    f"{row['throughput_fps']:.0f} frames/s" + (f" ({row['note']})" if "note" in row else "")
                )
    return rows


def _inference_row(engine_rows: Sequence[dict[str, Any]], engine: str | None) -> dict[str, Any]:
    for row in engine_rows:
        if "skipped" in row or row.get("batch_size") != 1:
            continue
        if engine is None or row["engine"] == engine:
            return row
    which = f"engine {engine!r}" if engine else "any engine"
    raise ValueError(f"no measured batch-1 row for {which} in the benchmark rows")


def controller_overhead(
    sim_summary: dict[str, Any], engine_rows: Sequence[dict[str, Any]], *, engine: str | None = None
) -> dict[str, Any]:
    """Where the line's latency goes: inference vs everything else the controller does.

    `sim_summary` is `run_simulated_line`'s summary; its latency_ms is trigger → verdict-in-PLC per
    part. That latency includes, besides inference: the PLC poll that notices the trigger (up to
    one poll period), the camera exposure and frame transfer to the controller, associating the
    frame with its part, Ray dispatch to a worker and the result's return, the journal's fsync
    before the verdict is published, and the S7 write of the verdict into the PLC's data block.
    The inference share is the batch-1 latency of `engine` (default: the first measured engine) in
    `engine_rows`, since the line infers one frame per part.

    Returns {engine, line_ms, inference_ms, overhead_ms, ratio}, each of the last four {p50, p99}:
    overhead = line − inference and ratio = line / inference, taken percentile by percentile. The
    p99 overhead is therefore a difference of tails, not the tail of the overhead (percentiles do
    not subtract); it is an estimate, and only meaningful when both were measured on the same
    machine, with the same model and thread settings. ratio is inf when inference rounds to 0.
    Also carries the summary's parts and throughput_parts_per_s. Raises ValueError when the summary
    has no latency_ms or the rows have no batch-1 measurement.
    """
    try:
        line = {q: float(sim_summary["latency_ms"][q]) for q in ("p50", "p99")}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"simulated-line summary has no latency_ms p50/p99 ({exc!r})") from exc
    row = _inference_row(engine_rows, engine)
    inference = {q: float(row["latency_ms"][q]) for q in ("p50", "p99")}
    return {
        "engine": row["engine"],
        "line_ms": line,
        "inference_ms": inference,
        "overhead_ms": {q: line[q] - inference[q] for q in line},
        "ratio": {q: line[q] / inference[q] if inference[q] > 0 else math.inf for q in line},
        "parts": sim_summary.get("parts"),
        "throughput_parts_per_s": sim_summary.get("throughput_parts_per_s"),
    }


def format_table(rows: Sequence[dict[str, Any]], overhead: dict[str, Any] | None = None) -> str:
    """Plain-text table of the rows (and the overhead, if any), for a terminal or a log."""
    header = ("engine", "batch", "iters", "p50 ms", "p99 ms", "max ms", "frame p50 ms", "frames/s", "note")
    body: list[tuple[str, ...]] = []
    for r in rows:
        if "skipped" in r:
            body.append((r["engine"], "-", "-", "-", "-", "-", "-", "-", f"skipped: {r['skipped']}"))
            continue
        lat = r["latency_ms"]
        body.append((
            r["engine"],
            str(r["batch_size"]),
            str(r["iterations"]),
            f"{lat['p50']:.2f}",
            f"{lat['p99']:.2f}",
            f"{lat['max']:.2f}",
            f"{r['per_frame_p50_ms']:.2f}",
            f"{r['throughput_fps']:.0f}",
            "stopped early" if r.get("stopped_early") else "",
        ))  # fmt: skip
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    numeric = set(range(1, 8))

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [fmt(header).rstrip(), fmt(["-" * w for w in widths]).rstrip()]
    lines += [fmt(b).rstrip() for b in body]
    if overhead is not None:
        lm, im, om, ra = (overhead[k] for k in ("line_ms", "inference_ms", "overhead_ms", "ratio"))
        lines.append("")
        lines.append(f"line trigger → verdict in PLC vs {overhead['engine']} batch-1 inference:")
        for q in ("p50", "p99"):
            lines.append(
                f"  {q}: line {lm[q]:.2f} ms = inference {im[q]:.2f} ms + overhead {om[q]:.2f} ms "
                f"(line/inference {ra[q]:.1f}x)"
            )
    return "\n".join(lines)


def _json_safe(value: Any) -> Any:
    """JSON has no inf/NaN: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _plot(rows: Sequence[dict[str, Any]], overhead: dict[str, Any] | None, out: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # Agg: files only, no display
    from matplotlib.figure import Figure
    from matplotlib.ticker import ScalarFormatter

    fig = Figure(figsize=(11, 4.5))
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(1, 2, width_ratios=[3, 2])
    colors = ["#3b6ea8", "#e08a1e", "#2a9d4b", "#8e44ad"]
    measured = [r for r in rows if "skipped" not in r]
    kinds = list(dict.fromkeys(r["engine"] for r in measured))
    for i, kind in enumerate(kinds):
        color = colors[i % len(colors)]
        rs = sorted((r for r in measured if r["engine"] == kind), key=lambda r: r["batch_size"])
        xs = [r["batch_size"] for r in rs]
        ax1.plot(xs, [r["latency_ms"]["p50"] for r in rs], "o-", color=color, label=f"{kind} p50")
        ax1.plot(xs, [r["latency_ms"]["p99"] for r in rs], "s--", color=color, label=f"{kind} p99")
    skipped = [f"{r['engine']}: skipped" for r in rows if "skipped" in r]
    if skipped:
        ax1.text(0.98, 0.02, "\n".join(skipped), transform=ax1.transAxes, ha="right", fontsize=7, color="#777777")
    sizes = sorted({r["batch_size"] for r in measured})
    if sizes:
        ax1.set_xscale("log", base=2)
        ax1.set_xticks(sizes, [str(s) for s in sizes])
        ax1.set_yscale("log")
        ax1.yaxis.set_major_formatter(ScalarFormatter())
        ax1.yaxis.set_minor_formatter(ScalarFormatter())
        ax1.legend(fontsize=7)
    ax1.set(title="latency per batch (infer_batch)", xlabel="batch size", ylabel="ms")
    ax1.grid(True, which="both", alpha=0.3)

    if overhead is None:
        ax2.text(0.5, 0.5, "no simulated-line run", ha="center", va="center", transform=ax2.transAxes)
        ax2.set_axis_off()
    else:
        qs = ["p50", "p99"]
        inf = [overhead["inference_ms"][q] for q in qs]
        rest = [max(0.0, overhead["overhead_ms"][q]) for q in qs]
        ax2.bar(qs, inf, color="#3b6ea8", label=f"inference ({overhead['engine']}, batch 1)")
        ax2.bar(qs, rest, bottom=inf, color="#bbbbbb", label="controller + I/O overhead")
        for i, q in enumerate(qs):
            ax2.annotate(
                f"{overhead['line_ms'][q]:.1f} ms ({overhead['ratio'][q]:.1f}x)",
                (i, inf[i] + rest[i]), ha="center", va="bottom", fontsize=8,
            )  # fmt: skip
        ax2.set(title="line latency: trigger → verdict in PLC", ylabel="ms")
        ax2.margins(y=0.15)
        ax2.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"lineinspect bench ({platform.node()}, {os.cpu_count()} CPUs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def write_report(
    rows: Sequence[dict[str, Any]], overhead: dict[str, Any] | None, out_dir: str | os.PathLike[str]
) -> dict[str, Path]:
    """Write `bench.json` ({rows, overhead, host}) and `bench.png` (latency p50/p99 vs batch size per
    engine on a log scale; a stacked bar of line latency = inference + overhead, when `overhead` is
    given) into `out_dir` (created if needed). Returns {"json": path, "png": path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "bench.json", "png": out / "bench.png"}
    doc = {
        "host": {"node": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "rows": list(rows),
        "overhead": overhead,
    }
    paths["json"].write_text(json.dumps(_json_safe(doc), indent=2, allow_nan=False) + "\n")
    _plot(rows, overhead, paths["png"])
    return paths
