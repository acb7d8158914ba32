"""Redis came back empty and the operator sets the settings again as `msctl status` says,
`host` last: no agent is told to move meanwhile (issue 16's redis-empty: `host` set first, 5 s
before the algorithm, moved 100 of 150 agents to the static list's first server and back)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

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
