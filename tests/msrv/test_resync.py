"""Keeping in step with Redis (msrv.resync) against fakeredis: which settings are applied,
what is kept after Redis lost its data, and requests coalesced."""

from __future__ import annotations

import asyncio
import contextlib

import fakeredis
import pytest

from common.configstore import ConfigSnapshot, ConfigStore
from common.keys import Keys
from msrv.balancer import Balancer
from msrv.registry import HostRegistry
from msrv.resync import Resync, Verdict, judge
from msrv.table import SessionTable
from tests.msrv.test_balancer import FakeHost, admit

KEYS = Keys("unit")


def snap(epoch: str | None, version: int) -> ConfigSnapshot:
    return ConfigSnapshot(version, {}, epoch=epoch)


@pytest.mark.parametrize(
    ("applied", "found", "after_event", "verdict"),
    [
        (snap("e1", 3), snap("e1", 3), False, Verdict.SAME),
        (snap("e1", 3), snap("e1", 4), False, Verdict.APPLY),
        (snap("e1", 3), snap("e1", 2), False, Verdict.LOST),  # restored from an older copy
        (snap("e1", 3), snap("e1", 2), True, Verdict.APPLY),  # ...and someone changed it since
        (snap("e1", 3), snap(None, 0), False, Verdict.LOST),  # emptied
        (snap("e1", 3), snap(None, 0), True, Verdict.LOST),
        (snap("e1", 3), snap("e2", 2), False, Verdict.APPLY),  # emptied, then set again
        (snap("e1", 2), snap("e2", 2), False, Verdict.APPLY),  # ...to the same version number
        (snap(None, 0), snap("e1", 1), False, Verdict.APPLY),  # the first settings ever
        (snap(None, 4), snap(None, 0), False, Verdict.LOST),  # settings from before epochs
    ],
)
def test_judge(
    applied: ConfigSnapshot, found: ConfigSnapshot, after_event: bool, verdict: Verdict
) -> None:
    assert judge(applied, found, after_event=after_event) == verdict


async def _setup() -> tuple[fakeredis.FakeAsyncRedis, ConfigStore, Resync, SessionTable[FakeHost]]:
    redis = fakeredis.FakeAsyncRedis(decode_responses=True)
    store = ConfigStore(redis, KEYS)
    table: SessionTable[FakeHost] = SessionTable()
    balancer = Balancer(redis, KEYS, table)
    resync = Resync("ms1", store, balancer, HostRegistry(redis, KEYS), table)
    return redis, store, resync, table


def test_redis_reset_and_set_again_to_the_same_version_is_applied() -> None:
    """Defect: with the servers at version 2, Redis restarted empty, then `host` and the
    algorithm set again (version 2 again): the servers took it as unchanged."""

    async def main() -> None:
        redis, store, resync, table = await _setup()
        await store.set("host", "a,b")
        await store.set("indirect.agent.lb.algorithm", "roundrobin")
        await resync.load()
        host = FakeHost(1)
        await admit(resync.balancer, table, host)
        await redis.flushall()  # Redis came back empty
        assert not await resync.check_settings(after_event=False)
        assert resync.regressed and resync.balancer.snapshot.version == 2
        assert host.lists == [["a", "b"]]  # agents' lists are never wiped
        await store.set("host", "c,d")
        await store.set("indirect.agent.lb.algorithm", "roundrobin")  # version 2 again
        assert await resync.check_settings(after_event=False)  # a poll finds it
        assert host.lists[-1] == ["c", "d"] and not resync.regressed
        await redis.aclose()

    asyncio.run(main())


def test_requests_are_coalesced_and_unserved_zones_forgotten() -> None:
    async def main() -> None:
        redis, store, resync, table = await _setup()
        await store.set("host", "a,b")
        await resync.load()
        await admit(resync.balancer, table, FakeHost(1))
        reads = 0
        original = resync.balancer.ranks.read
        first_read = asyncio.Event()

        async def counting(zone: str) -> list[int]:
            nonlocal reads
            reads += 1
            first_read.set()
            return await original(zone)

        resync.balancer.ranks.read = counting  # type: ignore[method-assign]
        for _ in range(50):
            resync.on_event({"type": "hosts.changed", "zone": "z"})
        await redis.zadd(KEYS.zone_hosts("elsewhere"), {"9": 9})
        await resync.balancer.ranks.read("elsewhere")
        resync.on_event({"type": "hosts.changed", "zone": "elsewhere"})  # nobody served there
        assert resync.balancer.ranks.get("elsewhere") is None
        worker = asyncio.create_task(resync.run())
        try:
            await first_read.wait()
            for _ in range(10):
                await asyncio.sleep(0)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        assert reads == 2  # one for "elsewhere" above, one for the 50 events of "z"
        await redis.aclose()

    asyncio.run(main())
