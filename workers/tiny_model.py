"""Builds a tiny ONNX model that honours the model-artifact contract, for tests and smoke checks.

Responsible for: a model small enough to build in milliseconds whose outputs are predictable:
brightness decides the class (dark → class 0 'good', bright → class 1), so tests can steer a verdict.
`slow_layers` adds heavy convolutions that change nothing but the run time, so tests can keep an
inference in flight long enough to time it out or kill its worker. Not responsible for: anything
shipped — the real model is produced by training (models/shipped/model.onnx).

Needs the `onnx` package (the `train` extra), imported here only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

TINY_CLASSES = ("good", "scratch", "dent")
TINY_MEAN = (0.5, 0.5, 0.5)
TINY_STD = (0.25, 0.25, 0.25)
TINY_GAIN = 2.0
"""Logit gain on the mean normalised brightness m: logits = (-g·m, +g·m, 0)."""


def tiny_metadata(
    *,
    size: int = 128,
    color: str = "gray",
    roi: list[int] | None = None,
    threshold: float = 0.5,
    version: str = "tiny-1",
) -> dict[str, str]:
    """The `lineinspect.*` metadata strings of a tiny model."""
    return {
        "lineinspect.classes": json.dumps(list(TINY_CLASSES)),
        "lineinspect.input": json.dumps(
            {
                "height": size,
                "width": size,
                "channels": 3,
                "color": color,
                "mean": list(TINY_MEAN),
                "std": list(TINY_STD),
            }
        ),
        "lineinspect.roi": json.dumps(roi),
        "lineinspect.threshold": repr(threshold),
        "lineinspect.version": version,
    }


def tiny_weights() -> tuple[np.ndarray, np.ndarray]:
    """Gemm weights (3 channels x 3 classes) and bias; each channel contributes a third of m."""
    g = TINY_GAIN / 3.0
    w = np.array([[-g, g, 0.0]] * 3, dtype=np.float32)
    return w, np.zeros(3, dtype=np.float32)


def build_tiny_model(
    path: str | os.PathLike[str],
    *,
    size: int = 128,
    slow_layers: int = 0,
    slow_channels: int = 64,
    metadata: Mapping[str, str] | None = None,
    with_score: bool = False,
    **meta_kwargs: Any,
) -> str:
    """Write a conforming model to `path` and return the path as a string.

    class_probs = softmax(GAP(image) @ W + b); defect_map = sigmoid(8x8-pooled channel mean).
    With `with_score`, a third output score = max of defect_map (the model's own reject score).
    `metadata` replaces the generated metadata strings entirely (to test validation);
    `meta_kwargs` go to `tiny_metadata`.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []
    trunk = "image"
    if slow_layers:
        # Heavy but inert: conv stacks whose result is multiplied by 0 and added back to the image.
        c = slow_channels
        rng = np.random.default_rng(0)
        shapes = [(c, 3)] + [(c, c)] * (slow_layers - 1) + [(3, c)]
        for i, (co, ci) in enumerate(shapes):
            w = (rng.standard_normal((co, ci, 3, 3)) * 0.05).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"slow_w{i}"))
            nodes.append(
                helper.make_node(
                    "Conv",
                    [trunk if i == 0 else f"slow{i - 1}", f"slow_w{i}"],
                    [f"slow{i}"],
                    pads=[1, 1, 1, 1],
                )
            )
        inits.append(numpy_helper.from_array(np.zeros((1,), np.float32), "zero"))
        nodes.append(helper.make_node("Mul", [f"slow{len(shapes) - 1}", "zero"], ["slow_zeroed"]))
        nodes.append(helper.make_node("Add", ["image", "slow_zeroed"], ["trunk"]))
        trunk = "trunk"
    w, b = tiny_weights()
    inits += [numpy_helper.from_array(w, "fc_w"), numpy_helper.from_array(b, "fc_b")]
    pool = np.full((1, 3, 8, 8), 1.0 / (3 * 64), dtype=np.float32)
    inits.append(numpy_helper.from_array(pool, "map_w"))
    nodes += [
        helper.make_node("GlobalAveragePool", [trunk], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["feat"], axis=1),
        helper.make_node("Gemm", ["feat", "fc_w", "fc_b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["class_probs"], axis=1),
        helper.make_node("Conv", [trunk, "map_w"], ["map_raw"], strides=[8, 8]),
        helper.make_node("Sigmoid", ["map_raw"], ["defect_map"]),
    ]
    outputs = [
        helper.make_tensor_value_info("class_probs", TensorProto.FLOAT, ["N", len(TINY_CLASSES)]),
        helper.make_tensor_value_info("defect_map", TensorProto.FLOAT, ["N", 1, size // 8, size // 8]),
    ]
    if with_score:
        nodes.append(helper.make_node("ReduceMax", ["defect_map"], ["score"], axes=[1, 2, 3], keepdims=0))
        outputs.append(helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"]))
    graph = helper.make_graph(
        nodes,
        "lineinspect_tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])],
        outputs,
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    # Keep the IR version loadable by older runtimes (the onnx package may default newer).
    model.ir_version = 8
    props = dict(metadata) if metadata is not None else tiny_metadata(size=size, **meta_kwargs)
    helper.set_model_props(model, props)
    onnx.checker.check_model(model)
    onnx.save(model, os.fspath(path))
    return os.fspath(path)
