"""The preferred-host checker's schedule (unit level: its own event loop, no network)."""

import asyncio
import time
from types import SimpleNamespace

from agentd.checker import PreferredChecker


class FixedPhase:
    def uniform(self, low, high):
        return 0.05


def test_a_late_tick_does_not_shift_the_later_ones():
    ticks = []

    async def scenario():
        agent = SimpleNamespace(
            check_interval=0.3, interval_changed=asyncio.Event(), rng=FixedPhase(), label="t"
        )
        checker = PreferredChecker(agent)
        started = time.monotonic()

        three = asyncio.Event()

        async def check_once():
            ticks.append(time.monotonic() - started)
            if len(ticks) == 3:
                three.set()
            if len(ticks) == 1:
                time.sleep(0.45)  # noqa: ASYNC251 - the whole process is busy (a failover)
            return False

        checker.check_once = check_once
        task = asyncio.create_task(checker.run())
        await asyncio.wait_for(three.wait(), 5)
        task.cancel()

    asyncio.run(scenario())
    # phase 0.05, then the grid 0.35 (missed: busy until 0.50), 0.65, 0.95; a schedule counted
    # from the late tick would have given 0.80 and 1.10
    assert 0.04 <= ticks[0] < 0.15
    assert 0.63 <= ticks[1] < 0.76, ticks
    assert 0.93 <= ticks[2] < 1.06, ticks


def test_a_move_its_server_paced_is_not_taken_early():
    switched = []

    async def switch_to(address, why):
        switched.append(address)
        return True

    agent = SimpleNamespace(
        server="ms1", preferred="ms2", endpoint=lambda a: a, moving=True, switch_to=switch_to
    )
    checker = PreferredChecker(agent)
    assert asyncio.run(checker.check_once()) is False
    agent.moving = False
    assert asyncio.run(checker.check_once()) is True
    assert switched == ["ms2"]
