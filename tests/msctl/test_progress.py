"""The progress of a wait (msctl.progress): a live line on a terminal, plain lines elsewhere."""

from __future__ import annotations

import pytest

from msctl.config_cmd import progress_line
from msctl.progress import PLAIN_EVERY, PLAIN_QUIET, Progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_progress_line() -> None:
    line = progress_line(7, 812, 1000, 140.4, 3.21)
    assert line == "config version 7: 812/1000 connected hosts hold it, 140/s, 3.2 s"


def test_on_a_terminal_one_line_is_rewritten_in_place(capsys: pytest.CaptureFixture[str]) -> None:
    with Progress(tty=True) as progress:
        progress.update("held 10/100", 10)
        progress.update("held 9/100", 9)  # shorter: padded over the longer one
        progress.update("held 100/100", 100)
        progress.done("every host holds it")
    out = capsys.readouterr().out
    assert out == "\rheld 10/100\rheld 9/100 \rheld 100/100\nevery host holds it\n"


def test_on_a_terminal_an_error_starts_on_a_line_of_its_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(RuntimeError), Progress(tty=True) as progress:
        progress.update("held 1/2", 1)
        raise RuntimeError
    assert capsys.readouterr().out == "\rheld 1/2\n"


def test_elsewhere_plain_lines_at_most_every_2_s_and_the_latest_before_the_end(
    capsys: pytest.CaptureFixture[str],
) -> None:
    clock = Clock()
    with Progress(tty=False, clock=clock) as progress:
        progress.update("held 0/100 at 0.0", 0)  # the first: printed
        clock.now += 0.5
        progress.update("held 40/100 at 0.5", 40)  # a change, too soon
        clock.now += PLAIN_EVERY
        progress.update("held 60/100 at 2.5", 60)  # a change, 2.5 s after the last line
        clock.now += PLAIN_EVERY
        progress.update("held 60/100 at 4.5", 60)  # no change
        clock.now += PLAIN_QUIET - PLAIN_EVERY
        progress.update("held 60/100 at 12.5", 60)  # no change for 10 s: printed all the same
        clock.now += 0.5
        progress.update("held 100/100 at 13.0", 100)  # too soon: printed before the end
        progress.done("every host holds it")
    assert capsys.readouterr().out.splitlines() == [
        "held 0/100 at 0.0",
        "held 60/100 at 2.5",
        "held 60/100 at 12.5",
        "held 100/100 at 13.0",
        "every host holds it",
    ]


def test_elsewhere_an_error_follows_the_latest_count(capsys: pytest.CaptureFixture[str]) -> None:
    clock = Clock()
    with pytest.raises(RuntimeError), Progress(tty=False, clock=clock) as progress:
        progress.update("left 3", 3)
        clock.now += 0.5
        progress.update("left 2", 2)
        raise RuntimeError
    assert capsys.readouterr().out == "left 3\nleft 2\n"
    with Progress(tty=False, clock=clock) as progress:  # what was printed is not printed again
        progress.update("left 3", 3)
        progress.done()
    assert capsys.readouterr().out == "left 3\n"
