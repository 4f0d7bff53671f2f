"""A synchronous ONNX Runtime engine: frames in, `InferenceResult`s out.

Responsible for: opening and validating the model, tuning the session for low latency on few cores,
preprocessing, running, scoring (score = the model's own `score` output where it has one, else
1 - P(good); NaN counts as 1; class = argmax; reject = score >= threshold), the per-frame defect
map (float16) and timing. Not responsible for: concurrency, deadlines, queueing or health — the
pools (`local_pool`, `ray_pool`) own those. Plain class, usable without Ray or asyncio.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from controller.errors import InferenceError
from controller.ports import Image, InferenceResult
from workers.image_stats import image_stats
from workers.model_meta import (
    DEFECT_MAP_NAME,
    INPUT_NAME,
    PROBS_NAME,
    SCORE_NAME,
    ModelMeta,
    meta_from_session,
    open_session,
)
from workers.preprocess import preprocess


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """Options for one frame at a time on a small CPU budget."""
    so = ort.SessionOptions()
    # One op at a time: with batch 1 there is no parallelism between ops worth a thread handoff.
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = intra_op_threads
    so.inter_op_num_threads = 1
    # Spinning threads burn the cores the event loop, camera and PLC I/O need between frames, and
    # on 2 cores they fight each other; blocking costs a few µs of wake-up instead.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3  # errors only: ORT's warnings go to stderr, not our logs
    return so


def canary_frame(meta: ModelMeta) -> Image:
    """A mid-gray frame just large enough for the model's ROI (or input size): the health probe."""
    if meta.roi is not None:
        x, y, w, h = meta.roi
        height, width = y + h, x + w
    else:
        height, width = meta.height, meta.width
    shape = (height, width) if meta.color == "gray" else (height, width, 3)
    return np.full(shape, 128, dtype=np.uint8)


class CanaryWarmup:
    """Warm-up and health check shared by every engine: both run the model's canary frame."""

    meta: ModelMeta

    def infer_batch(self, frames: Sequence[Image]) -> list[InferenceResult]:
        raise NotImplementedError

    def warmup(self, runs: int = 3) -> float:
        """Run the canary frame `runs` times (the first runs allocate memory and pick kernels);
        returns the seconds the last run took."""
        frame = canary_frame(self.meta)
        elapsed = 0.0
        for _ in range(max(1, runs)):
            t0 = time.perf_counter()
            self.infer_batch([frame])
            elapsed = time.perf_counter() - t0
        return elapsed

    def canary(self) -> InferenceResult:
        """One inference of the canary frame (used by pools to prove a worker is alive and warm)."""
        return self.infer_batch([canary_frame(self.meta)])[0]


class OnnxRuntimeEngine(CanaryWarmup):
    """One ONNX Runtime session and the model's metadata. `infer_batch` is safe to call from several
    threads at once (ONNX Runtime sessions are); everything else is set at construction."""

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        *,
        intra_op_threads: int = 1,
        providers: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        """Open and validate the model; raises ConfigError (missing file, bad metadata or I/O)."""
        self.model_path = os.fspath(model_path)
        self._session = open_session(
            model_path, session_options(intra_op_threads), list(providers) if providers else None
        )
        self.meta: ModelMeta = meta_from_session(self._session, self.model_path)
        self._outputs = [PROBS_NAME, DEFECT_MAP_NAME] + ([SCORE_NAME] if self.meta.has_score else [])
        self.name: str = name or f"onnxruntime@{socket.gethostname()}:{os.getpid()}"

    def infer_batch(self, frames: Sequence[Image]) -> list[InferenceResult]:
        """Infer same-shaped frames in one run. Raises InferenceError for frames the model cannot
        take (colour or ROI mismatch) or a runtime failure."""
        t0 = time.perf_counter()
        try:
            x = preprocess(frames, self.meta)
            probs, maps, *own_scores = self._session.run(self._outputs, {INPUT_NAME: x})
        except ValueError as exc:
            raise InferenceError(f"{self.name}: {exc}") from exc
        except Exception as exc:  # ORT raises its own private exception types
            raise InferenceError(f"{self.name}: ONNX Runtime failed: {exc}") from exc
        per_frame_s = (time.perf_counter() - t0) / len(frames)
        return score(probs, maps, self.meta, per_frame_s, self.name, own_scores[0] if own_scores else None,
                     image_stats(frames, self.meta))  # fmt: skip


def score(
    probs: np.ndarray,
    maps: np.ndarray,
    meta: ModelMeta,
    per_frame_s: float,
    worker: str,
    model_scores: np.ndarray | None = None,
    stats: Sequence[tuple[float, float]] | None = None,
) -> list[InferenceResult]:
    """Results from a batch's class_probs (N, classes), defect_map (N, 1, h, w) and, where the model
    has one, its own score output (N,); shared with TensorRTEngine, because the two engines must
    give the same verdicts. Without a score output, score = 1 - P(good). `stats`: each frame's
    (brightness, focus) for drift (workers/image_stats.py)."""
    raw = 1.0 - probs[:, 0] if model_scores is None else model_scores
    # A NaN score (a broken model or input) must reject, never pass: it compares False with anything.
    scores = np.where(np.isnan(raw), 1.0, np.maximum(0.0, raw))
    classes = np.argmax(probs, axis=1)
    small = maps[:, 0].astype(np.float16)
    return [
        InferenceResult(
            defect_class=int(c),
            score=float(s),
            reject=bool(s >= meta.threshold),
            model_version=meta.version,
            infer_s=per_frame_s,
            worker=worker,
            defect_map=m,
            threshold=meta.threshold,
            brightness=st[0] if st else None,
            focus=st[1] if st else None,
        )
        for c, s, m, st in zip(classes, scores, small, stats or [None] * len(scores), strict=True)
    ]
