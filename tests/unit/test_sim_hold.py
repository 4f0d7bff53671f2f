"""`sim-line --hold`: the conveyor starts only on a "go" line from the runner (its panel is
subscribed by then); anything else, an EOF or silence, is a bounded "no"."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import pytest

from sim.line import _wait_for_go


@pytest.fixture
def stdin_pipe(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    read_fd, write_fd = os.pipe()
    with os.fdopen(read_fd, "rb") as reader:
        monkeypatch.setattr(sys, "stdin", reader)
        yield write_fd
    try:
        os.close(write_fd)
    except OSError:
        pass


def test_go_starts_the_line(stdin_pipe: int) -> None:
    os.write(stdin_pipe, b"g")
    os.write(stdin_pipe, b"o\n")
    assert _wait_for_go(5.0)


@pytest.mark.parametrize("sent", [b"stop\n", b""])
def test_another_line_or_eof_does_not(stdin_pipe: int, sent: bytes) -> None:
    os.write(stdin_pipe, sent)
    os.close(stdin_pipe)
    assert not _wait_for_go(5.0)


def test_silence_ends_at_the_timeout(stdin_pipe: int) -> None:
    started = time.monotonic()
    assert not _wait_for_go(0.2)
    assert 0.2 <= time.monotonic() - started < 2.0
