"""Training -> ONNX export -> evaluation on a tiny synthetic set, and the shipped model's contract and sanity."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from models import export, synthetic
from models.net import preprocess
from models.train import dataset_hash, load_checkpoint, train
from workers.model_meta import FP16_SCOPE

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "shipped" / "model.onnx"
METADATA_KEYS = {
    "lineinspect.classes",
    "lineinspect.input",
    "lineinspect.roi",
    "lineinspect.threshold",
    "lineinspect.version",
    "lineinspect.train_data_hash",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    data = synthetic.make_dataset(root / "data", per_class=5, seed=5)
    result = train(data, root / "run", epochs=1, seed=3, batch_size=8, min_steps=0, progress=False)
    onnx_path = export.export_onnx(result.checkpoint, root / "model.onnx")
    return data, result, onnx_path


def test_export_metadata(tiny_run) -> None:
    data, result, onnx_path = tiny_run
    proto = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert METADATA_KEYS <= props.keys()
    assert json.loads(props["lineinspect.classes"]) == list(synthetic.CLASSES)
    assert json.loads(props["lineinspect.input"]) == {
        "height": 128,
        "width": 128,
        "channels": 3,
        "color": "gray",
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    }
    assert json.loads(props["lineinspect.roi"]) == list(synthetic.ROI)
    assert float(props["lineinspect.threshold"]) == pytest.approx(result.threshold)
    assert re.fullmatch(r"model-[0-9a-f]{8}", props["lineinspect.version"])
    assert props["lineinspect.train_data_hash"] == dataset_hash(data)
    assert [o.name for o in proto.graph.output] == ["class_probs", "defect_map", "score"]
    assert [i.name for i in proto.graph.input] == ["image"]
    assert any(o.version == 17 for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    card = export.write_card(onnx_path.parent, onnx_path, result.report).read_text()
    assert props["lineinspect.version"] in card and "false-reject" in card


def test_onnx_outputs_and_parity(tiny_run) -> None:
    _, result, onnx_path = tiny_run
    rng = np.random.default_rng(99)
    frames = np.stack([synthetic.render_frame(rng, c % 4)[0] for c in range(5)])
    diffs = export.parity(result.checkpoint, onnx_path, frames)
    assert set(diffs) == {"class_probs", "defect_map", "score"}
    assert max(diffs.values()) < 1e-3  # the parity gate: every output within 1e-3
    ckpt = torch.load(result.checkpoint, weights_only=True)
    assert len(ckpt["golden"]) == 4  # one whole validation frame per class, for the gate at export
    assert ckpt["golden"][0].shape == synthetic.FRAME_SHAPE
    x = preprocess(frames, list(synthetic.ROI))
    probs, defect_map, score = export.session(onnx_path).run(None, {"image": x})  # batch 5: dynamic axis
    assert probs.shape == (5, 4) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert defect_map.shape == (5, 1, 16, 16)
    assert defect_map.min() >= 0.0 and defect_map.max() <= 1.0
    assert score.shape == (5,) and score.min() >= 0.0 and score.max() <= 1.0


def test_an_fp16_engine_finds_the_backbone_and_only_the_backbone_by_its_node_names(tiny_run) -> None:
    """TensorRT may run nodes named with FP16_SCOPE in FP16 and holds the rest to FP32: the whole
    backbone must carry the name, and nothing of the heads, the distances or the decision."""
    nodes = onnx.load(str(tiny_run[2])).graph.node
    backbone = [n for n in nodes if FP16_SCOPE in n.name]
    assert sum(n.op_type == "Conv" for n in backbone) == 1 + 2 + 3 * 10  # stem, block 0, blocks 1-10
    assert {"Softmax", "Log", "Sigmoid", "Gemm"}.isdisjoint(n.op_type for n in backbone)
    assert any(n.name.startswith("/good/") and n.op_type == "Conv" for n in nodes)  # the distances: FP32


def test_line_engine_uses_the_models_own_score(tiny_run) -> None:
    from workers.onnx_engine import OnnxRuntimeEngine

    _, _, onnx_path = tiny_run
    engine = OnnxRuntimeEngine(onnx_path)
    assert engine.meta.has_score
    frames = [synthetic.render_frame(np.random.default_rng(i), i % 4)[0] for i in range(4)]
    _, _, score = export.session(onnx_path).run(None, {"image": preprocess(np.stack(frames), list(synthetic.ROI))})
    results = engine.infer_batch(frames)
    np.testing.assert_allclose([r.score for r in results], score, atol=1e-6)
    assert [r.reject for r in results] == list(score >= engine.meta.threshold)


def test_calibration_with_few_good_images_says_it_does_not_hold(tiny_run) -> None:
    _, result, _ = tiny_run
    cal = result.report["calibration"]
    assert cal["n_good"] >= 1 and cal["rejected_of_n"] == 0
    # So few calibration good images cannot promise a 1 % rate, and the report says so (the card and
    # the training log warn from it), with how many it would take.
    assert cal["holds"] is False and cal["good_images_needed"] == 2709
    assert cal["check_labels"] and all(c["file"].startswith("good/") for c in cal["check_labels"])


def test_training_is_reproducible(tiny_run, tmp_path) -> None:
    data, result, _ = tiny_run
    again = train(data, tmp_path, epochs=1, seed=3, batch_size=8, min_steps=0, progress=False)
    a, _ = load_checkpoint(result.checkpoint)
    b, _ = load_checkpoint(again.checkpoint)
    for (name, ta), tb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(ta, tb), name


def test_shipped_model_contract_and_accuracy() -> None:
    meta = export.read_metadata(SHIPPED)
    assert meta["classes"] == list(synthetic.CLASSES)
    assert meta["roi"] == list(synthetic.ROI)
    assert 0.0 < meta["threshold"] < 1.0
    assert SHIPPED.stat().st_size < 6_000_000
    # Seed 4242 is used neither by the shipped training set (1) nor by its test set (2).
    rng = np.random.default_rng(4242)
    labels = np.arange(40) % 4
    frames = np.stack([synthetic.render_frame(rng, int(c))[0] for c in labels])
    sess = export.session(SHIPPED)
    probs, maps, score = export.onnx_predict(sess, frames, meta["roi"])
    assert (probs.argmax(1) == labels).mean() >= 0.8
    # The simulator stamps data into rows 0..7, outside the ROI: it must not change any output.
    stamped = frames.copy()
    stamped[:, :8] = rng.integers(0, 256, size=stamped[:, :8].shape, dtype=np.uint8)
    for a, b in zip(export.onnx_predict(sess, stamped, meta["roi"]), (probs, maps, score), strict=True):
        np.testing.assert_array_equal(a, b)
    # Reject decisions, as the runtime makes them, must separate good from defective too.
    reject = score >= meta["threshold"]
    assert (reject == (labels > 0)).mean() >= 0.8


def test_evaluate_reports_what_the_line_would_do(tiny_run, tmp_path) -> None:
    from models.evaluate import evaluate
    from workers.onnx_engine import OnnxRuntimeEngine

    _, _, onnx_path = tiny_run
    # A test set with a defect type the model never saw: it is evaluated as a defect like any other.
    data = synthetic.make_dataset(tmp_path / "test", per_class=3, seed=77, classes=("good", "spot", "dent"), good=4)
    report = evaluate(onnx_path, data, tmp_path / "report", progress=False)
    engine = OnnxRuntimeEngine(onnx_path)
    frames = [np.asarray(Image.open(f)) for f in sorted((data / "dent").glob("*.png"))]
    rejected = np.mean([r.reject for r in engine.infer_batch(frames)])
    assert report["per_class"]["dent"]["reject_rate"] == pytest.approx(rejected)
    assert report["per_class"]["dent"]["seen_in_training"] is False
    assert report["images"] == 10 and report["escapes"] + round(report["detection_rate"] * 6) == 6
    assert report["class_confusion"]["rows"] == ["good", "spot"]
    assert report["class_confusion"]["cols"] == list(synthetic.CLASSES)
    # The confusion a quality engineer reads: each class by the reject decision, and accuracy from it.
    decided = {d["class"]: (d["passed"], d["rejected"]) for d in report["decisions"]}
    assert sum(map(sum, decided.values())) == 10 and decided["good"][1] == report["false_rejects"]
    right = decided["good"][0] + sum(r for name, (_, r) in decided.items() if name != "good")
    assert report["accuracy"] == pytest.approx(right / 10)
    top = [c["score"] for c in report["check_labels"]]
    assert top == sorted(top, reverse=True)
    assert len(report["check_labels"]) == 4 and report["threshold_source"] == "the model's"
    assert 0.0 <= report["auroc"] <= 1.0 and report["pixel_auroc"] is not None
    for name in ("report.html", "report.json", "threshold.png", "scores.png", "confusion.png", "worst.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    assert "worst.png" in (tmp_path / "report" / "report.html").read_text()

    # Another threshold without retraining: given, or chosen for a false-reject rate on this data.
    everything = evaluate(onnx_path, data, tmp_path / "at0", progress=False, threshold=0.0)
    assert everything["false_reject_rate"] == 1.0 and everything["detection_rate"] == 1.0
    assert everything["threshold_source"] == "given" and everything["model_threshold"] == report["threshold"]
    strict = evaluate(onnx_path, data, tmp_path / "frr0", progress=False, frr=0.0)
    assert strict["false_reject_rate"] == 0.0 and strict["threshold"] > max(top)
    with pytest.raises(ValueError, match="not both"):
        evaluate(onnx_path, data, tmp_path / "both", progress=False, threshold=0.5, frr=0.01)


def test_colour_dataset_gives_an_rgb_model_the_line_feeds_rgb_frames(tmp_path) -> None:
    import shutil

    from controller.errors import InferenceError
    from workers.onnx_engine import OnnxRuntimeEngine

    gray = synthetic.make_dataset(tmp_path / "gray", per_class=4, seed=8, classes=("good", "spot"))
    colour = tmp_path / "colour"
    shutil.copytree(gray, colour)
    tint = np.array([1.0, 0.8, 0.6])
    for f in colour.glob("[gs]*/*.png"):  # good/ and spot/, not the masks
        g = np.asarray(Image.open(f), np.float32)[..., None]
        Image.fromarray(np.clip(g * tint, 0, 255).astype(np.uint8), "RGB").save(f)
    result = train(colour, tmp_path / "run", epochs=1, seed=1, batch_size=4, min_steps=0, progress=False)
    assert result.report["color"] == "rgb"
    onnx_path = export.export_onnx(result.checkpoint, tmp_path / "rgb.onnx")  # includes the parity gate
    engine = OnnxRuntimeEngine(onnx_path)
    assert engine.meta.color == "rgb"
    frame = np.asarray(Image.open(colour / "spot" / "0000.png"))
    assert frame.shape == (*synthetic.FRAME_SHAPE, 3) and len(engine.infer_batch([frame])) == 1
    with pytest.raises(InferenceError, match="expects RGB8"):
        engine.infer_batch([frame[..., 0]])


def test_fine_tuning_from_a_sibling_keeps_shared_layers_and_classes_and_adds_a_new_one(tiny_run, tmp_path) -> None:
    """`train --from`: a dataset with one more class (dent) starts from the sibling's weights: every
    shared tensor, the classifier rows of the shared classes by name; the new class's row is new."""
    from models.net import Inspector
    from models.train import init_classes

    _, parent, _ = tiny_run
    classes = ("good", "scratch", "dent", "spot", "crack")  # another order, one more class
    child = Inspector(len(classes), pretrained=False)
    taken = init_classes(child, parent.checkpoint, classes)
    sibling, ckpt = load_checkpoint(parent.checkpoint)
    assert taken["shared_classes"] == ["good", "scratch", "spot", "crack"] and taken["tensors"] > 100
    mine, theirs = child.state_dict(), sibling.state_dict()
    head = "net.classifier.1.weight"
    for name in taken["shared_classes"]:
        assert torch.equal(mine[head][classes.index(name)], theirs[head][ckpt["classes"].index(name)])
    assert not any(torch.equal(mine[head][2], row) for row in theirs[head])  # dent: not a sibling's row
    shared = [k for k in theirs if not k.startswith("net.classifier")]
    assert all(torch.equal(mine[k], theirs[k]) for k in shared)


def test_set_threshold_recalibrates_a_copy_on_new_good_images_and_refuses_what_they_cannot_hold(
    tiny_run, tmp_path
) -> None:
    from models.recalibrate import CalibrationRefused, set_threshold
    from workers.onnx_engine import OnnxRuntimeEngine

    data, _, onnx_path = tiny_run
    before = onnx_path.read_bytes()
    few = synthetic.make_dataset(tmp_path / "few", 0, seed=21, classes=("good",), good=60)
    with pytest.raises(CalibrationRefused, match=r"60 good images cannot hold a 1\.00%"):
        set_threshold(onnx_path, few, 0.01, tmp_path / "refused.onnx")
    assert not (tmp_path / "refused.onnx").exists()
    with pytest.raises(CalibrationRefused, match="trained on"):
        set_threshold(onnx_path, data, 0.01, tmp_path / "own.onnx", accept_unsupported=True)

    many = synthetic.make_dataset(tmp_path / "many", 0, seed=22, classes=("good",), good=1000)
    result = set_threshold(onnx_path, many, 0.05, tmp_path / "recal.onnx", user="qa")  # 1 % would take 2709
    assert result["holds"] and result["n_good"] == 1000 and result["rejected_of_n"] == 50 and result["by"] == "qa"
    engine = OnnxRuntimeEngine(tmp_path / "recal.onnx")
    assert engine.meta.threshold == pytest.approx(result["cut"])
    assert engine.meta.version.endswith(f"+t{result['cut']:.6g}")
    frames = [np.asarray(Image.open(f)) for f in sorted((many / "good").glob("*.png"))]
    # In batches as the line sends them: one batch of 1000 frames (4000 views) takes ~20 GB.
    rejected = sum(r.reject for i in range(0, len(frames), 50) for r in engine.infer_batch(frames[i : i + 50]))
    assert rejected == 50  # the cut rejects exactly the k it promised on its own images
    assert onnx_path.read_bytes() == before  # the original stays as it was


def test_without_masks_the_defect_map_is_the_anomaly_map_and_shows_unseen_defects(tmp_path) -> None:
    import shutil

    data = synthetic.make_dataset(tmp_path / "data", per_class=8, seed=7, good=60)
    shutil.rmtree(data / "ground_truth")  # a plant's data: labels, no masks
    result = train(data, tmp_path / "run", epochs=1, seed=3, batch_size=8, min_steps=0, progress=False)
    assert result.report["defect_map"].startswith("anomaly map")
    model, _ = load_checkpoint(result.checkpoint)
    assert float(model.learnt_map) == 0.0
    rng = np.random.default_rng(11)
    hits, n = 0, 0
    for kind in synthetic.UNSEEN:  # types the model never saw
        for _ in range(6):
            frame, mask = synthetic.render_frame(rng, kind, difficulty=0.0)
            x, y, w, h = synthetic.ROI
            with torch.no_grad():
                _, defect_map, _ = model(torch.from_numpy(preprocess(frame[None], list(synthetic.ROI))))
            cell = np.unravel_index(int(defect_map[0, 0].argmax()), (16, 16))
            on_defect = mask[y : y + h, x : x + w].reshape(16, 8, 16, 8).max(axis=(1, 3)) > 0
            near = np.zeros_like(on_defect)
            near[max(cell[0] - 1, 0) : cell[0] + 2, max(cell[1] - 1, 0) : cell[1] + 2] = True
            hits += bool((on_defect & near).any())  # the hottest cell is on the defect (or touches it)
            n += 1
    assert hits >= 0.8 * n, f"{hits} of {n}"


def test_a_model_with_modes_of_good_parts_exports_with_parity(tiny_run, tmp_path) -> None:
    from models.train import fit_good_model

    _, result, _ = tiny_run
    model, ckpt = load_checkpoint(result.checkpoint)
    x, y, w, h = synthetic.ROI
    goods = np.concatenate([synthetic.render_set(31, {"good": 30}, surfaces=(s,))[0] for s in ("brick", "grass")])
    fit_good_model(model, goods[:, y : y + h, x : x + w], modes=2)  # two finishes, two modes
    assert model.good.modes == 2
    torch.save({**ckpt, "state_dict": model.state_dict(), "modes": 2}, tmp_path / "modes.pt")
    onnx_path = export.export_onnx(tmp_path / "modes.pt", tmp_path / "modes.onnx")  # its parity gate passes
    frames, _, _ = synthetic.render_set(32, {"good": 4, "scratch": 2, "dent": 2})
    diffs = export.parity(tmp_path / "modes.pt", onnx_path, frames)
    assert max(diffs.values()) < export.PARITY_TOL


def test_the_input_side_set_by_the_dataset_reaches_the_onnx_model_and_the_line(tmp_path) -> None:
    from workers.onnx_engine import OnnxRuntimeEngine

    data = synthetic.make_dataset(tmp_path / "data", per_class=5, seed=5)
    info = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**info, "input_size": 64}))  # the 128 px ROI at half size
    result = train(data, tmp_path / "run", epochs=1, seed=3, batch_size=8, min_steps=0, progress=False)
    assert result.report["input_size"] == 64
    onnx_path = export.export_onnx(result.checkpoint, tmp_path / "model.onnx")  # its parity gate passes
    engine = OnnxRuntimeEngine(onnx_path)
    assert (engine.meta.height, engine.meta.width) == (64, 64)
    out = engine.infer_batch([synthetic.render_frame(np.random.default_rng(1), "scratch")[0]])[0]
    assert out.defect_map.shape == (8, 8)
    _, ckpt = load_checkpoint(result.checkpoint)
    assert ckpt["input_size"] == 64
    assert float(load_checkpoint(result.checkpoint)[0].decision.uses_map) == 1.0  # pseudo-anomalies trained the map
