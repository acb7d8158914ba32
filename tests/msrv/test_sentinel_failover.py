"""Redis high availability (DESIGN.md): servers on a redis+sentinel:// URL ride out a master
failover as any Redis outage, finding the new master through the sentinels.

- SIGKILL of the master under 3 servers and 60 agents: a replica is elected, every server
  resubscribes on it and resyncs; no agent session is lost, the setting acknowledged just
  before the kill survives, and a change made after reaches every agent.
- A server started while the sentinels answer but know no master that is up waits (and says
  so), then serves once the master is there.
- A server killed during the failover: its agents are admitted by the others once the new
  master is up.
- A manual failover (SENTINEL FAILOVER): the old master lives on, demoted to a replica that
  refuses writes; every server leaves it for the new master, and no session is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from common.connection import redis_from_url
from common.protocol import Error, MsList, Ready, Startup
from common.records import HostRecord, HostState
from msctl.children import msrv_ready, swarm_ready
from tests.support.agents import SwarmProcess, provision_swarm
from tests.support.fleet import Fleet, fleet
from tests.support.keystores import namespace_ca
from tests.support.msrv_process import MsrvProcess
from tests.support.sentinel import SentinelCluster, sentinel_cluster
from tests.support.tls import identity
from tests.support.wire_client import WireClient

ALGORITHM = "indirect.agent.lb.algorithm"
CHECK_INTERVAL = "indirect.agent.lb.check.interval"
VALIDITY = "ca.framework.cert.validity.period"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[SentinelCluster]:
    with sentinel_cluster(tmp_path / "redis") as started:
        yield started


def _spread(f: Fleet, each: int) -> str:
    """The swarm's summary line once it has `each` agents on every server of the fleet."""
    spread = ", ".join(rf"{re.escape(a)}={each}" for a in sorted(f.addresses))
    return rf"agents connected \({spread}\)$"


@contextlib.asynccontextmanager
async def _settled_swarm(
    f: Fleet, directory: Path, count: int, **extra: str
) -> AsyncIterator[SwarmProcess]:
    """`count` enrolled agents on `host` = the fleet in roundrobin, each on its first entry;
    stopped at the end (cleanly, when the test passed)."""
    hosts = ",".join(f.addresses)
    await f.set("host", hosts)
    await f.set(ALGORITHM, "roundrobin")
    provision_swarm(directory, count, hosts, await f.ca(), **extra)
    swarm = SwarmProcess(directory, count, hosts)
    ids = {s.address: s.server_id for s in f.servers}
    try:
        await swarm.start(ready=swarm_ready(count), timeout=40)
        await swarm.wait_for(_spread(f, count // len(f.servers)), timeout=30)
        await f.wait_hosts(
            lambda hosts: (
                len(hosts) == count
                and all(
                    h.state == HostState.CONNECTED and h.server == ids[h.ms_list[0]] for h in hosts
                )
            ),
            timeout=20,
        )
        yield swarm
        assert await swarm.stop() == 0
    finally:
        await swarm.stop(signal.SIGKILL)


async def _first_accepted_startup(f: Fleet) -> float:
    """Offer a startup to the servers in turn until one is accepted; when it was."""
    for attempt in range(1, 10_000):
        client = await f.connect(attempt % len(f.servers), f"probe-{uuid.uuid4().hex[:8]}")
        try:
            await client.send(Startup(client.guid, "probe", "routing", "z1", "c", [], None, ""))
            message = await client.next(timeout=10)
            if isinstance(message, Ready):
                return time.monotonic()
            assert isinstance(message, Error) and message.retryable, message
        finally:
            await client.close()
        await asyncio.sleep(0.05)
    raise AssertionError("no startup accepted")


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_master_failover_loses_no_session_and_no_acknowledged_setting(
    cluster: SentinelCluster, namespace: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with (
            fleet(cluster.url, namespace, servers=3) as f,
            _settled_swarm(f, tmp_path / "swarm", 60) as swarm,
        ):
            before = {h.guid: h for h in await f.hosts()}

            acknowledged = await f.msctl("config", "set", VALIDITY, "200")
            assert acknowledged.exit_code == 0, acknowledged.output
            old = await cluster.kill_master()
            killed = time.monotonic()
            probe = asyncio.create_task(_first_accepted_startup(f))
            new = await cluster.wait_new_master(old)
            elected = time.monotonic()
            await asyncio.gather(*(s.wait_for("Redis unreachable") for s in f.servers))
            await asyncio.gather(*(s.wait_for("Redis is back", timeout=20) for s in f.servers))
            accepted = await asyncio.wait_for(probe, 20)
            # (msctl's log set-up, run by f.msctl, silences loggers: printed, shown with -s)
            print(
                f"master {old.name} killed; {new.name} elected after {elected - killed:.2f}s; "
                f"first startup accepted after {accepted - killed:.2f}s (down-after 1000 ms)"
            )
            assert accepted - killed < 15

            # every server resubscribed on the new master (found through the sentinels)
            direct = redis_from_url(cluster.node_url(new))
            try:
                assert await direct.pubsub_numsub(f.keys.events) == [(f.keys.events, 3)]
            finally:
                await direct.aclose()
            await f.forget_connections()  # the test's own pooled connections died with it
            # no agent noticed; every host kept its session, on its server
            assert swarm.matching("lost server") == []
            after = {h.guid: h for h in await f.hosts() if h.guid in before}
            assert _sessions(after) == _sessions(before)
            assert {h.state for h in after.values()} == {HostState.CONNECTED}
            # the setting acknowledged before the kill is there
            got = await f.msctl("config", "get", VALIDITY)
            assert got.exit_code == 0 and "200" in got.output, got.output
            # a change made now reaches every agent (the registry shows each acknowledged it)
            changed = await f.msctl("config", "set", CHECK_INTERVAL, "30", "--wait")
            assert changed.exit_code == 0, changed.output
            version = int(re.search(r"config version (\d+)", changed.output)[1])  # type: ignore[index]
            hosts = [h for h in await f.hosts() if h.guid in before]
            assert all(h.acked_version >= version and h.check_interval == 30 for h in hosts)
            assert swarm.matching("lost server") == []

    asyncio.run(scenario())


def _sessions(hosts: dict[str, HostRecord]) -> dict[str, tuple[str, str]]:
    return {guid: (h.session, h.server) for guid, h in hosts.items()}


@pytest.mark.timeout(60)
def test_a_server_started_while_no_master_is_known_waits_then_serves(
    tmp_path: Path, namespace: str
) -> None:
    """The sentinels watch a master that is not running: they answer, but name none."""
    with sentinel_cluster(tmp_path / "redis", data=False) as cluster:
        cluster.wait_until(cluster.sees_master_down, "the sentinels never saw the master down")

        async def scenario() -> None:
            server = MsrvProcess("ms1", cluster.url, namespace)
            try:
                await server.start(ready="startup: no Redis master known for service 'lab'")
                assert server.matching("listening on") == []
                assert server.count("no Redis master known") == 1  # then quiet (debug)
                await asyncio.to_thread(cluster.start_data)
                await server.wait_for(msrv_ready("ms1"), timeout=20)
                ca = await namespace_ca(cluster.url, namespace)
                client = await WireClient.connect(
                    "127.0.0.1", server.port, identity(ca, "g-1"), guid="g-1"
                )
                try:
                    greeting = await client.startup()
                    assert greeting.ready.host_id == 1
                finally:
                    await client.close()
            finally:
                await server.stop(signal.SIGKILL)

        asyncio.run(scenario())


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_a_server_killed_during_the_failover_has_its_agents_admitted_elsewhere(
    cluster: SentinelCluster, namespace: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        count = 30
        backoff = {"failover.backoff.max": "1"}
        async with (
            fleet(cluster.url, namespace, servers=3) as f,
            _settled_swarm(f, tmp_path / "swarm", count, **backoff) as swarm,
        ):
            before = {h.guid: h for h in await f.hosts()}
            stranded = {g for g, h in before.items() if h.server == "ms1"}
            assert len(stranded) == count // 3

            old = await cluster.kill_master()
            await f.servers[0].stop(signal.SIGKILL)
            await f.servers[1].wait_for("Redis unreachable")
            await cluster.wait_new_master(old)
            others = {s.address for s in f.servers[1:]}
            spread = "|".join(re.escape(a) for a in others)
            await swarm.wait_for(
                rf"swarm: {count}/{count} agents connected \((?:(?:{spread})=\d+(?:, )?)+\)$",
                timeout=30,
            )
            await f.forget_connections()
            hosts = {h.guid: h for h in await f.hosts()}
            for guid in stranded:  # a new session on another server
                assert hosts[guid].server in ("ms2", "ms3") and hosts[guid].session
                assert hosts[guid].session != before[guid].session
                assert hosts[guid].state == HostState.CONNECTED
            kept = {g: h for g, h in hosts.items() if g not in stranded}
            assert _sessions(kept) == _sessions({g: before[g] for g in kept})
            # ms1 fell with its sessions; the survivors lost none
            lost = " ".join(swarm.matching("lost server"))
            assert f.servers[0].address in lost
            assert not any(a in lost for a in others), lost

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_a_manual_failover_moves_every_server_off_the_demoted_master(
    cluster: SentinelCluster, namespace: str
) -> None:
    """The old master stays up, and a master, until Sentinel reconfigures it (about 10 s
    later): the servers leave it before, by asking the sentinels (msrv.subscriber)."""

    async def scenario() -> None:
        async with fleet(cluster.url, namespace, servers=3) as f:
            await f.set("host", ",".join(f.addresses))
            clients = []
            for i in range(12):
                client = await f.connect(i % 3, f"g{i}")
                assert (await client.startup(name=f"h{i}")).ms_list is not None
                client.keepalive(1.0)
                clients.append(client)
            before = {h.guid: h for h in await f.hosts()}
            old = cluster.node_at(await cluster.master_port())
            assert await cluster.ask_sentinel("SENTINEL", "FAILOVER", cluster.service) == "OK"
            new = await cluster.wait_new_master(old)
            moved = rf"lost Redis \(the sentinels name 127\.0\.0\.1:{new.port} master of 'lab'"
            await asyncio.gather(*(s.wait_for(moved, timeout=10) for s in f.servers))
            await asyncio.gather(*(s.wait_for("Redis is back", timeout=10) for s in f.servers))
            direct = redis_from_url(cluster.node_url(new))
            try:
                async with asyncio.timeout(10):  # every server subscribed there
                    while True:
                        if await direct.pubsub_numsub(f.keys.events) == [(f.keys.events, 3)]:
                            break
                        await asyncio.sleep(0.05)
            finally:
                await direct.aclose()
            assert await cluster.role(old) == "master"  # not reconfigured yet: left by us
            await f.forget_connections()
            version = await f.set("host", ",".join(reversed(f.addresses)))
            for client in clients:  # the change reaches each, over its old session
                pushed = [m for m in await client.sync(timeout=10) if isinstance(m, MsList)]
                assert pushed and pushed[-1].version == version
            after = {h.guid: h for h in await f.hosts()}
            assert _sessions(after) == _sessions(before)
            # Sentinel demotes the old master at last, closing its clients: none is ours
            await cluster.wait_role(old, "slave")
            assert all(s.count("Redis is back") == 1 for s in f.servers)

    asyncio.run(scenario())
