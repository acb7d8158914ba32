"""Balancer logic against fakeredis: what is pushed, to whom, and when nothing is."""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Awaitable, Callable

import fakeredis

from common.assignment import Assignment, Holding
from common.configstore import ConfigStore
from common.keys import Keys
from common.protocol import MsList
from msrv.balancer import Balancer, push_due
from msrv.table import SessionTable

KEYS = Keys("unit")


class FakeHost:
    """A started session as the balancer sees it; it acks every list at once unless told not to."""

    def __init__(self, host_id: int, zone: str = "z", cluster: str = "c", *, acks: bool = True):
        self.host_id, self.zone, self.cluster = host_id, zone, cluster
        self.started = True
        self.acks = acks
        self.holding: Holding | Assignment = Holding((), None)
        self.pending: Assignment | None = None
        self.sent: list[MsList] = []

    def deliver(self, assignment: Assignment, version: int) -> None:
        a = assignment
        message = MsList(
            list(a.ms_list), a.algorithm, a.check_interval, version, a.ping_interval, a.ping_timeout
        )
        self.sent.append(message)
        if self.acks:
            self.holding = assignment
        else:
            self.pending = assignment

    @property
    def lists(self) -> list[list[str]]:
        return [m.ms_list for m in self.sent]


async def admit(balancer: Balancer, table: SessionTable[FakeHost], host: FakeHost, *,
                ranked: bool = False) -> None:  # fmt: skip
    """What a session does once registered: catch the zone's ids up with what its registration
    saw (computed here from the sorted set), join the table, then the push after `ready`."""
    redis = balancer.ranks.redis
    ids = [int(m) for m in await redis.zrange(KEYS.zone_hosts(host.zone), 0, -1)]
    rank = bisect.bisect_left(ids, host.host_id) if ranked else len(ids)
    await balancer.ranks.catch_up(host.zone, host.host_id, ranked=ranked, rank=rank, count=len(ids))
    table.start(host)
    assignment = balancer.assignment(host)
    if assignment is not None and push_due(assignment, host):
        host.deliver(assignment, balancer.snapshot.version)


Work = Callable[
    [fakeredis.FakeAsyncRedis, ConfigStore, Balancer, SessionTable[FakeHost]], Awaitable[None]
]


def run(work: Work) -> None:
    async def main() -> None:
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        try:
            store = ConfigStore(redis, KEYS)
            table: SessionTable[FakeHost] = SessionTable()
            balancer = Balancer(redis, KEYS, table)
            await work(redis, store, balancer, table)
        finally:
            await redis.aclose()

    asyncio.run(main())


def test_switch_pushes_only_to_hosts_whose_list_changed() -> None:
    async def work(redis, store, balancer, table) -> None:  # type: ignore[no-untyped-def]
        await store.set("host", "a,b,c")
        await store.set("indirect.agent.lb.algorithm", "roundrobin")
        await redis.zadd(KEYS.zone_hosts("z"), {str(i): i for i in (1, 2, 3)})
        balancer.apply(await store.snapshot())
        current, stale = FakeHost(1), FakeHost(2)
        current.holding = stale.holding = Holding(("a", "b", "c"), "roundrobin", 0, 5, 3)
        for host in (current, stale):
            await admit(balancer, table, host)
        assert current.sent == []
        assert stale.lists == [["b", "c", "a"]]
        await balancer.recompute_zone("z")  # nothing changed: nothing sent
        assert (len(current.sent), len(stale.sent)) == (0, 1)
        await redis.zrem(KEYS.zone_hosts("z"), "1")  # host 1 retired: ranks move
        await balancer.recompute_zone("z")
        assert stale.lists[-1] == ["a", "b", "c"]

    run(work)


def test_a_list_on_its_way_is_not_pushed_again_but_a_different_one_is() -> None:
    async def work(redis, store, balancer, table) -> None:  # type: ignore[no-untyped-def]
        await store.set("host", "a,b")
        balancer.apply(await store.snapshot())
        host = FakeHost(1)
        host.deliver = lambda assignment, version: (
            host.sent.append(  # type: ignore[method-assign]
                MsList(list(assignment.ms_list), assignment.algorithm, 0, version, 5, 3)
            )
            or setattr(host, "pending", assignment)
        )
        await admit(balancer, table, host)
        await balancer.recompute_all()
        assert host.lists == [["a", "b"]]  # not acked, but on its way: no second push
        await store.set("host", "a,b,c")
        balancer.apply(await store.snapshot())
        await balancer.recompute_all()
        assert host.lists == [["a", "b"], ["a", "b", "c"]]

    run(work)


def test_admission_reads_the_zone_only_when_the_registration_saw_it_differently() -> None:
    async def work(redis, store, balancer, table) -> None:  # type: ignore[no-untyped-def]
        await store.set("host", "a,b,c")
        await store.set("indirect.agent.lb.algorithm", "roundrobin")
        balancer.apply(await store.snapshot())
        reads = 0
        original = balancer.ranks.read

        async def counting(zone: str) -> list[int]:
            nonlocal reads
            reads += 1
            return await original(zone)

        balancer.ranks.read = counting  # type: ignore[method-assign]
        hosts = []
        for host_id in (3, 7, 8, 20):  # registered here: each joins the cached ids
            await redis.zadd(KEYS.zone_hosts("z"), {str(host_id): host_id})
            host = FakeHost(host_id)
            await admit(balancer, table, host, ranked=True)
            hosts.append(host)
        assert reads == 1  # the zone was read once, at the first admission
        assert [h.lists[0][0] for h in hosts] == ["a", "b", "c", "a"]
        # hosts registered elsewhere, their event not here yet: the next registration sees
        # another zone than the cached one, so the zone is read again
        await redis.zadd(KEYS.zone_hosts("z"), {"21": 21, "22": 22})
        late = FakeHost(22)
        await admit(balancer, table, late, ranked=True)
        assert reads == 2
        assert late.lists == [["c", "a", "b"]]  # rank 5 of [3, 7, 8, 20, 21, 22]
        # a host retired: its event's recompute corrects every list that changed
        await redis.zrem(KEYS.zone_hosts("z"), "3")
        await balancer.recompute_zone("z")
        assert reads == 3 and late.lists[-1] == ["b", "c", "a"]  # rank 4 of 5
        assert [h.lists[-1][0] for h in hosts] == ["c", "a", "b", "c"]  # 3 is gone: ranks last
        # a host of an unranked type ranks last and does not join the ids
        storage = FakeHost(30)
        await admit(balancer, table, storage)
        assert storage.lists == [["c", "a", "b"]]  # rank 5 of 5 ids
        assert reads == 3

    run(work)


def test_ssvm_and_cpvm_rank_with_routing_hosts_and_storage_ranks_last() -> None:
    """The design's ranked types: routing, ssvm, cpvm share a zone's ranks."""

    async def work(redis, store, balancer, table) -> None:  # type: ignore[no-untyped-def]
        await store.set("host", "a,b,c")
        await store.set("indirect.agent.lb.algorithm", "roundrobin")
        balancer.apply(await store.snapshot())
        # ids 1 (routing), 2 (ssvm), 3 (cpvm) ranked; 4 (storage) not
        await redis.zadd(KEYS.zone_hosts("z"), {"1": 1, "2": 2, "3": 3})
        hosts = [FakeHost(i) for i in (1, 2, 3, 4)]
        for host in hosts:
            await admit(balancer, table, host, ranked=host.host_id != 4)
        assert [h.lists[0] for h in hosts] == [
            ["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"],  # 4: rank 3 % 3
        ]  # fmt: skip

    run(work)


def test_cluster_override_changes_only_that_cluster() -> None:
    async def work(redis, store, balancer, table) -> None:  # type: ignore[no-untyped-def]
        await store.set("host", "a,b")
        balancer.apply(await store.snapshot())
        east, west = FakeHost(1, cluster="east"), FakeHost(2, cluster="west")
        for host in (east, west):
            await admit(balancer, table, host)
        await store.set("indirect.agent.lb.check.interval", "15", cluster="east")
        balancer.apply(await store.snapshot())
        await balancer.recompute_all()
        assert [m.check_interval for m in east.sent] == [0, 15]
        assert [m.check_interval for m in west.sent] == [0]

    run(work)


def test_ping_settings_travel_with_the_list() -> None:
    async def work(redis, store, balancer, table) -> None:  # type: ignore[no-untyped-def]
        await store.set("host", "a,b")
        balancer.apply(await store.snapshot())
        host = FakeHost(1)
        await admit(balancer, table, host)
        await store.set("ping.interval", "1")
        balancer.apply(await store.snapshot())
        await balancer.recompute_all()
        assert [(m.ms_list, m.ping_interval, m.ping_timeout) for m in host.sent] == [
            (["a", "b"], 5, 3), (["a", "b"], 1, 3),
        ]  # fmt: skip

    run(work)
