"""Time from a settings change to the last of N protocol clients holding its new list.

Everything on loopback: its own redis-server on a free port, three `msrv serve` processes, and
N clients (the test suite's wire client, which acks each list) spread evenly over them. Two
changes are measured: `indirect.agent.lb.algorithm` static -> roundrobin written in-process
(ConfigStore.set, what msctl runs), then a check interval set by running `msctl config set`
as a child process (the clock starts before the process is spawned, so Python's start-up is
included). Bounded in time; raises RLIMIT_NOFILE for the sockets.

    .venv/bin/python bench/convergence_clients.py [--clients 3000] [--servers 3]

Prints a table, then one JSON line (the last line) with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the wire client and server harness live in tests/support

from common.configstore import ConfigStore  # noqa: E402
from common.connection import redis_from_url  # noqa: E402
from common.keys import Keys  # noqa: E402
from common.protocol import MsList  # noqa: E402
from msctl.embedded_redis import RedisServer  # noqa: E402
from tests.support.msrv_process import run_servers  # noqa: E402
from tests.support.wire_client import WireClient  # noqa: E402

NAMESPACE = "bench"
DEADLINE = 300.0  # seconds for the whole run
WAIT = 120.0  # seconds for one change to converge


def raise_nofile(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} sockets needed")
    return target


async def connect_all(ports: list[int], count: int) -> list[WireClient]:
    limit = asyncio.Semaphore(200)

    async def one(i: int) -> WireClient:
        async with limit:
            client = await WireClient.connect("127.0.0.1", ports[i % len(ports)], timeout=30)
            greeting = await client.startup(f"bench-{i:05d}", name=f"b{i}", timeout=60)
            assert greeting.ms_list is not None
            return client

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def converge(
    clients: list[WireClient], change: Callable[[], Awaitable[None]]
) -> dict[str, float]:
    """Start the clock, make the change, and time each client's next `ms_list`."""
    arrivals: list[float] = []

    async def receive(client: WireClient) -> None:
        message = await client.next(timeout=WAIT)
        assert isinstance(message, MsList), message
        arrivals.append(time.perf_counter())

    waiters = [asyncio.create_task(receive(c)) for c in clients]
    await asyncio.sleep(0)  # let every waiter start waiting
    started = time.perf_counter()
    await change()
    changed = time.perf_counter() - started
    await asyncio.gather(*waiters)
    delays = sorted(t - started for t in arrivals)
    return {
        "clients": len(delays),
        "change_written_s": round(changed, 4),
        "first_s": round(delays[0], 4),
        "median_s": round(statistics.median(delays), 4),
        "p99_s": round(delays[int(len(delays) * 0.99) - 1], 4),
        "last_s": round(delays[-1], 4),
    }


async def msctl_set(redis_url: str, name: str, value: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "msctl", "config", "set", name, value,
        "--redis-url", redis_url, "--namespace", NAMESPACE,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    if await process.wait() != 0:
        raise RuntimeError("msctl config set failed")


async def run(redis_url: str, count: int, servers: int) -> dict[str, object]:
    redis = redis_from_url(redis_url)
    store = ConfigStore(redis, Keys(NAMESPACE))
    try:
        await store.set("ping.interval", "60")  # no heartbeat traffic during the run
        async with run_servers(servers, redis_url, NAMESPACE) as processes:
            await store.set("host", ",".join(p.address for p in processes))
            started = time.perf_counter()
            clients = await connect_all([p.port for p in processes], count)
            connected = time.perf_counter() - started

            async def switch() -> None:
                await store.set("indirect.agent.lb.algorithm", "roundrobin")

            in_process = await converge(clients, switch)
            by_msctl = await converge(
                clients, lambda: msctl_set(redis_url, "indirect.agent.lb.check.interval", "60")
            )
            await asyncio.gather(*(c.close() for c in clients))
        return {
            "clients": count,
            "servers": servers,
            "connect_all_s": round(connected, 3),
            "algorithm_switch_in_process": in_process,
            "check_interval_via_msctl_process": by_msctl,
        }
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--servers", type=int, default=3)
    args = parser.parse_args()
    raise_nofile(2 * args.clients + 256)
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp)).start()
        try:
            result = asyncio.run(
                asyncio.wait_for(run(redis.url, args.clients, args.servers), DEADLINE)
            )
        finally:
            redis.stop()
    print(
        f"{args.clients} clients over {args.servers} servers, connected in "
        f"{result['connect_all_s']}s"
    )
    print(f"{'change':<34}{'written':>9}{'first':>9}{'median':>9}{'p99':>9}{'last':>9}")
    for label, key in (
        ("algorithm (in-process set)", "algorithm_switch_in_process"),
        ("check interval (msctl process)", "check_interval_via_msctl_process"),
    ):
        row = result[key]
        assert isinstance(row, dict)
        cells = [row[k] for k in ("change_written_s", "first_s", "median_s", "p99_s", "last_s")]
        print(f"{label:<34}" + "".join(f"{c:>9}" for c in cells))
    print(json.dumps({"bench": "convergence_clients", **result}))


if __name__ == "__main__":
    main()
