"""The evaluation report's pictures: threshold curve with ROC, score distributions per class,
confusion by the reject decision, and the worst misses with their defect maps. Not here: the numbers (evaluate.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from models.evaluate import Scored


def write_all(
    scored: Scored, report: dict[str, Any], roi: tuple[int, int, int, int] | None, color: str, out: Path, n: int
) -> list[dict[str, Any]]:
    """Write threshold.png, scores.png, confusion.png and worst.png to `out`; returns the worst misses."""
    is_good = np.array([name == "good" for name in scored.names])
    _threshold_curve(scored.scores[is_good], scored.scores[~is_good], report["threshold"], out / "threshold.png")
    _score_histograms(scored, report["threshold"], out / "scores.png")
    _decisions(report["decisions"], report["threshold"], out / "confusion.png")
    return _worst(scored, is_good, roi, color, out / "worst.png", n)


def _threshold_curve(good: np.ndarray, defect: np.ndarray, threshold: float, path: Path) -> None:
    cuts = np.unique(np.concatenate([good, defect, [0.0, 1.0]]))
    frr = np.array([(good >= c).mean() for c in cuts]) if len(good) else np.zeros(len(cuts))
    det = np.array([(defect >= c).mean() for c in cuts]) if len(defect) else np.zeros(len(cuts))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    a.plot(cuts, 100 * det, label="detection rate (defects rejected)")
    a.plot(cuts, 100 * frr, label="false-reject rate (good rejected)")
    a.axvline(threshold, color="k", ls="--", lw=1, label=f"model threshold {threshold:.3g}")
    a.set(xlabel="reject threshold on score", ylabel="%", title="What each threshold would do", ylim=(-2, 102))
    a.legend(loc="center left")
    a.grid(alpha=0.3)
    b.plot(100 * frr, 100 * det)
    at_frr = 100 * float((good >= threshold).mean()) if len(good) else 0.0
    at_det = 100 * float((defect >= threshold).mean()) if len(defect) else 0.0
    b.plot(at_frr, at_det, "ko", label=f"model threshold: FRR {at_frr:.2f} %, detection {at_det:.2f} %")
    b.set(xlabel="false-reject rate (%)", ylabel="detection rate (%)", title="ROC", xlim=(-0.5, 20))
    b.legend(loc="lower right")
    b.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _score_histograms(scored: Scored, threshold: float, path: Path) -> None:
    names = list(dict.fromkeys(scored.names))
    fig, ax = plt.subplots(figsize=(10, 4))
    bins = np.linspace(0.0, max(1.0, float(scored.scores.max())), 51)
    for name in names:
        sel = np.array([n == name for n in scored.names])
        ax.hist(scored.scores[sel], bins=bins, histtype="step", lw=1.5, label=f"{name} ({sel.sum()})")
    ax.axvline(threshold, color="k", ls="--", lw=1, label="threshold")
    ax.set(xlabel="score", ylabel="images", yscale="log", title="Scores per class")
    ax.legend(ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _decisions(decisions: list[dict[str, Any]], threshold: float, path: Path) -> None:
    """Each true class against the line's decision (passed / rejected), counts with row shares."""
    counts = np.array([[d["passed"], d["rejected"]] for d in decisions])
    rows = [d["class"] for d in decisions]
    fig, ax = plt.subplots(figsize=(5, 0.6 * len(rows) + 1.6))
    rates = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    # Green where the decision is right (good passed, defect rejected), red where it is wrong.
    right = np.array([[r == "good", r != "good"] for r in rows])
    ax.imshow(np.where(right, rates, -rates), cmap="RdYlGn", vmin=-1, vmax=1)
    for (i, j), v in np.ndenumerate(counts):
        ax.text(j, i, f"{v}\n{100 * rates[i, j]:.1f} %", ha="center", va="center", fontsize=9)
    ax.set_xticks([0, 1], ["passed", "rejected"])
    ax.set_yticks(range(len(rows)), rows)
    ax.set(xlabel=f"decision at threshold {threshold:.3g}", ylabel="true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _worst(
    scored: Scored, is_good: np.ndarray, roi: tuple[int, int, int, int] | None, color: str, path: Path, n: int
) -> list[dict[str, Any]]:
    """The `n` lowest-scoring defective parts (misses first; rejected ones too when there are fewer
    misses) and the `n` highest-scoring good parts, with the defect map overlaid."""
    defects = np.flatnonzero(~is_good)
    goods = np.flatnonzero(is_good)
    picks = list(defects[np.argsort(scored.scores[defects])][:n]) + list(goods[np.argsort(-scored.scores[goods])][:n])
    cols = max(1, min(n, 6))
    rows = max(1, -(-len(picks) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.2 * rows), squeeze=False)
    worst = []
    for ax, i in zip(axes.ravel(), picks, strict=False):
        image = np.asarray(Image.open(scored.files[i]).convert("RGB" if color == "rgb" else "L"))
        if roi is not None:
            x, y, w, h = roi
            image = image[y : y + h, x : x + w]
        overlay = np.asarray(Image.fromarray(scored.maps[i]).resize(image.shape[1::-1], Image.Resampling.BILINEAR))
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=255)
        ax.imshow(np.ma.masked_less(overlay, 0.3), cmap="Reds", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(f"{scored.names[i]} {scored.scores[i]:.3f}\n{scored.files[i].name}", fontsize=8)
        worst.append({"file": str(scored.files[i]), "class": scored.names[i], "score": float(scored.scores[i])})
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle("Worst misses: lowest-scoring defects, then highest-scoring good parts", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return worst
