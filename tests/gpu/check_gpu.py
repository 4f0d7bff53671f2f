"""GPU smoke check of the CuPy/TensorRT inference path; run it with tests/gpu/run.sh on a GPU machine.

Checks what the unit tests' fakes cannot: (a) CuPy preprocessing matches NumPy's on real frames, and
how fast each is; (b) where TensorRT imports, an engine built from the tiny model gives ONNX
Runtime's scores, and its latency. Prints a short report; exits 1 when a parity check fails.

Needs CuPy, onnxruntime and (for (b)) onnx to build the tiny model; not Ray, not TensorRT (skipped
when missing), and not an installed project: the repository root is put on sys.path.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import cupy as cp  # noqa: E402
import numpy as np  # noqa: E402

from workers.model_meta import ModelMeta  # noqa: E402
from workers.preprocess import preprocess  # noqa: E402

PREPROCESS_TOL = 1e-4
SCORE_TOL = 1e-3  # FP16 kernels (TensorRT 10) move scores by far less than this
CAMERA = (1024, 1280)  # a typical machine-vision sensor, rows x columns
ROI = (100, 80, 600, 500)  # x, y, w, h on the camera frame


def make_meta(color: str, roi: tuple[int, int, int, int] | None, size: int = 224) -> ModelMeta:
    return ModelMeta(source="check_gpu", classes=("good", "defect"), height=size, width=size, channels=3,
                     color=color, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), roi=roi,
                     threshold=0.5, version="check")  # fmt: skip


def random_frames(rng: np.random.Generator, n: int, hw: tuple[int, int], color: str) -> list[np.ndarray]:
    shape = hw if color == "gray" else (*hw, 3)
    # Random brightness per frame plus noise: exercises both verdicts of the tiny model.
    return [np.clip(rng.integers(0, 256) + rng.normal(0, 40, shape), 0, 255).astype(np.uint8) for _ in range(n)]


def percentiles_ms(fn: Callable[[], object], runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def check_preprocess(rng: np.random.Generator) -> bool:
    worst = 0.0
    for color in ("gray", "rgb"):
        for with_roi in (False, True):
            for _ in range(2):  # 2 colours x 2 ROI settings x 2 batches x 4 frames = 32 frames
                hw = (int(rng.integers(64, 900)), int(rng.integers(64, 900)))  # both up- and downscaling
                roi = None
                if with_roi:
                    x, y = int(rng.integers(0, hw[1] // 2)), int(rng.integers(0, hw[0] // 2))
                    roi = (x, y, int(rng.integers(8, hw[1] - x + 1)), int(rng.integers(8, hw[0] - y + 1)))
                meta, frames = make_meta(color, roi), random_frames(rng, 4, hw, color)
                diff = np.abs(preprocess(frames, meta) - preprocess(frames, meta, xp=cp).get())
                worst = max(worst, float(diff.max()))
    ok = worst < PREPROCESS_TOL
    print(f"preprocess parity  CuPy vs NumPy, 32 frames: max |diff| {worst:.1e} (< {PREPROCESS_TOL:g}) "
          f"{'OK' if ok else 'FAIL'}")  # fmt: skip

    meta = make_meta("gray", ROI)
    for n in (1, 8):
        frames = random_frames(rng, n, CAMERA, "gray")

        def on_gpu(frames: list[np.ndarray] = frames) -> None:
            preprocess(frames, meta, xp=cp)
            cp.cuda.get_current_stream().synchronize()  # time the work, not the launch

        on_gpu()  # the first call compiles CuPy's kernels
        cpu, _ = percentiles_ms(lambda frames=frames: preprocess(frames, meta), 30)
        gpu, _ = percentiles_ms(on_gpu, 100)
        print(f"preprocess speed   batch {n} of {CAMERA[0]}x{CAMERA[1]} Mono8, ROI -> 224: "
              f"p50 NumPy {cpu:.2f} ms, CuPy {gpu:.2f} ms (incl. upload)")  # fmt: skip
    return ok


def check_tensorrt(rng: np.random.Generator) -> bool:
    try:
        import tensorrt
    except ImportError:
        print("TensorRT not installed: skipped")
        return True
    try:
        from workers.tiny_model import build_tiny_model
    except ImportError:
        print("onnx not installed (needed to build the tiny model): TensorRT check skipped")
        return True
    from workers.onnx_engine import OnnxRuntimeEngine
    from workers.tensorrt_engine import TensorRTEngine

    with tempfile.TemporaryDirectory() as tmp:
        model = build_tiny_model(Path(tmp) / "tiny.onnx", size=224, roi=list(ROI))
        t0 = time.perf_counter()
        engine = TensorRTEngine(model, engine_cache_dir=Path(tmp) / "engines", max_batch=8)
        print(f"tensorrt           {tensorrt.__version__}: engine built in {time.perf_counter() - t0:.1f} s")
        reference = OnnxRuntimeEngine(model)
        worst, mismatched = 0.0, 0
        for n in (1, 8, 1, 8):
            frames = random_frames(rng, n, CAMERA, "gray")
            for got, want in zip(engine.infer_batch(frames), reference.infer_batch(frames), strict=True):
                worst = max(worst, abs(got.score - want.score))
                # A verdict may only differ where the score sits within tolerance of the threshold.
                if (got.reject != want.reject or got.defect_class != want.defect_class) and (
                    abs(want.score - engine.meta.threshold) > SCORE_TOL
                ):
                    mismatched += 1
        ok = worst < SCORE_TOL and mismatched == 0
        print(f"tensorrt parity    vs ONNX Runtime, 18 frames: max |score diff| {worst:.1e} (< {SCORE_TOL:g}), "
              f"{mismatched} verdict mismatches {'OK' if ok else 'FAIL'}")  # fmt: skip

        engine.warmup(5)
        for n, runs in ((1, 200), (8, 100)):
            frames = random_frames(rng, n, CAMERA, "gray")
            p50, p99 = percentiles_ms(lambda frames=frames: engine.infer_batch(frames), runs)
            print(f"tensorrt latency   batch {n} (preprocess + infer + copy back): p50 {p50:.2f} ms, p99 {p99:.2f} ms")
    return ok


def main() -> int:
    rng = np.random.default_rng(0)
    gpu = cp.cuda.runtime.getDeviceProperties(0)["name"]
    print(f"device             {gpu.decode() if isinstance(gpu, bytes) else gpu}, CuPy {cp.__version__}")
    ok = check_preprocess(rng)
    ok = check_tensorrt(rng) and ok
    print("RESULT", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
