"""What the network's input side costs on this machine: inference latency per network pass (ONNX
Runtime, batch 1, one thread, as the line's CPU engine runs; a model with test-time views,
net.TEST_VIEWS, makes one pass per view) and training time per image (forward and backward at batch
32 on two threads), for the sides models.resolution may choose.

    python -m models.input_cost [--out models/shipped/input_cost] [--sides 128 192 256 384 512]

Writes input_cost.json and input_cost.png. Weights do not change the cost, so an untrained network
is timed. On a GPU machine the same script's ONNX figures are the CPU baseline that a GPU engine
(TensorRT, workers/tensorrt_engine.py) is compared with.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from rich.console import Console

from models.export import OPSET, run_latency_ms, session
from models.net import Inspector
from models.resolution import DEFAULT_SIDE


def inference_ms(model: Inspector, side: int, frames: int) -> tuple[float, float]:
    """(p50, p99) milliseconds per frame through ONNX Runtime on one thread."""
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = Path(tmp) / "m.onnx"
        torch.onnx.export(model, (torch.zeros(1, 3, side, side),), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["class_probs", "defect_map", "score"])  # fmt: skip
        x = np.random.default_rng(0).standard_normal((1, 3, side, side)).astype(np.float32)
        return run_latency_ms(session(path, threads=1), x, frames)


def training_ms_per_image(model: Inspector, side: int, steps: int = 3, batch: int = 32) -> float:
    """Milliseconds per image of one training step (forward, backward, no optimizer) on two threads,
    with the layers training keeps frozen frozen."""
    net = model.net.train()
    for module in net.frozen_modules():
        module.requires_grad_(False)
    x = torch.randn(batch, 3, side, side)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        logits, maps = net(x)
        (logits.sum() + maps.sum()).backward()
        times.append(time.perf_counter() - t)
    return float(np.median(times[1:])) * 1e3 / batch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.input_cost", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/input_cost"))
    p.add_argument("--sides", type=int, nargs="+", default=[128, 192, 256, 384, 512])
    p.add_argument("--frames", type=int, default=200)
    args = p.parse_args(argv)
    console = Console(stderr=True)
    torch.set_num_threads(2)
    model = Inspector(4, pretrained=False).eval()
    rows = []
    for side in args.sides:
        with console.status(f"timing {side} px"):
            p50, p99 = inference_ms(model, side, max(20, args.frames * DEFAULT_SIDE**2 // side**2))
            train = training_ms_per_image(model, side)
        rows.append({"side": side, "infer_p50_ms": p50, "infer_p99_ms": p99, "train_ms_per_image": train})
        console.print(f"{side:>4} px: inference p50 {p50:.2f} ms, p99 {p99:.2f} ms (1 thread); "
                      f"training {train:.1f} ms per image (2 threads)")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "input_cost.json").write_text(json.dumps({"rows": rows, "machine": "CPU"}, indent=2))
    _plot(rows, args.out / "input_cost.png")
    return 0


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [r["side"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.4), dpi=120)
    ax.plot(sides, [r["infer_p50_ms"] for r in rows], "o-", label="inference p50 (ms/frame, 1 thread)")
    ax.plot(sides, [r["infer_p99_ms"] for r in rows], "o--", label="inference p99")
    ax.plot(sides, [r["train_ms_per_image"] for r in rows], "s-", label="training (ms/image, 2 threads)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sides, [str(s) for s in sides])
    ax.set_xlabel("network input side (px)")
    ax.set_ylabel("ms")
    ax.set_title("cost of the input side on this CPU", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
