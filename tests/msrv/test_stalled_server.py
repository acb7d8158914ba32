"""A server that stalls (SIGSTOP, SIGCONT: a frozen VM, a long pause) and resumes keeps the
sessions of agents that kept talking to it, and drops those whose agents left.

Found by bench/faults.py hung-server: on SIGCONT the server judged every session silent before
reading what its agents had sent during the stall (the silence timers ran before the sessions'
reads), so a stall longer than what was left of the silence limit (ping.interval x
ping.timeout) closed every session, although each agent had pinged all along and was still
connected.
"""

from __future__ import annotations

import asyncio
import signal

from tests.support.fleet import fleet

INTERVAL, TIMEOUT = 1, 3  # a silence limit of 3 s


def test_a_stall_past_the_silence_limit_keeps_sessions_whose_agents_kept_pinging(
    redis_url: str, namespace: str
) -> None:
    async def scenario() -> None:
        settings = [("ping.interval", str(INTERVAL)), ("ping.timeout", str(TIMEOUT))]
        async with fleet(redis_url, namespace, servers=1, settings=settings) as f:
            await f.set("host", f.addresses[0])
            talking = [await f.connect(0) for _ in range(3)]
            left = await f.connect(0)
            for client in [*talking, left]:
                await client.startup()
            for client in [*talking, left]:
                client.keepalive(0.25)  # pings wait in the stalled server's socket buffer
            (server,) = f.servers
            assert server.process is not None
            server.process.send_signal(signal.SIGSTOP)
            try:
                await asyncio.sleep(INTERVAL * TIMEOUT + 1.0)
                # an agent that gave up on the stalled server drops the connection (a reset,
                # as agentd does for a silent server): the reset waits in its socket too
                left.writer.transport.abort()
            finally:
                server.process.send_signal(signal.SIGCONT)
            for client in talking:
                assert await client.sync() == []  # answered: the session lives
            await f.wait_hosts(
                lambda hosts: sorted(h.state for h in hosts) == [*["connected"] * 3, "disconnected"]
            )
            await asyncio.sleep(INTERVAL * TIMEOUT)  # the watchdogs go on, fed by the pings
            for client in talking:
                assert not client.closed.is_set()
                assert await client.sync() == []
            assert not server.matching("silent for"), server.tail(40)
            await left.close()

    asyncio.run(scenario())
