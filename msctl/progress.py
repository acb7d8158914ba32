"""The progress of a wait (`msctl config set --wait`, `msctl servers maintenance --wait`).

On a terminal, one live line rewritten in place (`\\r`, padded over what it replaces, cut to
the terminal's width). Elsewhere (a pipe, a file, a CI log) plain lines: one for the first
update, then one whenever the count changes but at most one every PLAIN_EVERY seconds, and one
every PLAIN_QUIET seconds while nothing moves; the latest update is printed before the end (a
last line, or the error), so a log always shows the final count.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from types import TracebackType

import click

PLAIN_EVERY = 2.0  # seconds: the most plain lines a wait prints is one per this
PLAIN_QUIET = 10.0  # seconds: a plain line at least this often, even when nothing moved


class Progress:
    """Use as a context manager; `update` on every look, `done` at the end."""

    def __init__(
        self, *, tty: bool | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.tty = sys.stdout.isatty() if tty is None else tty
        self.clock = clock
        self._latest: tuple[str, object] | None = None  # the last update: line and count
        self._printed: tuple[str, object] | None = None  # the last one printed
        self._printed_at = 0.0
        self._live = 0  # the width of the live line on the terminal (0: none open)

    def update(self, line: str, count: object) -> None:
        """The state now: `line` to show, `count` what a plain line is printed for a change of."""
        self._latest = (line, count)
        if self.tty:
            self._show_live(line)
            return
        since = self.clock() - self._printed_at
        if (
            self._printed is None
            or (count != self._printed[1] and since >= PLAIN_EVERY)
            or since >= PLAIN_QUIET
        ):
            self._print_latest()

    def done(self, line: str | None = None) -> None:
        """End the progress (the latest update stays on screen), then print `line`."""
        self._close()
        if line is not None:
            click.echo(line)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._close()  # before the error's message, which must not land on the live line

    def _close(self) -> None:
        if self._live:
            click.echo("")
            self._live = 0
        elif not self.tty and self._latest is not None and self._latest != self._printed:
            self._print_latest()

    def _print_latest(self) -> None:
        assert self._latest is not None
        click.echo(self._latest[0])
        self._printed = self._latest
        self._printed_at = self.clock()

    def _show_live(self, line: str) -> None:
        width = max(shutil.get_terminal_size().columns - 1, 20)
        line = line[:width]
        click.echo("\r" + line.ljust(self._live), nl=False)
        self._live = max(len(line), 1)
