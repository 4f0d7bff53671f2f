"""Inference workers: everything that turns a camera image into an `InferenceResult`.

Modules, from the bottom up:

- `model_meta`: reads and validates the model artifact's metadata (`ModelMeta`).
- `preprocess`: the one image → tensor transform (NumPy or CuPy).
- `onnx_engine`: a plain, synchronous ONNX Runtime engine (no asyncio, no Ray).
- `local_pool`: `InferenceService` on threads in this process (machines without Ray).
- `ray_pool`: `InferenceService` on Ray actors (plain actor calls, or one compiled graph each).
- `ray_compiled`: one Ray Compiled Graph per actor and the thread that drives it.
- `bench`, `bench_dispatch`: the engine benchmark and the dispatch benchmark (local thread,
  plain actor call, compiled graph).
- `tiny_model`: builds a small conforming ONNX model for tests and smoke checks (needs `onnx`).

This package's `__init__` imports nothing on purpose: importing `workers.local_pool` must not
pull in Ray, which some images (the GPU test machine) do not have.
"""
