"""Frame ↔ trigger association: right frame or no frame, never another part's."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from controller.frame_matching import FrameMatcher, Match, MatchWindow

W = MatchWindow(tolerance_s=0.010, hold_s=0.5)


def test_locks_on_an_unambiguous_pair_then_follows_the_counter() -> None:
    m = FrameMatcher(W)
    assert m.on_trigger(1, 1.000, 1.0) == []
    assert m.on_frame(500, 1.002, 1.0) == [Match(1, 500)]
    assert m.on_frame(501, 1.051, 1.05) == []  # frame first, trigger seen later
    assert m.on_trigger(2, 1.050, 1.06) == [Match(2, 501)]


def test_dropped_frame_leaves_its_part_without_one() -> None:
    m = FrameMatcher(W)
    m.on_trigger(1, 1.0, 1.0)
    m.on_frame(10, 1.0, 1.0)
    m.on_trigger(2, 1.05, 1.05)  # frame 11 lost
    m.on_trigger(3, 1.10, 1.10)
    assert m.on_frame(12, 1.10, 1.10) == [Match(3, 12)]


def test_spurious_frame_is_discarded_and_the_lock_relearnt() -> None:
    m = FrameMatcher(W)
    m.on_trigger(1, 1.0, 1.0)
    m.on_frame(10, 1.0, 1.0)
    assert m.on_frame(11, 1.025, 1.025) == []  # glitch: no trigger near it
    m.on_trigger(2, 1.05, 1.05)
    assert m.on_frame(12, 1.05, 1.05) == [Match(2, 12)]  # counter says 2→11, time says 12
    m.on_frame(13, 2.0, 2.0)  # ages the spurious frame out
    assert m.spurious_frames >= 1


def test_ambiguous_pairs_are_not_guessed() -> None:
    m = FrameMatcher(W)
    m.on_trigger(1, 1.000, 1.0)
    m.on_trigger(2, 1.004, 1.0)  # two triggers within the window and no lock yet
    assert m.on_frame(7, 1.002, 1.0) == []


@given(
    st.lists(st.tuples(st.floats(0.035, 0.2), st.booleans(), st.booleans(), st.floats(-0.004, 0.004)),
             min_size=1, max_size=60),
    st.integers(0, 2**40),
)
def test_never_gives_a_part_another_parts_frame(events: list[tuple[float, bool, bool, float]], base: int) -> None:
    """Random pitch, frame drops, spurious frames (between parts, as a glitch on the trigger line
    would make them) and timing jitter: every match is the truth."""
    m = FrameMatcher(W)
    times = [1.0]
    for pitch, *_ in events:
        times.append(times[-1] + pitch)
    counter, truth = base, {}
    matches: list[Match] = []
    for seq, ((_, drop, spurious, jitter), t) in enumerate(zip(events, times[1:], strict=False), start=1):
        matches += m.on_trigger(seq, t, t)
        counter += 1
        if not drop:
            truth[counter] = seq
            matches += m.on_frame(counter, t + jitter, t + abs(jitter))
        if spurious and seq < len(events):
            counter += 1
            between = (t + times[seq + 1]) / 2
            matches += m.on_frame(counter, between, between)
    for match in matches:
        assert truth.get(match.frame_counter) == match.seq
