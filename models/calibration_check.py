"""Does the training's false-reject promise hold on good parts it never saw? Seed by seed: train on a
synthetic set (its own seed), then measure the realized false-reject rate at the model's own
threshold on a large held-out good set (other seeds), beside the 90 % interval the training stated.
Writes calibration_check.json and .png to --out.

    python -m models.calibration_check --seeds 5 --out runs/calibration-check
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from models import synthetic
from models.net import Decision
from models.thresholds import HOLD_BAND
from models.train import load_checkpoint, predict, train


def check_seed(seed: int, work: Path, per_class: int, good: int, held_out_good: int, target: float,
               epochs: int) -> dict[str, object]:  # fmt: skip
    data = synthetic.make_dataset(work / f"data-{seed}", per_class, seed=1000 + seed, good=good)
    started = time.perf_counter()
    result = train(data, work / f"run-{seed}", epochs=epochs, seed=seed, target_frr=target, progress=False)
    train_s = time.perf_counter() - started
    model, _ = load_checkpoint(result.checkpoint)
    frames, _, _ = synthetic.render_set(5000 + seed, {"good": held_out_good})
    x, y, w, h = synthetic.ROI
    scores = predict(model, frames[:, y : y + h, x : x + w]).scores
    cal = result.report["calibration"]
    realized = float((scores >= Decision.THRESHOLD).mean())
    return {"seed": seed, "train_seconds": round(train_s, 1), "calibration_good": cal["n_good"],
            "stated_90": cal["realized_frr_90"], "holds": cal["holds"], "realized": realized,
            "held_out_good": held_out_good, "within_band": HOLD_BAND[0] * target <= realized <= HOLD_BAND[1] * target,
            "angle_degrees": cal["fusion"]["angle_degrees"]}  # fmt: skip


def plot(rows: list[dict], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for i, r in enumerate(rows):
        lo, hi = r["stated_90"]
        ax.plot([i, i], [lo * 100, hi * 100], color="tab:blue", lw=6, alpha=0.4,
                label="stated 90 % interval" if i == 0 else None)  # fmt: skip
        ax.plot(i, r["realized"] * 100, "o", color="tab:red", label="realized (held-out good)" if i == 0 else None)
    ax.axhspan(HOLD_BAND[0] * target * 100, HOLD_BAND[1] * target * 100, color="tab:green", alpha=0.1,
               label=f"{HOLD_BAND[0]}-{HOLD_BAND[1]}x target")  # fmt: skip
    ax.axhline(target * 100, color="tab:green", lw=1)
    ax.set_xticks(range(len(rows)), [f"seed {r['seed']}" for r in rows])
    ax.set_ylabel("false-reject rate (%)")
    ax.set_title("Realized false rejects at the model's own threshold")
    top = max([HOLD_BAND[1] * target] + [max(r["realized"], r["stated_90"][1]) for r in rows])
    ax.set_ylim(0, top * 117)  # the band and every point, however far out
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3)  # below: never over a point
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.calibration_check", description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--per-class", type=int, default=100)
    p.add_argument("--good", type=int, default=3200, help="good training images (the network takes 100-600)")
    p.add_argument("--held-out-good", type=int, default=20000, help="its own error: ~0.07 %% at 1 %%")
    p.add_argument("--target", type=float, default=0.01)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("runs/calibration-check"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            rows.append(check_seed(seed, Path(tmp), args.per_class, args.good, args.held_out_good, args.target,
                                   args.epochs))  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    (args.out / "calibration_check.json").write_text(json.dumps(rows, indent=2))
    plot(rows, args.target, args.out / "calibration_check.png")
    held = [r for r in rows if r["holds"]]
    print(f"{sum(r['within_band'] for r in held)} of {len(held)} seeds whose training says the target holds realize "
          f"{HOLD_BAND[0]}-{HOLD_BAND[1]}x the target; plot: {args.out / 'calibration_check.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
