"""The whole controller (controller/app.py, unchanged) over the in-memory line (sim/memory.py) in
virtual time: hundreds of parts per second of test time, seeded, with the timing a loaded machine
gives (replies handled up to 150 ms late, slow inferences), dropped and glitch frames, speed
changes and PLC restarts. Safety on every run; liveness where the timing is clean.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from sim.memory import MemoryFaults, SimMemoryLine, assert_safe, controller_for, running
from sim.virtual_time import run_virtual


def run_line(line: SimMemoryLine) -> dict[str, int]:
    async def main() -> None:
        async with running(controller_for(line)):
            await line.run()

    run_virtual(main())
    return line.judge()


def test_a_clean_line_gives_every_part_a_model_verdict() -> None:
    result = run_line(SimMemoryLine(seed=1, parts=600))
    assert_safe(result)
    assert result["model_verdicts"] >= 0.999 * result["parts"], result
    assert result["escapes"] == 0


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    read_stall=st.sampled_from([0.0, 0.005, 0.05]),
    drop=st.sampled_from([0.0, 0.02]),
    spurious=st.sampled_from([0.0, 0.05]),
    slow=st.sampled_from([0.0, 0.05]),
    restart=st.sampled_from([None, 3.0]),
    speed_changes=st.booleans(),
    decision_offset=st.sampled_from([4000, 700]),  # 400 ms, or 70 ms: stalls then reach deadlines
)
def test_no_part_passes_without_its_own_in_time_pass_under_any_timing(
    seed: int, read_stall: float, drop: float, spurious: float, slow: float, restart: float | None,
    speed_changes: bool, decision_offset: int,
) -> None:  # fmt: skip
    faults = MemoryFaults(read_stall=read_stall, drop=drop, spurious=spurious, slow_inference=slow,
                          plc_restart_at_s=restart)  # fmt: skip
    result = run_line(SimMemoryLine(seed=seed, parts=150, faults=faults, speed_changes=speed_changes,
                                    decision_offset=decision_offset))  # fmt: skip
    assert_safe(result)
    assert result["model_verdicts"] > 0  # liveness: never a controller that rejects everything


def test_an_operator_halt_makes_the_plc_reject_every_part_until_reset_and_is_audited() -> None:
    from controller.core import plc_codec as codec
    from controller.operator import Action, VisionState

    line = SimMemoryLine(seed=3, parts=400)
    seen: dict[str, object] = {}

    async def main() -> None:
        loop = asyncio.get_running_loop()
        controller = controller_for(line)
        async with running(controller):
            run = asyncio.create_task(line.run())
            await asyncio.sleep(2.0)
            assert controller.vision_state is VisionState.CONTINUOUS
            ann = {"user": "ann", "role": "operator", "peer": "10.0.0.7:5000"}
            seen["halt"] = await controller.operate(Action.HALT, "", **ann)
            seen["halted_at"] = loop.time()
            seen["again"] = await controller.operate(Action.HALT, "", **ann)
            seen["shadow"] = await controller.operate(Action.REQUEST_SHADOW, "on", user="eve", role="engineer",
                                                      peer="10.0.0.8:5001")  # fmt: skip
            await asyncio.sleep(1.0)
            seen["state"] = controller.vision_state
            seen["command"] = codec.decode_vision_header(line.program.vision_db).command
            seen["reset"] = await controller.operate(Action.RESET, "", **ann)
            seen["reset_at"] = loop.time()
            await run

    run_virtual(main())
    result = line.judge()
    assert_safe(result)
    assert seen["halt"] == (True, "halted: the PLC rejects every part until Reset")
    assert seen["again"] == (False, "already halted")
    assert seen["state"] is VisionState.HALTED
    assert seen["command"] == codec.REQUEST_SHADOW  # ready low while halted; shadow asked for
    assert seen["reset"][0] is True  # type: ignore[index]
    # Every part decided while halted (after the PLC saw `ready` low) was rejected; the rest inspected.
    halted_at, reset_at = float(seen["halted_at"]), float(seen["reset_at"])  # type: ignore[arg-type]
    during = [d for d in line.program.log if halted_at + 0.05 < d.decided_at < reset_at]
    after = [d for d in line.program.log if d.decided_at > reset_at + 0.5]
    assert during and all(d.gate != "pass" for d in during)
    assert after and sum(d.gate == "pass" for d in after) > 0.8 * len(after)
    reasons = {line.journal.parts[d.epoch, d.seq].reason for d in during}
    assert reasons <= {"not_ready", "plc_rejected"}, reasons
    audit = [(a.user, a.role, a.peer, a.action, a.argument, a.result) for a in line.journal.audit]
    assert audit == [
        ("ann", "operator", "10.0.0.7:5000", "halt", "", "done"),
        ("ann", "operator", "10.0.0.7:5000", "halt", "", "refused"),
        ("eve", "engineer", "10.0.0.8:5001", "request_shadow", "on", "done"),
        ("ann", "operator", "10.0.0.7:5000", "reset", "", "done"),
    ]


def test_in_shadow_mode_every_gate_decision_is_recorded_once_beside_the_reference() -> None:
    """Shadow mode asked for from the start: the gate follows the existing inspection, the
    controller still inspects every part, and records what the gate did with each exactly once
    (the PLC's decision ring), with running figures that equal the PLC's own log."""
    from controller.core import plc_codec as codec

    line = SimMemoryLine(seed=5, parts=300)
    line.program.reference_of = lambda part_id: part_id % 7 == 0  # the existing inspection rejects every 7th
    counts: dict[str, int] = {}

    async def main() -> None:
        controller = controller_for(line)
        controller.operator.shadow_requested = True
        async with running(controller):
            await line.run()
            await asyncio.sleep(0.1)
            counts.update(controller.decisions.counts)

    run_virtual(main())
    result = line.judge()
    assert_safe(result)
    log = line.program.log
    assert all(d.shadow and d.actuated == ("reject" if d.part_id % 7 == 0 else "pass") for d in log)
    assert sum(d.gate == "pass" for d in log) > 0.8 * len(log)  # vision still inspects every part
    assert set(line.journal.gate) == {(d.epoch, d.seq) for d in log}
    for d in log:
        entry = line.journal.gate[d.epoch, d.seq]
        assert entry.passed == (d.actuated == "pass") and entry.shadow
        assert entry.reference == (codec.REJECT if d.part_id % 7 == 0 else codec.PASS)
    vision_rejects = {(d.epoch, d.seq) for d in log if d.gate != "pass"}
    reference_rejects = {(d.epoch, d.seq) for d in log if d.part_id % 7 == 0}
    assert counts["decided"] == counts["shadow"] == len(log)
    assert counts.get("both_reject", 0) == len(vision_rejects & reference_rejects)
    assert counts.get("vision_only_reject", 0) == len(vision_rejects - reference_rejects)


def test_an_operator_flags_a_wrong_verdict_into_the_label_store_and_the_review_queue(tmp_path: Path) -> None:
    """FlagResult: the true class lands in the label store beside the journal (never the journal's
    writer), the part is queued for review with its frame kept, and the flag is audited; bad input
    is refused naming the problem and stores nothing."""
    from controller.labels import latest_labels
    from controller.operator import Action

    line = SimMemoryLine(seed=7, parts=60)
    journal_path = tmp_path / "journal.db"
    answers: list[tuple[bool, str]] = []

    async def main() -> None:
        controller = controller_for(line, label_store=journal_path)
        async with running(controller):
            await line.run()
            epoch, seq = next(iter(line.journal.parts))
            ann = {"user": "ann", "role": "operator", "peer": "10.0.0.7:5000"}
            arguments = (f"{epoch}/{seq} dent a shallow dent on the left", f"{epoch}/x dent",
                         f"{epoch}/999999 dent", f"{epoch}/{seq} Dent!", f"{epoch}/{seq}",
                         f"{epoch}/{seq}\t\tdent under the note")  # fmt: skip  # the HMI's fields, class empty
            for argument in arguments:
                answers.append(await controller.operate(Action.FLAG_RESULT, argument, **ann))
            await asyncio.sleep(0.01)

    run_virtual(main())
    epoch, seq = next(iter(line.journal.parts))
    ok, detail = answers[0]
    assert ok and f"{epoch}/{seq}" in detail and "labelled dent" in detail, answers[0]
    assert [a[0] for a in answers[1:]] == [False] * 5
    assert "epoch/seq" in answers[1][1] and "no part" in answers[2][1] and "class name" in answers[3][1]
    labels = latest_labels(journal_path)
    assert list(labels) == [(epoch, seq)]
    label = labels[epoch, seq]
    assert (label.true_class, label.source, label.labeled_by, label.note) == (
        "dent", "operator", "ann", "a shallow dent on the left")
    assert line.journal.review[epoch, seq] == "flagged"
    audited = [(a.action, a.result) for a in line.journal.audit]
    assert audited == [("flag_result", "done")] + [("flag_result", "refused")] * 5
