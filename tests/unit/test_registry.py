"""The model registry: registration, the promotion gate, rollback, the history — and a controller
following it between parts, audited."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from controller import registry as r


def run_dir(tmp_path: Path, name: str) -> Path:
    run = tmp_path / "runs" / name
    run.mkdir(parents=True)
    (run / "model.onnx").write_bytes(b"onnx " + name.encode())
    (run / "MODEL_CARD.md").write_text(f"# {name}\n")
    return run


def started_on(reg: Path, product: str) -> tuple[str, str]:
    """What bootstrap hands the controller: the active version (and when) the line starts on."""
    active = r.read_active(reg, product)
    assert active is not None
    return active.version, active.utc


def compared(reg: Path, version: str, against: str, promotable: bool, reasons: tuple[str, ...] = ()) -> None:
    entry = r.read_entry(reg, "p", version)
    r.write_entry(reg, "p", version, {**entry, "candidate": {"against": against, "promotable": promotable,
                                                              "reasons": list(reasons)}})  # fmt: skip


def test_promotion_needs_a_passing_comparison_with_the_active_version_and_rollback_goes_back(tmp_path: Path) -> None:
    reg = tmp_path / "registry"
    r.register(reg, "p", run_dir(tmp_path, "v1"), "v1", {"train_data_hash": "h1"}, by="ann")
    assert r.read_active(reg, "p").version == "v1"  # type: ignore[union-attr]  # the first one runs
    r.register(reg, "p", run_dir(tmp_path, "v2"), "v2", {"train_data_hash": "h2"}, by="ann")
    assert (reg / "p" / "v2" / "model.onnx").read_bytes() == b"onnx v2"
    with pytest.raises(r.RegistryError, match="already in the registry"):
        r.register(reg, "p", run_dir(tmp_path, "v2b"), "v2", {}, by="ann")
    with pytest.raises(r.RegistryError, match="never compared"):
        r.promote(reg, "p", "v2", by="bob")
    compared(reg, "v2", "v1", False, ("held-out detection 90.0% < the active model's 95.0%",))
    with pytest.raises(r.RegistryError, match="may not be promoted: held-out detection"):
        r.promote(reg, "p", "v2", by="bob")
    compared(reg, "v2", "v0", True)
    with pytest.raises(r.RegistryError, match="compared with v0, but v1 is active"):
        r.promote(reg, "p", "v2", by="bob")
    compared(reg, "v2", "v1", True)
    active = r.promote(reg, "p", "v2", by="bob")
    assert (active.version, active.by, active.action, active.previous) == ("v2", "bob", "promote", ("v1",))
    assert active.model == reg / "p" / "v2" / "model.onnx"
    back = r.rollback(reg, "p", by="carl")
    assert (back.version, back.action, back.previous) == ("v1", "rollback", ())
    with pytest.raises(r.RegistryError, match="nothing to roll back to"):
        r.rollback(reg, "p", by="carl")
    events = [(e["event"], e["version"], e["by"]) for e in r.history(reg, "p")]
    assert events == [("register", "v1", "ann"), ("first", "v1", "ann"), ("register", "v2", "ann"),
                      ("promote_refused", "v2", "bob"), ("promote_refused", "v2", "bob"),
                      ("promote_refused", "v2", "bob"), ("promote", "v2", "bob"),
                      ("rollback", "v1", "carl")]  # fmt: skip
    assert not list((reg / "p").glob("*.tmp"))  # ACTIVE.json replaced atomically
    assert json.loads((reg / "p" / "ACTIVE.json").read_text())["version"] == "v1"


def test_a_controller_follows_promotion_and_rollback_between_parts_and_audits_them(tmp_path: Path) -> None:
    """The line keeps running while the registry's active version changes: each change is a hot
    swap (the next parts carry the new version), audited with who made it; a version whose model
    is missing is refused and the serving one stays."""
    from controller import app
    from sim.memory import SimMemoryLine, assert_safe, controller_for, running
    from sim.virtual_time import run_virtual

    reg = tmp_path / "registry"
    for v in ("v1", "v2", "v3"):
        r.register(reg, "p", run_dir(tmp_path, v), v, {}, by="ann")
    (reg / "p" / "v3" / "model.onnx").unlink()  # broken install
    for v in ("v2", "v3"):
        compared(reg, v, "v1", True)
    line = SimMemoryLine(seed=11, parts=500)

    async def main() -> None:
        controller = controller_for(line, registry=(reg, "p"))
        controller.registry_seen = started_on(reg, "p")
        async with running(controller):
            run = asyncio.create_task(line.run())
            await asyncio.sleep(5.0)
            r.promote(reg, "p", "v2", by="bob")
            await asyncio.sleep(5.0)
            compared(reg, "v3", "v2", True)
            r.promote(reg, "p", "v3", by="bob")  # its model file is gone: refused by the line
            await asyncio.sleep(5.0)
            r.rollback(reg, "p", by="carl")  # v3 -> v2 in the registry; the line was on v2 already
            r.rollback(reg, "p", by="carl")  # -> v1
            await asyncio.sleep(5.0)
            await run

    app.REGISTRY_POLL_S = 0.5
    try:
        run_virtual(main())
    finally:
        app.REGISTRY_POLL_S = 2.0
    assert_safe(line.judge())
    versions = [rec.model_version for rec in sorted(line.journal.parts.values(), key=lambda x: x.seq)
                if rec.model_version]  # fmt: skip
    runs = [v for i, v in enumerate(versions) if i == 0 or versions[i - 1] != v]
    assert runs == ["memory-1", "v2", "v1"], runs  # swapped between parts, never back and forth
    audit = [(a.user, a.action, a.argument, a.result) for a in line.journal.audit]
    assert audit == [("bob", "promote", "v2", "done"), ("bob", "promote", "v3", "refused"),
                     ("carl", "rollback", "v1", "done")], audit  # fmt: skip


def test_a_product_changeover_at_the_plc_swaps_to_that_products_model_and_no_part_meets_the_wrong_one(
    tmp_path: Path,
) -> None:
    """The PLC's product id changes mid-run: the controller takes that product's active version from
    the registry; until it serves, the controller is not ready (those parts fail safe), so no part
    of the new product is judged by the old product's model. The changeover is audited."""
    from sim.memory import SimMemoryLine, assert_safe, controller_for, running
    from sim.virtual_time import run_virtual

    reg = tmp_path / "registry"
    r.register(reg, "housing-a", run_dir(tmp_path, "a1"), "a1", {}, by="ann")
    r.register(reg, "housing-b", run_dir(tmp_path, "b1"), "b1", {}, by="ann")
    line = SimMemoryLine(seed=12, parts=400)
    line.program.product_id = 1
    switched: list[float] = []

    async def main() -> None:
        controller = controller_for(line, registry=(reg, "housing-a"), products={1: "housing-a", 2: "housing-b"})
        controller.registry_seen = started_on(reg, "housing-a")  # as bootstrap: the line starts on it
        async with running(controller):
            run = asyncio.create_task(line.run())
            await asyncio.sleep(4.0)
            line.program.product_id = 2
            switched.append(asyncio.get_running_loop().time())
            await run

    run_virtual(main())
    assert_safe(line.judge())
    parts = sorted(line.journal.parts.values(), key=lambda x: x.seq)
    versions = [p.model_version for p in parts if p.model_version]
    assert versions[0] == "memory-1" and versions[-1] == "b1" and "a1" not in versions
    after = [p for p in parts if p.t_trigger_seen is not None and p.t_trigger_seen > switched[0] + 0.01]
    assert after and all(p.model_version in ("b1", None) for p in after)  # never the old product's model
    assert [(a.user, a.action, a.argument, a.result) for a in line.journal.audit] == [
        ("plc", "product", "housing-a", "done"),  # the product the PLC names at start: the one configured
        ("plc", "product", "housing-b", "done"), ("ann", "first", "b1", "done")]  # b1: housing-b's first version
    reasons = {p.reason for p in after if p.model_version is None}
    assert reasons <= {"not_ready", "plc_rejected"}, reasons  # the changeover's parts fail safe


def test_a_changeover_back_before_the_new_model_loaded_waits_for_the_right_model_and_an_unknown_product_is_not_ready(
    tmp_path: Path,
) -> None:
    """A→B, and back to A while B's model still loads: the line is ready again only with A's model
    serving, never with B's judging A's parts. A product id the line has no model for: not ready."""
    from sim.memory import SimMemoryLine, assert_safe, controller_for, running
    from sim.virtual_time import run_virtual

    reg = tmp_path / "registry"
    r.register(reg, "housing-a", run_dir(tmp_path, "a1"), "a1", {}, by="ann")
    r.register(reg, "housing-b", run_dir(tmp_path, "b1"), "b1", {}, by="ann")
    line = SimMemoryLine(seed=13, parts=600)
    line.inference.load_s = 1.0
    line.program.product_id = 1
    marks: dict[str, float] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        controller = controller_for(line, registry=(reg, "housing-a"), products={1: "housing-a", 2: "housing-b"})
        controller.registry_seen = started_on(reg, "housing-a")  # as bootstrap: the line starts on it
        async with running(controller):
            run = asyncio.create_task(line.run())
            await asyncio.sleep(3.0)
            line.program.product_id = 2
            marks["b"] = loop.time()
            await asyncio.sleep(0.3)  # b1 still loading
            line.program.product_id = 1
            marks["a_again"] = loop.time()
            await asyncio.sleep(4.0)
            line.program.product_id = 9  # no model for it
            marks["unknown"] = loop.time()
            await asyncio.sleep(2.0)
            marks["unknown_end"] = loop.time()
            line.program.product_id = 1
            await run

    run_virtual(main())
    assert_safe(line.judge())
    parts = sorted(line.journal.parts.values(), key=lambda x: x.seq)

    def seen(p: object) -> float:
        return float(getattr(p, "t_trigger_seen", None) or 0.0)

    after_back = [p for p in parts if seen(p) > marks["a_again"] + 0.01 and p.model_version]
    assert after_back and all(p.model_version == "a1" for p in after_back), {p.model_version for p in after_back}
    unknown = [p for p in parts if marks["unknown"] + 0.01 < seen(p) < marks["unknown_end"]]
    assert unknown and all(p.outcome == "failsafe" for p in unknown)


def test_an_engineer_picks_the_product_at_the_hmi_and_the_line_changes_over_to_its_active_version(
    tmp_path: Path,
) -> None:
    """PrepareRecipe with a registry: a recipe is a product, run at its active version; the parts
    meanwhile fail safe (not ready), a product without an active version is refused, audited."""
    from controller.operator import Action
    from sim.memory import SimMemoryLine, assert_safe, controller_for, running
    from sim.virtual_time import run_virtual

    reg = tmp_path / "registry"
    r.register(reg, "housing-a", run_dir(tmp_path, "a1"), "a1", {}, by="ann")
    r.register(reg, "housing-b", run_dir(tmp_path, "b1"), "b1", {}, by="ann")
    line = SimMemoryLine(seed=14, parts=300)
    answers: list[tuple[bool, str]] = []
    picked: list[float] = []

    async def main() -> None:
        controller = controller_for(line, registry=(reg, "housing-a"))
        controller.registry_seen = started_on(reg, "housing-a")  # as bootstrap: the line starts on it
        eve = {"user": "eve", "role": "engineer", "peer": "10.0.0.8:5001"}
        async with running(controller):
            run = asyncio.create_task(line.run())
            await asyncio.sleep(3.0)
            answers.append(await controller.operate(Action.PREPARE_RECIPE, "housing-c", **eve))
            answers.append(await controller.operate(Action.PREPARE_RECIPE, "housing-b", **eve))
            # b1 serves from here; parts seen before (the refusal's audit write lets virtual time run on) stay on a1.
            picked.append(asyncio.get_running_loop().time())
            answers.append(await controller.operate(Action.PREPARE_RECIPE, "housing-b", **eve))
            await run

    run_virtual(main())
    assert_safe(line.judge())
    assert [ok for ok, _ in answers] == [False, True, False], answers
    assert "no product 'housing-c'" in answers[0][1] and "b1 serving" in answers[1][1]
    assert "already serving" in answers[2][1]
    after = [p for p in line.journal.parts.values() if (p.t_trigger_seen or 0.0) > picked[0] + 0.01 and p.model_version]
    assert after and all(p.model_version == "b1" for p in after)
    audit = [(a.user, a.action, a.argument, a.result) for a in line.journal.audit]
    assert audit[0] == ("eve", "prepare_recipe", "housing-c", "refused") and ("ann", "first", "b1", "done") in audit
