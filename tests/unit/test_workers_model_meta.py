"""Model metadata validation: every broken artifact gives a one-line ConfigError naming file and key."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.errors import ConfigError
from workers.model_meta import ModelMeta, load_model_meta, parse_model_meta
from workers.tiny_model import build_tiny_model, tiny_metadata

SRC = "models/x.onnx"


def _input(**changes: object) -> dict[str, str]:
    props = tiny_metadata()
    spec = json.loads(props["lineinspect.input"])
    for k, v in changes.items():
        if v is ...:
            del spec[k]
        else:
            spec[k] = v
    props["lineinspect.input"] = json.dumps(spec)
    return props


def _with(key: str, value: str | None) -> Callable[[], dict[str, str]]:
    def make() -> dict[str, str]:
        props = tiny_metadata()
        if value is None:
            del props[key]
        else:
            props[key] = value
        return props

    return make


BROKEN: list[tuple[str, Callable[[], dict[str, str]], str]] = [
    ("missing classes", _with("lineinspect.classes", None), "lineinspect.classes"),
    ("missing input", _with("lineinspect.input", None), "lineinspect.input"),
    ("missing roi", _with("lineinspect.roi", None), "lineinspect.roi"),
    ("missing threshold", _with("lineinspect.threshold", None), "lineinspect.threshold"),
    ("missing version", _with("lineinspect.version", None), "lineinspect.version"),
    ("classes not json", _with("lineinspect.classes", "[good, bad"), "lineinspect.classes"),
    ("one class", _with("lineinspect.classes", '["good"]'), "lineinspect.classes"),
    ("duplicate class", _with("lineinspect.classes", '["good", "a", "a"]'), "lineinspect.classes"),
    ("empty class name", _with("lineinspect.classes", '["good", ""]'), "lineinspect.classes"),
    ("input not object", _with("lineinspect.input", "[1, 2]"), "lineinspect.input"),
    ("input missing mean", lambda: _input(mean=...), "'mean'"),
    ("input std zero", lambda: _input(std=[0.2, 0.0, 0.2]), "'std'"),
    ("input mean short", lambda: _input(mean=[0.5, 0.5]), "'mean'"),
    ("input height zero", lambda: _input(height=0), "'height'"),
    ("input width bool", lambda: _input(width=True), "'width'"),
    ("input width float", lambda: _input(width=12.5), "'width'"),
    ("input channels 1", lambda: _input(channels=1), "'channels'"),
    ("input color bgr", lambda: _input(color="bgr"), "'color'"),
    ("roi short", _with("lineinspect.roi", "[0, 0, 10]"), "lineinspect.roi"),
    ("roi negative", _with("lineinspect.roi", "[-1, 0, 10, 10]"), "lineinspect.roi"),
    ("roi empty", _with("lineinspect.roi", "[0, 0, 0, 10]"), "lineinspect.roi"),
    ("roi float", _with("lineinspect.roi", "[0.5, 0, 10, 10]"), "lineinspect.roi"),
    ("threshold text", _with("lineinspect.threshold", "high"), "lineinspect.threshold"),
    ("threshold above 1", _with("lineinspect.threshold", "1.5"), "lineinspect.threshold"),
    ("threshold nan", _with("lineinspect.threshold", "nan"), "lineinspect.threshold"),
    ("version blank", _with("lineinspect.version", "  "), "lineinspect.version"),
]


@pytest.mark.parametrize(("case", "make", "names"), BROKEN, ids=[b[0] for b in BROKEN])
def test_invalid_metadata_gives_one_line_error_naming_file_and_key(
    case: str, make: Callable[[], dict[str, str]], names: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_model_meta(make(), SRC)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith(SRC + ": ")
    assert names in message


def test_valid_metadata_parses_to_frozen_meta() -> None:
    props = tiny_metadata(size=64, color="rgb", roi=[4, 8, 100, 90], threshold=0.25, version="v7")
    meta = parse_model_meta(props, SRC)
    assert meta == ModelMeta(
        source=SRC,
        classes=("good", "scratch", "dent"),
        height=64,
        width=64,
        channels=3,
        color="rgb",
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
        roi=(4, 8, 100, 90),
        threshold=0.25,
        version="v7",
    )
    with pytest.raises(AttributeError):
        meta.threshold = 0.9  # type: ignore[misc]


def test_null_roi_means_whole_frame() -> None:
    assert parse_model_meta(tiny_metadata(roi=None), SRC).roi is None


def test_load_from_file(tmp_path: Path) -> None:
    path = build_tiny_model(tmp_path / "m.onnx", size=32, version="v3")
    meta = load_model_meta(path)
    assert (meta.version, meta.height, meta.source) == ("v3", 32, path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(ConfigError, match=r"nope\.onnx: model file not found"):
        load_model_meta(missing)


def test_garbage_file_is_a_config_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    with pytest.raises(ConfigError) as err:
        load_model_meta(bad)
    assert "\n" not in str(err.value) and "bad.onnx" in str(err.value)


def test_missing_metadata_in_file_names_file_and_key(tmp_path: Path) -> None:
    props = tiny_metadata()
    del props["lineinspect.threshold"]
    path = build_tiny_model(tmp_path / "m.onnx", size=32, metadata=props)
    with pytest.raises(ConfigError, match=r"m\.onnx: lineinspect\.threshold: missing"):
        load_model_meta(path)


def test_input_size_must_match_the_graph(tmp_path: Path) -> None:
    props = tiny_metadata(size=64)  # metadata says 64, graph is built for 32
    path = build_tiny_model(tmp_path / "m.onnx", size=32, metadata=props)
    with pytest.raises(ConfigError, match=r"input 'image' dim 2 \(height\)"):
        load_model_meta(path)


def test_missing_output_is_named(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["something_else"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("something_else", TensorProto.FLOAT, ["N", 3, 32, 32])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, tiny_metadata(size=32))
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ConfigError, match=r"output 'class_probs': missing"):
        load_model_meta(path)
