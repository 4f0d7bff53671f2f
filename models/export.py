"""Export a trained checkpoint to the ONNX model the inference workers load, and check it.

What it does: writes an opset-17 ONNX file with a dynamic batch axis,
  input  `image`       float32 (N, 3, S, S), ImageNet-normalized (grey replicated to 3 channels, or RGB)
  output `class_probs` float32 (N, C) softmax, class 0 = good
  output `defect_map`  float32 (N, 1, S/8, S/8) in [0, 1] (S: the input side, 128 by default)
  output `score`       float32 (N,) reject score in [0, 1] (learned and anomaly signals, net.Decision)
plus the `lineinspect.*` metadata (classes, input convention, ROI, threshold, version, training-data
hash), and verifies that ONNX Runtime agrees with PyTorch on the reject score and the defect map.

What it does not: quantize or optimize the graph (fp32 as trained), or serve it (workers/ do that).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from models import synthetic
from models.net import INPUT_SIZE, MEAN, STD, preprocess
from models.train import load_checkpoint

OPSET = 17
PARITY_TOL = 1e-3


def export_onnx(checkpoint: str | Path, onnx_path: str | Path, name: str = "model") -> Path:
    """Export `checkpoint` (from train.train) to `onnx_path`, add metadata, check parity. Returns the
    path. The model's version is `name` and a hash of the graph and weights."""
    model, ckpt = load_checkpoint(checkpoint)
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    side = input_side_of(ckpt)
    dummy = torch.zeros(1, 3, side, side)
    batch = {0: "N"}
    with warnings.catch_warnings():
        # The TorchScript-based exporter is deprecated in favour of the dynamo one, which needs
        # onnxscript (not a dependency), and it notes that it cannot constant-fold the stride-2
        # pads (ONNX Runtime folds them at load). Neither says anything wrong about this model.
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        torch.onnx.export(
            model,
            (dummy,),
            str(onnx_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["image"],
            output_names=["class_probs", "defect_map", "score"],
            dynamic_axes={"image": batch, "class_probs": batch, "defect_map": batch, "score": batch},
        )
    proto = onnx.load(str(onnx_path))
    # Version names the exact graph + weights: the hash is taken before metadata is attached.
    version = f"{name}-" + hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()[:8]
    meta = {
        "lineinspect.classes": json.dumps(ckpt["classes"]),
        "lineinspect.input": json.dumps(
            {
                "height": side,
                "width": side,
                "channels": 3,
                "color": ckpt.get("color", "gray"),
                "mean": list(MEAN),
                "std": list(STD),
            }
        ),
        "lineinspect.roi": json.dumps(ckpt["roi"]),
        "lineinspect.threshold": repr(float(ckpt["threshold"])),
        "lineinspect.version": version,
        "lineinspect.train_data_hash": ckpt["train_data_hash"],
    }
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(onnx_path))

    diffs = parity(checkpoint, onnx_path, golden_frames(ckpt))
    if max(diffs.values()) >= PARITY_TOL:
        raise RuntimeError(f"ONNX Runtime disagrees with PyTorch on the golden frames: {diffs}")
    return onnx_path


def read_metadata(onnx_path: str | Path) -> dict:
    """The `lineinspect.*` metadata with the JSON values decoded and the threshold as a float."""
    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    return {
        "classes": json.loads(props["lineinspect.classes"]),
        "input": json.loads(props["lineinspect.input"]),
        "roi": json.loads(props["lineinspect.roi"]),
        "threshold": float(props["lineinspect.threshold"]),
        "version": props["lineinspect.version"],
        "train_data_hash": props["lineinspect.train_data_hash"],
    }


def run_latency_ms(sess: ort.InferenceSession, x: np.ndarray, runs: int) -> tuple[float, float]:
    """p50 and p99 milliseconds of one `sess.run` on input `x`, after a warm-up (the first runs
    allocate and pick kernels)."""
    for _ in range(20):
        sess.run(None, {"image": x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"image": x})
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def input_side_of(ckpt: dict) -> int:
    """The network's input side a checkpoint was trained at (older ones: the default)."""
    return int(ckpt.get("input_size", INPUT_SIZE))


def session(onnx_path: str | Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def onnx_predict(sess: ort.InferenceSession, frames: np.ndarray, roi: list[int] | None) -> tuple[np.ndarray, ...]:
    """(class_probs (N, C), defect_map (N, 1, S/8, S/8), score (N,)) for Mono8 camera frames (N, H, W)
    of a grey model."""
    side = int(sess.get_inputs()[0].shape[-1])
    x = preprocess(frames, roi, size=side)
    probs, maps, scores = sess.run(["class_probs", "defect_map", "score"], {"image": x})
    return probs, maps, scores


def golden_frames(ckpt: dict) -> list[np.ndarray]:
    """The checkpoint's golden frames (whole camera frames of its own validation set, one per class),
    or for an older checkpoint without them synthetic frames."""
    if ckpt.get("golden"):
        return [t.numpy() for t in ckpt["golden"]]
    return [synthetic.render_frame(np.random.default_rng(i), i % 4)[0] for i in range(8)]


def parity(checkpoint: str | Path, onnx_path: str | Path, frames: list[np.ndarray] | np.ndarray) -> dict[str, float]:
    """Max |difference| between PyTorch and ONNX Runtime on `frames` (whole camera frames, Mono8 or
    RGB8 as the model takes; they may differ in size), per output: class_probs, defect_map, score."""
    model, ckpt = load_checkpoint(checkpoint)
    sess = session(onnx_path)
    color = ckpt.get("color", "gray")
    diffs = dict.fromkeys(("class_probs", "defect_map", "score"), 0.0)
    for frame in frames:
        if color == "rgb" and frame.ndim == 2:
            frame = np.repeat(frame[..., None], 3, axis=-1)  # grey test frames as colour images
        x = preprocess(frame[None], ckpt["roi"], color, input_side_of(ckpt))
        with torch.no_grad():
            ours = [t.numpy() for t in model(torch.from_numpy(x))]
        for name, a, b in zip(diffs, ours, sess.run(list(diffs), {"image": x}), strict=True):
            diffs[name] = max(diffs[name], float(np.abs(a - b).max()))
    return diffs


def decision_text(cal: dict) -> str:
    """How the training's calibration (train_report["calibration"]) decides, for model cards."""
    f = cal["fusion"]
    lo, hi = cal["realized_frr_90"]
    return (f"the score fuses the anomaly and the learned signal (classifier, or defect-map peak where larger) at "
            f"{f['angle_degrees']:.0f} degrees (0 = anomaly only, 90 = learned only), cut on {cal['n_good']} good "
            f"images the network never trained on (out-of-fold) for a {cal['target_frr']:.2%} false-reject rate: "
            f"realized rate within {lo:.2%}..{hi:.2%} with 90 % confidence, "
            f"{'holds' if cal['holds'] else 'does NOT hold'} "
            f"({cal['p_within_band']:.1%} within {cal['band'][0]}-{cal['band'][1]}x the target)")


def views_text(views: int) -> str:
    """What the model looks at per part (net.TEST_VIEWS), for model cards."""
    if views == 1:
        return "the image as it comes (one network pass per part)"
    return (f"{views} per part (the image, mirrored, upside down, a quarter turn; the signals averaged): "
            f"{views} network passes per part")


def input_text(levelled: bool) -> str:
    """What the network's input is (net.level_and_contrast), for model cards."""
    if levelled:
        return "levelled: each image's brightness, light gradient and contrast taken out before the network"
    return "as it comes (trained before levelled inputs)"


def write_card(model_dir: str | Path, onnx_path: str | Path, train_report: dict) -> Path:
    """A short MODEL_CARD.md beside a trained model: what it is, how it decides, what it was trained
    on, and how it did on validation (evaluate it on held-out data with `lineinspect evaluate`)."""
    meta = read_metadata(onnx_path)
    cal, val = train_report["calibration"], train_report["val"]
    counts = ", ".join(f"{c}: {n}" for c, n in train_report["train_counts"].items())
    weights = "ImageNet (EfficientNet-Lite0) fine-tuned" if train_report["pretrained"] else "random init"
    warning = "" if cal["holds"] else (
        f"\n**NOT CALIBRATED to the {cal['target_frr']:.2%} false-reject target: {cal['n_good']} calibration good "
        f"images, {cal['good_images_needed']} needed. Add good images or re-calibrate (`lineinspect model "
        "set-threshold`).**\n")
    card = f"""# Model card: {meta["version"]}

- File: `{Path(onnx_path).name}`, sha256 `{hashlib.sha256(Path(onnx_path).read_bytes()).hexdigest()}`
- Classes: {meta["classes"]} ({meta["input"]["color"]} input, ROI {meta["roi"]})
- Weights: {weights}, {train_report["rounds_run"]} rounds, seed {train_report["seed"]}
- Views: {views_text(train_report.get("test_views", 1))}
- Input: {input_text(bool(train_report.get("levelled_inputs")))}
- Decision: reject when `score` >= {meta["threshold"]:g}; {decision_text(cal)}
- Training data: {counts} (plus {train_report["n_val"]} early-stopping and {cal["n_good"]} calibration images);
  hash `{meta["train_data_hash"]}`
- On the images that set the cut and the fusion (optimistic, not a test): detection {val["detection_rate"]:.4f},
  false-reject rate {val["false_reject_rate"]:.4f}, accuracy {val["accuracy"]:.4f}
{warning}
Validation images chose the stopping point, calibration images the fusion and the cut; measure the
model on images it has never seen: `lineinspect evaluate {Path(onnx_path).name} TEST_DATASET`.
"""
    path = Path(model_dir) / "MODEL_CARD.md"
    path.write_text(card)
    return path
