"""A synchronous TensorRT engine on one GPU: frames in, `InferenceResult`s out, like `OnnxRuntimeEngine`.

Responsible for: building a TensorRT engine from the ONNX model once per (model, GPU, TensorRT
release, max batch, precision) and caching it on disk; preprocessing on the GPU with CuPy (the same
`preprocess` code as the CPU engine); running with preallocated device buffers on one CUDA stream;
copying class_probs and the defect map back; scoring exactly as the ONNX engine does. Not
responsible for: concurrency beyond serialising calls, deadlines, queueing or health (the pools own
those), or making a model FP16 on TensorRT 11 (there, precision comes from the ONNX model's own
types).

`tensorrt` and `cupy` are imported lazily (the `gpu` extra); tests inject fakes through `trt=`/`cp=`.
Engine files are executable GPU code: the cache directory must only ever hold engines built here.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from controller.errors import ConfigError, InferenceError
from controller.ports import Image, InferenceResult
from workers.image_stats import image_stats
from workers.model_meta import (
    DEFECT_MAP_NAME,
    FP16_SCOPE,
    INPUT_NAME,
    PROBS_NAME,
    SCORE_NAME,
    ModelMeta,
    load_model_meta,
)
from workers.onnx_engine import CanaryWarmup, score
from workers.preprocess import preprocess

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 1 << 30
"""Scratch memory TensorRT may use per layer while building and running; 1 GiB is ample for a
classifier and bounds what the builder may take from a GPU that other processes share."""


BUILD_RECIPE = 2
"""Part of the engine cache key: bumped when the build itself changes, so no engine built the old way
is reused (2: FP16 for the backbone only)."""


def _require(module: str, label: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise InferenceError(f"{label} is not installed: pip install 'lineinspect[gpu]'") from exc


@functools.cache
def _logger(trt: ModuleType) -> Any:
    # TensorRT keeps one process-wide logger; a second, different one only earns a warning.
    return trt.Logger(trt.Logger.WARNING)


def _gpu_name(cp: ModuleType, device: int) -> str:
    name = cp.cuda.runtime.getDeviceProperties(device)["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def engine_cache_key(onnx_bytes: bytes, gpu_name: str, trt_version: str, max_batch: int, fp16: bool) -> str:
    """sha256 over everything a serialized engine depends on: an engine only runs on the GPU model
    and TensorRT release that built it, with the batch range and precision it was built for, the
    way BUILD_RECIPE builds it."""
    model_digest = hashlib.sha256(onnx_bytes).hexdigest()
    # Hash a JSON list, not a concatenation, so no two different inputs can give the same stream.
    fields = json.dumps([model_digest, gpu_name, trt_version, max_batch, fp16, BUILD_RECIPE])
    return hashlib.sha256(fields.encode()).hexdigest()


def build_engine(
    onnx_path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    max_batch: int = 8,
    fp16: bool = True,
    gpu_name: str | None = None,
    trt: ModuleType | None = None,
) -> Path:
    """Return the path of a serialized engine for `onnx_path`, building it only when the cache has
    none for this model, GPU (`gpu_name`, default: the current CuPy device's), TensorRT release,
    `max_batch` and `fp16`. Raises ConfigError when the model cannot be read, parsed or built."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    trt = trt or _require("tensorrt", "TensorRT")
    path = Path(onnx_path)
    try:
        onnx_bytes = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: model file cannot be read ({exc.strerror})") from exc
    if gpu_name is None:
        cp = _require("cupy", "CuPy")
        gpu_name = _gpu_name(cp, cp.cuda.runtime.getDevice())
    key = engine_cache_key(onnx_bytes, gpu_name, trt.__version__, max_batch, fp16)
    engine_path = Path(cache_dir) / f"{path.stem}-{key[:16]}.engine"
    if engine_path.is_file():
        return engine_path
    plan = _serialize(trt, path, onnx_bytes, max_batch, fp16)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: a crash mid-write must not leave a truncated engine that later runs reuse.
    tmp = engine_path.with_name(f"{engine_path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(plan)
    os.replace(tmp, engine_path)
    return engine_path


def _serialize(trt: ModuleType, path: Path, onnx_bytes: bytes, max_batch: int, fp16: bool) -> Any:
    logger = _logger(trt)
    builder = trt.Builder(logger)
    # TensorRT 11 removed the precision builder flags and always builds strongly typed (it still
    # accepts, and ignores, STRONGLY_TYPED): FP16 then happens only where the ONNX model itself uses
    # float16 (e.g. converted with ModelOpt AutoCast), and `fp16` only changes the cache key.
    strongly_typed = not hasattr(trt.BuilderFlag, "FP16")
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    # The path lets the parser find weights stored next to the model (ONNX external data).
    if not parser.parse(onnx_bytes, str(path)):
        first = parser.get_error(0).desc() if parser.num_errors else "no error reported"
        raise ConfigError(_one_line(f"{path}: TensorRT cannot parse the model: {first}"))
    meta = load_model_meta(path)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16 and not strongly_typed and builder.platform_has_fast_fp16:
        config.set_flag(trt.BuilderFlag.FP16)
        free, held = _fp32_outside_backbone(trt, network, config)
        if not free:
            log.warning("%s: no layer is named %r: the FP16 engine runs all in FP32", path, FP16_SCOPE)
        log.info("%s: %d layers may run in FP16, %d held to FP32", path, free, held)
    # One profile over the whole batch range; kernels are tuned for `opt`, the typical pool batch.
    chw = (3, meta.height, meta.width)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, (1, *chw), (max(1, max_batch // 2), *chw), (max_batch, *chw))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ConfigError(f"{path}: TensorRT could not build an engine (its log says why)")
    return plan


def _fp32_outside_backbone(trt: ModuleType, network: Any, config: Any) -> tuple[int, int]:
    """FP16 for the backbone only (FP16_SCOPE): every other layer with float outputs is held to FP32.
    The decision works on logits and log distances that FP16 would round (1 - P(good) moves in 5e-4
    steps near 1, a calibrated 1 % cut lives in that tail) or overflow (squared distances past 65504),
    and those layers cost little. A model without FP16_SCOPE names runs all in FP32. Returns (layers
    free to run in FP16, layers held to FP32)."""
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
    free = held = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outputs = range(layer.num_outputs)
        if FP16_SCOPE in layer.name:
            free += 1
        elif all(layer.get_output(j).dtype == trt.float32 for j in outputs):  # not shape arithmetic
            layer.precision = trt.float32
            for j in outputs:
                layer.set_output_type(j, trt.float32)
            held += 1
    return free, held


class TensorRTEngine(CanaryWarmup):
    """One TensorRT execution context on one GPU, with device buffers for `max_batch` frames.

    `infer_batch` may be called from several threads; calls are serialised, because they share one
    execution context and one set of buffers.
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        engine_cache_dir: str | os.PathLike[str],
        max_batch: int = 8,
        device: int = 0,
        name: str | None = None,
        trt: ModuleType | None = None,
        cp: ModuleType | None = None,
    ) -> None:
        """Validate the model, build or reuse its engine and allocate buffers. Raises ConfigError
        (invalid model, TensorRT cannot build it) or InferenceError (TensorRT or CuPy missing)."""
        self._trt = trt = trt or _require("tensorrt", "TensorRT")
        self._cp = cp = cp or _require("cupy", "CuPy")
        self.model_path = os.fspath(model_path)
        self.meta: ModelMeta = load_model_meta(model_path)
        self.max_batch = max_batch
        self.device = device
        self.name: str = name or f"tensorrt@{socket.gethostname()}:{os.getpid()}"
        self._lock = threading.Lock()
        with cp.cuda.Device(device):
            plan = build_engine(
                model_path, engine_cache_dir, max_batch=max_batch, gpu_name=_gpu_name(cp, device), trt=trt
            )
            # Kept as attributes: the runtime must outlive the engine it deserialized.
            self._runtime = trt.Runtime(_logger(trt))
            self._engine = self._runtime.deserialize_cuda_engine(plan.read_bytes())
            if self._engine is None:
                raise ConfigError(f"{plan}: TensorRT cannot load this cached engine; delete it to rebuild")
            self._context = self._engine.create_execution_context()
            self._stream = cp.cuda.Stream(non_blocking=True)
            # Size every buffer at the largest batch; TensorRT infers the output shapes from it.
            self._context.set_input_shape(INPUT_NAME, (max_batch, 3, self.meta.height, self.meta.width))
            self._buffers: dict[str, Any] = {}
            for i in range(self._engine.num_io_tensors):
                tensor = self._engine.get_tensor_name(i)
                shape = tuple(self._context.get_tensor_shape(tensor))
                dtype = trt.nptype(self._engine.get_tensor_dtype(tensor))
                self._buffers[tensor] = cp.empty(shape, dtype=dtype)
                # Bound once: the buffers never move, and a smaller batch uses their leading rows.
                self._context.set_tensor_address(tensor, int(self._buffers[tensor].data.ptr))
        inputs = [t for t in self._buffers if self._engine.get_tensor_mode(t) == trt.TensorIOMode.INPUT]
        expected = {PROBS_NAME, DEFECT_MAP_NAME} | ({SCORE_NAME} if self.meta.has_score else set())
        if inputs != [INPUT_NAME] or not expected <= set(self._buffers):
            raise ConfigError(f"{plan}: engine I/O {sorted(self._buffers)} does not match the model contract")

    def infer_batch(self, frames: Sequence[Image]) -> list[InferenceResult]:
        """Infer up to `max_batch` same-shaped frames in one run. Raises InferenceError for frames
        the model cannot take (colour or ROI mismatch, too many) or a GPU failure."""
        if len(frames) > self.max_batch:
            raise InferenceError(f"{self.name}: batch of {len(frames)} exceeds max_batch {self.max_batch}")
        t0 = time.perf_counter()
        try:
            with self._lock:
                probs, maps, own_scores = self._run(frames)
        except ValueError as exc:
            raise InferenceError(f"{self.name}: {exc}") from exc
        except Exception as exc:  # CuPy and TensorRT raise their own exception types
            raise InferenceError(f"{self.name}: TensorRT failed: {exc}") from exc
        return score(probs, maps, self.meta, (time.perf_counter() - t0) / len(frames), self.name, own_scores,
                     image_stats(frames, self.meta))  # fmt: skip

    def _run(self, frames: Sequence[Image]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        cp = self._cp
        # Everything on our stream: CuPy work on the legacy default stream would not be ordered
        # before TensorRT's kernels on a non-blocking stream.
        with cp.cuda.Device(self.device), self._stream:
            x = preprocess(frames, self.meta, xp=cp)
            n = x.shape[0]
            self._buffers[INPUT_NAME][:n] = x
            self._context.set_input_shape(INPUT_NAME, x.shape)
            if not self._context.execute_async_v3(self._stream.ptr):
                raise RuntimeError("execute_async_v3 failed (see the TensorRT log)")
            # The outputs are results; copied as float32 (a map is a few KB, so converting it to
            # float16 on the GPU first would save nothing measurable).
            probs = self._buffers[PROBS_NAME][:n].get(stream=self._stream)
            maps = self._buffers[DEFECT_MAP_NAME][:n].get(stream=self._stream)
            own_scores = self._buffers[SCORE_NAME][:n].get(stream=self._stream) if self.meta.has_score else None
            self._stream.synchronize()
        return probs, maps, own_scores
