"""Redis came back empty and the operator sets the settings again as `msctl status` says,
`host` last: no agent is told to move meanwhile (issue 16's redis-empty: `host` set first, 5 s
before the algorithm, moved 100 of 150 agents to the static list's first server and back)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from common.ca import load_ca
from common.protocol import MsList
from tests.support.fleet import fleet
from tests.support.redis_server import RedisServer

ALGORITHM = "indirect.agent.lb.algorithm"


@pytest.mark.timeout(60)
def test_settings_set_again_host_last_move_no_agent(
    redis_factory: Callable[..., RedisServer], namespace: str
) -> None:
    redis = redis_factory(persist=False)

    async def scenario() -> None:
        async with fleet(redis.url, namespace, servers=3) as f:
            host = ",".join(f.addresses)
            await f.set("host", host)
            await f.set(ALGORITHM, "roundrobin")
            clients = []
            for i in range(6):
                client = await f.connect(i % 3, f"g{i}")
                greeting = await client.startup(name=f"h{i}")
                assert greeting.ms_list is not None
                client.keepalive(1.0)
                clients.append(client)
            held = [c.current for c in clients]
            assert len({h.ms_list[0] for h in held if h is not None}) == 3

            redis.restart()  # comes back with nothing
            await f.forget_connections()
            await asyncio.gather(*(s.wait_for("Redis is back") for s in f.servers))

            # as msctl status says: every setting that is not the default, `host` last
            await f.set(ALGORITHM, "roundrobin")  # applied (a new epoch): no list to push
            for client in clients:
                assert await client.sync() == []
            await f.set("host", host)  # the lists the agents hold: nobody is told to move
            for client, before in zip(clients, held, strict=True):
                assert before is not None
                pushed = [m for m in await client.sync() if isinstance(m, MsList)]
                assert all(m.ms_list[0] == before.ms_list[0] for m in pushed), pushed

            result = await f.msctl("status")
            assert "Redis lost its settings" not in result.output
            assert "converged: all 6 connected hosts hold their list" in result.output

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_the_ca_survives_an_emptied_redis(
    redis_factory: Callable[..., RedisServer], namespace: str
) -> None:
    """Issue 16's redis-empty: Redis came back empty without the CA, so the next server started
    (or `msctl token create`) made a new CA, and refused every agent's certificate while the
    agents refused its own. The running servers hold the CA: each puts it back as it resyncs."""
    redis = redis_factory(persist=False)

    async def scenario() -> None:
        async with fleet(redis.url, namespace, servers=2) as f:
            await f.set("host", ",".join(f.addresses))
            ca = await f.ca()
            client = await f.connect(0, "g0")
            assert (await client.startup(name="h0")).ms_list is not None
            client.keepalive(1.0)

            redis.restart()  # comes back with nothing, the CA included
            await f.forget_connections()
            await asyncio.gather(*(s.wait_for("Redis is back") for s in f.servers))
            stored = await load_ca(f.redis, f.keys)
            assert stored is not None and stored.fingerprint == ca.fingerprint
            for server in f.servers:
                assert server.count("CA .* put back") <= 1

            # a server started now is of the same CA: it takes the agents' certificates
            await f.servers[1].stop()
            await f.servers[1].start()
            assert f.servers[1].count(f"CA {ca.fingerprint}") == 1
            late = await f.connect(1, "g1")
            assert (await late.startup(name="h1")).ready.host_id > 0
            assert await client.sync() is not None  # the first session never noticed

    asyncio.run(scenario())
