"""How many labeled images does a product need? `python -m models.learning_curve [--out DIR]`.

What it does: for each training-set size (images per class, "good" included) it renders a synthetic
training set, trains twice with the same recipe — from the ImageNet weights and from random weights
— and measures each model on one fixed held-out test set (seed never used for training): detection
at a 1 % false-reject rate with the threshold set on the test set's good parts (what the model can
separate), the same at the model's own calibrated threshold (what the line would get), and the
detection of defect types never seen in training. Writes learning_curve.json, learning_curve.md and
learning_curve.png, and prints a line per run as it goes.

What it does not: use real images, or vary the recipe per size (that would measure tuning, not data).
Training is on CPU; the full default curve (5 sizes x 2) takes about an hour on 2 cores; `--sizes`
runs part of it and merges into the existing results.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from models import synthetic
from models.evaluate import auroc, detection_at_frr
from models.net import Decision, crop_resize
from models.train import load_checkpoint, predict, train

SIZES = (25, 50, 100, 200, 500)
TEST_SEED = 3
TEST_COUNTS = {"good": 1000, **{c: 250 for c in synthetic.CLASSES[1:] + synthetic.UNSEEN}}
FRR = 0.01
EPOCHS = 12  # the shipped model's recipe (models/build_shipped.py)


def test_set() -> tuple[np.ndarray, np.ndarray]:
    """ROI crops and class names of the fixed test set."""
    frames, names, _ = synthetic.render_set(TEST_SEED, TEST_COUNTS)
    return np.stack([crop_resize(f, synthetic.ROI) for f in frames]), np.array(names)


def measure(checkpoint: Path, crops: np.ndarray, names: np.ndarray) -> dict[str, Any]:
    model, _ = load_checkpoint(checkpoint)
    scores = predict(model, crops).scores
    good, seen = names == "good", np.isin(names, synthetic.CLASSES[1:])
    unseen = np.isin(names, synthetic.UNSEEN)
    threshold, detection = detection_at_frr(scores[good], scores[seen], FRR)
    reject = scores >= Decision.THRESHOLD
    return {
        "detection_at_1pct_frr": detection,
        "unseen_detection_at_1pct_frr": float((scores[unseen] >= threshold).mean()),
        "auroc": auroc(scores[good], scores[seen]),
        "calibrated": {
            "detection_rate": float(reject[seen].mean()),
            "false_reject_rate": float(reject[good].mean()),
            "unseen_detection_rate": float(reject[unseen].mean()),
        },
    }


def _merge(rows: list[dict[str, Any]], row: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows with `row` added or replacing the earlier run of the same size and weights."""
    kept = [r for r in rows if (r["per_class"], r["pretrained"]) != (row["per_class"], row["pretrained"])]
    return sorted([*kept, row], key=lambda r: (not r["pretrained"], r["per_class"]))


def run(out: Path, sizes: tuple[int, ...] = SIZES, epochs: int = EPOCHS) -> list[dict[str, Any]]:
    """Train and measure every size in `sizes`; rows already in out/learning_curve.json for other
    sizes are kept (a long curve can be run one size at a time)."""
    out.mkdir(parents=True, exist_ok=True)
    crops, names = test_set()
    json_path = out / "learning_curve.json"
    rows: list[dict[str, Any]] = json.loads(json_path.read_text())["rows"] if json_path.exists() else []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            data = synthetic.make_dataset(Path(tmp) / f"data{n}", per_class=n, seed=100 + n)
            for pretrained in (True, False):
                t0 = time.perf_counter()
                result = train(data, Path(tmp) / f"run{n}{pretrained}", epochs=epochs, seed=0, pretrained=pretrained,
                               progress=False)  # fmt: skip
                row = {"per_class": n, "pretrained": pretrained, "train_s": time.perf_counter() - t0,
                       "rounds_run": result.report["rounds_run"]}  # fmt: skip
                row.update(measure(result.checkpoint, crops, names))
                rows = _merge(rows, row)
                print(f"{n:>4} per class  {'ImageNet' if pretrained else 'scratch ':<8}  "
                      f"detection@1%FRR {row['detection_at_1pct_frr']:.4f}  "
                      f"unseen {row['unseen_detection_at_1pct_frr']:.4f}  "
                      f"AUROC {row['auroc']:.4f}  calibrated FRR {row['calibrated']['false_reject_rate']:.4f}  "
                      f"{row['train_s']:.0f} s", flush=True)  # fmt: skip
                json_path.write_text(json.dumps({"test": TEST_COUNTS, "epochs": epochs, "rows": rows}, indent=2))
    write_markdown(rows, out / "learning_curve.md")
    plot(rows, out / "learning_curve.png")
    return rows


def write_markdown(rows: list[dict[str, Any]], path: Path) -> None:
    lines = [
        "| images per class | weights | detection @ 1 % FRR | unseen types @ same cut | AUROC | "
        "calibrated: detection / FRR | training (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c = r["calibrated"]
        lines.append(
            f"| {r['per_class']} | {'ImageNet' if r['pretrained'] else 'random'} | {r['detection_at_1pct_frr']:.4f} | "
            f"{r['unseen_detection_at_1pct_frr']:.4f} | {r['auroc']:.4f} | "
            f"{c['detection_rate']:.4f} / {c['false_reject_rate']:.4f} | {r['train_s']:.0f} |"
        )
    path.write_text(
        f"Test set: seed {TEST_SEED}, {TEST_COUNTS}; seen defects: {', '.join(synthetic.CLASSES[1:])}; "
        f"unseen: {', '.join(synthetic.UNSEEN)}.\n\n" + "\n".join(lines) + "\n"
    )


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for pretrained, style in ((True, "-o"), (False, "--s")):
        sel = [r for r in rows if r["pretrained"] == pretrained]
        n = [r["per_class"] for r in sel]
        label = "ImageNet" if pretrained else "random init"
        ax.plot(n, [100 * r["detection_at_1pct_frr"] for r in sel], style, label=f"{label}: seen defect types")
        ax.plot(n, [100 * r["unseen_detection_at_1pct_frr"] for r in sel], style, alpha=0.5,
                label=f"{label}: unseen types")  # fmt: skip
    ax.set(xscale="log", xlabel="labeled images per class", ylabel="detection rate at 1 % false rejects (%)",
           title="Learning curve (synthetic test set)")  # fmt: skip
    sizes = sorted({r["per_class"] for r in rows})
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.minorticks_off()  # the log axis' own minor labels would crowd out the sizes
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.learning_curve", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/learning_curve"))
    p.add_argument("--sizes", default=",".join(map(str, SIZES)))
    p.add_argument("--epochs", type=int, default=EPOCHS)
    args = p.parse_args(argv)
    run(args.out, tuple(int(s) for s in args.sizes.split(",")), args.epochs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
