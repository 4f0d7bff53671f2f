"""`lineinspect evaluate MODEL DATASET`: how a model would do on the line, the way a quality engineer
decides (how many bad parts escape while good parts are rejected at most at a given rate).

What it does: runs the exported ONNX model through the line's own engine (`OnnxRuntimeEngine`: same
preprocessing, same score, same threshold) on every image of a dataset folder (`good/`, one folder
per defect class, optional MVTec-style masks), and reports detection and false-reject rates at the
model's threshold, detection at fixed false-reject rates, AUROC, reject rate per class (classes the
model never saw included), the confusion by the reject decision (each class: passed / rejected) and
accuracy, the argmax-class confusion of the classes it knows, pixel AUROC where masks exist, the
good images scoring highest ("check these labels"), the threshold curve and the worst misses as
images. Another threshold can be applied (`threshold=`, or `frr=`: the cut that rejects that share of
this data's good images) without touching the model. Writes `report.json`, `scores.csv` (per
image), PNG plots and `report.html` (which shows them) to the output folder.

What it does not: train, or change the model's threshold.
"""

from __future__ import annotations

import csv
import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from scipy.stats import rankdata

from controller.errors import InferenceError
from models.dataset import DatasetError, list_dataset
from models.thresholds import cut_for_frr
from workers.onnx_engine import OnnxRuntimeEngine

FIXED_FRRS = (0.005, 0.01, 0.02, 0.05)
WORST_SHOWN = 6
CHECK_LABELS = 10


@dataclass
class Scored:
    """Per image: its class name, the engine's score, reject decision, argmax class and defect map."""

    names: list[str]
    files: list[Path]
    scores: np.ndarray
    predicted: np.ndarray
    maps: np.ndarray  # (N, h, w) float32 in [0, 1]


def auroc(negatives: np.ndarray, positives: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative (ties count half), from the Mann-Whitney U statistic."""
    if len(negatives) == 0 or len(positives) == 0:
        return math.nan
    ranks = rankdata(np.concatenate([negatives, positives]))
    u = ranks[len(negatives) :].sum() - len(positives) * (len(positives) + 1) / 2
    return float(u / (len(negatives) * len(positives)))


def detection_at_frr(good: np.ndarray, defect: np.ndarray, frr: float) -> tuple[float, float]:
    """(threshold, detection rate) for the lowest good score that, as the threshold, rejects at most
    `frr` of `good` (ties counted)."""
    threshold = cut_for_frr(good, frr)
    return threshold, float((defect >= threshold).mean()) if len(defect) else math.nan


def score_dataset(engine: OnnxRuntimeEngine, dataset_dir: Path, console: Console, batch: int = 32) -> Scored:
    layout = list_dataset(dataset_dir)
    items = [(name, f) for name, files in layout.images.items() for f in files]
    mode = "L" if engine.meta.color == "gray" else "RGB"
    names, files, scores, predicted, maps = [], [], [], [], []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("evaluating", total=len(items))
        for start in range(0, len(items), batch):
            chunk = items[start : start + batch]
            frames = [np.asarray(Image.open(f).convert(mode)) for _, f in chunk]
            # Mixed sizes cannot share a batch; each size goes through the engine on its own.
            for shape in dict.fromkeys(fr.shape for fr in frames):
                idx = [i for i, fr in enumerate(frames) if fr.shape == shape]
                try:
                    results = engine.infer_batch([frames[i] for i in idx])
                except InferenceError as exc:
                    raise InferenceError(f"{chunk[idx[0]][1]}: {exc}") from exc
                for i, r in zip(idx, results, strict=True):
                    names.append(chunk[i][0])
                    files.append(chunk[i][1])
                    scores.append(r.score)
                    predicted.append(r.defect_class)
                    maps.append(np.asarray(r.defect_map, np.float32))
            bar.advance(task, len(chunk))
    return Scored(names, files, np.array(scores), np.array(predicted), np.stack(maps))


def pixel_auroc(scored: Scored, dataset_dir: Path, roi: tuple[int, int, int, int] | None) -> float | None:
    """Pixel-level AUROC of the defect map against the masks (good images count as all-clear), both
    taken on the ROI at 64 x 64; None when the dataset has no masks."""
    size = (64, 64)
    labels, values = [], []
    for name, f, m in zip(scored.names, scored.files, scored.maps, strict=True):
        mask_file = dataset_dir / "ground_truth" / name / f"{f.stem}_mask.png"
        if name == "good":
            truth = np.zeros(size, bool)
        elif mask_file.exists():
            mask = np.asarray(Image.open(mask_file).convert("L"))
            if roi is not None:
                x, y, w, h = roi
                mask = mask[y : y + h, x : x + w]
            truth = np.asarray(Image.fromarray(mask).resize(size, Image.Resampling.BILINEAR)) > 127
        else:
            continue
        labels.append(truth)
        values.append(np.asarray(Image.fromarray(m).resize(size, Image.Resampling.BILINEAR)))
    if not any(t.any() for t in labels):
        return None
    y = np.concatenate([t.ravel() for t in labels])
    v = np.concatenate([val.ravel() for val in values])
    return auroc(v[~y], v[y])


def metrics(scored: Scored, classes: tuple[str, ...], threshold: float) -> dict[str, Any]:
    is_good = np.array([n == "good" for n in scored.names])
    reject = scored.scores >= threshold
    good, defect = scored.scores[is_good], scored.scores[~is_good]
    per_class, decisions = {}, []
    for name in dict.fromkeys(scored.names):
        sel = np.array([n == name for n in scored.names])
        per_class[name] = {
            "images": int(sel.sum()),
            "reject_rate": float(reject[sel].mean()),
            "seen_in_training": name in classes,
            "auroc_vs_good": None if name == "good" else auroc(good, scored.scores[sel]),
        }
        decisions.append({"class": name, "passed": int((~reject[sel]).sum()), "rejected": int(reject[sel].sum())})
    known = [n for n in dict.fromkeys(scored.names) if n in classes]
    confusion = np.zeros((len(known), len(classes)), int)
    for n, p in zip(scored.names, scored.predicted, strict=True):
        if n in classes:
            confusion[known.index(n), p] += 1
    return {
        "threshold": threshold,
        "images": len(scored.names),
        "accuracy": float((reject == ~is_good).mean()),
        "detection_rate": float(reject[~is_good].mean()) if (~is_good).any() else math.nan,
        "false_reject_rate": float(reject[is_good].mean()) if is_good.any() else math.nan,
        "escapes": int((~reject[~is_good]).sum()),
        "false_rejects": int(reject[is_good].sum()),
        "auroc": auroc(good, defect),
        "detection_at_frr": {
            f"{frr:g}": dict(zip(("threshold", "detection_rate"), detection_at_frr(good, defect, frr), strict=True))
            for frr in FIXED_FRRS
        },
        "per_class": per_class,
        "decisions": decisions,
        "class_confusion": {"rows": known, "cols": list(classes), "counts": confusion.tolist()},
        "check_labels": check_labels(scored, is_good),
    }


def check_labels(scored: Scored, is_good: np.ndarray, n: int = CHECK_LABELS) -> list[dict[str, Any]]:
    """The good-labelled images that score highest, highest first: in a plant's data the likeliest
    mislabelled ones, and the ones that set any threshold chosen on these scores."""
    goods = np.flatnonzero(is_good)
    top = goods[np.argsort(-scored.scores[goods], kind="stable")][:n]
    return [{"file": str(scored.files[i]), "score": float(scored.scores[i])} for i in top]


def applied_threshold(
    scored: Scored, model_threshold: float, threshold: float | None, frr: float | None
) -> tuple[float, str]:
    """The threshold to report at and where it came from: given, chosen on this data's good images
    for a false-reject rate (optimistic: the same images judge it), or the model's own."""
    if threshold is not None and frr is not None:
        raise ValueError("give a threshold or a false-reject rate, not both")
    if threshold is not None:
        return float(threshold), "given"
    if frr is not None:
        if not 0.0 <= frr < 1.0:
            raise ValueError(f"false-reject rate {frr} is not in [0, 1)")
        good = scored.scores[np.array([n == "good" for n in scored.names])]
        if len(good) == 0:
            raise ValueError("a false-reject rate needs good images in the dataset")
        return cut_for_frr(good, frr), f"chosen on this data's {len(good)} good images for false rejects <= {frr:g}"
    return model_threshold, "the model's"


def evaluate(
    model_path: str | Path, dataset_dir: str | Path, out_dir: str | Path, *, threads: int = 2, progress: bool = True,
    threshold: float | None = None, frr: float | None = None,
) -> dict[str, Any]:
    """Evaluate `model_path` on `dataset_dir` at its threshold (or at `threshold`, or at the cut for
    `frr`, see `applied_threshold`); write report.json, PNGs and report.html to `out_dir`.
    Raises DatasetError (malformed dataset), ConfigError (unusable model), InferenceError (an image
    the model cannot take, e.g. smaller than its ROI; the message names the file) or ValueError (a
    threshold request that cannot be met)."""
    console = Console(quiet=not progress, stderr=True)
    dataset_dir, out = Path(dataset_dir), Path(out_dir)
    engine = OnnxRuntimeEngine(model_path, intra_op_threads=threads)
    scored = score_dataset(engine, dataset_dir, console)
    cut, source = applied_threshold(scored, engine.meta.threshold, threshold, frr)
    report = metrics(scored, engine.meta.classes, cut)
    report["threshold_source"] = source
    report["model_threshold"] = engine.meta.threshold
    report["model"] = {"path": str(model_path), "version": engine.meta.version, "classes": list(engine.meta.classes)}
    report["dataset"] = str(dataset_dir)
    report["pixel_auroc"] = pixel_auroc(scored, dataset_dir, engine.meta.roi)
    out.mkdir(parents=True, exist_ok=True)
    from models import report_plots  # matplotlib only when a report is written

    report["worst"] = report_plots.write_all(scored, report, engine.meta.roi, engine.meta.color, out, WORST_SHOWN)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    write_scores_csv(scored, cut, engine.meta.classes, out / "scores.csv")
    (out / "report.html").write_text(render_html(report))
    return report


def write_scores_csv(scored: Scored, threshold: float, classes: tuple[str, ...], path: Path) -> None:
    """One row per image: file, class, score, reject, argmax class (for one's own analysis)."""
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "class", "score", "reject", "predicted"])
        for name, file, score, pred in zip(scored.names, scored.files, scored.scores, scored.predicted, strict=True):
            w.writerow([f"{name}/{file.name}", name, f"{score:.6f}", int(score >= threshold), classes[pred]])


def _pct(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f} %"


def _num(x: float | None) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def render_html(report: dict[str, Any]) -> str:
    esc = html.escape
    rows = "".join(
        f"<tr><td>{esc(n)}</td><td>{c['images']}</td><td>{_pct(c['reject_rate'])}</td>"
        f"<td>{'yes' if c['seen_in_training'] else '<b>no</b>'}</td>"
        f"<td>{_num(c['auroc_vs_good'])}</td></tr>"
        for n, c in report["per_class"].items()
    )
    decided = "".join(
        f"<tr><td>{esc(d['class'])}</td><td>{d['passed']}</td><td>{d['rejected']}</td></tr>"
        for d in report["decisions"]
    )
    check = "".join(f"<li>{esc(c['file'])}: {c['score']:.4f}</li>" for c in report["check_labels"])
    fixed = "".join(
        f"<tr><td>{_pct(float(frr))}</td><td>{_pct(v['detection_rate'])}</td><td>{v['threshold']:.4g}</td></tr>"
        for frr, v in report["detection_at_frr"].items()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>lineinspect evaluation: {esc(report["model"]["version"])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:auto}} td,th{{padding:2px 10px;text-align:right}}
table{{border-collapse:collapse}} tr:nth-child(even){{background:#f2f2f2}} img{{max-width:100%}}</style></head>
<body>
<h1>Model {esc(report["model"]["version"])} on {esc(report["dataset"])}</h1>
<h2>At threshold {report["threshold"]:.4g} ({esc(report["threshold_source"])})</h2>
<p><b>Accuracy {_pct(report["accuracy"])}</b> &nbsp;
<b>Detection rate {_pct(report["detection_rate"])}</b> ({report["escapes"]} escapes) &nbsp;
<b>False-reject rate {_pct(report["false_reject_rate"])}</b> ({report["false_rejects"]} good parts rejected)
&nbsp; of {report["images"]} images. AUROC {_num(report["auroc"])}; pixel AUROC {_num(report["pixel_auroc"])}.</p>
<h2>Decisions per class</h2>
<table><tr><th>class</th><th>passed</th><th>rejected</th></tr>{decided}</table>
<h2>Per class</h2>
<table><tr><th>class</th><th>images</th><th>rejected</th><th>seen in training</th><th>AUROC vs good</th></tr>
{rows}</table>
<h2>Detection at a fixed false-reject rate (threshold chosen on this data)</h2>
<table><tr><th>false-reject rate ≤</th><th>detection rate</th><th>threshold</th></tr>{fixed}</table>
<h2>Threshold curve</h2><img src="threshold.png">
<h2>Score distributions</h2><img src="scores.png">
<h2>Confusion by the reject decision</h2><img src="confusion.png">
<h2>Check these labels</h2><p>The good-labelled images that score highest: a mislabelled one
here moves every threshold chosen on these scores.</p><ol>{check}</ol>
<h2>Worst misses</h2><p>Defective parts with the lowest scores and good parts with the highest,
with the defect map overlaid (red).</p><img src="worst.png">
</body></html>
"""


__all__ = ["DatasetError", "auroc", "detection_at_frr", "evaluate"]
