"""`msctl hosts`, `hosts remove`, `servers` and `status` against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from click.testing import CliRunner, Result

from common.configstore import ConfigStore
from common.connection import redis_from_url
from common.keys import Keys
from common.records import HostRecord, HostState
from msctl.cli import cli
from msctl.lab_view import read_view
from msrv.registry import HostRegistry, ServerRegistry

HOST_FIELDS = {
    "id", "guid", "name", "type", "zone", "cluster", "state", "server", "ms_list",
    "algorithm", "check_interval", "last_seen", "cert_expires", "acked_version", "current",
}  # fmt: skip
SERVER_FIELDS = {"id", "address", "state", "agents", "started", "last_seen"}


def msctl(redis_url: str, namespace: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--redis-url", redis_url, "--namespace", namespace])


def in_redis(redis_url: str, namespace: str, work: Callable[[Any, Keys], Awaitable[None]]) -> None:
    async def main() -> None:
        redis = redis_from_url(redis_url)
        try:
            await work(redis, Keys(namespace))
        finally:
            await redis.aclose()

    asyncio.run(main())


@pytest.fixture
def fleet(redis_url: str, namespace: str) -> None:
    """Server ms1 running with hosts 1 (connected) and 2 (disconnected); ms2 stopped."""

    async def work(redis: Any, keys: Keys) -> None:
        await ConfigStore(redis, keys).set("host", "a,b")
        ms1 = ServerRegistry(redis, keys, "ms1", "10.0.0.1:8250", ttl=60)
        await ms1.register(settings_version=0)
        await ms1.refresh(agents=1, settings_version=0)
        ms2 = ServerRegistry(redis, keys, "ms2", "10.0.0.2:8250", ttl=60)
        await ms2.register(settings_version=0)
        await ms2.deregister()
        registry = HostRegistry(redis, keys)
        writer = asyncio.create_task(registry.run())  # the registry's queued writes need it
        try:
            for name, state in (("kvm1", HostState.CONNECTED), ("kvm2", HostState.DISCONNECTED)):
                record = HostRecord(
                    0,
                    f"guid-{name}",
                    name=name,
                    type="routing",
                    zone="z1",
                    cluster="c1",
                    state=state,
                    server="ms1",
                    session="tok",
                    ms_list=("a", "b"),
                    algorithm="static",
                    acked_version=1,
                    last_seen=1000.0,
                )
                assert not (await registry.start(record, live_for=60)).stale
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    in_redis(redis_url, namespace, work)


def test_hosts_json_and_table(fleet: None, redis_url: str, namespace: str) -> None:
    result = msctl(redis_url, namespace, "hosts", "--json")
    assert result.exit_code == 0, result.output
    hosts = json.loads(result.output)
    assert [set(h) for h in hosts] == [HOST_FIELDS, HOST_FIELDS]
    assert hosts[0] | {"last_seen": 0} == {
        "id": 1, "guid": "guid-kvm1", "name": "kvm1", "type": "routing", "zone": "z1",
        "cluster": "c1", "state": "connected", "server": "ms1", "ms_list": ["a", "b"],
        "algorithm": "static", "check_interval": 0, "last_seen": 0, "cert_expires": None,
        "acked_version": 1, "current": True,
    }  # fmt: skip
    assert (hosts[1]["state"], hosts[1]["current"]) == ("disconnected", True)
    table = msctl(redis_url, namespace, "hosts")
    assert table.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].split() == [
        "ID", "NAME", "TYPE", "ZONE", "CLUSTER", "STATE", "SERVER", "LIST", "CHECK", "ACKED",
        "CURRENT", "SEEN",
    ]  # fmt: skip
    assert "a,b@static" in lines[1] and "connected" in lines[1]
    assert lines[1].split()[8:11] == ["0s", "1", "yes"]


def test_hosts_current_follows_the_settings(fleet: None, redis_url: str, namespace: str) -> None:
    """A new `host` order: no host holds its list until it acknowledges one (acked_version
    stays); a disconnected host is judged on the list its record says it holds."""

    async def reorder(redis: Any, keys: Keys) -> None:
        await ConfigStore(redis, keys).set("host", "b,a")

    in_redis(redis_url, namespace, reorder)
    hosts = json.loads(msctl(redis_url, namespace, "hosts", "--json").output)
    assert [(h["id"], h["acked_version"], h["current"]) for h in hosts] == [
        (1, 1, False),
        (2, 1, False),
    ]
    lines = msctl(redis_url, namespace, "hosts").output.splitlines()
    assert [line.split()[9:11] for line in lines[1:]] == [["1", "no"], ["1", "no"]]

    async def acknowledge(redis: Any, keys: Keys) -> None:  # as msrv records an ack
        await redis.hset(keys.host(1), mapping={"ms_list": "b,a", "acked_version": "2"})

    in_redis(redis_url, namespace, acknowledge)
    hosts = json.loads(msctl(redis_url, namespace, "hosts", "--json").output)
    assert [(h["acked_version"], h["current"]) for h in hosts] == [(2, True), (1, False)]


def test_hosts_json_shows_the_certificate_expiry(
    fleet: None, redis_url: str, namespace: str
) -> None:
    """As the server writes it at startup (0, unknown: null); the serial stays out."""

    async def certificate(redis: Any, keys: Keys) -> None:
        await redis.hset(keys.host(2), mapping={"cert_serial": "1f", "cert_expires": "1700000000"})

    in_redis(redis_url, namespace, certificate)
    result = msctl(redis_url, namespace, "hosts", "--json")
    assert result.exit_code == 0, result.output
    hosts = json.loads(result.output)
    assert [h["cert_expires"] for h in hosts] == [None, 1700000000.0]
    assert "1f" not in result.output


def test_servers_json_and_table(fleet: None, redis_url: str, namespace: str) -> None:
    result = msctl(redis_url, namespace, "servers", "--json")
    assert result.exit_code == 0, result.output
    servers = json.loads(result.output)
    assert [set(s) for s in servers] == [SERVER_FIELDS, SERVER_FIELDS]
    assert [(s["id"], s["address"], s["state"], s["agents"]) for s in servers] == [
        ("ms1", "10.0.0.1:8250", "running", 1),
        ("ms2", "10.0.0.2:8250", "stopped", 0),
    ]
    table = msctl(redis_url, namespace, "servers").output.splitlines()
    assert table[0].split() == ["ID", "ADDRESS", "STATE", "AGENTS", "STARTED", "SEEN"]


def test_a_server_whose_liveness_expired_is_down_and_its_hosts_disconnected(
    fleet: None, redis_url: str, namespace: str
) -> None:
    async def expire(redis: Any, keys: Keys) -> None:
        await redis.delete(keys.server_alive("ms1"))

    in_redis(redis_url, namespace, expire)
    servers = json.loads(msctl(redis_url, namespace, "servers", "--json").output)
    assert servers[0]["state"] == "down"
    hosts = json.loads(msctl(redis_url, namespace, "hosts", "--json").output)
    assert {h["state"] for h in hosts} == {"disconnected"}
    status = msctl(redis_url, namespace, "status")
    assert "warning: no management server is running" in status.output
    assert "servers down (no liveness refresh): ms1" in status.output


def test_a_server_that_is_not_running_has_no_agents(redis_url: str, namespace: str) -> None:
    """Its last count (10) is history: a down or stopped server holds no live session."""

    async def work(redis: Any, keys: Keys) -> None:
        for server_id, address in (("ms1", "10.0.0.1:8250"), ("ms2", "10.0.0.2:8250")):
            server = ServerRegistry(redis, keys, server_id, address, ttl=60)
            await server.refresh(agents=10, settings_version=0)
        await redis.delete(keys.server_alive("ms1"))  # ms1 died: its hash still says running
        await ServerRegistry(redis, keys, "ms2", "10.0.0.2:8250", ttl=60).deregister()
        assert await redis.hmget(keys.server("ms1"), ["state", "agents"]) == ["running", "10"]
        assert await redis.hget(keys.server("ms2"), "agents") == "10"

    in_redis(redis_url, namespace, work)
    result = msctl(redis_url, namespace, "servers", "--json")
    assert result.exit_code == 0, result.output
    assert [(s["id"], s["state"], s["agents"]) for s in json.loads(result.output)] == [
        ("ms1", "down", 0),
        ("ms2", "stopped", 0),
    ]
    expected = [["ms1", "10.0.0.1:8250", "down", "0"], ["ms2", "10.0.0.2:8250", "stopped", "0"]]
    table = msctl(redis_url, namespace, "servers").output.splitlines()
    assert [line.split()[:4] for line in table[1:]] == expected
    views: list[str] = []

    async def lab_view(redis: Any, keys: Keys) -> None:
        views.append((await read_view(redis, keys)).render())

    in_redis(redis_url, namespace, lab_view)
    assert [line.split() for line in views[0].splitlines()[1:3]] == expected


def test_remove_retires_a_disconnected_host_and_recomputes_its_zone(
    fleet: None, redis_url: str, namespace: str
) -> None:
    events: list[str] = []

    async def listen_while_removing(redis: Any, keys: Keys) -> None:
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(keys.events)
        result = await asyncio.to_thread(msctl, redis_url, namespace, "hosts", "remove", "2")
        assert result.exit_code == 0, result.output
        assert result.output.strip() == "host 2 (kvm2, zone z1) removed"
        async with asyncio.timeout(5):
            while not events:
                message = await pubsub.get_message(timeout=1)
                if message is not None:
                    events.append(message["data"])
        await pubsub.aclose()
        assert await redis.zrange(keys.zone_hosts("z1"), 0, -1) == ["1"]
        assert await redis.hget(keys.host_ids_by_guid, "guid-kvm2") is None

    in_redis(redis_url, namespace, listen_while_removing)
    assert json.loads(events[0]) == {"type": "hosts.changed", "zone": "z1"}
    hosts = json.loads(msctl(redis_url, namespace, "hosts", "--json").output)
    assert [h["id"] for h in hosts] == [1]


def test_remove_refuses_connected_and_unknown_hosts(
    fleet: None, redis_url: str, namespace: str
) -> None:
    busy = msctl(redis_url, namespace, "hosts", "remove", "1")
    assert busy.exit_code == 2
    assert "connected to server ms1; stop its agent first" in busy.output
    unknown = msctl(redis_url, namespace, "hosts", "remove", "99")
    assert (unknown.exit_code, "no host with id 99" in unknown.output) == (2, True)
    assert msctl(redis_url, namespace, "hosts", "remove", "zero").exit_code == 2
    assert len(json.loads(msctl(redis_url, namespace, "hosts", "--json").output)) == 2


def test_status_summarises_and_warns(fleet: None, redis_url: str, namespace: str) -> None:
    result = msctl(redis_url, namespace, "status")
    assert result.exit_code == 0, result.output
    assert "host            a,b" in result.output
    assert "servers         2 (1 running, 1 stopped)" in result.output
    assert "hosts           2 (1 connected, 1 disconnected)" in result.output
    assert "lists           converged: all 1 connected hosts hold their list" in result.output
    assert "warning" not in result.output

    async def unset_and_change(redis: Any, keys: Keys) -> None:
        await ConfigStore(redis, keys).set("indirect.agent.lb.check.interval", "9", "c1")

    in_redis(redis_url, namespace, unset_and_change)
    result = msctl(redis_url, namespace, "status")
    assert "check interval  0s (overrides: c1=9s)" in result.output
    assert "lists           1 of 1 connected hosts lag: ms1 1\n" in result.output
    warning = "warning: 1 of 1 connected hosts lag: ms1 1; they have not acknowledged their list: 1"
    assert warning in result.output.splitlines()


def test_status_warns_when_host_is_unset(redis_url: str, namespace: str) -> None:
    result = msctl(redis_url, namespace, "status")
    assert result.exit_code == 0
    assert "host            (not set)" in result.output
    assert "warning: `host` is not set: servers push no list" in result.output
    assert "warning: no management server is running" in result.output


def test_redis_down_is_a_runtime_failure(namespace: str) -> None:
    from tests.support.redis_server import free_port

    url = f"redis://127.0.0.1:{free_port()}/0"
    for args in (("hosts",), ("servers",), ("status",)):
        assert msctl(url, namespace, *args).exit_code == 1
