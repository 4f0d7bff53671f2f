"""How many labeled images does a new product variant need, fine-tuned from a sibling product's
model (`lineinspect train --from`) versus from ImageNet? `python -m models.variant_curve [--out DIR]`.

The sibling product: parts with brick and grass finishes, its model trained on plenty of labeled
images. The new variant: the same defect types on a gravel finish, which the sibling never saw.
For each number of labeled images per class (good included) a variant training set is rendered
and trained twice with the same recipe — from the sibling's model and from the ImageNet weights —
and both are measured on one fixed held-out variant test set (a seed never trained on): detection
at a 1 % false-reject rate (threshold on the test set's good parts) and at the model's own
calibrated threshold. Writes variant_curve.json, .md and .png; prints a line per run.
Not here: the product line's own learning curve (models/learning_curve.py).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from models import synthetic
from models.learning_curve import FRR, measure
from models.net import crop_resize
from models.train import train

SIBLING = ("brick", "grass")
VARIANT = ("gravel",)
SIZES = (10, 25, 50, 100)
TEST_SEED = 31
TEST_COUNTS = {"good": 600, **{c: 150 for c in synthetic.CLASSES[1:]}}


def variant_test_set() -> tuple[np.ndarray, np.ndarray]:
    frames, names, _ = synthetic.render_set(TEST_SEED, TEST_COUNTS, surfaces=VARIANT)
    return np.stack([crop_resize(f, synthetic.ROI) for f in frames]), np.array(names)


def run(work: Path, out: Path, sizes: tuple[int, ...], epochs: int, min_steps: int,
        sibling_per_class: int) -> list[dict[str, Any]]:  # fmt: skip
    """Datasets and training runs under `work`; the results (JSON, Markdown, plot) in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    sibling_ckpt = work / "sibling" / "model.pt"
    if not sibling_ckpt.exists():
        data = synthetic.make_dataset(work / "data" / "sibling", sibling_per_class, seed=21, good=2 * sibling_per_class,
                                      surfaces=SIBLING)  # fmt: skip
        started = time.perf_counter()
        train(data, work / "sibling", epochs=epochs, seed=0, min_steps=min_steps, progress=False)
        print(f"sibling ({SIBLING}, {sibling_per_class}/class): {time.perf_counter() - started:.0f} s", flush=True)
    crops, names = variant_test_set()
    sibling_on_variant = measure(sibling_ckpt, crops, names)
    print(f"sibling model on the variant, untouched: {sibling_on_variant['detection_at_1pct_frr']:.3f}", flush=True)
    rows = [{"images_per_class": 0, "start": "sibling", **sibling_on_variant}]
    for n in sizes:
        data = synthetic.make_dataset(work / "data" / f"variant-{n}", n, seed=100 + n, surfaces=VARIANT)
        for start in ("sibling", "imagenet"):
            run_dir = work / f"variant-{n}-{start}"
            started = time.perf_counter()
            train(data, run_dir, epochs=epochs, seed=0, min_steps=min_steps, progress=False,
                  init_from=sibling_ckpt if start == "sibling" else None)  # fmt: skip
            row = {"images_per_class": n, "start": start, "train_s": time.perf_counter() - started,
                   **measure(run_dir / "model.pt", crops, names)}  # fmt: skip
            rows.append(row)
            print(f"{n:4d}/class from {start:8s}: detection @1% FRR {row['detection_at_1pct_frr']:.3f}, "
                  f"calibrated {row['calibrated']['detection_rate']:.3f} at "
                  f"{row['calibrated']['false_reject_rate']:.3%} FRR ({row['train_s']:.0f} s)", flush=True)  # fmt: skip
            (out / "variant_curve.json").write_text(json.dumps(rows, indent=2))
    write_markdown(rows, out / "variant_curve.md")
    plot(rows, out / "variant_curve.png")
    return rows


def write_markdown(rows: list[dict[str, Any]], path: Path) -> None:
    lines = ["| labeled images per class | start | detection @ 1 % FRR | AUROC | own threshold: detection / FRR |",
             "|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        c = r["calibrated"]
        lines.append(f"| {r['images_per_class']} | {r['start']} | {r['detection_at_1pct_frr']:.3f} | "
                     f"{r['auroc']:.3f} | {c['detection_rate']:.3f} / {c['false_reject_rate']:.3%} |")  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for start, color in (("sibling", "#3b6ea8"), ("imagenet", "#e08a1e")):
        pts = sorted((r["images_per_class"], r["detection_at_1pct_frr"] * 100) for r in rows
                     if r["start"] == start and r["images_per_class"] > 0)  # fmt: skip
        if pts:
            ax.plot(*zip(*pts, strict=True), "o-", color=color, label=f"from the {start} model")
    base = next((r for r in rows if r["images_per_class"] == 0), None)
    if base is not None:
        ax.axhline(base["detection_at_1pct_frr"] * 100, color="#999", ls="--", label="sibling model, no variant images")
    ax.set_xscale("log")
    ax.set(xlabel="labeled variant images per class", ylabel=f"detection at {FRR:.0%} false rejects (%)",
           title="a new variant (gravel finish): from a sibling product's model vs from ImageNet", ylim=(0, 100))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.variant_curve", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("models/shipped/variant_curve"), help="results")
    p.add_argument("--work", type=Path, default=Path("runs/variant-curve"), help="datasets and training runs")
    p.add_argument("--sizes", type=lambda v: tuple(int(x) for x in v.split(",")), default=SIZES)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--min-steps", type=int, default=200)
    p.add_argument("--sibling-per-class", type=int, default=150)
    args = p.parse_args(argv)
    run(args.work, args.out, args.sizes, args.epochs, args.min_steps, args.sibling_per_class)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
