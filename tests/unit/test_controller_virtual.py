"""The whole controller (controller/app.py, unchanged) over the in-memory line (sim/memory.py) in
virtual time: hundreds of parts per second of test time, seeded, with the timing a loaded machine
gives (replies handled up to 150 ms late, slow inferences), dropped and glitch frames, speed
changes and PLC restarts. Safety on every run; liveness where the timing is clean.
"""

from __future__ import annotations

import asyncio
import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from controller.app import LineController, Timing
from controller.core.frame_matching import MatchWindow
from controller.core.tracking import Margins
from sim.memory import MemoryFaults, SimMemoryLine
from sim.virtual_time import run_virtual

WINDOW = MatchWindow(tolerance_s=0.002, same_part_s=0.015)
"""The in-memory camera stamps exposures with the PLC scan that pulsed it; 35 ms smallest pitch."""


def run_line(line: SimMemoryLine) -> dict[str, int]:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        controller = LineController(
            line.plc, line.camera, line.inference, line.journal,
            margins=Margins(write_s=0.004, plc_cycle_s=0.002), window=WINDOW,
            timing=Timing(min_part_pitch_counts=line.pitch_counts[0], plc_max_cycle_s=0.002), clock=loop.time,
        )  # fmt: skip
        task = asyncio.create_task(controller.run(), name="controller")
        await asyncio.sleep(0.05)  # connected before the first part
        try:
            await line.run()
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run_virtual(main())
    return line.judge()


def assert_safe(result: dict[str, int]) -> None:
    assert result["misassociated"] == 0, result
    assert result["passed_without_own_pass"] == 0, result
    assert result["without_one_outcome"] == 0, result
    assert result["journal_not_gate"] == 0, result
    assert result["late_writes"] == 0, result  # a verdict that cannot be on time is dropped, never written


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
