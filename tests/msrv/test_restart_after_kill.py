"""A server SIGKILLed and started again (issue 16's kill-rounds): the hosts its killed run
served are not shown connected to it by the new run; those that moved on keep their new
session."""

from __future__ import annotations

import asyncio
import signal

import pytest

from common.records import HostState
from tests.support.fleet import fleet


@pytest.mark.timeout(60)
def test_a_restarted_server_does_not_claim_the_hosts_of_its_killed_run(
    redis_url: str, namespace: str
) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=2) as f:
            await f.set("host", ",".join(f.addresses))
            guids = [f"g{i}" for i in range(4)]
            for guid in guids:
                client = await f.connect(0, guid)
                await client.startup(name=guid)
            await f.wait_hosts(lambda hosts: len(hosts) == 4)

            killed = f.servers[0]
            await killed.stop(signal.SIGKILL)
            for guid in guids[:2]:  # these agents find the other server
                client = await f.connect(1, guid)
                await client.startup(name=guid)
            await killed.start()  # within its liveness key's TTL: "alive" all along

            def settled(hosts: list) -> bool:
                where = {h.guid: (h.state, h.server) for h in hosts}
                moved = all(where[g] == (HostState.CONNECTED, "ms2") for g in guids[:2])
                gone = all(where[g][0] == HostState.DISCONNECTED for g in guids[2:])
                return moved and gone

            await f.wait_hosts(settled, timeout=5)
            # and it stays so: nothing of the new run writes them back
            await asyncio.sleep(2.5)
            assert settled(await f.hosts())

    asyncio.run(scenario())
