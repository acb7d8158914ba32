"""What the registry says a host holds is what its agent acknowledged; last_seen stays fresh."""

from __future__ import annotations

import asyncio

from common.protocol import Ack, MsList
from tests.support.fleet import fleet


def test_a_list_not_acknowledged_is_pushed_again_and_recorded_only_once_acked(
    redis_url: str, namespace: str
) -> None:
    """A list the agent could not save was recorded as held when sent, so never sent again."""

    async def scenario() -> None:
        async with fleet(
            redis_url, namespace, servers=1, server_options=("--repush-interval", "0.3")
        ) as f:
            version = await f.set("host", "a,b")
            client = await f.connect(0, "h1", auto_ack=False)
            greeting = await client.startup(ms_list=["x"], algorithm="static")
            assert greeting.ms_list == MsList(["a", "b"], "static", 0, version, 5, 3)
            # not acked: the same list comes again, and the registry keeps what the agent has
            assert await client.next(timeout=5) == greeting.ms_list
            assert await client.next(timeout=5) == greeting.ms_list
            await f.servers[0].wait_for(r"1 lists not acknowledged in 0s; pushed again")
            (host,) = await f.hosts()
            assert (host.ms_list, host.acked_version) == (("x",), 0)
            await client.send(Ack(version, ["a", "b"], "static"))
            await f.wait_hosts(lambda hosts: hosts[0].ms_list == ("a", "b"))
            # once acked, it is not pushed again (a push in flight before the ack arrives
            # before the answer to this ping); then wait out three repush periods
            await client.sync()
            pushed = len(client.ms_lists)
            await asyncio.sleep(1.0)
            await client.sync()
            assert len(client.ms_lists) == pushed

    asyncio.run(scenario())


def test_last_seen_of_a_connected_host_is_refreshed(redis_url: str, namespace: str) -> None:
    """last_seen was written at startup only (87 s old for an agent pinging every 5 s)."""

    async def scenario() -> None:
        async with fleet(
            redis_url, namespace, servers=1, server_options=("--last-seen-interval", "0.2")
        ) as f:
            client = await f.connect(0, "h1")
            await client.startup()
            (first,) = await f.hosts()
            client.keepalive(0.1)
            later = await f.wait_hosts(lambda hosts: hosts[0].last_seen >= first.last_seen + 0.5)
            assert later[0].state == "connected"
            await client.close()
            await f.servers[0].wait_for("1 session ended")
            (gone,) = await f.hosts()
            # a host no longer heard from keeps the time it was last heard
            assert gone.state == "disconnected" and gone.last_seen >= later[0].last_seen

    asyncio.run(scenario())


def test_an_ack_names_the_list_when_two_pushes_share_a_version(
    redis_url: str, namespace: str
) -> None:
    """Pushes caused by zone changes reuse the config version: the ack says which list the
    agent saved, and the registry records that one (it once recorded the last one sent)."""

    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=1) as f:
            await f.set("host", "a,b,c")
            version = await f.set("indirect.agent.lb.algorithm", "roundrobin")
            other = await f.connect(0, "first")
            await other.startup(zone="z")  # id 1, rank 0
            client = await f.connect(0, "second", auto_ack=False)
            first = (await client.startup(zone="z")).ms_list  # id 2, rank 1
            assert first is not None and first.ms_list == ["b", "c", "a"]
            await other.close()
            await f.servers[0].wait_for("1 session ended")
            assert (await f.msctl("hosts", "remove", "1")).exit_code == 0
            second = await client.next(timeout=10)  # rank 0 now, the same config version
            assert isinstance(second, MsList) and second.ms_list == ["a", "b", "c"]
            assert first.version == second.version == version
            await client.send(Ack(version, first.ms_list, "roundrobin"))  # saved the first only
            await f.wait_hosts(lambda hosts: hosts[0].acked_version == version)
            (host,) = await f.hosts()
            assert host.ms_list == ("b", "c", "a")
            await client.send(Ack(version, second.ms_list, "roundrobin"))
            await f.wait_hosts(lambda hosts: hosts[0].ms_list == ("a", "b", "c"))

    asyncio.run(scenario())


def test_a_last_seen_write_never_cuts_off_an_agent_in_the_middle_of_a_move(
    redis_url: str, namespace: str
) -> None:
    """An agent moving make-before-break has its new session registered a moment before it
    closes the old one; the old server's last_seen write must not hang up on it meanwhile."""

    async def scenario() -> None:
        async with fleet(
            redis_url, namespace, servers=2, server_options=("--last-seen-interval", "0.2")
        ) as f:
            # the first resync re-asserts served hosts (and would end a superseded session,
            # as the 30 s re-assert does): start after it
            for server in f.servers:
                await server.wait_for("subscribed to events; in step with Redis")
            old = await f.connect(0, "mover")
            await old.startup()
            old.keepalive(0.1)  # heard from, so its last_seen is due every 0.2 s
            new = await f.connect(1, "mover")
            await new.startup()  # the newer session: registered on ms2
            for _ in range(5):  # past two housekeeping ticks (every 2 s) of ms1
                await asyncio.sleep(1.0)
                assert await old.sync() == [], "ms1 hung up on the moving agent"
            assert not old.closed.is_set()
            (host,) = await f.hosts()
            assert host.server == "ms2"

    asyncio.run(scenario())
