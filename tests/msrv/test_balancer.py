"""Balancer logic against fakeredis: what is pushed, to whom, and when nothing is."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Awaitable, Callable

import fakeredis

from common.configstore import ConfigStore
from common.keys import Keys
from common.protocol import Message, MsList, Ready
from common.settings import EffectiveSettings
from msrv.balancer import Balancer, Held, Offer, is_stale, offer_for

KEYS = Keys("unit")


class FakeAgent:
    def __init__(self, host_id: int, zone: str = "z", cluster: str = "c", held: Held | None = None):
        self._id, self._zone, self._cluster = host_id, zone, cluster
        self.held = held or Held((), None, None)
        self.pending: Offer | None = None  # this fake acks every list at once
        self.sent: list[Message] = []

    @property
    def host_id(self) -> int:
        return self._id

    @property
    def zone(self) -> str:
        return self._zone

    @property
    def cluster(self) -> str:
        return self._cluster

    def send(self, message: Message) -> None:
        self.sent.append(message)

    def deliver(self, offer: Offer, version: int) -> None:
        self.send(MsList(list(offer.ms_list), offer.algorithm, offer.check_interval, version))
        self.held = Held(offer.ms_list, offer.algorithm, offer.check_interval)

    @property
    def lists(self) -> list[list[str]]:
        return [m.ms_list for m in self.sent if isinstance(m, MsList)]


async def admit(balancer: Balancer, agent: FakeAgent, *, ranked: bool = False) -> None:
    """What a session does once registered: catch the zone's ids up with what its registration
    saw (computed here from the sorted set), then admit, with no await."""
    redis = balancer.redis
    ids = [int(m) for m in await redis.zrange(KEYS.zone_hosts(agent.zone), 0, -1)]
    rank = bisect.bisect_left(ids, agent.host_id) if ranked else len(ids)
    await balancer.ranks.catch_up(
        agent.zone, agent.host_id, ranked=ranked, rank=rank, count=len(ids)
    )
    balancer.admit(agent)


def run(work: Callable[[fakeredis.FakeAsyncRedis, ConfigStore], Awaitable[None]]) -> None:
    async def main() -> None:
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        try:
            await work(redis, ConfigStore(redis, KEYS))
        finally:
            await redis.aclose()

    asyncio.run(main())


def test_offer_none_when_host_unset_and_staleness_rules() -> None:
    unset = EffectiveSettings(None, "roundrobin", 0, 5, 3)
    assert offer_for(unset, [1, 2], 1) is None
    rr = EffectiveSettings(("a", "b", "c"), "roundrobin", 9, 5, 3)
    offer = offer_for(rr, [1, 5, 10], 5)
    assert offer == Offer(("b", "c", "a"), "roundrobin", 9)
    assert not is_stale(offer, Held(("b", "c", "a"), "roundrobin", 9))
    assert is_stale(offer, Held(("b", "c", "a"), "roundrobin", 0))  # interval changed
    assert is_stale(offer, Held(("a", "b", "c"), "roundrobin", 9))
    assert is_stale(offer, Held(("b", "c", "a"), "static", 9))
    shuffled = Offer(("c", "a", "b"), "shuffle", 0)
    assert not is_stale(shuffled, Held(("a", "b", "c"), "shuffle", 0))  # same set


def test_switch_pushes_only_to_agents_whose_list_changed() -> None:
    async def work(redis: fakeredis.FakeAsyncRedis, store: ConfigStore) -> None:
        await store.set("host", "a,b,c")
        await store.set("indirect.agent.lb.algorithm", "roundrobin")
        await redis.zadd(KEYS.zone_hosts("z"), {str(i): i for i in (1, 2, 3)})
        balancer = Balancer(redis, KEYS, "me:8250")
        await balancer.load()
        current = FakeAgent(1, held=Held(("a", "b", "c"), "roundrobin", 0))
        stale = FakeAgent(2, held=Held(("a", "b", "c"), "roundrobin", 0))
        for agent in (current, stale):
            await admit(balancer, agent)
        assert [type(m) for m in current.sent] == [Ready]
        assert stale.lists == [["b", "c", "a"]]

        await balancer.recompute_zone("z")  # nothing changed: nothing sent
        assert (len(current.sent), len(stale.sent)) == (1, 2)

        await redis.zrem(KEYS.zone_hosts("z"), "1")  # host 1 retired: ranks move
        await balancer.recompute_zone("z")
        assert stale.lists[-1] == ["a", "b", "c"]

    run(work)


def test_admission_reads_the_zone_only_when_the_registration_saw_it_differently() -> None:
    async def work(redis: fakeredis.FakeAsyncRedis, store: ConfigStore) -> None:
        await store.set("host", "a,b,c")
        await store.set("indirect.agent.lb.algorithm", "roundrobin")
        balancer = Balancer(redis, KEYS, "me:8250")
        await balancer.load()
        reads = 0
        original = balancer.ranks.read

        async def counting(zone: str) -> list[int]:
            nonlocal reads
            reads += 1
            return await original(zone)

        balancer.ranks.read = counting  # type: ignore[method-assign]
        agents = []
        for host_id in (3, 7, 8, 20):  # registered here: each joins the cached ids
            await redis.zadd(KEYS.zone_hosts("z"), {str(host_id): host_id})
            agent = FakeAgent(host_id)
            await admit(balancer, agent, ranked=True)
            agents.append(agent)
        assert reads == 1  # the zone was read once, at the first admission
        assert [a.lists[0][0] for a in agents] == ["a", "b", "c", "a"]
        # hosts registered elsewhere, their event not here yet: the next registration sees
        # another zone than the cached one, so the zone is read again
        await redis.zadd(KEYS.zone_hosts("z"), {"21": 21, "22": 22})
        late = FakeAgent(22)
        await admit(balancer, late, ranked=True)
        assert reads == 2
        assert late.lists == [["c", "a", "b"]]  # rank 5 of [3, 7, 8, 20, 21, 22]
        # a host retired: its event's recompute corrects every list that changed
        await redis.zrem(KEYS.zone_hosts("z"), "3")
        await balancer.recompute_zone("z")
        assert reads == 3 and late.lists[-1] == ["b", "c", "a"]  # rank 4 of 5
        assert [a.lists[-1][0] for a in agents] == ["c", "a", "b", "c"]  # 3 is gone: ranks last
        # a host of an unranked type ranks last and does not join the ids
        storage = FakeAgent(30)
        await admit(balancer, storage)
        assert storage.lists == [["c", "a", "b"]]  # rank 5 of 5 ids
        assert reads == 3

    run(work)


def test_cached_ids_of_an_unserved_zone_are_forgotten_on_its_event() -> None:
    async def work(redis: fakeredis.FakeAsyncRedis, store: ConfigStore) -> None:
        await store.set("host", "a,b")
        await store.set("indirect.agent.lb.algorithm", "roundrobin")
        await redis.zadd(KEYS.zone_hosts("z"), {"1": 1, "2": 2})
        balancer = Balancer(redis, KEYS, "me:8250")
        await balancer.load()
        first = FakeAgent(2)
        await admit(balancer, first)
        balancer.remove(first)  # nobody served in z: no recompute keeps its ids current
        await redis.zrem(KEYS.zone_hosts("z"), "1")
        balancer.request_zone("z")  # the event of the change
        again = FakeAgent(2)
        await admit(balancer, again)
        assert again.lists == [["a", "b"]]  # rank 0 of [2], read again

    run(work)


def test_cluster_override_changes_only_that_cluster() -> None:
    async def work(redis: fakeredis.FakeAsyncRedis, store: ConfigStore) -> None:
        await store.set("host", "a,b")
        balancer = Balancer(redis, KEYS, "me:8250")
        await balancer.load()
        east, west = FakeAgent(1, cluster="east"), FakeAgent(2, cluster="west")
        for agent in (east, west):
            await admit(balancer, agent)
        await store.set("indirect.agent.lb.check.interval", "15", cluster="east")
        assert await balancer.apply_settings(trusted=True)
        assert [m.check_interval for m in east.sent if isinstance(m, MsList)] == [0, 15]
        assert [m.check_interval for m in west.sent if isinstance(m, MsList)] == [0]

    run(work)


def test_settings_older_than_applied_are_kept_unless_someone_changed_them() -> None:
    async def work(redis: fakeredis.FakeAsyncRedis, store: ConfigStore) -> None:
        await store.set("host", "a,b")
        await store.set("indirect.agent.lb.algorithm", "roundrobin")
        balancer = Balancer(redis, KEYS, "me:8250")
        await balancer.load()
        agent = FakeAgent(1)
        await admit(balancer, agent)
        await redis.flushall()  # Redis came back empty
        assert not await balancer.apply_settings(trusted=False)
        assert balancer.regressed and balancer.snapshot.version == 2
        assert len(agent.lists) == 1
        await store.set("host", "a,b,c")  # the operator sets it again: version 1
        assert await balancer.apply_settings(trusted=True)
        assert agent.lists[-1] == ["a", "b", "c"] and not balancer.regressed

    run(work)


def test_requests_are_coalesced_by_the_worker() -> None:
    async def work(redis: fakeredis.FakeAsyncRedis, store: ConfigStore) -> None:
        await store.set("host", "a,b")
        balancer = Balancer(redis, KEYS, "me:8250")
        await balancer.load()
        await admit(balancer, FakeAgent(1))
        reads = 0
        original = balancer.ranks.read
        first_read = asyncio.Event()

        async def counting(zone: str) -> list[int]:
            nonlocal reads
            reads += 1
            first_read.set()
            return await original(zone)

        balancer.ranks.read = counting  # type: ignore[method-assign]
        for _ in range(50):
            balancer.request_zone("z")
        balancer.request_zone("unserved")  # no agent there: ignored
        worker = asyncio.create_task(balancer.run())
        try:
            await first_read.wait()
            for _ in range(10):
                await asyncio.sleep(0)
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
        assert reads == 1

    run(work)
