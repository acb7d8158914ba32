"""Pacing: at most `indirect.agent.lb.move.rate` agents per second leave this server.

A push that tells an agent on this server to move (its new list no longer holds this server, or
its first entry changed to another server: `moves`, the agent's own rule in agentd.agent) books
the next free slot of this server's schedule: 1/rate after the slot before, or, when the
schedule is idle, 1/rate after SETTLE from now. Its `ms_list` carries the delay until that slot.
A push that moves nobody carries delay 0, and so does one from a server that paces nothing: the
agent tells the two apart by what the list says, not by the delay, so a move is never booked at
0 (MIN_DELAY).

SETTLE: a list change or a maintenance reaches every agent of the fleet at once; each saves and
acks its list, and every server records the acks. Moves begin once that storm has passed, so
that their arrivals do not meet servers busy with it (300 agents of one swarm moved at 100/s
from the push on: the first 100-300 ms of arrivals came in one burst of 20-50; from 0.5 s on,
their busiest 100 ms held 12-14, the mean 10).

An agent told to move again while it waits (a second push of the list, a ping setting changed)
keeps the slot it was given, so pushes that follow one another do not send it to the back.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import lru_cache

from common.addresses import parse_address
from common.errors import ValidationError

MIN_DELAY = 0.001  # seconds: the delay of a move (the wire carries milliseconds)
# seconds from a push to the first move it orders: at a push every agent of the fleet saves and
# acks its list and every server records the acks; moves wait for that storm to pass instead of
# meeting servers (and, in a swarm, agents) busy with it
SETTLE = 0.5


class MovePacer:
    """One server's schedule of moves."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock  # the event loop's clock (loop.time() is time.monotonic())
        self._last = -math.inf  # the latest slot handed out

    def book(self, rate: float, held: float | None = None) -> float:
        """When (on `clock`) the next agent told to move may go. `held`: the slot the agent was
        given by an earlier push, kept while it is still ahead."""
        now = self.clock()
        if held is not None and held > now:
            return held
        self._last = max(now + SETTLE, self._last) + 1.0 / rate
        return self._last

    def delay(self, slot: float) -> float:
        """Seconds from now until `slot`, in milliseconds, never 0 (0 means "not paced")."""
        return max(MIN_DELAY, round(slot - self.clock(), 3))


@lru_cache(maxsize=4096)
def _endpoint(entry: str) -> tuple[str, int] | str:
    try:
        return parse_address(entry).endpoint()
    except ValidationError:
        return entry


@lru_cache(maxsize=1024)
def moves(before: tuple[str, ...], after: tuple[str, ...], current: str) -> bool:
    """Whether an agent connected through `current` (the address it dialled), holding `before`,
    moves when it gets `after`: it is not on the new first entry, and either its server left the
    list or the first entry changed (agentd.agent `_should_move`). An agent that named no
    address (`current` empty: not an agentd) is not paced."""
    if not current or not after or _endpoint(current) == _endpoint(after[0]):
        return False
    if _endpoint(current) not in {_endpoint(entry) for entry in after}:
        return True
    return not before or _endpoint(before[0]) != _endpoint(after[0])
