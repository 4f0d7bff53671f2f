"""The recipes a line can run: every installed model, with what a person needs to choose one.

A recipes folder holds one folder per recipe (its id), each with a `model.onnx` exported by
`lineinspect train` and, where it was evaluated, `evaluation/report.json`. The version and the
training data's hash come from the model's own metadata; detection and false-reject rates from the
evaluation report. A folder whose model does not load is listed with why, never silently skipped.

Not here: switching recipes (the controller, through its inference service's hot swap).
"""

from __future__ import annotations

import json
from pathlib import Path

from controller.errors import ConfigError
from controller.status import Recipe
from workers.model_meta import open_session

MODEL_FILE = "model.onnx"


def scan_recipes(folder: Path) -> tuple[Recipe, ...]:
    if not folder.is_dir():
        return ()
    return tuple(read_recipe(model.parent) for model in sorted(folder.glob(f"*/{MODEL_FILE}")))


def read_recipe(folder: Path) -> Recipe:
    model = folder / MODEL_FILE
    try:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # metadata only
        options.log_severity_level = 3
        meta = open_session(model, options).get_modelmeta().custom_metadata_map
    except ConfigError as exc:
        return Recipe(folder.name, str(model.resolve()), problem=str(exc).splitlines()[0][:200])
    detection = frr = None
    try:
        report = json.loads((folder / "evaluation" / "report.json").read_text())
        detection, frr = float(report["detection_rate"]), float(report["false_reject_rate"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not evaluated: shown as such
    return Recipe(folder.name, str(model.resolve()), version=meta.get("lineinspect.version", ""),
                  train_data_hash=meta.get("lineinspect.train_data_hash", ""), detection_rate=detection,
                  false_reject_rate=frr)  # fmt: skip
