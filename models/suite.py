"""The held-out synthetic suite, read as a quality engineer reads it: per surface texture, per defect
type (trained or never trained) and per visibility band, at the model's own threshold and at the
cut for a 1 % false-reject rate.

Visibility is physics, not the generator's knob: every defect frame is rendered beside its good
twin (same surface, light and sensor noise; models.synthetic draws those first), and
- contrast-to-noise (CNR) = mean |defect - twin| over the defect's mask / the standard deviation of
  the twin around it (texture and sensor noise within 8 px of the mask, the mask excluded);
- size = the mask's area in pixels.
Bands, fixed before any model was measured: faint = CNR < 1 or under 9 px (smaller than the
surface's own variation, or under 3x3 px: a careful inspector misses many); visible = CNR 1-3;
clear = CNR >= 3.

    python -m models.suite MODEL.onnx [MODEL2.onnx ...] --out runs/suite [--seed 9100]
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from scipy import ndimage

from models import synthetic
from models.thresholds import cut_for_frr
from workers.onnx_engine import OnnxRuntimeEngine

BANDS = ("faint", "visible", "clear")
SUITE_SEED = 9100
"""Never used for training data (make_dataset seeds in this project are < 9000)."""


@dataclass
class Suite:
    frames: np.ndarray  # (N, H, W) uint8
    kinds: np.ndarray  # class name per frame
    textures: np.ndarray
    cnr: np.ndarray  # 0 for good frames
    area: np.ndarray  # mask pixels, 0 for good frames


def visibility(frame: np.ndarray, twin: np.ndarray, mask: np.ndarray) -> tuple[float, int]:
    """(contrast-to-noise, area in px) of the defect in `frame` against its good `twin`."""
    on = mask > 0
    area = int(on.sum())
    if area == 0:
        return 0.0, 0
    contrast = float(np.abs(frame.astype(np.float32) - twin)[on].mean())
    around = ndimage.binary_dilation(on, iterations=8) & ~on
    noise = float(twin[around].astype(np.float32).std()) if around.any() else 1.0
    return contrast / max(noise, 1e-3), area


def band(cnr: float, area: int) -> str:
    if cnr < 1.0 or area < 9:
        return "faint"
    return "visible" if cnr < 3.0 else "clear"


def render_suite(seed: int = SUITE_SEED, good_per_texture: int = 1000, per_type: int = 80) -> Suite:
    rng = np.random.default_rng(seed)
    frames, kinds, textures, cnrs, areas = [], [], [], [], []
    for texture in synthetic.SURFACES:
        for kind in synthetic.ALL_CLASSES:
            for _ in range(good_per_texture if kind == "good" else per_type):
                difficulty = rng.uniform(0.0, 1.0)
                twin_rng = copy.deepcopy(rng)
                frame, mask = synthetic.render_frame(rng, kind, difficulty, (texture,))
                cnr, area = 0.0, 0
                if kind != "good":
                    twin, _ = synthetic.render_frame(twin_rng, "good", difficulty, (texture,))
                    cnr, area = visibility(frame, twin, mask)
                frames.append(frame)
                kinds.append(kind)
                textures.append(texture)
                cnrs.append(cnr)
                areas.append(area)
    return Suite(np.stack(frames), np.array(kinds), np.array(textures), np.array(cnrs), np.array(areas))


def score(model: Path, frames: np.ndarray, batch: int = 32) -> tuple[np.ndarray, float, tuple[str, ...]]:
    """(scores, the model's threshold, its classes) through the line's own engine."""
    engine = OnnxRuntimeEngine(model, intra_op_threads=2)
    scores: list[float] = []
    for i in range(0, len(frames), batch):
        scores += [r.score for r in engine.infer_batch(list(frames[i : i + batch]))]
    return np.array(scores), engine.meta.threshold, engine.meta.classes


def _rate(hit: np.ndarray) -> dict[str, Any]:
    return {"n": len(hit), "rate": float(hit.mean()) if len(hit) else None}


def report(suite: Suite, scores: np.ndarray, threshold: float, trained: tuple[str, ...], frr: float = 0.01) -> dict:
    """Detection per texture x band x type group, at the model's threshold and at the cut for `frr`
    on all the suite's good frames (one cut for the line, not one per texture)."""
    good = suite.kinds == "good"
    bands = np.array([band(c, a) for c, a in zip(suite.cnr, suite.area, strict=True)])
    groups = {"trained": np.isin(suite.kinds, trained) & ~good, "unseen": ~np.isin(suite.kinds, trained) & ~good}
    in_band = {b: bands == b for b in BANDS} | {"visible+clear": bands != "faint"}
    out: dict[str, Any] = {"cuts": {}, "bands": {b: int((bands == b)[~good].sum()) for b in BANDS}}
    for name, cut in (("own_threshold", threshold), (f"frr_{frr:g}", cut_for_frr(scores[good], frr))):
        rejected = scores >= cut
        per: dict[str, Any] = {"cut": float(cut), "false_rejects": {}, "detection": {}}
        for texture in (*synthetic.SURFACES, "all"):
            here = np.ones(len(scores), bool) if texture == "all" else suite.textures == texture
            per["false_rejects"][texture] = _rate(rejected[here & good])
            per["detection"][texture] = {group: {b: _rate(rejected[here & mask & m]) for b, m in in_band.items()}
                                         for group, mask in groups.items()}  # fmt: skip
        per["by_type"] = {k: {b: _rate(rejected[(suite.kinds == k) & in_band[b]]) for b in BANDS}
                          for k in synthetic.ALL_CLASSES[1:]}  # fmt: skip
        out["cuts"][name] = per
    return out


def spread(reps: list[dict], cut: str = "frr_0.01", band: str = "visible") -> dict[str, Any]:
    """Detection in `band` at `cut`, per texture and type group: each model's, and their mean, min and
    max. Models trained alike with other seeds differ by up to ten points on the busy textures, so
    one model's figure is one draw; this is the figure to compare settings by."""
    keys = [(t, g) for g in ("trained", "unseen") for t in (*synthetic.SURFACES, "all")]
    rates = np.array([[r["cuts"][cut]["detection"][t][g][band]["rate"] or 0.0 for t, g in keys] for r in reps])
    out: dict[str, Any] = {"cut": cut, "band": band, "models": [r.get("model") for r in reps]}
    for (t, g), col in zip(keys, rates.T, strict=True):
        out.setdefault(g, {})[t] = {"each": col.tolist(), "mean": float(col.mean()), "min": float(col.min()),
                                    "max": float(col.max())}  # fmt: skip
    return out


def plot(rep: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cuts = list(rep["cuts"])
    fig, axes = plt.subplots(1, len(cuts), figsize=(5.5 * len(cuts), 3.6), dpi=120, sharey=True)
    for ax, name in zip(np.atleast_1d(axes), cuts, strict=True):
        per = rep["cuts"][name]
        textures = [*synthetic.SURFACES, "all"]
        width = 0.13
        for j, (group, b) in enumerate((g, b) for g in ("trained", "unseen") for b in BANDS):
            vals = [per["detection"][t][group][b]["rate"] or 0.0 for t in textures]
            ax.bar(np.arange(len(textures)) + (j - 2.5) * width, np.array(vals) * 100, width,
                   label=f"{group} {b}", color=plt.cm.Blues(0.35 + 0.25 * (j % 3)) if group == "trained"
                   else plt.cm.Oranges(0.35 + 0.25 * (j % 3)))  # fmt: skip
        frr = ", ".join(f"{t} {per['false_rejects'][t]['rate']:.2%}" for t in textures)
        ax.set_xticks(range(len(textures)), textures)
        ax.set_title(f"{name.replace('_', ' ')} (cut {per['cut']:.3g})\nfalse rejects: {frr}", fontsize=8)
        ax.axhline(99, color="green", lw=0.8, ls="--")
        ax.axhline(90, color="orange", lw=0.8, ls="--")
    np.atleast_1d(axes)[0].set_ylabel("defects rejected (%)")
    np.atleast_1d(axes)[0].legend(fontsize=6, ncol=2, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.suite", description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, nargs="+", help="several (e.g. training seeds): each, and their spread")
    p.add_argument("--out", type=Path, default=Path("runs/suite"))
    p.add_argument("--seed", type=int, default=SUITE_SEED)
    p.add_argument("--good-per-texture", type=int, default=1000)
    p.add_argument("--per-type", type=int, default=80)
    args = p.parse_args(argv)
    console = Console(stderr=True)
    with console.status("rendering the suite"):
        suite = render_suite(args.seed, args.good_per_texture, args.per_type)
    reps = []
    for i, model in enumerate(args.model):
        with console.status(f"scoring {len(suite.frames)} frames with {model}"):
            scores, threshold, classes = score(model, suite.frames)
        rep = report(suite, scores, threshold, tuple(c for c in classes if c != "good"))
        rep["model"], rep["seed"] = str(model), args.seed
        out = args.out if len(args.model) == 1 else args.out / f"model_{i}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "suite.json").write_text(json.dumps(rep, indent=2))
        plot(rep, out / "suite.png")
        console.print(f"[bold]{model}[/]")
        _print(rep, console)
        reps.append(rep)
    if len(reps) > 1:
        s = spread(reps)
        (args.out / "spread.json").write_text(json.dumps(s, indent=2))
        console.print(f"[bold]{len(reps)} models[/], {s['band']} band at {s['cut']}: mean (min-max)")
        for g in ("trained", "unseen"):
            console.print(f"  {g:<8}" + "  ".join(f"{t} {v['mean']:.1%} ({v['min']:.1%}-{v['max']:.1%})"
                                                for t, v in s[g].items()))  # fmt: skip
    return 0


def _print(rep: dict, console: Console) -> None:
    for name, per in rep["cuts"].items():
        console.print(f"[bold]{name}[/] (cut {per['cut']:.4g})")
        for t in (*synthetic.SURFACES, "all"):
            d = per["detection"][t]
            rates = "  ".join(f"{g} " + "/".join(f"{d[g][b]['rate'] or 0:.1%}" for b in (*BANDS, "visible+clear"))
                              for g in ("trained", "unseen"))  # fmt: skip
            console.print(f"  {t:<7} false rejects {per['false_rejects'][t]['rate']:.2%}  {rates}"
                          "   (faint/visible/clear/visible+clear)")


if __name__ == "__main__":
    raise SystemExit(main())
