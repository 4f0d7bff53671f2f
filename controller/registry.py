"""The model registry: every model a product's line has been offered, and which one it runs.

A folder per product, a folder per version inside it (model.onnx with its card, drift reference,
checkpoint where there is one, and `entry.json`: training-data hash, lineage, evaluation, the
candidate comparison, who registered it), `ACTIVE.json` (the version the line runs, who made it so,
when, and the versions before it, for rollback) and `history.jsonl` (every registration,
promotion, refusal and rollback). ACTIVE.json is replaced atomically (write, fsync, rename): a
controller reading it sees the old or the new version, never half of one. The controller follows
it (controller/app.py: a hot swap between two parts, audited in its journal).
Not here: evaluating candidates (models/candidate.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ACTIVE = "ACTIVE.json"
HISTORY = "history.jsonl"
ENTRY = "entry.json"
MODEL = "model.onnx"
COPIED = ("model.onnx", "model.pt", "MODEL_CARD.md", "model.drift.json", "train_report.json")


class RegistryError(ValueError):
    """A registry operation that cannot be done; the message says why."""


@dataclass(frozen=True, slots=True)
class Active:
    version: str
    model: Path
    by: str
    utc: str
    action: str
    """'promote' or 'rollback' (or 'first': the version a product started with)."""
    previous: tuple[str, ...]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def product_dir(registry: Path, product: str) -> Path:
    if not _NAME.fullmatch(product):
        raise RegistryError(f"a product name is letters, digits, '.', '_' or '-' (≤ 64), not {product!r}")
    return registry / product


def read_active(registry: Path, product: str) -> Active | None:
    path = product_dir(registry, product) / ACTIVE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    version = data["version"]
    return Active(version, product_dir(registry, product) / version / MODEL, data["by"], data["utc"], data["action"],
                  tuple(data.get("previous", ())))  # fmt: skip


def read_entry(registry: Path, product: str, version: str) -> dict[str, Any]:
    if not _NAME.fullmatch(version):
        raise RegistryError(f"no version {version!r}: a version is letters, digits, '.', '_' or '-'")
    path = product_dir(registry, product) / version / ENTRY
    if not path.is_file():
        known = versions(registry, product)
        raise RegistryError(f"no version {version!r} of {product!r} in {registry} "
                            f"(known: {', '.join(known) or 'none'})")
    return dict(json.loads(path.read_text()))


def write_entry(registry: Path, product: str, version: str, entry: dict[str, Any]) -> None:
    _atomic_write(product_dir(registry, product) / version / ENTRY, json.dumps(entry, indent=2) + "\n")


def products(registry: Path) -> list[str]:
    """The products with an active version."""
    return sorted(p.parent.name for p in registry.glob(f"*/{ACTIVE}")) if registry.is_dir() else []


def versions(registry: Path, product: str) -> list[str]:
    folder = product_dir(registry, product)
    return sorted(p.parent.name for p in folder.glob(f"*/{ENTRY}")) if folder.is_dir() else []


def note(registry: Path, product: str, event: dict[str, Any]) -> None:
    with (product_dir(registry, product) / HISTORY).open("a") as f:
        f.write(json.dumps({"utc": _now(), **event}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def history(registry: Path, product: str) -> list[dict[str, Any]]:
    path = product_dir(registry, product) / HISTORY
    return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []


def register(registry: Path, product: str, run_dir: Path, version: str, entry: dict[str, Any], *, by: str) -> Path:
    """Copy a training run's model (and what travels with it) in as `version`; the first version of
    a product becomes its active one. Refuses a version already there (versions are content hashes)."""
    if not _NAME.fullmatch(version):
        raise RegistryError(f"a version is letters, digits, '.', '_' or '-', not {version!r}")
    target = product_dir(registry, product) / version
    if (target / ENTRY).is_file():
        raise RegistryError(f"{product} {version} is already in the registry")
    target.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, target / name)
    write_entry(registry, product, version, {**entry, "version": version, "product": product,
                                             "registered_by": by, "registered_utc": _now()})  # fmt: skip
    note(registry, product, {"event": "register", "version": version, "by": by, "from": str(run_dir)})
    if read_active(registry, product) is None:
        _set_active(registry, product, version, by=by, action="first", previous=())
    return target / MODEL


def promote(registry: Path, product: str, version: str, *, by: str) -> Active:
    """Make `version` the line's model. Only a candidate whose comparison said it may be promoted
    (models/candidate.py) is; anything else is refused and the refusal recorded."""
    entry = read_entry(registry, product, version)
    active = read_active(registry, product)
    verdict = entry.get("candidate", {})
    why = None
    if active is not None and active.version == version:
        why = f"{version} is already active"
    elif not verdict:
        why = f"{version} was never compared with the active model: run `lineinspect candidate` first"
    elif active is not None and verdict.get("against") != active.version:
        why = f"{version} was compared with {verdict.get('against')}, but {active.version} is active now: compare again"
    elif not verdict.get("promotable"):
        why = f"{version} may not be promoted: {'; '.join(verdict.get('reasons', [])) or 'its comparison failed'}"
    if why is not None:
        note(registry, product, {"event": "promote_refused", "version": version, "by": by, "why": why})
        raise RegistryError(why)
    previous = (active.version, *active.previous) if active is not None else ()
    return _set_active(registry, product, version, by=by, action="promote", previous=previous)


def rollback(registry: Path, product: str, *, by: str) -> Active:
    """Back to the version that was active before the current one."""
    active = read_active(registry, product)
    if active is None or not active.previous:
        raise RegistryError(f"{product}: nothing to roll back to (no earlier active version)")
    return _set_active(registry, product, active.previous[0], by=by, action="rollback", previous=active.previous[1:])


def _set_active(registry: Path, product: str, version: str, *, by: str, action: str,
                previous: tuple[str, ...]) -> Active:  # fmt: skip
    data = {"version": version, "by": by, "utc": _now(), "action": action, "previous": list(previous)}
    _atomic_write(product_dir(registry, product) / ACTIVE, json.dumps(data, indent=2) + "\n")
    note(registry, product, {"event": action, "version": version, "by": by, "previous": list(previous[:1])})
    active = read_active(registry, product)
    assert active is not None
    return active


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    fd = os.open(path.parent, os.O_RDONLY)  # the rename itself survives a power cut
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
