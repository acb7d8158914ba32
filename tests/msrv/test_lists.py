"""Per-agent lists from three real servers: roundrobin, static, shuffle; current vs stale."""

from __future__ import annotations

import asyncio

from common import algorithms
from common.protocol import MsList
from tests.support.fleet import Fleet, fleet

ALGORITHM = "indirect.agent.lb.algorithm"


def rotate(items: list[str], shift: int) -> list[str]:
    return items[shift:] + items[:shift]


async def _configure(f: Fleet, algorithm: str) -> list[str]:
    await f.set("host", ",".join(f.addresses))
    await f.set(ALGORITHM, algorithm)
    return f.addresses


def test_roundrobin_rotates_by_rank_whichever_server(redis_url: str, namespace: str) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace) as f:
            ms = await _configure(f, "roundrobin")
            # registered in order h1, h2, h3, each on a different server than its rank
            greetings = []
            for guid, server in (("h1", 2), ("h2", 0), ("h3", 1)):
                client = await f.connect(server, guid)
                greetings.append(await client.startup())
            got = [g.ms_list.ms_list if g.ms_list else None for g in greetings]
            assert got == [ms, rotate(ms, 1), rotate(ms, 2)]
            assert [g.ready.host_id for g in greetings] == [1, 2, 3]
            assert all(g.ms_list and g.ms_list.algorithm == "roundrobin" for g in greetings)
            # a later registration moves nobody: ranks of older hosts are unchanged
            late = await f.connect(0, "h4")
            assert (await late.startup()).ms_list == MsList(ms, "roundrobin", 0, 2, 5, 3)
            for client in f.clients[:3]:
                assert await client.sync() == []

    asyncio.run(scenario())


def test_static_gives_everyone_the_list_as_set(redis_url: str, namespace: str) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace) as f:
            ms = await _configure(f, "roundrobin")
            await f.set(ALGORITHM, "static")
            for i in range(6):
                greeting = await (await f.connect(i % 3, f"s{i}")).startup()
                assert greeting.ms_list is not None
                assert (greeting.ms_list.ms_list, greeting.ms_list.algorithm) == (ms, "static")

    asyncio.run(scenario())


def test_shuffle_same_set_and_same_order_from_every_server(redis_url: str, namespace: str) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace) as f:
            ms = await _configure(f, "shuffle")
            for guid in ("x1", "x2", "x3", "x4", "x5"):
                per_server = []
                for server in range(3):
                    client = await f.connect(server, guid)
                    greeting = await client.startup()
                    assert greeting.ms_list is not None
                    per_server.append(greeting.ms_list.ms_list)
                    await client.close()
                assert per_server[0] == per_server[1] == per_server[2], guid
                # the algorithm's own order for this host (5 hosts can share one of the 3! orders
                # by chance: 1 run in 1,296, so "the orders differ" is checked on the algorithm)
                shuffle = algorithms.get("shuffle")
                assert per_server[0] == shuffle.sort(ms, [], greeting.ready.host_id)
            assert len({tuple(shuffle.sort(ms, [], host_id)) for host_id in range(1, 41)}) > 1

    asyncio.run(scenario())


def test_current_list_gets_ready_only_stale_gets_ms_list(redis_url: str, namespace: str) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=2) as f:
            await f.set("host", "a,b,c")
            await f.set(ALGORITHM, "roundrobin")
            await f.set("indirect.agent.lb.check.interval", "30")
            await (await f.connect(0, "first")).startup()  # rank 0
            probe = await f.connect(1, "second")
            first = await probe.startup()  # rank 1: b,c,a
            assert first.ms_list is not None and first.ms_list.ms_list == ["b", "c", "a"]
            await probe.close()

            cases = [
                (["b", "c", "a"], "roundrobin", False),  # current
                (["a", "b", "c"], "roundrobin", True),  # stale order
                (["b", "c", "a"], "static", True),  # right order, other algorithm
                (["b", "c", "a"], None, True),  # a bare list has no algorithm
                ([], None, True),  # nothing yet
            ]
            for server, (held, algorithm, stale) in enumerate(cases):
                client = await f.connect(server % 2, "second")
                greeting = await client.startup(ms_list=held, algorithm=algorithm)
                ready = greeting.ready
                assert (ready.host_id, ready.ping_interval, ready.ping_timeout) == (2, 5, 3)
                assert ready.check_interval == 30
                assert ready.server == f.addresses[server % 2]
                if stale:
                    assert greeting.ms_list == MsList(["b", "c", "a"], "roundrobin", 30, 3, 5, 3)
                else:
                    assert greeting.ms_list is None, held
                await client.close()

    asyncio.run(scenario())


def test_host_unset_pushes_no_list(redis_url: str, namespace: str) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=1) as f:
            client = await f.connect(0, "keeps")
            greeting = await client.startup(ms_list=["own1", "own2"], algorithm="static")
            assert greeting.ms_list is None
            assert greeting.ready.check_interval == 0
            await f.set(ALGORITHM, "roundrobin")
            await f.set("host", "a,b")  # the follow-up every client must receive
            assert await client.next() == MsList(["a", "b"], "roundrobin", 0, 2, 5, 3)
            assert len(client.ms_lists) == 1  # nothing for the algorithm change alone

    asyncio.run(scenario())


def test_ssvm_and_cpvm_take_ranks_in_their_zone_storage_does_not(
    redis_url: str, namespace: str
) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=1) as f:
            await f.set("host", "a,b,c")
            await f.set("indirect.agent.lb.algorithm", "roundrobin")
            lists = []
            for guid, host_type in [
                ("r", "routing"),
                ("s", "ssvm"),
                ("c", "cpvm"),
                ("x", "storage"),
            ]:
                client = await f.connect(0, guid)
                greeting = await client.startup(zone="z", host_type=host_type)
                assert greeting.ms_list is not None
                lists.append(greeting.ms_list.ms_list)
            # ranks 0, 1, 2; storage is not ranked and ranks last (3 of 3 ids: 3 % 3 = 0)
            assert lists == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
            ranked = await f.redis.zrange(f.keys.zone_hosts("z"), 0, -1)
            assert ranked == ["1", "2", "3"]

    asyncio.run(scenario())
