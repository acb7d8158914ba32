"""The failover floor: clients moving from a killed server to the next, with no registry, no
protocol and no agent behind them.

3 minimal asyncio servers (one child process each) answer one line per connection; N minimal
clients (one child process) hold the 3 addresses, client i on the (i mod 3)th. Server 1 is
SIGKILLed; each of its clients walks the list from the next entry until one answers; the phase
times until the last one has its answer.

The children run the bench script again with its hidden options (`--floor-server ADDR`,
`--floor-clients N --addresses A,B,C`), which call `floor_server` and `floor_clients`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time

import benchlib

from msctl.children import LoggedProcess
from msctl.embedded_redis import free_port

ANSWER = b"ready\n"


async def floor_server(listen: str) -> None:
    """Answer one line per connection, then hold it until the client goes."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.readline()
            writer.write(ANSWER)
            await writer.drain()
            await reader.read()
        writer.close()

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(on_connect, host, int(port), backlog=4096)
    print(f"floor server listening on {listen}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


async def floor_clients(count: int, addresses: list[str], timeout: float) -> None:
    """Client i holds addresses[i % 3]; when it goes, walk the list from the next entry (the
    lost one last) until one answers. Logs when all are connected, then the reconnection
    times (time.time) of the clients that lost their server."""
    reconnected: list[float] = []
    lost_count = sum(1 for i in range(count) if i % len(addresses) == 0)
    all_back = asyncio.Event()

    async def session(index: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = addresses[index].rsplit(":", 1)
        async with asyncio.timeout(3.0):
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"startup\n")
            if await reader.readline() != ANSWER:
                writer.close()
                raise ConnectionError("no answer")
        return reader, writer

    async def client(i: int, connected: asyncio.Event) -> None:
        first = i % len(addresses)
        reader, writer = await session(first)
        connected.set()
        await reader.read()  # until the server goes
        writer.close()
        for step in range(1, len(addresses) + 1):
            try:
                reader, writer = await session((first + step) % len(addresses))
            except (OSError, TimeoutError):
                continue
            reconnected.append(time.time())
            if len(reconnected) == lost_count:
                all_back.set()
            await reader.read()
            writer.close()
            return

    events = [asyncio.Event() for _ in range(count)]
    tasks = [asyncio.create_task(client(i, e)) for i, e in enumerate(events)]
    await asyncio.gather(*(e.wait() for e in events))
    print(f"floor clients: {count} connected", file=sys.stderr, flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_back.wait(), timeout)
    print("floor result " + json.dumps(reconnected), file=sys.stderr, flush=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_phase(count: int, script: str, wait: float) -> dict[str, object]:
    """Servers and clients as children of `script`; SIGKILL server 1; time its clients' moves
    (`wait`: seconds the clients give the move)."""
    addresses = [f"127.0.0.{i}:{free_port(f'127.0.0.{i}')}" for i in (1, 2, 3)]
    servers = [
        LoggedProcess(f"floor{i + 1}", [script, "--floor-server", a])
        for i, a in enumerate(addresses)
    ]
    for server in servers:
        await server.start(ready="floor server listening")
    clients = LoggedProcess(
        "floor-clients",
        [script, "--floor-clients", str(count), "--addresses", ",".join(addresses)],
    )
    try:
        await clients.start(ready=rf"floor clients: {count} connected", timeout=60)
        await asyncio.sleep(1.0)
        killed = time.time()
        await servers[0].stop(signal.SIGKILL)
        await clients.wait_for(r"^floor result ", timeout=wait + 10)
        times = json.loads(clients.matching(r"^floor result ")[-1].split(" ", 2)[2])
    finally:
        for child in [clients, *servers]:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await child.stop(signal.SIGKILL)
    lost = sum(1 for i in range(count) if i % 3 == 0)
    return {
        "clients_moved": len(times),
        "expected": lost,
        **benchlib.summary([t - killed for t in times]),
    }
