"""`sim-line --hold`: the conveyor starts only on a "go" line from the runner (its panel is
subscribed by then); anything else, an EOF or silence, is a bounded "no" that says why."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from sim.line import _linger, _wait_for_go


class Pipe:
    """The simulator's stdin: the test writes into it and closes it once."""

    def __init__(self) -> None:
        self.read_fd, self._write_fd = os.pipe()
        self._open = True

    def write(self, data: bytes) -> None:
        os.write(self._write_fd, data)

    def close(self) -> None:
        if self._open:
            self._open = False
            os.close(self._write_fd)


@pytest.fixture
def stdin(monkeypatch: pytest.MonkeyPatch) -> Iterator[Pipe]:
    pipe = Pipe()
    with os.fdopen(pipe.read_fd, "r") as reader:  # text, as sys.stdin is
        monkeypatch.setattr(sys, "stdin", reader)
        try:
            yield pipe
        finally:
            pipe.close()


def test_go_starts_the_line_even_split_across_reads(stdin: Pipe) -> None:
    stdin.write(b"g")
    later = threading.Timer(0.1, stdin.write, (b"o\n",))
    later.start()
    try:
        assert _wait_for_go(5.0) is None
    finally:
        later.cancel()


def test_after_go_the_end_of_stdin_still_ends_the_linger(stdin: Pipe) -> None:
    stdin.write(b"go\n")
    assert _wait_for_go(5.0) is None
    stdin.close()
    started = time.monotonic()
    _linger(5.0)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(("sent", "reason"), [(b"stop\n", "got b'stop'"), (b"", "closed")])
def test_another_line_or_eof_does_not_and_says_so(stdin: Pipe, sent: bytes, reason: str) -> None:
    stdin.write(sent)
    stdin.close()
    refused = _wait_for_go(5.0)
    assert refused is not None and reason in refused


def test_silence_ends_at_the_timeout(stdin: Pipe) -> None:
    started = time.monotonic()
    refused = _wait_for_go(0.2)
    assert refused is not None and "within 0.2 s" in refused
    assert 0.2 <= time.monotonic() - started < 2.0
