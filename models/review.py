"""`lineinspect review`: a person labels the parts the line queued for review, fast, from a browser.

A small web page served on this machine only (127.0.0.1): one part at a time, its frame beside the
model's defect map, what the line decided and why it was queued (an operator flagged it, vision
disagreed with the existing inspection, its score came near the threshold). Keys: a digit picks a
class, `n` names a new one, `←`/`→` move, `Enter` confirms the line's own verdict. Each label goes
into the label store beside the journal (controller/labels.py), never into the journal, so a
review while the line runs cannot slow its verdicts. The journal is only read.
Not here: turning labels into a dataset (models/from_journal.py).
"""

from __future__ import annotations

import io
import json
import secrets
import sqlite3
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from controller.adapters.journal import read_image
from controller.labels import add_labels, check_class, latest_labels, parse_result_id

MAX_ITEMS = 2000
"""The queue page shows at most this many parts (oldest unlabelled first)."""


@dataclass
class Review:
    journal: Path
    user: str
    model: Path | None = None
    """With a model: its defect map beside each frame, and its classes offered first."""
    _engine: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True, timeout=10.0)

    def engine(self) -> Any:
        if self.model is None:
            return None
        with self._lock:
            if self._engine is None:
                from workers.onnx_engine import OnnxRuntimeEngine

                self._engine = OnnxRuntimeEngine(self.model)
            return self._engine

    def queue(self) -> dict[str, Any]:
        labels = latest_labels(self.journal, ("operator", "review"))
        truth = latest_labels(self.journal, ("simulator",))
        db = self._db()
        try:
            rows = db.execute(
                "SELECT q.epoch, q.seq, q.why, q.wall_utc, p.outcome, p.reason, p.defect_class, p.score, "
                "p.model_version, i.seq IS NOT NULL FROM review_queue q LEFT JOIN parts p USING (epoch, seq) "
                "LEFT JOIN images i USING (epoch, seq) ORDER BY q.rowid LIMIT ?", (MAX_ITEMS,)).fetchall()  # fmt: skip
        finally:
            db.close()
        items = []
        for epoch, seq, why, wall, outcome, reason, cls, score, version, has_frame in rows:
            label = labels.get((epoch, seq))
            items.append({"result_id": f"{epoch}/{seq}", "why": why, "queued_utc": wall, "outcome": outcome,
                          "reason": reason, "defect_class": cls, "score": score, "model_version": version,
                          "frame": bool(has_frame), "label": label.true_class if label else None,
                          "labeled_by": label.labeled_by if label else None,
                          "truth": t.true_class if (t := truth.get((epoch, seq))) else None})  # fmt: skip
        engine = self.engine()
        classes = list(engine.meta.classes) if engine is not None else ["good"]
        classes += sorted({lab.true_class for lab in labels.values()} - set(classes))
        return {"items": items, "classes": classes, "journal": str(self.journal), "user": self.user}

    def frame_png(self, epoch: int, seq: int, with_map: bool) -> bytes | None:
        db = self._db()
        try:
            frame = read_image(db, epoch, seq)
        finally:
            db.close()
        if frame is None:
            return None
        rgb = np.repeat(frame[..., None], 3, axis=2) if frame.ndim == 2 else frame[..., :3].copy()
        engine = self.engine() if with_map else None
        if engine is not None:
            result = engine.infer_batch([frame])[0]
            if result.defect_map is not None:
                x, y, w, h = engine.meta.roi or (0, 0, frame.shape[1], frame.shape[0])
                heat = np.asarray(Image.fromarray((np.asarray(result.defect_map, np.float32) * 255).astype(np.uint8))
                                  .resize((w, h), Image.BILINEAR), np.float32) / 255.0  # fmt: skip
                region = rgb[y : y + h, x : x + w].astype(np.float32)
                alpha = np.clip(heat, 0, 1)[..., None] * 0.6
                region = region * (1 - alpha) + np.array([255.0, 40.0, 40.0]) * alpha
                rgb[y : y + h, x : x + w] = np.clip(region, 0, 255).astype(np.uint8)
        out = io.BytesIO()
        Image.fromarray(rgb).resize((rgb.shape[1] * 3, rgb.shape[0] * 3), Image.NEAREST).save(out, "PNG")
        return out.getvalue()

    def label(self, result_id: str, true_class: str) -> dict[str, Any]:
        epoch, seq = parse_result_id(result_id)
        add_labels(self.journal, [(epoch, seq, check_class(true_class))], source="review", labeled_by=self.user)
        return {"result_id": result_id, "label": true_class, "labeled_by": self.user}


def serve(review: Review, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """The review page's server (not yet serving: call `serve_forever`, `shutdown` to stop). Only
    requests addressed to this machine by name are served (a DNS-rebinding page cannot read the
    queue), and a label needs the page's own token (another page in the browser cannot post one)."""
    token = secrets.token_urlsafe(18)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, value: Any) -> None:
            self._send(code, json.dumps(value).encode(), "application/json")

        def _local(self) -> bool:
            port = self.server.server_address[1]
            if self.headers.get("Host") in (f"127.0.0.1:{port}", f"localhost:{port}"):
                return True
            self._json(403, {"error": "the review page answers requests to 127.0.0.1 or localhost only"})
            return False

        def do_GET(self) -> None:
            if not self._local():
                return
            path = self.path.split("?")[0]
            try:
                if path == "/":
                    self._send(200, PAGE.replace("__TOKEN__", token).encode(), "text/html; charset=utf-8")
                elif path == "/api/queue":
                    self._json(200, review.queue())
                elif path.startswith(("/api/frame/", "/api/map/")):
                    epoch, seq = parse_result_id(path.split("/", 3)[3].removesuffix(".png"))
                    png = review.frame_png(epoch, seq, with_map=path.startswith("/api/map/"))
                    if png is None:
                        self._json(404, {"error": f"no frame of {epoch}/{seq} in the journal (retention?)"})
                    else:
                        self._send(200, png, "image/png")
                else:
                    self._json(404, {"error": f"no such page: {path}"})
            except (ValueError, sqlite3.Error) as exc:
                self._json(400, {"error": str(exc)})

        def do_POST(self) -> None:
            if not self._local():
                return
            try:
                if self.path != "/api/label":
                    self._json(404, {"error": f"no such action: {self.path}"})
                    return
                if not secrets.compare_digest(self.headers.get("X-Review-Token", ""), token):
                    self._json(403, {"error": "a label needs the review page's token (reload the page)"})
                    return
                length = int(self.headers.get("Content-Length", "0"))
                if not 0 <= length <= 4096:
                    raise ValueError(f"a label is a small JSON object, not {length} bytes")
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise ValueError('a label is {"result_id": "epoch/seq", "true_class": "name"}')
                self._json(200, review.label(str(body.get("result_id", "")), str(body.get("true_class", ""))))
            except (ValueError, sqlite3.Error) as exc:
                self._json(400, {"error": str(exc)})

    server = ThreadingHTTPServer((host, port), Handler)
    server.review_token = token  # type: ignore[attr-defined]  # for tests and scripts on this machine
    return server


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>lineinspect review</title>
<style>
body{font-family:sans-serif;margin:1em 2em;background:#fafafa} .imgs img{margin-right:1em;border:1px solid #ccc}
#classes span{display:inline-block;margin:.2em .4em;padding:.2em .6em;border:1px solid #999;border-radius:4px}
#classes span.on{background:#3b6ea8;color:white} .muted{color:#777} #error{color:#c0392b}
</style></head><body>
<h2>Review <span id="pos" class="muted"></span></h2>
<div id="info"></div>
<div class="imgs"><img id="frame" alt="frame"><img id="map" alt="defect map (with --model)"></div>
<div id="classes"></div>
<p class="muted">keys: digit = that class &nbsp; n = a new class &nbsp; Enter = the line's own verdict
&nbsp; ← → = previous / next &nbsp; u = next unlabelled</p>
<p id="error"></p>
<script>
let q = {items: [], classes: []}, i = 0;
const $ = id => document.getElementById(id);
async function load() {
  q = await (await fetch('/api/queue')).json();
  i = Math.max(0, q.items.findIndex(x => !x.label));
  show();
}
function show() {
  const it = q.items[i];
  if (!it) { $('info').textContent = 'nothing queued for review'; return; }
  $('pos').textContent = `${i + 1} / ${q.items.length} — ${q.items.filter(x => x.label).length} labelled`;
  $('info').innerHTML = `<b>${it.result_id}</b>: queued as <b>${it.why}</b>; the line said <b>${it.outcome}</b>
    (${it.reason}, class ${it.defect_class}, score ${it.score == null ? '–' : it.score.toFixed(3)},
    ${it.model_version || ''}); label: <b>${it.label || '–'}</b> ${it.labeled_by ? 'by ' + it.labeled_by : ''}
    ${it.truth ? '(simulator truth: ' + it.truth + ')' : ''}`;
  $('frame').src = it.frame ? `/api/frame/${it.result_id}.png` : '';
  $('map').src = it.frame ? `/api/map/${it.result_id}.png` : '';
  $('classes').innerHTML = q.classes.map((c, k) =>
    `<span class="${it.label === c ? 'on' : ''}">${k}: ${c}</span>`).join('');
}
async function label(c) {
  const it = q.items[i];
  const r = await fetch('/api/label', {method: 'POST', headers: {'X-Review-Token': '__TOKEN__'},
                                       body: JSON.stringify({result_id: it.result_id, true_class: c})});
  const a = await r.json();
  if (!r.ok) { $('error').textContent = a.error; return; }
  $('error').textContent = '';
  it.label = c; it.labeled_by = a.labeled_by;
  if (!q.classes.includes(c)) q.classes.push(c);
  i = Math.min(i + 1, q.items.length - 1); show();
}
document.addEventListener('keydown', e => {
  const it = q.items[i];
  if (!it) return;
  if (e.key >= '0' && e.key <= '9' && q.classes[+e.key]) label(q.classes[+e.key]);
  else if (e.key === 'n') { const c = prompt('new class name (lowercase)'); if (c) label(c.trim()); }
  else if (e.key === 'Enter') label(it.outcome === 'pass' ? 'good' : q.classes[it.defect_class] || 'good');
  else if (e.key === 'ArrowRight') { i = Math.min(i + 1, q.items.length - 1); show(); }
  else if (e.key === 'ArrowLeft') { i = Math.max(i - 1, 0); show(); }
  else if (e.key === 'u') { const k = q.items.findIndex(x => !x.label); if (k >= 0) { i = k; show(); } }
});
load();
</script></body></html>
"""
