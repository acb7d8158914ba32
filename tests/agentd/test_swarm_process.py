"""`agentd swarm` processes: migration to new servers, all servers down, clean stop."""

import asyncio
import re
import signal
import time

import pytest
import redis.asyncio as aioredis

from common.keys import Keys
from common.records import load_hosts
from tests.agentd.test_agent_process import set_config
from tests.support.agents import SwarmProcess, host_value, start_agent
from tests.support.keystores import join_token, namespace_ca
from tests.support.msrv_process import MsrvProcess, run_servers


async def wait_hosts(redis_url, namespace, condition, timeout=20.0):
    """Poll the registry until `condition(hosts)` holds; return the hosts."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with asyncio.timeout(timeout):
            while True:
                hosts = await load_hosts(client, Keys(namespace))
                if condition(hosts):
                    return hosts
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"registry never matched: {hosts}") from None
    finally:
        await client.aclose()


@pytest.mark.timeout(120)
def test_migration_to_a_new_set_of_servers(redis_url, namespace, tmp_path):
    count = 30

    async def scenario():
        async with run_servers(3, redis_url, namespace) as old:
            old_csv = ",".join(s.address for s in old)
            await set_config(redis_url, namespace, host=old_csv, algorithm="roundrobin")
            token = await join_token(redis_url, namespace, uses=count)
            swarm = SwarmProcess(tmp_path / "swarm", count, old_csv, token=token)
            await swarm.start(ready=rf"swarm: {count}/{count} agents connected", timeout=20)
            new = [MsrvProcess(f"new{i}", redis_url, namespace, verbose=False) for i in (1, 2, 3)]
            try:
                await asyncio.gather(*(s.start() for s in new))
                new_csv = ",".join(s.address for s in new)
                await set_config(redis_url, namespace, host=new_csv)
                new_ids = {s.server_id for s in new}

                def on_first_entry(hosts):
                    ids = {s.address: s.server_id for s in new}
                    return (
                        len(hosts) == count
                        and all(
                            h.state == "connected" and h.server == ids[h.ms_list[0]]
                            for h in hosts
                            if h.ms_list and h.ms_list[0] in ids
                        )
                        and all(h.server in new_ids for h in hosts)
                    )

                await wait_hosts(redis_url, namespace, on_first_entry)
                # the registry changes when a new session starts, a moment before the agent
                # drops its old one: wait for the agents' own view too (the swarm's summary)
                new_addresses = "|".join(re.escape(s.address) for s in new)
                await swarm.wait_for(
                    rf"swarm: {count}/{count} agents connected "
                    rf"\((?:(?:{new_addresses})=\d+(?:, )?)+\)$",
                    timeout=20,
                )
                for path in swarm.properties():
                    assert host_value(path).endswith("@roundrobin")
                    assert set(host_value(path)[: -len("@roundrobin")].split(",")) == {
                        s.address for s in new
                    }
                lost = swarm.matching("lost server")
                assert lost == [], "\n".join(lost)  # during the move (make-before-break)
                for server in old:
                    assert await server.stop(signal.SIGTERM) == 0
                hosts = await wait_hosts(
                    redis_url, namespace, lambda hs: all(h.server in new_ids for h in hs)
                )
                assert all(h.state == "connected" for h in hosts)
                lost = swarm.matching("lost server")
                assert lost == [], "\n".join(lost)  # when the old servers stopped
                assert await swarm.stop() == 0
            finally:
                await swarm.stop(signal.SIGKILL)
                for server in new:
                    await server.stop(signal.SIGKILL)

    asyncio.run(scenario())


@pytest.mark.timeout(90)
def test_all_servers_down_backs_off_then_everyone_returns(redis_url, namespace, tmp_path):
    count = 20
    window = 4.0

    async def scenario():
        async with run_servers(3, redis_url, namespace) as servers:
            csv = ",".join(s.address for s in servers)
            await set_config(redis_url, namespace, host=csv)
            agent = await start_agent(
                tmp_path / "one",
                "one",
                csv,
                ca=await namespace_ca(redis_url, namespace),
                **{"failover.backoff.initial": "0.2", "failover.backoff.max": "1"},
            )
            token = await join_token(redis_url, namespace, uses=count)
            swarm = SwarmProcess(
                tmp_path / "swarm", count, csv, "--property", "failover.backoff.max=1", token=token
            )
            await swarm.start(ready=rf"swarm: {count}/{count} agents connected", timeout=20)
            for server in servers:
                await server.stop(signal.SIGKILL)
            started = time.monotonic()
            await agent.wait_for("no server reachable", timeout=5)
            await asyncio.sleep(window - (time.monotonic() - started))
            passes = agent.count("no server reachable")
            # capped exponential backoff with full jitter, 0.2 s doubling to at most 1 s:
            # about 8 passes in 4 s; a loop without backoff would make thousands
            assert 2 <= passes <= 25, agent.tail()
            lines = agent.matching("no server reachable")
            numbers = [int(re.search(r"\(pass (\d+): ", line).group(1)) for line in lines]
            assert numbers == list(range(1, passes + 1)), agent.tail()
            await servers[1].start()
            await agent.wait_connected(servers[1].address, timeout=5)
            await swarm.wait_for(rf"swarm: {count}/{count} agents connected", timeout=10, count=2)
            assert await swarm.stop() == 0
            assert await agent.stop() == 0

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_sigterm_closes_the_session_and_the_host_shows_disconnected(redis_url, namespace, tmp_path):
    async def scenario():
        async with run_servers(1, redis_url, namespace) as servers:
            await set_config(redis_url, namespace, host=servers[0].address)
            ca = await namespace_ca(redis_url, namespace)
            agent = await start_agent(tmp_path / "a", "hv", servers[0].address, ca=ca)
            await wait_hosts(
                redis_url, namespace, lambda hs: [h.state for h in hs] == ["connected"]
            )
            assert await agent.stop(signal.SIGTERM) == 0
            assert agent.count("stopped") == 1
            # "at once": well before ping.interval x ping.timeout (15 s) could expire
            await wait_hosts(
                redis_url, namespace, lambda hs: [h.state for h in hs] == ["disconnected"], 3
            )

    asyncio.run(scenario())


def test_swarm_creates_missing_properties_and_rejects_a_bad_host(tmp_path):
    import subprocess
    import sys

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "agentd",
            "swarm",
            "--count",
            "2",
            "--dir",
            str(tmp_path),
            "--host",
            "a,,b",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == "Error: --host: host value: entry 2 is empty"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(90)
def test_a_large_swarm_reports_lost_servers_in_summary_lines(redis_url, namespace, tmp_path):
    """Above 50 agents, a server's death is one line per second (with the count of agents that
    lost it), not a line per agent; every agent still fails over."""
    count = 60

    async def scenario():
        async with run_servers(2, redis_url, namespace) as servers:
            a, b = (s.address for s in servers)
            await set_config(redis_url, namespace, host=f"{a},{b}", algorithm="static")
            token = await join_token(redis_url, namespace, uses=count)
            swarm = SwarmProcess(tmp_path / "swarm", count, f"{a},{b}", token=token)
            await swarm.start(ready=rf"swarm: {count}/{count} agents connected \({a}={count}\)")
            try:
                await servers[0].stop(signal.SIGKILL)
                await swarm.wait_for(rf"swarm: {count}/{count} agents connected \({b}={count}\)")
                pattern = rf"swarm: lost server {a}: .* \((\d+) agents\)"

                def all_counted():
                    lines = swarm.matching(pattern)
                    lost = sum(int(re.search(pattern, line).group(1)) for line in lines)
                    return time.monotonic() if lost >= count else None

                await swarm.wait_until(all_counted, 5, "losses summed")
                lost = sum(int(re.search(pattern, s).group(1)) for s in swarm.matching(pattern))
                assert lost == count, swarm.tail()
                assert swarm.count("lost server") == len(swarm.matching(pattern)), swarm.tail()
            finally:
                assert await swarm.stop() == 0, swarm.tail()

    asyncio.run(scenario())
