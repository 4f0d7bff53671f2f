"""Export a trained checkpoint to the ONNX model the inference workers load, and check it.

What it does: writes an opset-17 ONNX file with a dynamic batch axis,
  input  `image`       float32 (N, 3, 128, 128), ImageNet-normalized (grey replicated to 3 channels, or RGB)
  output `class_probs` float32 (N, C) softmax, class 0 = good
  output `defect_map`  float32 (N, 1, 16, 16) in [0, 1]
  output `score`       float32 (N,) reject score in [0, 1] (classifier and anomaly, net.Decision)
plus the `lineinspect.*` metadata (classes, input convention, ROI, threshold, version, training-data
hash), and verifies that ONNX Runtime agrees with PyTorch on the reject score and the defect map.

What it does not: quantize or optimize the graph (fp32 as trained), or serve it (workers/ do that).
"""

from __future__ import annotations

import hashlib
import json
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


def export_onnx(checkpoint: str | Path, onnx_path: str | Path) -> Path:
    """Export `checkpoint` (from train.train) to `onnx_path`, add metadata, check parity. Returns the path."""
    model, ckpt = load_checkpoint(checkpoint)
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
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
    version = "sim-v1-" + hashlib.sha256(proto.SerializeToString(deterministic=True)).hexdigest()[:8]
    meta = {
        "lineinspect.classes": json.dumps(ckpt["classes"]),
        "lineinspect.input": json.dumps(
            {
                "height": INPUT_SIZE,
                "width": INPUT_SIZE,
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

    frames = np.stack([synthetic.render_frame(np.random.default_rng(i), i % 4)[0] for i in range(8)])
    score_diff, map_diff = parity_with_maps(checkpoint, onnx_path, frames)
    if score_diff >= PARITY_TOL or map_diff >= PARITY_TOL:
        raise RuntimeError(f"ONNX Runtime disagrees with PyTorch: max |score diff| {score_diff:.2e}, "
                           f"max |defect-map diff| {map_diff:.2e}")  # fmt: skip
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


def session(onnx_path: str | Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])


def onnx_predict(sess: ort.InferenceSession, frames: np.ndarray, roi: list[int] | None) -> tuple[np.ndarray, ...]:
    """(class_probs (N, C), defect_map (N, 1, 16, 16), score (N,)) for Mono8 camera frames (N, H, W)."""
    probs, maps, scores = sess.run(["class_probs", "defect_map", "score"], {"image": preprocess(frames, roi)})
    return probs, maps, scores


def parity(checkpoint: str | Path, onnx_path: str | Path, frames: np.ndarray) -> float:
    """Max |score difference| between PyTorch and ONNX Runtime on `frames` (Mono8, (N, H, W))."""
    return parity_with_maps(checkpoint, onnx_path, frames)[0]


def parity_with_maps(checkpoint: str | Path, onnx_path: str | Path, frames: np.ndarray) -> tuple[float, float]:
    """Max |score difference| and max |defect-map difference| (both in [0, 1]) between PyTorch and
    ONNX Runtime on `frames`."""
    model, ckpt = load_checkpoint(checkpoint)
    color = ckpt.get("color", "gray")
    if color == "rgb" and frames.ndim == 3:
        frames = np.repeat(frames[..., None], 3, axis=-1)  # grey golden frames as colour images
    x = preprocess(frames, ckpt["roi"], color)
    with torch.no_grad():
        _, torch_map, torch_score = (t.numpy() for t in model(torch.from_numpy(x)))
    onnx_map, onnx_score = session(onnx_path).run(["defect_map", "score"], {"image": x})
    return float(np.abs(torch_score - onnx_score).max()), float(np.abs(torch_map - onnx_map).max())
