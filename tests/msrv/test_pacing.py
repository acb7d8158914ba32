"""Pacing (msrv.pacing): which pushes move an agent, and the schedule of their slots (a fake
clock); a real server giving the moving agents of one push their own delays; and 300 real agents
leaving a server at the move rate."""

from __future__ import annotations

import asyncio
import bisect
import datetime
import itertools
import re
import signal

import pytest

from common.protocol import MsList
from msrv.lifecycle import _encoded_list, _with_delay
from msrv.pacing import MIN_DELAY, SETTLE, MovePacer, moves
from tests.support.agents import SwarmProcess
from tests.support.fleet import fleet
from tests.support.keystores import join_token
from tests.support.msrv_process import MsrvProcess
from tests.support.wire_client import WireClient


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_slots_are_one_over_the_rate_apart_from_the_settle_then_from_the_last():
    clock = FakeClock()
    pacer = MovePacer(clock)
    slots = [pacer.book(100.0) for _ in range(300)]
    assert slots[0] == pytest.approx(1000 + SETTLE + 0.01)
    assert slots[-1] == pytest.approx(1000 + SETTLE + 3.0)
    assert all(b - a == pytest.approx(0.01) for a, b in itertools.pairwise(slots))
    assert [pacer.delay(s) for s in slots[:3]] == [SETTLE + 0.01, SETTLE + 0.02, SETTLE + 0.03]
    clock.now = 1001.0  # a second later the schedule still runs: new moves queue behind
    assert pacer.book(100.0) == pytest.approx(1000 + SETTLE + 3.01)
    assert pacer.delay(1000 + SETTLE + 3.01) == pytest.approx(SETTLE + 2.01)
    clock.now = 2000.0  # idle: the next slot counts from now (and the settle) again
    assert pacer.book(200.0) == pytest.approx(2000 + SETTLE + 0.005)


def test_an_agent_keeps_its_slot_while_it_is_ahead_and_a_move_is_never_undelayed():
    clock = FakeClock()
    pacer = MovePacer(clock)
    first = pacer.book(10.0)
    second = pacer.book(10.0)
    assert pacer.book(10.0, held=first) == first  # pushed again while it waits
    clock.now = second + 5
    late = pacer.book(10.0, held=second)  # its slot is past: a new one
    assert late == pytest.approx(clock.now + SETTLE + 0.1)
    assert pacer.delay(clock.now - 1) == MIN_DELAY  # overdue: go now, but never with delay 0
    assert pacer.book(10.0) == pytest.approx(late + 0.1)
    assert pacer.book(1000.0) == pytest.approx(late + 0.101)  # a new rate applies at once


@pytest.mark.parametrize(
    ("before", "after", "current", "moved"),
    [
        (("a", "b"), ("b", "a"), "a", True),  # first entry changed away from where it is
        (("a", "b"), ("b",), "a", True),  # its server left the list
        (("b", "a"), ("c", "a"), "a", True),  # already off-first; the first entry changed
        (("c", "a"), ("c", "a"), "a", False),  # the same first entry again: the checker's job
        (("c", "a"), ("c",), "a", True),  # ...unless its server left
        (("b", "a"), ("a", "b"), "a", False),  # to where it is
        (("a", "b"), ("a:8250", "b"), "a", False),  # the same server, spelt with its port
        (("a", "b"), ("b", "a:8250"), "a:8250", True),
        ((), ("b", "a"), "a", True),  # it reported no list
        (("a", "b"), (), "a", False),
        (("a", "b"), ("b", "a"), "", False),  # no dialled address (not an agentd): not paced
    ],
)
def test_moves_follows_the_agents_rule(before, after, current, moved):
    assert moves(before, after, current) is moved


def test_a_cached_list_takes_a_delay_without_another_encoding():
    from common.assignment import Assignment
    from common.protocol import decode

    encoded = _encoded_list(Assignment(("b", "a"), "static", 0, 5, 3), 7)
    assert decode(encoded) == MsList(["b", "a"], "static", 0, 7, 5, 3, delay=0.0)
    assert decode(_with_delay(encoded, 1.2345)) == MsList(
        ["b", "a"], "static", 0, 7, 5, 3, delay=1.234
    )


async def _next_list(client: WireClient) -> MsList:
    """The next list pushed to `client` (the push follows the setting's event: a ping answered
    at once would not wait for it), and nothing else pushed with it."""
    while True:
        message = await client.next(timeout=10)
        if isinstance(message, MsList):
            assert not [m for m in await client.sync() if isinstance(m, MsList)]
            return message
        assert message is not None, "connection closed"


@pytest.mark.timeout(60)
def test_one_push_gives_the_agents_it_moves_their_own_delays(redis_url, namespace):
    """20 agents on ms1, 2 on ms2; `host` reordered so that ms2 comes first, at 50 moves a
    second: ms1's agents get delays 20 ms apart from the settle on, ms2's (staying) get 0."""

    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=2) as f:
            first, second = f.addresses
            await f.set("host", f"{first},{second}")
            await f.set("indirect.agent.lb.move.rate", "50")
            movers, stayers = [], []
            for i in range(22):
                server = 0 if i < 20 else 1
                client = await f.connect(server, f"h{i}")
                await client.startup(
                    ms_list=[first, second], algorithm="static", dialled=f.addresses[server]
                )
                (movers if server == 0 else stayers).append(client)
            await f.set("host", f"{second},{first}")
            delays = []
            for client in movers:
                pushed = await _next_list(client)
                assert pushed.ms_list == [second, first]
                delays.append(pushed.delay)
            for client in stayers:
                assert (await _next_list(client)).delay == 0.0
            ordered = sorted(delays)
            assert SETTLE <= ordered[0] <= SETTLE + 0.05, ordered
            steps = [b - a for a, b in itertools.pairwise(ordered)]
            assert all(0.015 <= step <= 0.025 for step in steps), ordered
            assert ordered[-1] - ordered[0] == pytest.approx(19 / 50, abs=0.02)

    asyncio.run(scenario())


STARTED = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) DEBUG .*: (\S+): host \d+ \(.*\) from .* started "
)


def started_at(server: MsrvProcess) -> list[float]:
    """When each host's session started on `server`, by the server's own log (ms)."""
    times = []
    for line in server.lines:
        found = STARTED.match(line)
        if found and found.group(2) == server.server_id:
            stamp = datetime.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
            times.append(stamp.timestamp())
    return sorted(times)


def busiest_window(times: list[float], width: float) -> int:
    """The most arrivals in any window [t, t + width) that starts at an arrival."""
    return max(bisect.bisect_left(times, t + width) - i for i, t in enumerate(times))


@pytest.mark.timeout(120)
def test_300_agents_leave_a_server_at_the_move_rate(redis_url, namespace, tmp_path):
    """300 agents (one swarm) on ms1 of two; ms1 leaves `host` at move.rate 100/s: they arrive
    on ms2 over 3 s (± 20%), make-before-break, and no 100 ms sees more than 1.5x the mean."""
    count, rate = 300, 100.0

    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=2, verbose=True) as f:
            ms1, ms2 = f.servers
            await f.set("host", f"{ms1.address},{ms2.address}")  # static: all on ms1
            await f.set("indirect.agent.lb.move.rate", "100")
            token = await join_token(redis_url, namespace, uses=count)
            swarm = SwarmProcess(tmp_path / "swarm", count, ",".join(f.addresses), token=token)
            try:
                await swarm.start(ready=rf"swarm: {count}/{count} agents connected", timeout=60)
                assert started_at(ms2) == []
                await f.set("host", ms2.address)
                on_ms2 = rf"\({re.escape(ms2.address)}={count}\)"
                await swarm.wait_for(rf"swarm: {count}/{count} agents connected {on_ms2}", 20)
                arrivals = started_at(ms2)
                assert len(arrivals) == count
                took = arrivals[-1] - arrivals[0]
                mean = count / (took / 0.1)  # arrivals per 100 ms
                peak = busiest_window(arrivals, 0.1)
                figures = f"{count} moves in {took:.2f} s; busiest 100 ms: {peak}, mean {mean:.1f}"
                print(figures)
                assert (count / rate) * 0.8 <= took <= (count / rate) * 1.2, figures
                assert peak <= 1.5 * mean, figures
                lost = swarm.matching("lost server")
                assert lost == [], "\n".join(lost)  # make-before-break
                assert await swarm.stop() == 0
            finally:
                await swarm.stop(signal.SIGKILL)

    asyncio.run(scenario())
