"""Ping settings change live without closing a session: lowering ping.interval used to make the
servers close every session for silence (agents kept the values they got in `ready`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.protocol import Ack, MsList
from common.tokens import create_token
from msctl.children import swarm_ready
from tests.support.agents import SwarmProcess
from tests.support.fleet import Fleet, fleet

COUNT = 300


async def all_acked(f: Fleet, interval: int) -> None:
    await f.wait_hosts(
        lambda hosts: len(hosts) == COUNT and all(h.ping_interval == interval for h in hosts),
        timeout=30,
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_300_agents_ping_interval_5_1_5_no_session_dropped(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        options = ("--startup-timeout", "30")
        async with fleet(redis_url, namespace, servers=3, server_options=options) as f:
            await f.set("host", ",".join(f.addresses))
            await f.set("indirect.agent.lb.algorithm", "roundrobin")
            token, _ = await create_token(f.redis, f.keys, ttl_seconds=600, uses=COUNT)
            # 300 enrollments and TLS handshakes in one process can take an agent past the
            # default connect.timeout (3 s), or the server's handshake bound (the startup
            # timeout, 10 s), on a busy machine: it would land on its second entry and stay
            # there (its first entry never changes), never settling below
            swarm = SwarmProcess(
                tmp_path / "swarm",
                COUNT,
                ",".join(f.addresses),
                "--token",
                token,
                "--property",
                "connect.timeout=20",
            )
            await swarm.start(ready=swarm_ready(COUNT), timeout=60)
            # agents whose first entry changed move there (make-before-break): let them settle
            address = {s.server_id: s.address for s in f.servers}
            await f.wait_hosts(
                lambda hosts: (
                    len(hosts) == COUNT
                    and all(h.ms_list and address[h.server] == h.ms_list[0] for h in hosts)
                ),
                timeout=30,
            )
            sessions = {h.guid: h.session for h in await f.hosts()}
            await f.set("ping.interval", "1")
            await all_acked(f, 1)
            # more than a silence limit of the new values (1 s x 3) passes: nobody is dropped
            await asyncio.sleep(4)
            await f.set("ping.interval", "5")
            await all_acked(f, 5)
            await asyncio.sleep(4)
            assert {h.guid: h.session for h in await f.hosts()} == sessions
            assert all(h.state == "connected" for h in await f.hosts())
            for server in f.servers:
                assert not server.matching("silent for"), server.tail()
            assert not swarm.matching("lost server"), swarm.tail()
            assert await swarm.stop() == 0

    asyncio.run(scenario())


def test_the_silence_limit_follows_what_the_agent_was_told_until_it_acks(
    redis_url: str, namespace: str
) -> None:
    """Server side: an agent that has not acked the new ping settings still lives by the old
    ones (it could not save the list, or it is slow); once it acks, the new limit applies."""

    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=1) as f:
            await f.set("host", "a,b")
            await f.set("ping.interval", "2")
            await f.set("ping.timeout", "2")
            client = await f.connect(0, "h1", auto_ack=False)
            ready = (await client.startup(ms_list=["a", "b"], algorithm="static")).ready
            assert (ready.ping_interval, ready.ping_timeout) == (2, 2)  # told: 4 s of silence
            client.keepalive(3.0)  # enough for 4 s, not for the new 1 x 2 = 2 s
            await f.set("ping.interval", "1")
            while True:
                pushed = await client.next()
                if isinstance(pushed, MsList) and pushed.ping_interval == 1:
                    break
            assert isinstance(pushed, MsList) and pushed.ping_timeout == 2
            await asyncio.sleep(7)  # past the old timer and three new silence limits
            assert not client.closed.is_set()
            await client.send(Ack(pushed.version, ["a", "b"], "static"))
            await asyncio.wait_for(client.closed.wait(), timeout=5)  # now 2 s is too long
            await f.servers[0].wait_for("silent for 2s; disconnected")

    asyncio.run(scenario())
