"""Live propagation: a setting change reaches exactly the agents whose list changed, once.

To prove that a client received *nothing* for a change, the test makes a follow-up change that
every client must receive: a server pushes changes in order on one connection, so anything the
first change caused would have arrived before the follow-up.
"""

from __future__ import annotations

import asyncio

import pytest

from common.protocol import MsList
from tests.support.fleet import Fleet, fleet, gather_limited
from tests.support.wire_client import WireClient

ALGORITHM = "indirect.agent.lb.algorithm"
CHECK = "indirect.agent.lb.check.interval"


async def _start(f: Fleet, count: int, cluster_of: dict[int, str]) -> list[WireClient]:
    async def one(i: int) -> WireClient:
        client = await f.connect(i % len(f.servers), f"guid-{i:04d}")
        greeting = await client.startup(cluster=cluster_of[i], name=f"h{i}")
        assert greeting.ms_list is not None
        return client

    return [c for c in await gather_limited((one(i) for i in range(count)), 50)]  # type: ignore[misc]


async def _next_lists(clients: list[WireClient]) -> list[MsList]:
    async def one(client: WireClient) -> MsList:
        message = await client.next(timeout=20)
        assert isinstance(message, MsList), message
        return message

    return list(await asyncio.gather(*(one(c) for c in clients)))


@pytest.mark.timeout(90)
def test_300_clients_static_to_roundrobin_each_changed_client_gets_one_list(
    redis_url: str, namespace: str
) -> None:
    count = 300
    cluster_of = {i: "east" if i % 4 == 0 else "west" for i in range(count)}

    async def scenario() -> None:
        async with fleet(redis_url, namespace) as f:
            ms = f.addresses
            await f.set("host", ",".join(ms))
            clients = await _start(f, count, cluster_of)
            hosts = {h.guid: h.id for h in await f.hosts()}
            ids = sorted(hosts.values())
            assert len(ids) == count
            for c in clients:
                assert await c.sync() == []  # startup storms push nothing under static

            # static -> roundrobin: each client's list (or algorithm name) changed: one each
            version = await f.set(ALGORITHM, "roundrobin")
            got = await _next_lists(clients)
            for i, message in enumerate(got):
                shift = ids.index(hosts[f"guid-{i:04d}"]) % 3
                assert message == MsList(ms[shift:] + ms[:shift], "roundrobin", 0, version, 5, 3)

            # an override for the east cluster changes east's lists only
            version = await f.set(CHECK, "40", cluster="east")
            east = [c for i, c in enumerate(clients) if cluster_of[i] == "east"]
            assert {m.check_interval for m in await _next_lists(east)} == {40}

            # follow-up every client must receive; before it, west received nothing more
            final = await f.set("host", ",".join([*ms, "spare.example"]))
            lists = await _next_lists(clients)
            assert {m.version for m in lists} == {final}
            for i, client in enumerate(clients):
                expected = 3 if cluster_of[i] == "east" else 2
                assert len(client.ms_lists) == 1 + expected, i  # startup + changes

    asyncio.run(scenario())


def test_cluster_override_of_check_interval_reaches_only_that_cluster(
    redis_url: str, namespace: str
) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=2) as f:
            await f.set("host", "a,b")
            await f.set(CHECK, "10")
            clusters = ["c1", "c2", "c1", "c2", "c3", "c1"]
            clients = []
            for i, cluster in enumerate(clusters):
                client = await f.connect(i % 2, f"g{i}")
                greeting = await client.startup(cluster=cluster)
                assert greeting.ready.check_interval == 10
                clients.append(client)
            c1 = [c for c, cl in zip(clients, clusters, strict=True) if cl == "c1"]

            await f.set(CHECK, "20", cluster="c1")
            assert {m.check_interval for m in await _next_lists(c1)} == {20}
            late = await f.connect(1, "late")
            assert (await late.startup(cluster="c1")).ready.check_interval == 20
            other = await f.connect(0, "other")
            assert (await other.startup(cluster="c2")).ready.check_interval == 10

            await f.store.unset(CHECK, cluster="c1")  # falls back to the global value
            assert {m.check_interval for m in await _next_lists([*c1, late])} == {10}

            await f.set(CHECK, "11")  # follow-up for everyone
            everyone = [*clients, late, other]
            assert {m.check_interval for m in await _next_lists(everyone)} == {11}
            per_client = [len(c.ms_lists) for c in clients]
            # startup list + (20, back to 10, 11) for c1; just 11 for the others
            assert per_client == [4 if cl == "c1" else 2 for cl in clusters]
            assert await clients[0].sync() == []  # its ack was handled before the pong
            hosts = {h.name: h for h in await f.hosts()}
            assert (hosts["g0"].check_interval, hosts["g0"].acked_version) == (11, 5)

    asyncio.run(scenario())


def test_a_change_whose_event_was_lost_is_found_by_the_version_poll(
    redis_url: str, namespace: str
) -> None:
    """Pub/sub loses what is published while a subscriber is away: a change written with no
    event at all (the worst case) still reaches the agents, through the poll."""

    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=1) as f:
            await f.set("host", "a,b")
            client = await f.connect(0, "h1")
            await client.startup()
            keys = f.keys
            async with f.redis.pipeline(transaction=True) as pipe:  # no PUBLISH
                pipe.hset(keys.settings, "host", "a,b,c")
                pipe.incr(keys.settings_version)
                await pipe.execute()
            message = await client.next(timeout=10)
            assert isinstance(message, MsList) and message.ms_list == ["a", "b", "c"]
            assert message.version == 2

    asyncio.run(scenario())


def test_a_host_removed_elsewhere_moves_the_ranks_and_the_server_pushes(
    redis_url: str, namespace: str
) -> None:
    """hosts.changed end to end: `msctl hosts remove` publishes it; the server serving the zone
    recomputes and pushes the lists whose rank moved."""

    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=2) as f:
            await f.set("host", "a,b,c")
            await f.set(ALGORITHM, "roundrobin")
            first = await f.connect(1, "g1")
            await first.startup(zone="z")  # id 1, rank 0
            gone = await f.connect(1, "g2")
            await gone.startup(zone="z")  # id 2, rank 1
            client = await f.connect(0, "g3")
            assert (await client.startup(zone="z")).ms_list == MsList(
                ["c", "a", "b"], "roundrobin", 0, 2, 5, 3
            )  # id 3, rank 2
            await gone.close()
            await f.servers[1].wait_for("1 session ended")
            result = await f.msctl("hosts", "remove", "2")
            assert result.exit_code == 0, result.output
            message = await client.next(timeout=10)
            assert isinstance(message, MsList) and message.ms_list == ["b", "c", "a"]  # rank 1
            assert await first.sync() == []  # rank 0 either way: nothing for it

    asyncio.run(scenario())
