"""Time from a settings change to the last of N protocol clients holding its new list.

Everything on loopback: a lab (its own redis-server, three `msrv serve` processes) and N
clients, one asyncio process (this one), spread evenly over the servers. Each client is a
minimal agent: mutual TLS 1.3 with a certificate of the namespace's CA for its guid (issued here
as enrollment would: bench/benchtls.py), `startup`, then it acks each `ms_list`. Two changes are
measured: `indirect.agent.lb.algorithm` static -> roundrobin written in-process (ConfigStore.set,
what msctl runs), then a check interval set by running `msctl config set` as a child process
(the clock starts before the process is spawned, so Python's start-up is included). Bounded in
time; raises RLIMIT_NOFILE for the sockets.

    .venv/bin/python bench/convergence_clients.py [--clients 3000] [--servers 3]

Prints a table, then one JSON line (the last line) with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchtls import BenchLab, Identities

from common import protocol
from common.configstore import ConfigStore
from common.protocol import Ack, MsList, Ready, Startup
from common.tls import server_hostname
from msctl.lab import Lab

NAMESPACE = "bench"
DEADLINE = 300.0  # seconds for the whole run
WAIT = 120.0  # seconds for one change to converge


class Client:
    """A minimal agent: one TLS session, `startup`, and an ack for each `ms_list`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, address: str, guid: str, tls: ssl.SSLContext) -> Client:
        host, port = address.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(
            host,
            int(port),
            ssl=tls,
            server_hostname=server_hostname(host),
            limit=protocol.READER_LIMIT,
        )
        client = cls(reader, writer)
        startup = Startup(
            guid=guid,
            name=guid,
            host_type="routing",
            zone="zone1",
            cluster="cluster1",
            ms_list=[],
            algorithm=None,
            dialled=address,
        )
        writer.write(protocol.encode(startup))
        await writer.drain()
        ready = await protocol.read_message(reader)
        if not isinstance(ready, Ready):
            raise RuntimeError(f"{guid}: expected ready, got {ready!r}")
        await client.next_list()  # the list its server pushes after ready
        return client

    async def next_list(self) -> MsList:
        while True:
            message = await protocol.read_message(self.reader)
            if message is None:
                raise ConnectionError("server closed the connection")
            if isinstance(message, MsList):
                ack = Ack(message.version, list(message.ms_list), message.algorithm)
                self.writer.write(protocol.encode(ack))
                await self.writer.drain()
                return message

    def close(self) -> None:
        self.writer.close()


async def connect_all(lab: Lab, count: int) -> list[Client]:
    client = lab.redis()
    try:
        ids = await Identities.of_namespace(client, lab.namespace)
    finally:
        await client.aclose()
    contexts = [ids.client(f"bench-{i:05d}") for i in range(count)]
    limit = asyncio.Semaphore(200)
    addresses = lab.addresses

    async def one(i: int) -> Client:
        async with limit, asyncio.timeout(60):
            return await Client.connect(
                addresses[i % len(addresses)], f"bench-{i:05d}", contexts[i]
            )

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def converge(
    clients: list[Client], change: Callable[[], Awaitable[None]]
) -> dict[str, float]:
    """Start the clock, make the change, and time each client's next `ms_list`."""
    arrivals: list[float] = []

    async def receive(client: Client) -> None:
        async with asyncio.timeout(WAIT):
            await client.next_list()
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
        "p99_s": round(delays[max(int(len(delays) * 0.99) - 1, 0)], 4),
        "last_s": round(delays[-1], 4),
    }


async def msctl_set(lab: Lab, name: str, value: str) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "msctl", "config", "set", name, value,
        "--redis-url", lab.url, "--namespace", lab.namespace,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    if await process.wait() != 0:
        raise RuntimeError("msctl config set failed")


async def run(workdir: Path, count: int, servers: int) -> dict[str, object]:
    lab = BenchLab(workdir / "lab", servers=servers, agents=0, namespace=NAMESPACE, port=0)
    try:
        await lab.start(ping_interval="60")  # no heartbeat traffic during the run
        started = time.perf_counter()
        clients = await connect_all(lab, count)
        connected = time.perf_counter() - started
        redis = lab.redis()
        try:
            store = ConfigStore(redis, lab.keys)

            async def switch() -> None:
                await store.set("indirect.agent.lb.algorithm", "roundrobin")

            in_process = await converge(clients, switch)
            by_msctl = await converge(
                clients, lambda: msctl_set(lab, "indirect.agent.lb.check.interval", "60")
            )
        finally:
            await redis.aclose()
        for client in clients:
            client.close()
    finally:
        await lab.stop()
    return {
        "clients": count,
        "servers": servers,
        "connect_all_s": round(connected, 3),
        "algorithm_switch_in_process": in_process,
        "check_interval_via_msctl_process": by_msctl,
        "revision": benchlib.revision(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=3000)
    parser.add_argument("--servers", type=int, default=3)
    args = parser.parse_args()
    benchlib.raise_nofile(2 * args.clients + 256)
    with benchlib.leftovers_killed(), tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(asyncio.wait_for(run(Path(tmp), args.clients, args.servers), DEADLINE))
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
