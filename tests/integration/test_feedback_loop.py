"""The feedback loop at a short length (sim/feedback_loop.py): a model that misses a new defect
type → operators flag 50 parts → add-from-journal → train --from → candidate → promote → the same
scenario catches the new type → rollback; every step a `lineinspect` command, every step recorded."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.feedback_loop import SHORT, run_loop


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_flagged_parts_teach_the_next_model_which_is_promoted_and_can_be_rolled_back(tmp_path: Path) -> None:
    result = run_loop(tmp_path / "loop", SHORT)
    judged = ("lineinspect sim", "lineinspect candidate")  # their exit code is their verdict, checked below
    assert all(s["rc"] == 0 for s in result["steps"] if not s["command"].startswith(judged)), result["steps"]
    assert result["flagged"] == 50 and result["added"] == {"dent": 50} and result["dataset_check_ok"]
    candidate = result["candidate"]
    held = candidate["held_out"]
    dent_v1, dent_v2 = held["active"]["by_class_at_frr"]["dent"], held["candidate"]["by_class_at_frr"]["dent"]
    assert dent_v2 > dent_v1, held  # the gain on the fixed held-out set, at the same false-reject rate
    assert len(candidate["replay"]["newly_caught"]) > 0, candidate["replay"]  # and on replay
    assert candidate["promotable"], candidate["reasons"]
    assert result["promoted"]["active"] == result["v2"]
    caught = result["dents_caught"]
    assert caught["run2_v2"]["rate"] > caught["run1_v1"]["rate"], caught  # the same scenario now catches dents
    assert result["rolled_back_to"] == result["v1"]
    events = [(e, v) for e, v, _ in result["registry_history"]]
    assert events == [("register", result["v1"]), ("first", result["v1"]), ("register", result["v2"]),
                      ("candidate", result["v2"]), ("promote", result["v2"]), ("rollback", result["v1"])]  # fmt: skip
    assert all(by for _, _, by in result["registry_history"])  # who, every time
    assert (tmp_path / "loop" / "loop.png").is_file()
