"""TensorRTEngine and build_engine against fake `tensorrt` and `cupy` modules (no GPU here).

The fakes implement only the documented calls the engine makes. The fake execution context really
runs the ONNX model (with ONNX Runtime) on the memory the engine bound, read the way TensorRT reads
it: a packed tensor of the shape given to `set_input_shape`, starting at the bound address. So
parity with OnnxRuntimeEngine proves I/O binding, shapes, preprocessing and scoring. It proves
nothing about real kernels, FP16 numerics or CUDA stream ordering: tests/gpu/run.sh checks those.
"""

from __future__ import annotations

import enum
import json
import math
import sys
import types
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from controller.errors import ConfigError, InferenceError
from workers.model_meta import DEFECT_MAP_NAME, FP16_SCOPE, INPUT_NAME, PROBS_NAME, SCORE_NAME
from workers.onnx_engine import OnnxRuntimeEngine
from workers.tensorrt_engine import WORKSPACE_BYTES, TensorRTEngine, build_engine, engine_cache_key
from workers.tiny_model import build_tiny_model

# --- fake cupy: numpy arrays that pose as device arrays ---------------------------------------

GPU = "Fake GPU 80GB"


class DeviceArray(np.ndarray):
    """`.data.ptr` and `.get()` like cupy.ndarray; `fake` is set on a per-FakeCupy subclass."""

    fake: FakeCupy

    @property
    def data(self) -> Any:  # type: ignore[override]
        return SimpleNamespace(ptr=self.ctypes.data)

    def get(self, stream: Any = None) -> np.ndarray:
        self.fake.gets.append((self.ctypes.data, stream))
        return np.array(self).view(np.ndarray)


class FakeStream:
    def __init__(self, fake: FakeCupy, non_blocking: bool = False) -> None:
        self.fake, self.non_blocking = fake, non_blocking
        self.ptr = 0x7000 + len(fake.created_streams)
        self.synchronized = 0
        fake.created_streams.append(self)

    def __enter__(self) -> FakeStream:
        self.fake.current.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.fake.current.pop()

    def synchronize(self) -> None:
        self.synchronized += 1


class FakeDevice:
    def __init__(self, device: int = 0) -> None:
        self.id = device

    def __enter__(self) -> FakeDevice:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class FakeCupy(types.ModuleType):
    """Everything `preprocess` needs comes from numpy; allocations and copies are recorded."""

    def __init__(self, gpu: str = GPU) -> None:
        super().__init__("cupy")
        self.ndarray = type("FakeDeviceArray", (DeviceArray,), {"fake": self})
        self.allocations: dict[int, DeviceArray] = {}  # ptr -> buffer: the only memory TensorRT may use
        self.current: list[FakeStream] = []
        self.created_streams: list[FakeStream] = []
        self.uploads: list[FakeStream | None] = []  # the current stream at each host -> device copy
        self.gets: list[tuple[int, Any]] = []  # (ptr, stream) of each device -> host copy
        runtime = SimpleNamespace(getDeviceProperties=lambda d: {"name": gpu.encode()}, getDevice=lambda: 0)
        self.cuda = SimpleNamespace(Stream=lambda non_blocking=False: FakeStream(self, non_blocking),
                                    Device=FakeDevice, runtime=runtime)  # fmt: skip

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)

    def asarray(self, a: Any, dtype: Any = None) -> DeviceArray:
        if not isinstance(a, DeviceArray):
            self.uploads.append(self.current[-1] if self.current else None)
        return np.asarray(a, dtype).view(self.ndarray)

    def empty(self, shape: tuple[int, ...], dtype: Any = np.float32) -> DeviceArray:
        # NaN, not zeros: a row TensorRT reads before anything wrote it shows up in the results.
        buf = np.full(shape, np.nan, dtype).view(self.ndarray)
        self.allocations[buf.data.ptr] = buf
        return buf


# --- fake tensorrt: builds a "plan" that is the ONNX model; runs it with ONNX Runtime ------------


class FakeParser:
    def __init__(self, network: Any, logger: Any) -> None:
        self.network, self.errors = network, []

    def parse(self, model: bytes, path: str | None = None) -> bool:
        try:
            ort.InferenceSession(model, providers=["CPUExecutionProvider"])
        except Exception as exc:
            self.errors.append(SimpleNamespace(desc=lambda text=str(exc): f"ModelImporter: {text}\nmore detail"))
            return False
        self.network.onnx = model
        # A layer per node, named as the parser names them, with its outputs' types.
        graph = onnx.shape_inference.infer_shapes(onnx.load_from_string(model)).graph
        types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.output]}
        for node in graph.node:
            dtypes = [DTYPES.get(types.get(o, 0), "OTHER") for o in node.output]
            self.network.layers.append(FakeLayer(node.name or f"node_of_{node.output[0]}", dtypes))
        return True

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> Any:
        return self.errors[i]


DTYPES = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.BOOL: "BOOL"}


class FakeLayer:
    def __init__(self, name: str, dtypes: list[str]) -> None:
        self.name, self.precision = name, None  # None: TensorRT chooses
        self.outputs = [SimpleNamespace(dtype=d) for d in dtypes]
        self.output_types: dict[int, str] = {}

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, i: int) -> Any:
        return self.outputs[i]

    def set_output_type(self, i: int, dtype: str) -> None:
        self.output_types[i] = dtype


class FakeNetwork:
    def __init__(self, flags: int) -> None:
        self.flags, self.onnx, self.layers = flags, None, []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, i: int) -> FakeLayer:
        return self.layers[i]

    def held_to_fp32(self) -> list[str]:
        return [layer.name for layer in self.layers if layer.precision == "FLOAT"
                and layer.output_types == dict.fromkeys(range(layer.num_outputs), "FLOAT")]  # fmt: skip


class FakeConfig:
    def __init__(self) -> None:
        self.flags: list[str] = []
        self.pools: dict[str, int] = {}
        self.profiles: list[Any] = []

    def set_flag(self, flag: str) -> None:
        self.flags.append(flag)

    def set_memory_pool_limit(self, pool: str, size: int) -> None:
        self.pools[pool] = size

    def add_optimization_profile(self, profile: Any) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class FakeProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[Any, Any, Any]] = {}

    def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class FakeBuilder:
    def __init__(self, trt: FakeTensorRT) -> None:
        self.trt = trt
        if trt.major < 11:  # removed in TensorRT 11: touching it there is an AttributeError
            self.platform_has_fast_fp16 = True

    def create_network(self, flags: int = 0) -> FakeNetwork:
        return FakeNetwork(flags)

    def create_builder_config(self) -> FakeConfig:
        return FakeConfig()

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile()

    def build_serialized_network(self, network: Any, config: FakeConfig) -> bytes:
        (profile,) = config.profiles
        lo, opt, hi = profile.shapes[INPUT_NAME]
        assert lo[0] <= opt[0] <= hi[0] and lo[1:] == opt[1:] == hi[1:]
        record = {"network_flags": network.flags, "flags": config.flags, "pools": config.pools,
                  "profile": [lo, opt, hi], "fp32_layers": network.held_to_fp32()}  # fmt: skip
        self.trt.builds.append(record)
        return b"FAKEPLAN\n" + json.dumps(record).encode() + b"\n" + network.onnx


class FakeContext:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}
        self.executions: list[int] = []
        self.fail = False

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, _, hi = self.engine.profile
        assert self.engine.get_tensor_mode(name) == "INPUT"
        assert lo[0] <= shape[0] <= hi[0] and tuple(shape[1:]) == tuple(hi[1:]), shape
        self.shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        n = self.shapes[INPUT_NAME][0]
        return tuple(n if d < 0 else d for d in self.engine.io[name][1])

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self.addresses[name] = ptr
        return True

    def _view(self, name: str) -> np.ndarray:
        # What TensorRT does with an address: a packed tensor of the current shape starting there.
        shape = self.get_tensor_shape(name)
        buf = self.engine.trt.cp.allocations[self.addresses[name]]  # KeyError: memory the engine never allocated
        assert buf.dtype == np.float32 and buf.flags.c_contiguous and buf.size >= math.prod(shape)
        return buf.reshape(-1)[: math.prod(shape)].reshape(shape)

    def execute_async_v3(self, stream_handle: int) -> bool:
        self.executions.append(stream_handle)
        if self.fail:
            return False
        session = self.engine.session
        outputs = [o.name for o in session.get_outputs()]
        x = np.asarray(self._view(INPUT_NAME))
        assert not np.isnan(x).any(), "TensorRT would read input rows that nothing wrote"
        values = session.run(outputs, {INPUT_NAME: x})
        for name, value in zip(outputs, values, strict=True):
            self._view(name)[...] = value
        return True


class FakeEngine:
    def __init__(self, trt: FakeTensorRT, record: dict[str, Any], onnx_bytes: bytes) -> None:
        self.trt, self.profile = trt, record["profile"]
        self.session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        nodes = [(i, "INPUT") for i in self.session.get_inputs()] + [(o, "OUTPUT") for o in self.session.get_outputs()]
        self.io = {n.name: (mode, [d if isinstance(d, int) else -1 for d in n.shape]) for n, mode in nodes}
        self.contexts: list[FakeContext] = []

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, i: int) -> str:
        return list(self.io)[i]

    def get_tensor_mode(self, name: str) -> str:
        return self.io[name][0]

    def get_tensor_dtype(self, name: str) -> str:
        return "FLOAT"

    def create_execution_context(self) -> FakeContext:
        self.contexts.append(FakeContext(self))
        return self.contexts[-1]


class FakeLogger:
    WARNING = 2

    def __init__(self, severity: int) -> None:
        self.severity = severity


class FakeTensorRT(types.ModuleType):
    def __init__(self, version: str, cp: FakeCupy) -> None:
        super().__init__("tensorrt")
        self.__version__ = version
        self.major = int(version.split(".")[0])
        self.cp = cp
        self.builds: list[dict[str, Any]] = []
        self.engines: list[FakeEngine] = []
        self.Logger = FakeLogger
        self.Builder = lambda logger: FakeBuilder(self)
        self.OnnxParser = FakeParser
        self.Runtime = lambda logger: SimpleNamespace(deserialize_cuda_engine=self._deserialize)
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="WORKSPACE")
        self.float32 = "FLOAT"
        self.TensorIOMode = SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
        if self.major < 11:
            self.BuilderFlag = SimpleNamespace(FP16="FP16", TF32="TF32", OBEY_PRECISION_CONSTRAINTS="OBEY")
            creation = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
        else:  # TensorRT 11 removed every precision flag
            self.BuilderFlag = SimpleNamespace(TF32="TF32")
            creation = {"STRONGLY_TYPED": 0}
        self.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", creation)

    @staticmethod
    def nptype(dtype: str) -> type:
        return {"FLOAT": np.float32}[dtype]

    def _deserialize(self, data: bytes) -> FakeEngine | None:
        if not data.startswith(b"FAKEPLAN\n"):
            return None  # what TensorRT does with a file it cannot load
        header, onnx_bytes = data.removeprefix(b"FAKEPLAN\n").split(b"\n", 1)
        self.engines.append(FakeEngine(self, json.loads(header), onnx_bytes))
        return self.engines[-1]


# --- fixtures -----------------------------------------------------------------------------------

VERSIONS = ["10.13.3.9", "11.4.0.106"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Model path and a fitting camera frame shape: a gray model with an ROI, and an RGB model."""
    d = tmp_path_factory.mktemp("models")
    return {
        "gray_roi": (build_tiny_model(d / "gray.onnx", size=32, roi=[8, 4, 40, 30], version="g-1"), (60, 64)),
        "rgb": (build_tiny_model(d / "rgb.onnx", size=32, color="rgb", version="c-1"), (40, 48, 3)),
        # A model with its own score output (classifier and anomaly combined, as models/ exports).
        "own_score": (build_tiny_model(d / "scored.onnx", size=32, with_score=True, version="s-1"), (32, 32)),
    }


def fakes(version: str = VERSIONS[1]) -> tuple[FakeTensorRT, FakeCupy]:
    cp = FakeCupy()
    return FakeTensorRT(version, cp), cp


def random_frames(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    # A random brightness per frame plus noise, so batches hold both verdicts.
    return [np.clip(rng.integers(0, 256) + rng.normal(0, 40, shape), 0, 255).astype(np.uint8) for _ in range(n)]


# --- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["gray_roi", "rgb", "own_score"])
def test_results_match_onnx_runtime(models: dict, tmp_path: Path, version: str, kind: str) -> None:
    model, shape = models[kind]
    trt, cp = fakes(version)
    engine = TensorRTEngine(model, engine_cache_dir=tmp_path, max_batch=8, name="w", trt=trt, cp=cp)
    reference = OnnxRuntimeEngine(model, name="w")
    rng = np.random.default_rng(7)
    verdicts = set()
    for n in (1, 3, 8):
        frames = random_frames(rng, n, shape)
        got, want = engine.infer_batch(frames), reference.infer_batch(frames)
        assert len(got) == n
        for g, w in zip(got, want, strict=True):
            assert g.score == pytest.approx(w.score, abs=1e-5)
            assert g.defect_map is not None and w.defect_map is not None
            assert g.defect_map.dtype == np.float16 and g.defect_map.shape == w.defect_map.shape == (4, 4)
            np.testing.assert_allclose(g.defect_map, w.defect_map, atol=1e-3)
            assert (g.defect_class, g.reject, g.model_version, g.worker) == (
                w.defect_class, w.reject, w.model_version, w.worker)  # fmt: skip
            assert g.infer_s > 0
            verdicts.add(g.reject)
    assert verdicts == {True, False}, "the frames should exercise both verdicts"

    # Bound memory is the preallocated buffers, sized for max_batch, for every I/O tensor.
    context = trt.engines[0].contexts[0]
    assert context.addresses == {name: buf.data.ptr for name, buf in engine._buffers.items()}
    outputs = [PROBS_NAME, DEFECT_MAP_NAME] + ([SCORE_NAME] if kind == "own_score" else [])
    assert engine.meta.has_score == (kind == "own_score")
    assert set(context.addresses) == {INPUT_NAME, *outputs}
    assert engine._buffers[INPUT_NAME].shape == (8, 3, 32, 32)
    # Preprocessing uploads, execution and the copy back all ran on the engine's one stream ...
    stream = engine._stream
    assert stream.non_blocking and set(cp.uploads) == {stream}
    assert context.executions == [stream.ptr] * 3 and stream.synchronized == 3
    # ... and the results (class_probs, the defect map and any score) came back to the host on it.
    copies = [(engine._buffers[name].data.ptr, stream) for name in outputs]
    assert cp.gets == copies * 3


def test_trt10_builder_sets_fp16_flag_when_the_gpu_has_fast_fp16(models: dict, tmp_path: Path) -> None:
    trt, _ = fakes("10.13.3.9")
    build_engine(models["rgb"][0], tmp_path, max_batch=8, gpu_name="A", trt=trt)
    build_engine(models["rgb"][0], tmp_path, max_batch=8, fp16=False, gpu_name="A", trt=trt)
    fp16, fp32 = trt.builds
    assert fp16["network_flags"] == 0 and fp16["flags"] == ["FP16", "OBEY"] and fp32["flags"] == []
    assert fp16["pools"] == {"WORKSPACE": WORKSPACE_BYTES}
    assert fp16["profile"] == [(1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32)]


def test_trt10_fp16_engine_runs_only_the_backbone_in_fp16(models: dict, tmp_path: Path, caplog) -> None:
    """Nodes named as the export names the backbone may run in FP16; every other layer with float
    outputs is held to FP32 (the decision's logits and distances); shape arithmetic is left alone."""
    proto = onnx.load(build_tiny_model(tmp_path / "m.onnx", size=32, slow_layers=2, with_score=True))
    trunk = True
    for i, node in enumerate(proto.graph.node):
        trunk = trunk and node.op_type != "GlobalAveragePool"  # the tiny model's trunk, then its heads
        node.name = f"/net{FP16_SCOPE}node{i}" if trunk else f"/net/head/node{i}"  # the scope anywhere in a name
    proto.graph.node.append(onnx.helper.make_node("Shape", ["image"], ["image_shape"], name="/head/shape"))
    model = tmp_path / "named.onnx"
    onnx.save(proto, model)
    trt, _ = fakes("10.13.3.9")
    build_engine(model, tmp_path / "fp16", max_batch=2, gpu_name="A", trt=trt)
    build_engine(model, tmp_path / "fp32", max_batch=2, fp16=False, gpu_name="A", trt=trt)
    fp16, fp32 = trt.builds
    heads = [n.name for n in proto.graph.node if FP16_SCOPE not in n.name and n.op_type != "Shape"]
    assert len(heads) == 7 and sum(FP16_SCOPE in n.name for n in proto.graph.node) == 5
    assert fp16["fp32_layers"] == heads and fp32["fp32_layers"] == []
    assert "runs all in FP32" not in caplog.text
    build_engine(models["rgb"][0], tmp_path / "unnamed", max_batch=2, gpu_name="A", trt=trt)
    assert "no layer is named '/backbone/': the FP16 engine runs all in FP32" in caplog.text


def test_trt11_builder_makes_a_strongly_typed_network_without_precision_flags(models: dict, tmp_path: Path) -> None:
    trt, _ = fakes("11.4.0.106")
    build_engine(models["rgb"][0], tmp_path, max_batch=1, fp16=True, gpu_name="A", trt=trt)
    (build,) = trt.builds
    assert build["network_flags"] == 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert build["flags"] == [] and build["fp32_layers"] == []  # the model's own types decide
    assert build["profile"] == [(1, 3, 32, 32)] * 3  # opt = max_batch // 2, but at least 1


def test_cache_reuses_engines_and_the_key_covers_what_an_engine_depends_on(tmp_path: Path) -> None:
    trt, _ = fakes()
    model = build_tiny_model(tmp_path / "m.onnx", size=32, version="v1")
    first = build_engine(model, tmp_path / "cache", gpu_name="A", trt=trt)
    assert build_engine(model, tmp_path / "cache", gpu_name="A", trt=trt) == first
    assert len(trt.builds) == 1 and first.is_file()
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name]  # no temporary file left
    assert build_engine(model, tmp_path / "cache", gpu_name="B", trt=trt) != first
    build_tiny_model(model, size=32, version="v2")  # same path, new bytes
    assert build_engine(model, tmp_path / "cache", gpu_name="A", trt=trt) != first
    assert len(trt.builds) == 3

    base = engine_cache_key(b"model", "H100", "10.13.3.9", 8, True)
    assert len(base) == 64 and int(base, 16) >= 0
    for changed in [
        engine_cache_key(b"model2", "H100", "10.13.3.9", 8, True),
        engine_cache_key(b"model", "L4", "10.13.3.9", 8, True),
        engine_cache_key(b"model", "H100", "11.4.0.106", 8, True),
        engine_cache_key(b"model", "H100", "10.13.3.9", 4, True),
        engine_cache_key(b"model", "H100", "10.13.3.9", 8, False),
    ]:
        assert changed != base


def test_an_engine_built_the_old_way_is_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    base = engine_cache_key(b"model", "H100", "10.13.3.9", 8, True)
    monkeypatch.setattr("workers.tensorrt_engine.BUILD_RECIPE", 1)
    assert engine_cache_key(b"model", "H100", "10.13.3.9", 8, True) != base


def test_parser_error_is_a_one_line_config_error_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not an onnx model")
    trt, _ = fakes()
    with pytest.raises(ConfigError, match=r"broken\.onnx: TensorRT cannot parse the model: ModelImporter") as err:
        build_engine(bad, tmp_path / "cache", gpu_name="A", trt=trt)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists() and trt.builds == []
    with pytest.raises(ConfigError, match=r"missing\.onnx"):
        build_engine(tmp_path / "missing.onnx", tmp_path / "cache", gpu_name="A", trt=trt)


def test_unloadable_cached_engine_is_a_config_error(models: dict, tmp_path: Path) -> None:
    trt, cp = fakes()
    cached = build_engine(models["rgb"][0], tmp_path, gpu_name=GPU, trt=trt)
    cached.write_bytes(b"corrupt")
    with pytest.raises(ConfigError, match="delete it to rebuild"):
        TensorRTEngine(models["rgb"][0], engine_cache_dir=tmp_path, trt=trt, cp=cp)


def test_bad_input_and_runtime_failure_are_inference_errors(models: dict, tmp_path: Path) -> None:
    model, shape = models["gray_roi"]
    trt, cp = fakes()
    engine = TensorRTEngine(model, engine_cache_dir=tmp_path, max_batch=2, trt=trt, cp=cp)
    frame = np.zeros(shape, np.uint8)
    with pytest.raises(InferenceError, match="exceeds max_batch 2"):
        engine.infer_batch([frame] * 3)
    with pytest.raises(InferenceError, match="expects Mono8"):
        engine.infer_batch([np.zeros((*shape, 3), np.uint8)])
    trt.engines[0].contexts[0].fail = True
    with pytest.raises(InferenceError, match="TensorRT failed: execute_async_v3 failed"):
        engine.infer_batch([frame])


def test_warmup_and_canary(models: dict, tmp_path: Path) -> None:
    trt, cp = fakes()
    engine = TensorRTEngine(models["gray_roi"][0], engine_cache_dir=tmp_path, trt=trt, cp=cp)
    assert engine.warmup(runs=2) > 0
    result, want = engine.canary(), OnnxRuntimeEngine(models["gray_roi"][0]).canary()
    assert (result.defect_class, result.model_version) == (want.defect_class, "g-1")
    assert result.score == pytest.approx(want.score, abs=1e-5)


def test_missing_tensorrt_says_how_to_install(models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    message = r"TensorRT is not installed: pip install 'lineinspect\[gpu\]'"
    with pytest.raises(InferenceError, match=message):
        TensorRTEngine(models["rgb"][0], engine_cache_dir=tmp_path, cp=FakeCupy())
    with pytest.raises(InferenceError, match=message):
        build_engine(models["rgb"][0], tmp_path, gpu_name="A")


# --- the Ray pool's GPU actors (no Ray cluster: only what the pool asks of Ray and of the engine) ---


def test_ray_actor_engine_spec_builds_tensorrt_for_the_pools_batch_size(
    models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("ray")
    from workers.ray_pool import EngineSpec

    trt, cp = fakes()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    model, shape = models["rgb"]
    engine = EngineSpec(kind="tensorrt", engine_cache_dir=str(tmp_path), max_batch=4).build(model, "infer-0@h:1")
    assert isinstance(engine, TensorRTEngine) and (engine.max_batch, engine.name) == (4, "infer-0@h:1")
    assert trt.builds[0]["profile"][2][0] == 4  # the engine is built for the largest batch the pool sends
    results = engine.infer_batch(random_frames(np.random.default_rng(1), 4, shape))
    assert [r.model_version for r in results] == ["c-1"] * 4


def test_ray_pool_passes_gpus_and_spread_to_ray(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from workers import ray_pool

    created: list[tuple[dict[str, Any], tuple[Any, ...]]] = []

    class FakeActorClass:
        def options(self, **options: Any) -> Any:
            return SimpleNamespace(remote=lambda *args: created.append((options, args)) or object())

    monkeypatch.setattr(ray_pool, "InferenceActor", FakeActorClass())
    pool = ray_pool.RayInferencePool(
        "m.onnx", num_actors=2, engine="tensorrt", num_gpus=0.5, engine_cache_dir=tmp_path, spread=True, max_batch=6
    )
    slots = pool._create_slots("m.onnx")
    assert [s.name for s in slots] == ["infer-0", "infer-1"]
    (options, (path, name, spec)), _ = created
    assert options == {"num_cpus": 1, "num_gpus": 0.5, "max_restarts": -1, "max_task_retries": 0,
                       "max_concurrency": 1, "scheduling_strategy": "SPREAD"}  # fmt: skip
    assert (path, name, spec.kind, spec.max_batch, spec.engine_cache_dir) == (
        "m.onnx", "infer-0", "tensorrt", 6, str(tmp_path))  # fmt: skip
    pool._generation = 1  # a swapped-in set of actors is told apart by name
    assert [s.name for s in pool._create_slots("n.onnx")] == ["infer-0-g1", "infer-1-g1"]


@pytest.mark.parametrize(
    "kwargs", [{"engine": "tensorrt", "num_gpus": 1}, {"engine": "tensorrt", "engine_cache_dir": "c"}, {"engine": "x"}]
)
def test_ray_pool_refuses_an_engine_it_cannot_build(kwargs: dict[str, Any]) -> None:
    pytest.importorskip("ray")
    from workers.ray_pool import RayInferencePool

    with pytest.raises(ValueError, match="engine"):
        RayInferencePool("m.onnx", **kwargs)
