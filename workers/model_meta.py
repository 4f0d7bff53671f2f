"""Reads and validates the model artifact's contract: its `lineinspect.*` metadata and the names and
shapes of its input and outputs.

Responsible for: turning an ONNX file into a frozen `ModelMeta`, or a `ConfigError` whose one-line
message names the file and the offending key. Not responsible for: running the model
(`onnx_engine`) or using the metadata (`preprocess`, the engine's scoring).

Reading goes through ONNX Runtime rather than the `onnx` package because only the former is a
runtime dependency.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from controller.errors import ConfigError

KEY_CLASSES = "lineinspect.classes"
KEY_INPUT = "lineinspect.input"
KEY_ROI = "lineinspect.roi"
KEY_THRESHOLD = "lineinspect.threshold"
KEY_VERSION = "lineinspect.version"
REQUIRED_KEYS = (KEY_CLASSES, KEY_INPUT, KEY_ROI, KEY_THRESHOLD, KEY_VERSION)

INPUT_NAME = "image"
PROBS_NAME = "class_probs"
DEFECT_MAP_NAME = "defect_map"
SCORE_NAME = "score"
FP16_SCOPE = "/backbone/"
"""In the names of the ONNX nodes (torch's export names them by module path) an FP16 TensorRT engine
may run in half precision: the backbone, nearly all of the cost. Every other layer (heads, good
parts' distances, the views' average, the decision) keeps FP32 (workers/tensorrt_engine.py)."""
"""Optional output: the model's own reject score (N,). Without it, score = 1 - P(good)."""

Color = Literal["gray", "rgb"]


@dataclass(frozen=True, slots=True)
class ModelMeta:
    """What the controller needs to know about a model besides its weights."""

    source: str
    """The file the metadata came from (for messages)."""
    classes: tuple[str, ...]
    """Class names by model index; index 0 is 'good'."""
    height: int
    width: int
    channels: int
    """Always 3: gray models get the gray plane replicated."""
    color: Color
    """'gray': expects Mono8 frames; 'rgb': expects RGB8 frames."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    """Per-channel normalisation applied after scaling pixels to [0, 1]."""
    roi: tuple[int, int, int, int] | None
    """(x, y, w, h) on the camera frame, or None for the whole frame."""
    threshold: float
    """Reject when score >= threshold."""
    version: str
    has_score: bool = False
    """The model outputs its own reject score (SCORE_NAME), e.g. classifier and anomaly combined."""


def _fail(source: str, key: str, problem: str) -> ConfigError:
    # One line, always: the message ends up in a log line and on the HMI.
    text = f"{source}: {key}: {problem}"
    return ConfigError(" ".join(text.split()))


def _number(value: Any) -> bool:
    # bool is an int subclass; `true` in JSON is never a meaningful size or mean.
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _json(props: Mapping[str, str], key: str, source: str) -> Any:
    try:
        return json.loads(props[key])
    except json.JSONDecodeError as exc:
        raise _fail(source, key, f"not valid JSON ({exc.msg} at char {exc.pos})") from None


def _parse_classes(props: Mapping[str, str], source: str) -> tuple[str, ...]:
    value = _json(props, KEY_CLASSES, source)
    if not isinstance(value, list) or len(value) < 2:
        raise _fail(source, KEY_CLASSES, "must be a JSON list of at least 2 class names (index 0 = good)")
    if not all(isinstance(c, str) and c.strip() for c in value):
        raise _fail(source, KEY_CLASSES, "every class name must be a non-empty string")
    if len(set(value)) != len(value):
        raise _fail(source, KEY_CLASSES, "class names must be unique")
    return tuple(value)


def _parse_triple(spec: Mapping[str, Any], name: str, source: str, *, positive: bool) -> tuple[float, ...]:
    value = spec.get(name)
    if not isinstance(value, list) or len(value) != 3 or not all(_number(v) for v in value):
        raise _fail(source, KEY_INPUT, f"'{name}' must be a list of 3 finite numbers, got {value!r}")
    if positive and not all(v > 0 for v in value):
        raise _fail(source, KEY_INPUT, f"'{name}' must be > 0, got {value!r}")
    return tuple(float(v) for v in value)


def _parse_input(props: Mapping[str, str], source: str) -> dict[str, Any]:
    spec = _json(props, KEY_INPUT, source)
    if not isinstance(spec, dict):
        raise _fail(source, KEY_INPUT, "must be a JSON object")
    for name in ("height", "width", "channels", "color", "mean", "std"):
        if name not in spec:
            raise _fail(source, KEY_INPUT, f"missing '{name}'")
    for name in ("height", "width"):
        v = spec[name]
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise _fail(source, KEY_INPUT, f"'{name}' must be a positive integer, got {v!r}")
    if spec["channels"] != 3 or isinstance(spec["channels"], bool):
        raise _fail(source, KEY_INPUT, f"'channels' must be 3, got {spec['channels']!r}")
    if spec["color"] not in ("gray", "rgb"):
        raise _fail(source, KEY_INPUT, f"'color' must be 'gray' or 'rgb', got {spec['color']!r}")
    return {
        "height": spec["height"],
        "width": spec["width"],
        "channels": 3,
        "color": spec["color"],
        "mean": _parse_triple(spec, "mean", source, positive=False),
        "std": _parse_triple(spec, "std", source, positive=True),
    }


def _parse_roi(props: Mapping[str, str], source: str) -> tuple[int, int, int, int] | None:
    value = _json(props, KEY_ROI, source)
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise _fail(source, KEY_ROI, f"must be null or a list of 4 integers [x, y, w, h], got {value!r}")
    x, y, w, h = value
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise _fail(source, KEY_ROI, f"needs x, y >= 0 and w, h > 0, got {value!r}")
    return (x, y, w, h)


def _parse_threshold(props: Mapping[str, str], source: str) -> float:
    raw = props[KEY_THRESHOLD]
    try:
        value = float(raw)
    except ValueError:
        raise _fail(source, KEY_THRESHOLD, f"must be a number, got {raw!r}") from None
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise _fail(source, KEY_THRESHOLD, f"must be in [0, 1], got {raw!r}")
    return value


def parse_model_meta(props: Mapping[str, str], source: str) -> ModelMeta:
    """Validate the `lineinspect.*` metadata strings; `source` names the file in error messages."""
    for key in REQUIRED_KEYS:
        if key not in props:
            raise _fail(source, key, "missing from the model's metadata_props")
    version = props[KEY_VERSION].strip()
    if not version:
        raise _fail(source, KEY_VERSION, "must be a non-empty string")
    spec = _parse_input(props, source)
    return ModelMeta(
        source=source,
        classes=_parse_classes(props, source),
        roi=_parse_roi(props, source),
        threshold=_parse_threshold(props, source),
        version=version,
        **spec,
    )


def _check_dim(actual: object, expected: int, source: str, what: str) -> None:
    # ONNX Runtime reports symbolic dims as strings (or None); only fixed ones can be checked.
    if isinstance(actual, int) and actual != expected:
        raise _fail(source, what, f"has size {actual}, metadata says {expected}")


def meta_from_session(session: Any, source: str) -> ModelMeta:
    """Validate an open `onnxruntime.InferenceSession`: its metadata and its I/O names and shapes."""
    meta = parse_model_meta(session.get_modelmeta().custom_metadata_map, source)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    if INPUT_NAME not in inputs:
        raise _fail(source, f"input '{INPUT_NAME}'", f"missing; the model has inputs {sorted(inputs)}")
    for name in (PROBS_NAME, DEFECT_MAP_NAME):
        if name not in outputs:
            raise _fail(source, f"output '{name}'", f"missing; the model has outputs {sorted(outputs)}")
    image, probs, dmap = inputs[INPUT_NAME], outputs[PROBS_NAME], outputs[DEFECT_MAP_NAME]
    for node, rank in ((image, 4), (probs, 2), (dmap, 4)):
        if node.type != "tensor(float)":
            raise _fail(source, f"'{node.name}'", f"must be float32, is {node.type}")
        if len(node.shape) != rank:
            raise _fail(source, f"'{node.name}'", f"must have rank {rank}, has shape {node.shape}")
    _check_dim(image.shape[1], meta.channels, source, f"input '{INPUT_NAME}' dim 1 (channels)")
    _check_dim(image.shape[2], meta.height, source, f"input '{INPUT_NAME}' dim 2 (height)")
    _check_dim(image.shape[3], meta.width, source, f"input '{INPUT_NAME}' dim 3 (width)")
    _check_dim(probs.shape[1], len(meta.classes), source, f"output '{PROBS_NAME}' dim 1 (classes)")
    _check_dim(dmap.shape[1], 1, source, f"output '{DEFECT_MAP_NAME}' dim 1")
    if SCORE_NAME not in outputs:
        return meta
    node = outputs[SCORE_NAME]
    if node.type != "tensor(float)" or len(node.shape) != 1:
        raise _fail(source, f"'{SCORE_NAME}'", f"must be float32 of shape (N,), is {node.type} {node.shape}")
    return dataclasses.replace(meta, has_score=True)


def open_session(model_path: str | os.PathLike[str], options: Any = None, providers: Any = None) -> Any:
    """Open `model_path` with ONNX Runtime, translating 'missing' and 'unloadable' into ConfigError."""
    import onnxruntime as ort  # deferred: importing this module must stay cheap

    path = Path(model_path)
    if not path.is_file():
        raise ConfigError(f"{path}: model file not found")
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises several private exception types for a bad file
        raise _fail(str(path), "model", f"cannot be loaded by ONNX Runtime: {exc}") from exc


def load_model_meta(model_path: str | os.PathLike[str]) -> ModelMeta:
    """Open the model only to validate and return its metadata (raises ConfigError)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Only reading metadata: skip graph optimisation, which is the slow part of opening a big model.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return meta_from_session(open_session(model_path, options), str(model_path))
