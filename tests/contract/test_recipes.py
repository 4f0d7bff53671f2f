"""Recipes: the installed models a line can switch to, found on disk (workers/recipes.py) and
switched to by the controller's `PrepareRecipe` through a real inference service's hot swap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from controller.app import LineController, Timing
from controller.core.frame_matching import MatchWindow
from controller.core.tracking import Margins
from controller.operator import Action
from sim.memory import SimMemoryLine
from workers.local_pool import LocalInferencePool
from workers.recipes import scan_recipes
from workers.tiny_model import build_tiny_model


def _recipes(tmp: Path) -> Path:
    folder = tmp / "recipes"
    for name, version in (("bolt-m8", "bolt-m8-v1"), ("bolt-m10", "bolt-m10-v3")):
        (folder / name).mkdir(parents=True)
        build_tiny_model(folder / name / "model.onnx", version=version)
    (folder / "bolt-m10" / "evaluation").mkdir()
    (folder / "bolt-m10" / "evaluation" / "report.json").write_text(
        json.dumps({"detection_rate": 0.991, "false_reject_rate": 0.008}))  # fmt: skip
    (folder / "broken").mkdir()
    (folder / "broken" / "model.onnx").write_bytes(b"not a model")
    return folder


def test_every_installed_model_is_a_recipe_with_what_a_person_chooses_by(tmp_path: Path) -> None:
    recipes = {r.id: r for r in scan_recipes(_recipes(tmp_path))}
    assert set(recipes) == {"bolt-m8", "bolt-m10", "broken"}
    assert recipes["bolt-m10"].version == "bolt-m10-v3"
    assert recipes["bolt-m10"].describe().startswith("bolt-m10: bolt-m10-v3, detects 99.1% at 0.80% false rejects")
    assert "not evaluated" in recipes["bolt-m8"].describe()
    assert recipes["broken"].problem and recipes["broken"].describe().startswith("broken: unusable:")
    assert scan_recipes(tmp_path / "none") == ()


async def test_prepare_recipe_switches_the_serving_model_or_says_why_not(tmp_path: Path) -> None:
    folder = _recipes(tmp_path)
    recipes = scan_recipes(folder)
    line = SimMemoryLine(seed=1, parts=1)
    async with LocalInferencePool(folder / "bolt-m8" / "model.onnx") as inference:
        controller = LineController(
            line.plc, line.camera, inference, line.journal, margins=Margins(write_s=0.004, plc_cycle_s=0.002),
            window=MatchWindow(0.002, 0.015), timing=Timing(), recipes=recipes,
        )  # fmt: skip
        who = {"user": "eng", "role": "engineer", "peer": "10.1.1.1:4000"}
        assert await controller.operate(Action.PREPARE_RECIPE, "bolt-m10", **who) == (
            True, "recipe bolt-m10 (bolt-m10-v3) serving from the next part")  # fmt: skip
        frame = np.zeros((160, 160), np.uint8)
        assert (await inference.infer(frame, deadline=float("inf"))).model_version == "bolt-m10-v3"
        assert controller.status().active_recipe == "bolt-m10"
        refused = [await controller.operate(Action.PREPARE_RECIPE, r, **who) for r in ("bolt-m10", "nope", "broken")]
        assert [ok for ok, _ in refused] == [False, False, False]
        assert "already serving" in refused[0][1] and "no recipe 'nope'" in refused[1][1]
        assert "cannot be used" in refused[2][1]
    assert [(a.action, a.argument, a.result) for a in line.journal.audit] == [
        ("prepare_recipe", "bolt-m10", "done"), ("prepare_recipe", "bolt-m10", "refused"),
        ("prepare_recipe", "nope", "refused"), ("prepare_recipe", "broken", "refused"),
    ]
