"""Redis outages: sessions survive, startups are refused (retryable), the resync pushes what
changed, a Redis that comes back empty never wipes agents' lists, and a replica's READONLY is
waited out like an outage."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest
import redis

from common.protocol import ErrorCode, MsList, Startup
from common.records import HostState
from msctl.children import msrv_ready
from tests.support.fleet import Fleet, fleet
from tests.support.msrv_process import MsrvProcess
from tests.support.redis_server import RedisServer
from tests.support.wire_client import WireClient

ALGORITHM = "indirect.agent.lb.algorithm"


async def _clients(f: Fleet, count: int) -> list[WireClient]:
    clients = []
    for i in range(count):
        client = await f.connect(i % len(f.servers), f"g{i}")
        greeting = await client.startup(name=f"h{i}")
        assert greeting.ms_list is not None
        client.keepalive(1.0)
        clients.append(client)
    return clients


async def _wait_all(f: Fleet, pattern: str) -> None:
    await asyncio.gather(*(s.wait_for(pattern) for s in f.servers))


async def _refused_while_down(f: Fleet) -> None:
    newcomer = await f.connect(0, "newcomer")
    await newcomer.send(Startup("newcomer", "n", "routing", "zone1", "c", [], None, ""))
    error = await newcomer.wait_error_and_close()
    assert (error.code, error.retryable) == (ErrorCode.UNAVAILABLE, True)


@pytest.mark.timeout(60)
def test_redis_restart_with_data_sessions_survive_and_changes_flow(
    redis_factory: Callable[..., RedisServer], namespace: str
) -> None:
    redis = redis_factory(persist=True)

    async def scenario() -> None:
        async with fleet(redis.url, namespace) as f:
            await f.set("host", ",".join(f.addresses))
            await f.set(ALGORITHM, "roundrobin")
            clients = await _clients(f, 12)

            redis.kill()
            await _wait_all(f, "Redis unreachable")
            await _refused_while_down(f)
            for client in clients:  # sessions stay up on last-known settings
                assert await client.sync() == []

            redis.start()
            await f.forget_connections()
            # changed at once: the event may well arrive before a server re-subscribed
            version = await f.set("host", ",".join(reversed(f.addresses)))
            for client in clients:
                message = await client.next(timeout=15)
                assert isinstance(message, MsList) and message.version == version
                assert sorted(message.ms_list) == sorted(f.addresses)
            await _wait_all(f, "Redis is back")
            assert not any(c.closed.is_set() for c in clients)
            # new agents are welcome again, and the registry is whole
            late = await f.connect(2, "late")
            assert (await late.startup()).ms_list is not None
            hosts = await f.hosts()
            assert len(hosts) == 13
            assert {h.state for h in hosts} == {HostState.CONNECTED}

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_empty_redis_after_restart_never_wipes_lists(
    redis_factory: Callable[..., RedisServer], namespace: str
) -> None:
    redis = redis_factory(persist=False)

    async def scenario() -> None:
        async with fleet(redis.url, namespace, servers=2) as f:
            await f.set("host", "a,b,c")
            await f.set(ALGORITHM, "roundrobin")
            await f.set("indirect.agent.lb.check.interval", "30")
            clients = await _clients(f, 6)
            held = [c.current for c in clients]

            redis.restart()  # comes back with nothing
            await f.forget_connections()
            await _wait_all(f, "Redis lost its data")
            await _wait_all(f, "Redis is back")
            for client in clients:
                assert await client.sync() == []  # nothing pushed: lists kept
            # the servers re-asserted the hosts they serve, ids and all
            hosts = await f.hosts()
            assert sorted(h.id for h in hosts) == [1, 2, 3, 4, 5, 6]
            assert {h.state for h in hosts} == {HostState.CONNECTED}
            assert int(await f.redis.get(f.keys.host_id_counter) or 0) == 6
            # a newcomer gets the last-known settings, and a new id
            late = await f.connect(0, "late")
            greeting = await late.startup()
            assert greeting.ready.host_id == 7 and greeting.ready.check_interval == 30

            # the operator sets the settings again: that change is applied
            version = await f.set("host", "a,b,c")
            lists = [await c.next(timeout=10) for c in clients]
            assert all(isinstance(m, MsList) and m.version == version for m in lists)
            assert [m.algorithm for m in lists if isinstance(m, MsList)] == ["static"] * 6
            assert held[0] is not None and held[0].algorithm == "roundrobin"

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_empty_redis_set_again_to_the_same_version_reaches_every_agent(
    redis_factory: Callable[..., RedisServer], namespace: str
) -> None:
    """Defect: servers at version 2, Redis restarted empty, then `host` and the algorithm set
    again at once (version 2 again): the servers took it as unchanged, every agent kept its old
    list while `config get host` showed the new one."""
    redis = redis_factory(persist=False)

    async def scenario() -> None:
        async with fleet(redis.url, namespace, servers=2) as f:
            await f.set("host", "a,b,c")
            await f.set(ALGORITHM, "static")  # version 2 (static is the default: set anyway)
            clients = await _clients(f, 30)
            redis.restart()  # comes back with nothing
            await f.forget_connections()
            await _wait_all(f, "Redis is back")
            await f.store.set("host", "c,d,e")  # at once, without waiting for the servers
            change = await f.store.set(ALGORITHM, "roundrobin")
            assert change.version == 2
            for client in clients:  # the first change's list may come first; then the second's
                message = await client.next(timeout=10)
                if isinstance(message, MsList) and message.algorithm == "static":
                    message = await client.next(timeout=10)
                assert isinstance(message, MsList) and message.algorithm == "roundrobin"
                assert sorted(message.ms_list) == ["c", "d", "e"]

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_a_server_started_on_a_replica_waits_until_it_is_promoted(
    redis_factory: Callable[..., RedisServer], namespace: str
) -> None:
    """A redis:// URL naming a replica (a master demoted, or a failover the URL did not
    follow): its READONLY replies are an outage to wait out, not a bug that stops the server."""
    master, replica = redis_factory(), redis_factory()
    with redis.Redis.from_url(replica.url, decode_responses=True) as client:
        client.replicaof("127.0.0.1", master.port)
        assert client.info("replication")["role"] == "slave"

    async def scenario() -> None:
        server = MsrvProcess("ms1", replica.url, namespace)
        try:
            await server.start(ready=r"ms1 startup: Redis refuses writes \(You can't write")
            assert server.matching("listening on") == []
            with redis.Redis.from_url(replica.url) as client:
                client.replicaof("NO", "ONE")
            await server.wait_for(msrv_ready("ms1"), timeout=20)
        finally:
            await server.stop(signal.SIGKILL)

    asyncio.run(scenario())
