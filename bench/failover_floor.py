"""The failover floor: clients moving from a killed server to the next, with no registry, no
protocol and no agent behind them.

3 minimal asyncio servers (one child process each) answer one line per connection; N minimal
clients (one child process) hold the 3 addresses, client i on the (i mod 3)th. Server 1 is
SIGKILLed; each of its clients walks the list from the next entry until one answers; the phase
times until the last one has its answer.

With TLS (the default) every connection does the handshake an agent and msrv do: the contexts
come from common.tls (TLS 1.3, the same curve and ticket settings), EC P-256 keys from one CA,
each server a certificate for its own address, the clients certificates of their own (100,
shared round robin) verified by the servers, the servers' verified against the dialled address.
`tls=False` is the plaintext floor of the rounds before TLS.

The children run the bench script again with its hidden options (`--floor-server ADDR`,
`--floor-clients N --addresses A,B,C`, and `--floor-pems DIR` for TLS), which call
`floor_server` and `floor_clients`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import sys
import tempfile
import time
from pathlib import Path

import benchlib
from benchtls import Identities

from common.tls import client_context_from_pem, server_context
from msctl.children import LoggedProcess
from msctl.embedded_redis import free_port

ANSWER = b"ready\n"
IDENTITIES = 100  # client certificates, shared round robin by the clients


def write_pems(directory: Path, hosts: list[str]) -> None:
    """A CA, a server certificate for each host, and the clients' certificates, as PEM files."""
    ids = Identities.fresh("floor")
    (directory / "ca.crt").write_bytes(ids.ca.certificate_pem)
    for host in hosts:
        certificate, key = ids.server(host)
        (directory / f"{host}.crt").write_bytes(certificate)
        (directory / f"{host}.key").write_bytes(key)
    clients = [ids.client_pem(f"floor-{i:04d}") for i in range(IDENTITIES)]
    (directory / "clients.json").write_text(
        json.dumps([[c.decode(), k.decode()] for c, k in clients])
    )


def server_tls(pems: Path, host: str) -> ssl.SSLContext:
    return server_context(
        (pems / f"{host}.crt").read_bytes(),
        (pems / f"{host}.key").read_bytes(),
        (pems / "ca.crt").read_bytes(),
    )


def clients_tls(pems: Path) -> list[ssl.SSLContext]:
    ca = (pems / "ca.crt").read_bytes()
    pairs = json.loads((pems / "clients.json").read_text())
    return [client_context_from_pem(ca, c.encode(), k.encode()) for c, k in pairs]


async def floor_server(listen: str, pems: Path | None = None) -> None:
    """Answer one line per connection, then hold it until the client goes."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            await reader.readline()
            writer.write(ANSWER)
            await writer.drain()
            await reader.read()
        writer.close()

    host, port = listen.rsplit(":", 1)
    tls = server_tls(pems, host) if pems is not None else None
    server = await asyncio.start_server(on_connect, host, int(port), backlog=4096, ssl=tls)
    print(f"floor server listening on {listen}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


async def floor_clients(
    count: int, addresses: list[str], timeout: float, pems: Path | None = None
) -> None:
    """Client i holds addresses[i % 3]; when it goes, walk the list from the next entry (the
    lost one last) until one answers. Logs when all are connected, then the reconnection
    times (time.time) of the clients that lost their server."""
    reconnected: list[float] = []
    lost_count = sum(1 for i in range(count) if i % len(addresses) == 0)
    all_back = asyncio.Event()
    contexts = clients_tls(pems) if pems is not None else []

    async def session(
        i: int, index: int, limit: float = 3.0
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        host, port = addresses[index].rsplit(":", 1)
        tls = contexts[i % len(contexts)] if contexts else None
        async with asyncio.timeout(limit):  # an agent's connect timeout (3 s)
            reader, writer = await asyncio.open_connection(
                host, int(port), ssl=tls, server_hostname=host if tls is not None else None
            )
            writer.write(b"startup\n")
            if await reader.readline() != ANSWER:
                writer.close()
                raise ConnectionError("no answer")
        return reader, writer

    async def client(i: int, connected: asyncio.Event) -> None:
        first = i % len(addresses)
        reader, writer = await session(i, first, limit=60.0)  # all at once, not timed
        connected.set()
        await reader.read()  # until the server goes
        writer.close()
        for step in range(1, len(addresses) + 1):
            try:
                reader, writer = await session(i, (first + step) % len(addresses))
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


async def run_phase(count: int, script: str, wait: float, tls: bool = True) -> dict[str, object]:
    """Servers and clients as children of `script`; SIGKILL server 1; time its clients' moves
    (`wait`: seconds the clients give the move)."""
    with tempfile.TemporaryDirectory(prefix="bench-floor-") as tmp:
        return await _phase(count, script, wait, Path(tmp) if tls else None)


async def _phase(count: int, script: str, wait: float, pems: Path | None) -> dict[str, object]:
    hosts = [f"127.0.0.{i}" for i in (1, 2, 3)]
    addresses = [f"{h}:{free_port(h)}" for h in hosts]
    tls_args: list[str] = []
    if pems is not None:
        write_pems(pems, hosts)
        tls_args = ["--floor-pems", str(pems)]
    servers = [
        LoggedProcess(f"floor{i + 1}", [script, "--floor-server", a, *tls_args])
        for i, a in enumerate(addresses)
    ]
    for server in servers:
        await server.start(ready="floor server listening")
    clients = LoggedProcess(
        "floor-clients",
        [script, "--floor-clients", str(count), "--addresses", ",".join(addresses), *tls_args],
    )
    try:
        await clients.start(ready=rf"floor clients: {count} connected", timeout=60)
        await asyncio.sleep(1.0)
        watched = {"clients": clients.pid, "floor2": servers[1].pid, "floor3": servers[2].pid}
        before = {name: benchlib.proc_sample(pid) for name, pid in watched.items()}
        killed = time.time()
        await servers[0].stop(signal.SIGKILL)
        await clients.wait_for(r"^floor result ", timeout=wait + 10)
        cpu = {
            name: round(
                (benchlib.proc_sample(pid).cpu_ticks - before[name].cpu_ticks) / benchlib.CLK_TCK, 2
            )
            for name, pid in watched.items()
        }
        times = json.loads(clients.matching(r"^floor result ")[-1].split(" ", 2)[2])
    finally:
        for child in [clients, *servers]:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await child.stop(signal.SIGKILL)
    lost = sum(1 for i in range(count) if i % 3 == 0)
    return {
        "tls": pems is not None,
        "clients_moved": len(times),
        "cpu_s": cpu,  # each process's CPU from the kill to the last client's answer
        "expected": lost,
        **benchlib.summary([t - killed for t in times]),
    }
