"""workers.bench and workers.bench_dispatch on the tiny model: row fields and sanity of the numbers,
the TensorRT skip, the overhead arithmetic, the report files, and the busy processes' clean-up. No
assertion on how fast anything is."""

from __future__ import annotations

import importlib.util
import json
import math
from typing import Any

import pytest

from workers.bench import bench_engines, controller_overhead, format_table, write_report
from workers.bench_dispatch import bench_dispatch, busy_processes, format_dispatch_table
from workers.tiny_model import build_tiny_model

SIZES = (1, 2, 4)


@pytest.fixture(scope="module")
def rows(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    model = build_tiny_model(tmp_path_factory.mktemp("m") / "tiny.onnx", size=32, version="tiny-b")
    return bench_engines(model, engines=("onnx", "tensorrt"), batch_sizes=SIZES, iterations=12, warmup=2)


def timed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if "skipped" not in r]


def test_one_row_per_batch_size_with_sane_numbers(rows: list[dict[str, Any]]) -> None:
    onnx = [r for r in timed(rows) if r["engine"] == "onnx"]
    assert [r["batch_size"] for r in onnx] == list(SIZES)
    for r in onnx:
        lat = r["latency_ms"]
        assert lat["max"] >= lat["p99"] >= lat["p50"] > 0
        assert 0 < r["per_frame_p50_ms"] <= lat["max"]
        assert r["throughput_fps"] > 0 and math.isfinite(r["throughput_fps"])
        assert (r["iterations"], r["iterations_requested"], r["warmup"]) == (12, 12, 2)
        assert r["stopped_early"] is False and "note" not in r
        assert (r["model_version"], r["threads"]) == ("tiny-b", 1)


def test_tensorrt_is_skipped_without_tensorrt(rows: list[dict[str, Any]]) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here")
    (trt,) = [r for r in rows if r["engine"] == "tensorrt"]
    assert "tensorrt" in trt["skipped"] and "latency_ms" not in trt


def test_time_limit_stops_a_config_and_says_so(tmp_path: Any) -> None:
    model = build_tiny_model(tmp_path / "tiny.onnx", size=32)
    (row,) = bench_engines(model, batch_sizes=(2,), iterations=10_000_000, warmup=0, time_limit_s=0.2)
    assert row["stopped_early"] is True and "limit" in row["note"]
    assert 1 <= row["iterations"] < 10_000_000


def test_bad_arguments_are_refused(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="unknown engine"):
        bench_engines(tmp_path / "none.onnx", engines=("openvino",))
    with pytest.raises(ValueError):
        bench_engines(tmp_path / "none.onnx", batch_sizes=(0, 1))


ROWS = [
    {"engine": "tensorrt", "skipped": "not here"},
    {"engine": "onnx", "batch_size": 2, "latency_ms": {"p50": 9.0, "p99": 12.0, "max": 13.0}},
    {"engine": "onnx", "batch_size": 1, "latency_ms": {"p50": 5.0, "p99": 8.0, "max": 9.0}},
]
SUMMARY = {"latency_ms": {"p50": 20.0, "p99": 32.0, "max": 40.0}, "parts": 300, "throughput_parts_per_s": 10.0}


def test_overhead_arithmetic_uses_batch_one() -> None:
    o = controller_overhead(SUMMARY, ROWS)
    assert o["engine"] == "onnx"
    assert o["line_ms"] == {"p50": 20.0, "p99": 32.0}
    assert o["inference_ms"] == {"p50": 5.0, "p99": 8.0}
    assert o["overhead_ms"] == {"p50": 15.0, "p99": 24.0}
    assert o["ratio"] == {"p50": 4.0, "p99": 4.0}
    assert (o["parts"], o["throughput_parts_per_s"]) == (300, 10.0)


def test_overhead_needs_a_batch_one_row_and_line_latency() -> None:
    with pytest.raises(ValueError, match="batch-1"):
        controller_overhead(SUMMARY, ROWS[:2])
    with pytest.raises(ValueError, match="batch-1"):
        controller_overhead(SUMMARY, ROWS, engine="tensorrt")
    with pytest.raises(ValueError, match="latency_ms"):
        controller_overhead({"parts": 0}, ROWS)


def test_report_files_and_table(rows: list[dict[str, Any]], tmp_path: Any) -> None:
    overhead = controller_overhead(SUMMARY, rows)
    paths = write_report(rows, overhead, tmp_path / "out")
    assert set(paths) == {"json", "png"}
    assert paths["png"].name == "bench.png"
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(paths["json"].read_text())
    assert paths["json"].name == "bench.json"
    assert len(doc["rows"]) == len(rows) and doc["overhead"]["engine"] == "onnx"
    table = format_table(rows, overhead)
    assert "onnx" in table and "skipped" in table and "overhead" in table
    # Without a simulated line there is still a report.
    alone = write_report(rows, None, tmp_path / "alone")
    assert alone["png"].read_bytes()[:4] == b"\x89PNG"
    assert json.loads(alone["json"].read_text())["overhead"] is None


# -- the dispatch benchmark (local dispatch only here: no Ray start in a unit test) --------------


def test_dispatch_bench_local_row(tmp_path: Any) -> None:
    model = build_tiny_model(tmp_path / "tiny.onnx", size=32, version="tiny-d")
    (row,) = bench_dispatch(model, dispatches=("local",), frames=15, warmup=2, gap_s=0.0)
    assert (row["dispatch"], row["load"], row["frames"], row["failed"]) == ("local", 0, 15, 0)
    for key in ("round_trip_ms", "engine_ms", "overhead_ms"):
        stats = row[key]
        assert stats["max"] >= stats["p99"] >= stats["p50"]
    # The round trip contains the engine's own time; what is left is the dispatch.
    assert row["round_trip_ms"]["p50"] >= row["engine_ms"]["p50"] > 0
    assert row["cpu_ms_per_frame"]["this_process"] >= 0  # clock ticks: a tiny model may use less than one
    assert row["cpu_ms_per_frame"]["worker"] is None and row["worker_idle_cpu_pct"] is None  # no other process
    table = format_dispatch_table([row, {"dispatch": "ray-compiled", "load": 2, "skipped": "ray is not installed"}])
    assert "local" in table and "skipped: ray is not installed" in table


def test_dispatch_bench_refuses_bad_arguments(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="unknown"):
        bench_dispatch(tmp_path / "none.onnx", dispatches=("grpc",))
    with pytest.raises(ValueError):
        bench_dispatch(tmp_path / "none.onnx", dispatches=("local",), loads=(-1,))


def test_busy_processes_are_gone_afterwards() -> None:
    with busy_processes(2, limit_s=30) as procs:
        assert all(p.poll() is None for p in procs)  # spinning
    assert all(p.returncode is not None for p in procs)  # killed and reaped, not left to their limit
