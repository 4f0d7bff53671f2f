"""OnnxRuntimeEngine on the tiny model: scoring rules, result fields, session tuning, failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from controller.errors import ConfigError, InferenceError
from workers.model_meta import load_model_meta
from workers.onnx_engine import OnnxRuntimeEngine, canary_frame
from workers.preprocess import preprocess
from workers.tiny_model import build_tiny_model, tiny_weights


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny.onnx", size=32, version="tiny-9")


@pytest.fixture(scope="module")
def engine(model: str) -> OnnxRuntimeEngine:
    return OnnxRuntimeEngine(model, name="unit")


def expected_probs(frame: np.ndarray, model: str) -> np.ndarray:
    """The tiny model's class_probs computed by hand: softmax(GAP(x) @ W + b)."""
    x = preprocess([frame], load_model_meta(model))
    w, b = tiny_weights()
    logits = x.mean(axis=(2, 3)).astype(np.float64) @ w + b
    e = np.exp(logits - logits.max())
    return np.asarray((e / e.sum())[0])


@pytest.mark.parametrize("level", [0, 60, 128, 200, 255])
def test_score_class_and_reject_follow_the_contract(engine: OnnxRuntimeEngine, model: str, level: int) -> None:
    frame = np.full((48, 40), level, np.uint8)
    (r,) = engine.infer_batch([frame])
    probs = expected_probs(frame, model)
    assert r.score == pytest.approx(max(0.0, 1.0 - probs[0]), abs=1e-5)
    assert r.defect_class == int(np.argmax(probs))
    assert r.reject == (r.score >= 0.5)
    assert (r.model_version, r.worker) == ("tiny-9", "unit")
    assert r.infer_s > 0


def test_dark_passes_bright_rejects(engine: OnnxRuntimeEngine) -> None:
    dark, bright = engine.infer_batch([np.zeros((32, 32), np.uint8), np.full((32, 32), 255, np.uint8)])
    assert (dark.defect_class, dark.reject) == (0, False)
    assert (bright.defect_class, bright.reject) == (1, True)
    assert 0.0 <= dark.score < 0.5 <= bright.score <= 1.0


def test_batch_keeps_order_and_splits_time(engine: OnnxRuntimeEngine) -> None:
    frames = [np.full((32, 32), v, np.uint8) for v in (255, 0, 255)]
    results = engine.infer_batch(frames)
    assert [r.reject for r in results] == [True, False, True]
    assert len({r.infer_s for r in results}) == 1


def test_threshold_comes_from_metadata(tmp_path: Path) -> None:
    # Threshold 0: every score is >= 0, so everything is rejected, even a clearly good part.
    eng = OnnxRuntimeEngine(build_tiny_model(tmp_path / "t0.onnx", size=32, threshold=0.0))
    assert eng.infer_batch([np.zeros((32, 32), np.uint8)])[0].reject


def test_roi_model_takes_full_camera_frames(tmp_path: Path) -> None:
    eng = OnnxRuntimeEngine(build_tiny_model(tmp_path / "roi.onnx", size=32, roi=[100, 100, 40, 40]))
    frame = np.zeros((160, 160), np.uint8)
    frame[100:140, 100:140] = 255  # only the ROI is bright
    assert eng.infer_batch([frame])[0].reject
    frame[:] = 255
    frame[100:140, 100:140] = 0  # only the ROI is dark
    assert not eng.infer_batch([frame])[0].reject
    assert canary_frame(eng.meta).shape == (140, 140)


def test_warmup_and_canary(engine: OnnxRuntimeEngine) -> None:
    assert 0 < engine.warmup(runs=2) < 1.0
    assert engine.canary().model_version == "tiny-9"


def test_session_is_tuned_for_latency(model: str) -> None:
    eng = OnnxRuntimeEngine(model, intra_op_threads=2)
    opts = eng._session.get_session_options()
    assert opts.intra_op_num_threads == 2
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert str(opts.execution_mode).endswith("ORT_SEQUENTIAL")
    assert str(opts.graph_optimization_level).endswith("ORT_ENABLE_ALL")


def test_default_worker_name_identifies_process(model: str) -> None:
    import os

    assert OnnxRuntimeEngine(model).name.endswith(f":{os.getpid()}")


def test_wrong_frame_kind_is_an_inference_error(engine: OnnxRuntimeEngine) -> None:
    with pytest.raises(InferenceError, match="expects Mono8"):
        engine.infer_batch([np.zeros((32, 32, 3), np.uint8)])


def test_missing_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model file not found"):
        OnnxRuntimeEngine(tmp_path / "absent.onnx")


def test_defect_map_is_the_models_map_per_frame_in_float16(engine: OnnxRuntimeEngine) -> None:
    # The tiny model's map is sigmoid(mean of the normalised image over each 8x8 cell).
    frame = np.zeros((32, 32), np.uint8)
    frame[8:16, 16:24] = 255  # exactly cell (1, 2) of the 4x4 map
    dark, marked = engine.infer_batch([np.zeros((32, 32), np.uint8), frame])
    for r in (dark, marked):
        assert r.defect_map is not None
        assert r.defect_map.dtype == np.float16 and r.defect_map.shape == (4, 4)
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    low, high = sigmoid((0 - 0.5) / 0.25), sigmoid((1 - 0.5) / 0.25)
    np.testing.assert_allclose(dark.defect_map, np.full((4, 4), low), atol=1e-3)
    want = np.full((4, 4), low)
    want[1, 2] = high
    np.testing.assert_allclose(marked.defect_map, want, atol=1e-3)


def test_a_nan_score_rejects(engine: OnnxRuntimeEngine) -> None:
    from workers.onnx_engine import score

    probs = np.array([[0.9, 0.1, 0.0], [np.nan, 0.5, 0.5]], np.float32)
    maps = np.zeros((2, 1, 4, 4), np.float32)
    from_probs = score(probs, maps, engine.meta, 0.001, "w")
    own = score(probs[:1].repeat(2, 0), maps, engine.meta, 0.001, "w", np.array([0.0, np.nan], np.float32))
    for results in (from_probs, own):
        assert results[1].reject and results[1].score == 1.0  # a broken output fails safe
        assert not results[0].reject
