#!/usr/bin/env bash
# GPU smoke check: CuPy preprocessing parity and speed; TensorRT engine parity and latency where
# TensorRT is installed. Run from anywhere on a GPU machine; PYTHON picks the interpreter.
# `timeout` keeps a hung CUDA call from holding the machine: the whole check takes well under 3 min.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec timeout 180 "${PYTHON:-python}" tests/gpu/check_gpu.py "$@"
