"""Real agentd processes against three real msrv processes and a real redis-server."""

import asyncio
import signal
import time

import pytest
import redis.asyncio as aioredis

from common.configstore import ConfigStore
from common.keys import Keys
from common.records import load_hosts
from tests.support.agents import host_value, start_agent
from tests.support.keystores import namespace_ca
from tests.support.msrv_process import run_servers

CHECK = "indirect.agent.lb.check.interval"


async def hosts_by_name(redis_url, namespace):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return {h.name: h for h in await load_hosts(client, Keys(namespace))}
    finally:
        await client.aclose()


def settings(**values):
    """Settings keyword names: host, algorithm, check (the check interval)."""
    names = {"algorithm": "indirect.agent.lb.algorithm", "check": CHECK}
    return {names.get(k, k): v for k, v in values.items()}


async def set_config(redis_url, namespace, **values):
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        store = ConfigStore(client, Keys(namespace))
        for name, value in settings(**values).items():
            await store.set(name, value)
    finally:
        await client.aclose()


async def stop_all(agents):
    for agent in agents:
        assert await agent.stop() == 0, agent.tail()


@pytest.mark.timeout(90)
def test_roundrobin_example_end_to_end(redis_url, namespace, tmp_path):
    async def scenario():
        async with run_servers(3, redis_url, namespace) as servers:
            a, b, c = (s.address for s in servers)
            await set_config(redis_url, namespace, host=f"{a},{b},{c}", algorithm="roundrobin")
            ca = await namespace_ca(redis_url, namespace)
            agents = []
            for i in range(3):  # one at a time, so their ids (and ranks) follow this order
                agents.append(
                    await start_agent(tmp_path / f"a{i}", f"hv{i}", f"{a},{b},{c}", ca=ca)
                )
            expected = [f"{a},{b},{c}", f"{b},{c},{a}", f"{c},{a},{b}"]
            for agent, order in zip(agents, expected, strict=True):
                await agent.wait_connected(order.split(",")[0])
            for agent, order in zip(agents, expected, strict=True):
                assert host_value(agent.path) == f"{order}@roundrobin"
                assert agent.path.read_text().startswith(f"# test agent {agent.name}\n")
            hosts = await hosts_by_name(redis_url, namespace)
            ids = {s.address: s.server_id for s in servers}
            for i, order in enumerate(expected):
                record = hosts[f"hv{i}"]
                assert record.server == ids[order.split(",")[0]]
                assert list(record.ms_list) == order.split(",")
                assert record.state == "connected"
            await stop_all(agents)

    asyncio.run(scenario())


@pytest.mark.timeout(90)
def test_failover_on_sigkill_and_failback_with_the_check_interval(redis_url, namespace, tmp_path):
    async def scenario():
        async with run_servers(3, redis_url, namespace) as servers:
            a, b, c = (s.address for s in servers)
            await set_config(redis_url, namespace, host=f"{a},{b},{c}", check="2")
            ca = await namespace_ca(redis_url, namespace)
            agent = await start_agent(tmp_path / "a", "hv0", f"{a},{b},{c}", ca=ca)
            await agent.wait_connected(a)
            killed = time.monotonic()
            await servers[0].stop(signal.SIGKILL)
            landed = await agent.wait_connected(b, timeout=5)
            assert landed - killed < 2.0, agent.tail()
            await servers[0].start()
            back = time.monotonic()
            returned = await agent.wait_connected(a, timeout=10, count=2)
            assert returned - back <= 2 * 2 + 1.0, agent.tail()
            assert agent.count(r"switched .* \(preferred server answers again\)") == 1
            await stop_all([agent])

    asyncio.run(scenario())


@pytest.mark.timeout(90)
def test_a_silent_server_is_left_after_ping_interval_times_timeout(redis_url, namespace, tmp_path):
    """A server that stops answering (SIGSTOP: its sockets stay open) is detected by the
    agent's own silence check, which then fails over."""

    async def scenario():
        async with run_servers(2, redis_url, namespace) as servers:
            a, b = (s.address for s in servers)
            await set_config(redis_url, namespace, host=f"{a},{b}", **{"ping.interval": "1"})
            await set_config(redis_url, namespace, **{"ping.timeout": "2"})
            ca = await namespace_ca(redis_url, namespace)
            agent = await start_agent(tmp_path / "a", "hv0", f"{a},{b}", ca=ca)
            await agent.wait_connected(a)
            stopped = time.monotonic()
            servers[0].process.send_signal(signal.SIGSTOP)
            try:
                landed = await agent.wait_connected(b, timeout=10)
            finally:
                servers[0].process.send_signal(signal.SIGCONT)
            assert agent.count(rf"lost server {a}: server silent for [0-9.]+s") == 1, agent.tail()
            # silent past 1 s x 2, noticed at the next 1 s ping tick, then a fresh connect
            assert 2.0 <= landed - stopped < 5.0, agent.tail()
            await stop_all([agent])

    asyncio.run(scenario())


OBSERVE = 3.5  # seconds: over three 1 s check intervals, to show that no check happens


@pytest.mark.timeout(90)
def test_own_check_interval_overrides_and_zero_stops_the_checker(redis_url, namespace, tmp_path):
    async def scenario():
        async with run_servers(2, redis_url, namespace) as servers:
            a, b = (s.address for s in servers)
            await set_config(redis_url, namespace, host=f"{a},{b}", check="1")
            ca = await namespace_ca(redis_url, namespace)
            own = await start_agent(
                tmp_path / "own", "own", f"{a},{b}", ca=ca, **{"host.lb.check.interval": "600"}
            )
            follower = await start_agent(tmp_path / "follower", "follower", f"{a},{b}", ca=ca)
            await servers[0].stop(signal.SIGKILL)
            await own.wait_connected(b)
            await follower.wait_connected(b)
            await servers[0].start()
            # the follower checks every 1 s (the servers' value); `own` every 600 s
            await follower.wait_connected(a, timeout=5, count=2)
            assert own.count("switched") == 0
            await own.stop()

            # global interval 0 stops the follower's checker, live
            await set_config(redis_url, namespace, check="0")
            await follower.wait_for(r"check interval now 0s", timeout=5)
            await servers[0].stop(signal.SIGKILL)
            await follower.wait_connected(b, count=2)
            await servers[0].start()
            await asyncio.sleep(OBSERVE)
            assert follower.count("switched") == 1, follower.tail()
            # and a new interval starts it again, with no restart
            await set_config(redis_url, namespace, check="1")
            await follower.wait_connected(a, timeout=5, count=3)
            await stop_all([follower])

    asyncio.run(scenario())
