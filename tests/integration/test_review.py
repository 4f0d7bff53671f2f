"""`lineinspect review`: the review page over a real journal and label store, through HTTP."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from controller.adapters.journal import SqliteJournal
from controller.labels import latest_labels
from controller.ports import PartRecord
from models.review import Review, serve
from models.synthetic import render_frame

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "shipped" / "model.onnx"


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    path = tmp_path / "journal.db"
    frame = render_frame(np.random.default_rng(1), "scratch")[0]

    async def fill() -> None:
        async with SqliteJournal(path) as j:
            for seq in (1, 2, 3):
                await j.record(PartRecord(epoch=5, seq=seq, outcome="pass", reason="model_pass", trigger_pos=0,
                                          defect_class=0, score=0.45, model_version="m", image=frame))  # fmt: skip
            await j.note_review(5, 2, "near_threshold")
            await j.note_review(5, 3, "disagrees_with_reference")
            await asyncio.sleep(0.2)

    asyncio.run(fill())
    return path


TOKEN: dict[str, str] = {}


@pytest.fixture
def page(journal: Path) -> Iterator[str]:
    server = serve(Review(journal, "qa", SHIPPED), port=0)
    TOKEN["value"] = server.review_token  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


def _post(url: str, body: object, token: str | None = None, host: str | None = None) -> tuple[int, dict[str, str]]:
    headers = {"X-Review-Token": TOKEN["value"] if token is None else token, **({"Host": host} if host else {})}
    req = urllib.request.Request(url, json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


def test_the_queue_shows_each_part_with_its_frame_and_defect_map_and_takes_labels(page: str, journal: Path) -> None:
    status, body = _get(page + "/api/queue")
    queue = json.loads(body)
    assert status == 200 and queue["classes"][:4] == ["good", "scratch", "spot", "crack"]
    assert [(i["result_id"], i["why"], i["frame"], i["label"]) for i in queue["items"]] == [
        ("5/2", "near_threshold", True, None), ("5/3", "disagrees_with_reference", True, None)]
    for kind in ("frame", "map"):
        status, png = _get(f"{page}/api/{kind}/5/2.png")
        assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert _get(page + "/")[0] == 200
    assert _post(page + "/api/label", {"result_id": "5/2", "true_class": "dent"}) == (
        200, {"result_id": "5/2", "label": "dent", "labeled_by": "qa"})
    label = latest_labels(journal)[5, 2]
    assert (label.true_class, label.source, label.labeled_by) == ("dent", "review", "qa")
    assert "dent" in json.loads(_get(page + "/api/queue")[1])["classes"]


BAD = [({"result_id": "5-2", "true_class": "dent"}, "epoch/seq"),
       ({"result_id": "5/2", "true_class": "Big Dent"}, "class name")]


@pytest.mark.parametrize(("body", "message"), BAD)
def test_a_bad_label_is_refused_naming_the_problem_and_nothing_is_stored(
    page: str, journal: Path, body: dict[str, str], message: str
) -> None:
    status, answer = _post(page + "/api/label", body)
    assert status == 400 and message in answer["error"]
    assert latest_labels(journal) == {}
    assert _get(page + "/api/frame/5/99.png")[0] == 404


def test_only_this_machine_by_name_and_the_pages_own_token_may_label(page: str, journal: Path) -> None:
    """Another page in the reviewer's browser cannot post labels (no token), a DNS-rebinding page
    cannot reach the server under another name, and a body that is not a label is refused."""
    label = {"result_id": "5/2", "true_class": "dent"}
    assert _post(page + "/api/label", label, token="guess")[0] == 403
    assert _post(page + "/api/label", label, host="evil.example:80")[0] == 403
    req = urllib.request.Request(page + "/api/queue", headers={"Host": "evil.example"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=30)
    assert refused.value.code == 403
    refused.value.close()
    assert _post(page + "/api/label", ["5/2", "dent"])[0] == 400
    assert latest_labels(journal) == {}
    assert TOKEN["value"] in _get(page + "/")[1].decode()  # the page carries it for its own posts
