"""Maintenance mode (DESIGN, Maintenance and pacing): a server taken out of service loses no
agent, no list names it while it is out, it stays out across its restarts, and cancelling puts it
back; `msctl servers maintenance` refuses an unknown id and the last server of `host`."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from common.assignment import assignment_for, left_out
from common.configstore import ConfigSnapshot, ConfigStore
from common.connection import redis_from_url
from common.keys import Keys
from common.protocol import ErrorCode, Startup
from common.records import ServerState, load_servers
from common.tokens import create_token
from msctl.children import swarm_ready
from msrv.registry import ServerRegistry
from tests.support.agents import SwarmProcess, host_value
from tests.support.fleet import Fleet, fleet

COUNT = 60
ALGORITHM = "indirect.agent.lb.algorithm"


async def _refused_at(f: Fleet, server: int, guid: str) -> None:
    """A fresh startup at that server gets a retryable `unavailable` naming maintenance."""
    client = await f.connect(server, guid)
    await client.send(Startup(guid, guid, "routing", "z1", "c", [], None, f.addresses[server]))
    error = await client.wait_error_and_close()
    assert (error.code, error.retryable) == (ErrorCode.UNAVAILABLE, True), error
    assert "maintenance" in error.message, error


class Watch:
    """Polls the registry while a step runs: any host not connected, any list naming `address`."""

    def __init__(self, f: Fleet, address: str | None = None) -> None:
        self.f = f
        self.address = address
        self.disconnected: list[tuple[int, str, str]] = []
        self.naming: list[tuple[int, tuple[str, ...]]] = []
        self.looks = 0
        self.emptied: dict[str, float] = {}  # server id -> when the registry first showed none
        self.started = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            hosts = await self.f.hosts()
            for server in self.f.servers:
                if not any(h.server == server.server_id for h in hosts):
                    self.emptied.setdefault(server.server_id, time.monotonic())
            for h in hosts:
                if h.state != "connected":
                    self.disconnected.append((h.id, h.name, h.server))
                if self.address is not None and self.address in h.ms_list:
                    self.naming.append((h.id, h.ms_list))
            self.looks += 1
            await asyncio.sleep(0.05)

    def __enter__(self) -> Watch:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


def _on_first_entry(f: Fleet) -> Any:
    address = {s.server_id: s.address for s in f.servers}

    def check(hosts: list[Any]) -> bool:
        return len(hosts) == COUNT and all(
            h.state == "connected" and h.ms_list and address[h.server] == h.ms_list[0]
            for h in hosts
        )

    return check


@pytest.mark.timeout(240)
def test_maintenance_moves_60_agents_off_a_server_without_losing_one(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=3) as f:
            csv = ",".join(f.addresses)
            await f.set("host", csv)
            await f.set(ALGORITHM, "roundrobin")
            token, _ = await create_token(f.redis, f.keys, ttl_seconds=600, uses=COUNT)
            swarm = SwarmProcess(
                tmp_path / "swarm", COUNT, csv, "--property", "connect.timeout=20", token=token
            )
            await swarm.start(ready=swarm_ready(COUNT), timeout=90)
            try:
                await f.wait_hosts(_on_first_entry(f), timeout=60)
                assert len([h for h in await f.hosts() if h.server == "ms1"]) == COUNT // 3
                await _maintenance(f, swarm)
                await _out_of_service(f, swarm)
                await _cancel(f, swarm)
                lost = swarm.matching("lost server")
                assert lost == [], "\n".join(lost)
                assert await swarm.stop() == 0
            finally:
                await swarm.stop(signal.SIGKILL)

    asyncio.run(scenario())


async def _maintenance(f: Fleet, swarm: SwarmProcess) -> None:
    """`maintenance ms1 --wait`: every agent leaves ms1, none is ever disconnected."""
    ms1 = f.servers[0]
    with Watch(f) as watch:
        started = time.monotonic()
        result = await f.msctl("servers", "maintenance", "ms1", "--wait", "--timeout", "60")
        waited = time.monotonic() - started
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "server ms1: preparing"
    assert lines[-2:] == ["server ms1: 0 agents left", "server ms1: maintenance"]
    assert watch.looks > 2 and watch.disconnected == [], watch.disconnected
    hosts = await f.hosts()
    assert len(hosts) == COUNT and not [h for h in hosts if h.server == "ms1"]
    left = watch.emptied["ms1"] - watch.started
    print(f"\n{COUNT // 3} agents left ms1 in {left:.2f} s; --wait returned after {waited:.2f} s")
    swarm_line = rf"swarm: {COUNT}/{COUNT} agents connected \((?!.*{re.escape(ms1.address)})"
    await swarm.wait_for(swarm_line, timeout=5)  # the agents' own view: none on ms1


async def _out_of_service(f: Fleet, swarm: SwarmProcess) -> None:
    """No list pushed from now on names ms1 (the lists the hosts acknowledged, the agents'
    files); a restart keeps it in maintenance, refusing startups."""
    ms1 = f.servers[0]
    with Watch(f, ms1.address) as watch:
        hosts = await f.wait_hosts(
            lambda hs: all(ms1.address not in h.ms_list for h in hs), timeout=10
        )
        assert all(h.state == "connected" and len(h.ms_list) == 2 for h in hosts)
        for path in swarm.properties():
            assert ms1.address not in (host_value(path) or ""), path
        await _refused_at(f, 0, "newcomer")
        assert await ms1.stop(signal.SIGTERM) == 0
        await ms1.start()
        (record,) = [s for s in await load_servers(f.redis, f.keys) if s.id == "ms1"]
        assert (record.state, record.agents) == (ServerState.MAINTENANCE, 0)
        await _refused_at(f, 0, "newcomer-2")
        assert ms1.matching("in maintenance: holds no agent"), ms1.tail()
    assert watch.looks > 2 and watch.naming == [] and watch.disconnected == []
    for path in swarm.properties():
        assert ms1.address not in (host_value(path) or ""), path


async def _cancel(f: Fleet, swarm: SwarmProcess) -> None:
    """`cancel-maintenance ms1`: its address is back in every list, its agents go back."""
    ms1 = f.servers[0]
    result = await f.msctl("servers", "cancel-maintenance", "ms1")
    assert result.exit_code == 0, result.output
    assert result.output == "server ms1: back in service (was maintenance)\n"
    await f.wait_hosts(
        lambda hs: len(hs) == COUNT and all(ms1.address in h.ms_list for h in hs), timeout=20
    )
    await f.wait_hosts(_on_first_entry(f), timeout=30)
    for path in swarm.properties():
        assert ms1.address in (host_value(path) or ""), path
    servers = {s.id: s.state for s in await load_servers(f.redis, f.keys)}
    assert servers == {"ms1": "running", "ms2": "running", "ms3": "running"}


# -- msctl: refusals, --wait's timeout, the states shown ----------------------------------------


def _servers(redis_url: str, namespace: str, *servers: tuple[str, str, bool, int]) -> None:
    """Register servers (id, address, running, agents) in Redis as msrv does; `host` = a,b."""

    async def work() -> None:
        redis = redis_from_url(redis_url)
        keys = Keys(namespace)
        try:
            await ConfigStore(redis, keys).set("host", "10.0.0.1,10.0.0.2:8250")
            for server_id, address, running, agents in servers:
                registry = ServerRegistry(redis, keys, server_id, address, ttl=60)
                await registry.register(settings_version=1)
                await registry.refresh(agents=agents, settings_version=1)
                if not running:
                    await registry.deregister()
        finally:
            await redis.aclose()

    asyncio.run(work())


def _msctl(redis_url: str, namespace: str, *args: str) -> Any:
    from click.testing import CliRunner

    from msctl.cli import cli

    argv = [*args, "--redis-url", redis_url, "--namespace", namespace]
    return CliRunner().invoke(cli, argv)


def _states(redis_url: str, namespace: str) -> dict[str, tuple[str, int]]:
    result = _msctl(redis_url, namespace, "servers", "--json")
    assert result.exit_code == 0, result.output
    return {s["id"]: (s["state"], s["agents"]) for s in json.loads(result.output)}


def test_an_unknown_server_is_refused(redis_url: str, namespace: str) -> None:
    _servers(redis_url, namespace, ("ms1", "10.0.0.1:8250", True, 0))
    for command in ("maintenance", "cancel-maintenance"):
        result = _msctl(redis_url, namespace, "servers", command, "ms9")
        assert result.exit_code == 2, result.output
        assert result.output == "Error: no management server with id 'ms9' (known: ms1)\n"
    assert _states(redis_url, namespace) == {"ms1": ("running", 0)}


def test_the_last_running_server_of_host_is_refused(redis_url: str, namespace: str) -> None:
    # ms1 is 10.0.0.1 of `host` (port 8250 by default), ms2 is stopped, ms3 is not in `host`
    _servers(
        redis_url,
        namespace,
        ("ms1", "10.0.0.1:8250", True, 4),
        ("ms2", "10.0.0.2", False, 0),
        ("ms3", "10.0.0.3:8250", True, 0),
    )
    result = _msctl(redis_url, namespace, "servers", "maintenance", "ms1")
    assert result.exit_code == 2, result.output
    assert len(result.output.splitlines()) == 1
    assert "ms1 is the last running server of `host`" in result.output
    # a stopped server holds no agent: straight to maintenance; ms3 serves no entry of `host`
    assert _msctl(redis_url, namespace, "servers", "maintenance", "ms2").exit_code == 0
    assert _msctl(redis_url, namespace, "servers", "maintenance", "ms3").exit_code == 0
    assert _states(redis_url, namespace) == {
        "ms1": ("running", 4),
        "ms2": ("maintenance", 0),
        "ms3": ("preparing", 0),
    }
    status = _msctl(redis_url, namespace, "status")
    assert re.search(
        r"out of service +ms2 \(maintenance, not running\), ms3 \(preparing", status.output
    )
    assert "warning: server ms3 is preparing for maintenance: 0 agents left" in status.output
    # ms2 back in service (it is stopped): ms1 is still the last running one of `host`
    result = _msctl(redis_url, namespace, "servers", "cancel-maintenance", "ms2")
    assert result.output == "server ms2: back in service (was maintenance)\n"
    assert _msctl(redis_url, namespace, "servers", "maintenance", "ms1").exit_code == 2
    again = _msctl(redis_url, namespace, "servers", "cancel-maintenance", "ms2")
    assert (again.exit_code, again.output) == (0, "server ms2 was not in maintenance\n")


def test_wait_gives_up_at_the_timeout_and_the_server_stays_preparing(
    redis_url: str, namespace: str
) -> None:
    _servers(
        redis_url,
        namespace,
        ("ms1", "10.0.0.1:8250", True, 3),
        ("ms2", "10.0.0.2:8250", True, 0),
    )
    started = time.monotonic()
    result = _msctl(
        redis_url, namespace, "servers", "maintenance", "ms1", "--wait", "--timeout", "1"
    )
    assert 1 <= time.monotonic() - started < 5
    assert result.exit_code == 1, result.output
    assert result.output.splitlines()[:2] == ["server ms1: preparing", "server ms1: 3 agents left"]
    assert "still preparing after 1s, 3 agents left" in result.output.splitlines()[-1]
    assert _states(redis_url, namespace)["ms1"] == ("preparing", 3)
    # again: it is already preparing; ms2 is now the last of `host` in service
    assert _msctl(redis_url, namespace, "servers", "maintenance", "ms1").exit_code == 0
    assert _msctl(redis_url, namespace, "servers", "maintenance", "ms2").exit_code == 2


# -- the avoid list, as every server computes it ------------------------------------------------


def test_the_avoid_list_leaves_servers_out_after_ordering_and_never_empties_a_list() -> None:
    snapshot = ConfigSnapshot(1, {"host": "a,b:8250,c:9000", ALGORITHM: "roundrobin"}).effective()
    ids = [1, 2, 3]
    assert left_out(snapshot.host, {"b", "c:8250"}) == {"b:8250"}  # endpoints, port 8250
    out = left_out(snapshot.host, {"a:8250"})
    assignments = [assignment_for(snapshot, ids, i, leave_out=out) for i in ids]
    lists = [a.ms_list for a in assignments if a is not None]
    # each host keeps its order: only the host whose first entry was `a` gets a new one
    assert lists == [("b:8250", "c:9000"), ("b:8250", "c:9000"), ("c:9000", "b:8250")]
    everything = left_out(snapshot.host, {"a", "b", "c:9000"})
    assert len(everything) == 3
    whole = assignment_for(snapshot, ids, 2, leave_out=everything)
    assert whole is not None and whole.ms_list == ("b:8250", "c:9000", "a")
