"""`msrv serve --metrics`: a live server's endpoint, scraped over HTTP and parsed with
prometheus-client's own parser, shows every metric the design names and moves with what the
server does: sessions as agents connect, pushes, acks and the push-to-ack histogram after a
change, stale hosts until they ack, Redis down and back, refused handshakes and startups."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from common.protocol import Ack, ErrorCode, MsList, Startup
from msrv.cli import cli as msrv_cli
from tests.support.fleet import Fleet, fleet
from tests.support.redis_server import RedisServer, free_port
from tests.support.wire_client import WireClient

# DESIGN "Visibility": at least these
DESIGNED = {
    "msrv_sessions",
    "msrv_startups",
    "msrv_lists_pushed",
    "msrv_acks",
    "msrv_list_ack_seconds",
    "msrv_hosts_stale",
    "msrv_config_version",
    "msrv_redis_up",
    "msrv_enrollments",
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> tuple[set[str], Samples]:
    """(the metric families' names, every sample by name and labels)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    families = list(text_string_to_metric_families(text))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples
    }
    return {f.name for f in families}, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape_until(
    port: int, check: Callable[[Samples], bool], what: str, timeout: float = 10.0
) -> Samples:
    """Scrape until `check` holds (counters move as the server handles messages)."""
    samples: Samples = {}
    try:
        async with asyncio.timeout(timeout):
            while True:
                _, samples = await asyncio.to_thread(scrape, port)
                if check(samples):
                    return samples
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"{what}; last scrape: {samples}") from None


@pytest.mark.timeout(60)
def test_a_live_server_exports_what_it_does(
    redis_factory: Callable[..., RedisServer], namespace: str
) -> None:
    redis = redis_factory()
    port = free_port()

    async def scenario() -> None:
        options = ("--metrics", f"127.0.0.1:{port}")
        async with fleet(redis.url, namespace, servers=1, server_options=options) as f:
            names, samples = await asyncio.to_thread(scrape, port)
            assert names >= DESIGNED, DESIGNED - names
            assert value(samples, "msrv_redis_up") == 1
            assert value(samples, "msrv_info", server="ms1", advertise=f.addresses[0]) == 1
            assert value(samples, "msrv_in_service") == 1

            version = await f.set("host", f"{f.addresses[0]},10.9.9.9:8250")
            await f.servers[0].wait_version(version)
            clients = await _sessions(f, {"z1": 5, "z2": 3})
            samples = await scrape_until(
                port, lambda s: value(s, "msrv_acks_total") == 8, "the 8 startup lists acked"
            )
            assert value(samples, "msrv_sessions", zone="z1") == 5
            assert value(samples, "msrv_sessions", zone="z2") == 3
            assert value(samples, "msrv_startups_total", result="accepted") == 8
            assert value(samples, "msrv_config_version") == version
            assert value(samples, "msrv_hosts_stale") == 0
            pushed = value(samples, "msrv_lists_pushed_total")
            assert pushed == 8
            assert value(samples, "msrv_list_ack_seconds_count") == 8

            # a change: every host is pushed a list; the non-acking ones stay stale until they ack
            version = await f.set("host", f"10.9.9.9:8250,{f.addresses[0]}")
            samples = await scrape_until(
                port,
                lambda s: (
                    value(s, "msrv_lists_pushed_total") == pushed + 8
                    and value(s, "msrv_acks_total") == 13
                ),
                "8 new lists pushed, the 5 auto-acking hosts acked",
            )
            assert value(samples, "msrv_config_version") == version
            assert value(samples, "msrv_hosts_stale") == 3
            assert value(samples, "msrv_list_ack_seconds_count") == 13
            assert value(samples, "msrv_list_ack_seconds_sum") > 0
            for client in clients[5:]:
                message = client.current
                assert message is not None and message.version == version
                await client.send(_ack(message))
            await scrape_until(port, lambda s: value(s, "msrv_hosts_stale") == 0, "acks seen")

            # an intruder without TLS is refused in the handshake
            with socket.create_connection(("127.0.0.1", f.servers[0].port)) as intruder:
                intruder.sendall(b'{"type":"startup"}\n')
                intruder.recv(100)
            await scrape_until(
                port, lambda s: value(s, "msrv_handshakes_failed_total") == 1, "handshake refused"
            )

            # Redis away: redis_up 0, startups refused as unavailable; back: a reconnect
            redis.kill()
            await f.servers[0].wait_for("Redis unreachable")
            await scrape_until(port, lambda s: value(s, "msrv_redis_up") == 0, "redis_up to 0")
            newcomer = await f.connect(0, "newcomer")
            await newcomer.send(Startup("newcomer", "n", "routing", "z1", "c", [], None, ""))
            assert (await newcomer.wait_error_and_close()).code == ErrorCode.UNAVAILABLE
            samples = await scrape_until(
                port,
                lambda s: value(s, "msrv_startups_total", result="unavailable") == 1,
                "the refused startup counted",
            )
            assert value(samples, "msrv_sessions", zone="z1") == 5  # sessions kept
            redis.start()
            await f.forget_connections()
            await f.servers[0].wait_for("Redis is back")
            samples = await scrape_until(
                port, lambda s: value(s, "msrv_redis_up") == 1, "redis_up back to 1"
            )
            assert value(samples, "msrv_redis_reconnects_total") == 1

    asyncio.run(scenario())


async def _sessions(f: Fleet, zones: dict[str, int]) -> list[WireClient]:
    """Started clients: in each zone the first ones ack their lists, the last 3 overall do
    not."""
    clients = []
    total = sum(zones.values())
    for zone, count in zones.items():
        for _ in range(count):
            acks = len(clients) < total - 3
            client = await f.connect(0, f"g{len(clients)}", auto_ack=acks)
            await client.startup(zone=zone, dialled=f.addresses[0])
            if not acks:
                message = client.current
                assert message is not None
                await client.send(_ack(message))  # the startup's list, by hand
                client.keepalive(1.0)
            clients.append(client)
    return clients


def _ack(message: MsList) -> Ack:
    return Ack(message.version, message.ms_list, message.algorithm)


def test_metrics_address_is_checked() -> None:
    result = CliRunner().invoke(msrv_cli, ["serve", "--metrics", "nowhere"])
    assert result.exit_code == 2
    assert "--metrics 'nowhere'" in result.output
