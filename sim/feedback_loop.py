"""The feedback loop of a line, end to end, from the command line, on the simulated line:

1. the line runs model v1 (from the registry) on the `new-defect` scenario: it misses dents, a
   defect type it was never trained on;
2. operators flag 50 of the dent parts (`lineinspect review flag`, their true class "dent");
3. `lineinspect dataset add-from-journal` adds those frames to v1's training data;
4. `lineinspect train --from v1` fine-tunes a v2 that knows dents;
5. `lineinspect registry add` and `lineinspect candidate` compare v2 with v1 on a fixed held-out
   set (dents included) and by replaying run 1's journal;
6. `lineinspect promote v2`, and the same scenario runs again on v2 (seed of its own);
7. `lineinspect rollback` restores v1.
Every step is a `lineinspect` command (each audited: the registry's history, the labels' authors,
the datasets' provenance); the numbers of each step go to `loop.json` and a plot to `loop.png`.

`python -m sim.feedback_loop --work DIR` runs it at full size (v1 trained first from the
generator's data, as the shipped model was); `--short` is the test's size: minutes on 2 cores.
Not here: any of the steps themselves (each is its command's).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import synthetic


@dataclass(frozen=True)
class LoopSize:
    base_per_class: int
    base_good: int
    v1_epochs: int
    v2_epochs: int
    min_steps: int
    parts: int
    flags: int
    held_out_per_class: int
    held_out_good: int


FULL = LoopSize(base_per_class=300, base_good=1000, v1_epochs=6, v2_epochs=4, min_steps=300, parts=1200, flags=50,
                held_out_per_class=100, held_out_good=400)  # fmt: skip
SHORT = LoopSize(base_per_class=40, base_good=400, v1_epochs=3, v2_epochs=3, min_steps=60, parts=400, flags=50,
                 held_out_per_class=30, held_out_good=200)  # fmt: skip
PRODUCT = "sim"


def lineinspect(*args: str, work: Path, log: list[dict[str, Any]], check: bool = True) -> dict[str, Any]:
    """Run one `lineinspect` command; its JSON answer (where it prints one) and how long it took."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "controller.cli", *args], cwd=work, capture_output=True, text=True,
                          env={**os.environ, "USER": os.environ.get("USER", "loop")}, timeout=3600)  # fmt: skip
    took = time.monotonic() - started
    answer: dict[str, Any] = {}
    with_json = proc.stdout.strip()
    if with_json.startswith("{"):
        answer = json.loads(with_json)
    log.append({"command": "lineinspect " + " ".join(args), "rc": proc.returncode, "seconds": round(took, 1)})
    print(f"[{took:6.1f} s] rc {proc.returncode}  lineinspect {' '.join(args)[:150]}", flush=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"lineinspect {' '.join(args)} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")  # fmt: skip
    return answer


def run_loop(work: Path, size: LoopSize, seed: int = 3) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    log: list[dict[str, Any]] = []
    reg, base, held = work / "registry", work / "base-data", work / "held-out"

    def cli(*args: str, check: bool = True) -> dict[str, Any]:
        return lineinspect(*args, work=work, log=log, check=check)

    def line(name: str, seed: int) -> dict[str, Any]:
        """The new-defect scenario on the registry's active version; the judge's summary."""
        cli("sim", "--scenario", "new-defect", "--parts", str(size.parts), "--seed", str(seed), "--no-hmi",
            "--inference", "local", "--registry", str(reg), "--product", PRODUCT, "--workdir", str(work / name),
            "--json", str(work / f"{name}.json"), check=False)  # fmt: skip
        return dict(json.loads((work / f"{name}.json").read_text()))

    # 0. v1: trained on the generator's known classes, registered as the product's first version.
    if not base.exists():
        synthetic.make_dataset(base, size.base_per_class, seed=1, good=size.base_good)
    if not held.exists():
        synthetic.make_dataset(held, size.held_out_per_class, seed=2, classes=(*synthetic.CLASSES, "dent"),
                               good=size.held_out_good)  # fmt: skip
    cli("train", str(base), "--out", str(work / "v1"), "--epochs", str(size.v1_epochs), "--name", "sim",
        "--min-steps", str(size.min_steps))
    v1 = cli("registry", "add", str(work / "v1"), "--registry", str(reg), "--product", PRODUCT, "--user", "ml-eng")
    # 1. The line on v1, with dents coming.
    run1 = line("run1", seed)
    journal1 = work / "run1" / "journal.db"
    # 2. Operators flag dent parts (the simulator's truth stands in for their eyes).
    report = json.loads((work / "run1" / "sim-report.json").read_text())
    dents = [d for d in report["decisions"] if synthetic.ALL_CLASSES[d["truth"]] == "dent"][: size.flags]
    cli("review", "flag", "--journal", str(journal1), "--class", "dent", "--user", "operator-ann",
        "--note", "a dent the line passed or called something else", *(f"{d['epoch']}/{d['seq']}" for d in dents))
    # 3. Their frames into v1's training data (a copy: the base data stays as it was).
    data2 = work / "data-v2"
    if not data2.exists():
        import shutil

        shutil.copytree(base, data2)
    added = cli("dataset", "add-from-journal", "--journal", str(journal1), "--dataset", str(data2), "--line", "sim-1")
    # 4. v2 fine-tuned from v1.
    cli("train", str(data2), "--out", str(work / "v2"), "--epochs", str(size.v2_epochs), "--name", "sim",
        "--from", str(work / "v1"), "--min-steps", str(size.min_steps))
    v2 = cli("registry", "add", str(work / "v2"), "--registry", str(reg), "--product", PRODUCT, "--user", "ml-eng")
    # 5. The comparison.
    candidate = cli("candidate", v2["version"], "--registry", str(reg), "--product", PRODUCT,
                    "--held-out", str(held), "--journal", str(journal1), "--replay", str(size.parts),
                    "--user", "ml-eng", check=False)  # fmt: skip
    # 6. Promotion and the same scenario again (another seed: other parts of the same kind).
    promoted = cli("promote", v2["version"], "--registry", str(reg), "--product", PRODUCT, "--user", "qa-lead",
                   check=False)  # fmt: skip
    run2 = line("run2", seed + 1) if promoted else {}
    # 7. Rollback.
    rolled = cli("rollback", "--registry", str(reg), "--product", PRODUCT, "--user", "qa-lead", check=False)
    history = [json.loads(x) for x in (reg / PRODUCT / "history.jsonl").read_text().splitlines()]
    result = {
        "size": size.__dict__, "v1": v1["version"], "v2": v2["version"], "flagged": len(dents),
        "added": added.get("added"), "dataset_check_ok": added.get("check_ok"),
        "dents_caught": {"run1_v1": _caught(run1, "dent"), "run2_v2": _caught(run2, "dent") if run2 else None},
        "caught_by_class": {"run1_v1": run1.get("vision_by_class"), "run2_v2": run2.get("vision_by_class")},
        "false_rejects": {"run1_v1": run1.get("false_rejects"), "run2_v2": run2.get("false_rejects")},
        "candidate": {k: candidate.get(k) for k in ("promotable", "reasons", "held_out", "replay")},
        "promoted": promoted, "rolled_back_to": rolled.get("active"),
        "registry_history": [(e["event"], e.get("version"), e.get("by")) for e in history],
        "steps": log,
    }  # fmt: skip
    (work / "loop.json").write_text(json.dumps(result, indent=2, default=str))
    _plot(result, work / "loop.png")
    return result


def _caught(summary: dict[str, Any], cls: str) -> dict[str, Any] | None:
    of = summary.get("vision_by_class", {}).get(cls)
    if not of:
        return None
    return {**of, "rate": of["rejected"] / of["parts"] if of["parts"] else None}


def _plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = result["caught_by_class"]
    classes = [c for c in ("scratch", "spot", "crack", "dent") if by.get("run1_v1") and c in by["run1_v1"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (run, label) in enumerate((("run1_v1", f"v1 {result['v1']}"), ("run2_v2", f"v2 {result['v2']}"))):
        if not by.get(run):
            continue
        rates = [by[run][c]["rejected"] / max(1, by[run][c]["parts"]) * 100 for c in classes]
        ax.bar([j + (i - 0.5) * 0.38 for j in range(len(classes))], rates, 0.36, label=label,
               color=("#b0b0b0", "#3b6ea8")[i])  # fmt: skip
    ax.set_xticks(range(len(classes)), classes)
    ax.set(ylabel="% rejected at the gate", ylim=(0, 105),
           title=f"the new-defect scenario before and after the loop ({result['flagged']} dents flagged)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sim.feedback_loop", description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("runs/feedback-loop"))
    p.add_argument("--short", action="store_true", help="the test's size (a few minutes)")
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args(argv)
    result = run_loop(args.work.resolve(), SHORT if args.short else FULL, seed=args.seed)
    print(json.dumps({k: v for k, v in result.items() if k != "steps"}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
