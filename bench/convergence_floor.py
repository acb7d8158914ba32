"""The convergence floors: what N pushed lists cost to deliver, persist and acknowledge with
nothing of the project's behind them (bare), and with its properties code (project).

Bare (the floor the target is set against), laid out as the real run: 3 one-line servers (one
child process each: minimal asyncio TLS servers) and one client process holding the N sessions
(client i on server i mod 3). On each repetition the parent stamps the clock and signals the
servers (SIGUSR1); each writes one `ms_list` line (JSON, encoded once per rotation) to each of
its sessions; the client rewrites the `host=` line of the session's file with a bare write (read
the file, replace the line; temp file, fsync, rename, fsync of the folder) on a 16-thread pool
and sends a one-line ack. Persisted is measured as for the agents: each folder's mtime (the
rename is its last change). Once with fsync and once without (the fsyncs skipped).

Project (the floor of the rounds before, kept for comparison): one process, one event loop, N
TLS sessions to itself, the files written with common.properties.update_properties on a
16-thread pool (fsync made a no-op for the second line), timed from the frames' write to each
ack read.

Every TLS context comes from common.tls (TLS 1.3, EC P-256, a CA of the floor's own, 100 client
certificates shared round robin); the handshakes are done before the clock starts. The children
run this script with its hidden options (`--server`, `--client`, `--project`).
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchtls import Identities
from failover_floor import clients_tls, server_tls, write_pems

from agentd import config
from agentd.swarm import SwarmSpec, prepare_properties
from common import protocol
from common.properties import update_properties
from common.protocol import Ack, MsList
from msctl.children import LoggedProcess
from msctl.embedded_redis import free_port

THREADS = 16  # the swarm's persist pool
HOSTS = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
CONNECTS_AT_ONCE = 200
WAIT = 90.0  # seconds for one repetition


def rotate(items: list[str], k: int) -> list[str]:
    k %= len(items)
    return items[k:] + items[:k]


def agent_files(directory: Path, count: int) -> list[Path]:
    """N agent.properties as the lab's swarm has them (name, host, zone, type, guid)."""
    addresses = ",".join(f"{h}:8250" for h in HOSTS)
    spec = SwarmSpec(count, directory, host=addresses + "@roundrobin")
    paths = [prepare_properties(spec, i) for i in range(1, count + 1)]
    for i, path in enumerate(paths):
        update_properties(path, {config.GUID: f"00000000-0000-4000-8000-{i:012d}"})
    return paths


def folder_times(directory: Path, count: int) -> list[float]:
    """Each agent folder's last change (time.time scale): the rename of its agent.properties."""
    return [(directory / f"agent-{i:04d}").stat().st_mtime_ns / 1e9 for i in range(1, count + 1)]


class CpuWatch:
    """Each process's CPU (user + system, seconds) from `start()` to `read()`."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.before: dict[str, int] = {}

    def start(self) -> None:
        self.before = {n: benchlib.proc_sample(p).cpu_ticks for n, p in self.pids.items()}

    def read(self) -> dict[str, float]:
        return {
            name: round((benchlib.proc_sample(pid).cpu_ticks - ticks) / benchlib.CLK_TCK, 2)
            for name, (pid, ticks) in ((n, (self.pids[n], t)) for n, t in self.before.items())
        }


# ---------------------------------------------------------------- bare: the children


def frame(addresses: list[str], k: int, version: int) -> bytes:
    body = {"type": "ms_list", "ms_list": rotate(addresses, k), "algorithm": "roundrobin",
            "check_interval": 0, "version": version, "ping_interval": 60, "ping_timeout": 3,
            "delay": 0.0}  # fmt: skip
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


async def bare_server(listen: str, addresses: list[str], pems: Path) -> None:
    """Hold sessions; on SIGUSR1 write one list to each, and read the acks."""
    writers: list[asyncio.StreamWriter] = []
    acks = 0
    version = 0

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal acks
        writers.append(writer)
        with contextlib.suppress(OSError):
            while await reader.readline():
                acks += 1
                if acks == len(writers):
                    print(f"floor server acks {version}", file=sys.stderr, flush=True)
        writer.close()

    def push() -> None:
        nonlocal acks, version
        acks = 0
        version += 1
        frames = [frame(addresses, k, version) for k in range(len(addresses))]
        for j, writer in enumerate(writers):
            writer.write(frames[(j + version) % len(frames)])

    host, port = listen.rsplit(":", 1)
    server = await asyncio.start_server(
        on_connect, host, int(port), backlog=4096, ssl=server_tls(pems, host)
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, push)
    print(f"floor server listening on {listen}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def rewrite_host(path: Path, value: bytes, fsync: bool) -> None:
    """The bare write: the file with its host= line replaced, through a temp file, fsync,
    rename, fsync of the folder."""
    lines = path.read_bytes().split(b"\n")
    data = b"\n".join(b"host=" + value if line.startswith(b"host=") else line for line in lines)
    temp = path.with_name(f".{path.name}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    if fsync:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


async def bare_client(
    count: int, addresses: list[str], directory: Path, pems: Path, fsync: bool
) -> None:
    """N sessions, client i on addresses[i % 3]; each list is written and acked."""
    paths = agent_files(directory, count)
    contexts = clients_tls(pems)
    pool = concurrent.futures.ThreadPoolExecutor(THREADS)
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECTS_AT_ONCE)
    connected = 0
    done = 0

    async def session(i: int) -> None:
        nonlocal connected, done
        host, port = addresses[i % len(addresses)].rsplit(":", 1)
        async with gate:
            reader, writer = await asyncio.open_connection(
                host, int(port), ssl=contexts[i % len(contexts)], server_hostname=host
            )
        connected += 1
        if connected == count:
            print(f"floor client: {count} connected", file=sys.stderr, flush=True)
        while line := await reader.readline():
            body = json.loads(line)
            value = (",".join(body["ms_list"]) + "@" + body["algorithm"]).encode()
            await loop.run_in_executor(pool, rewrite_host, paths[i], value, fsync)
            ack = {"type": "ack", "version": body["version"], "ms_list": body["ms_list"],
                   "algorithm": body["algorithm"]}  # fmt: skip
            writer.write(json.dumps(ack, separators=(",", ":")).encode() + b"\n")
            done += 1
            if done % count == 0:
                print(f"floor client: written {done // count}", file=sys.stderr, flush=True)
        writer.close()

    await asyncio.gather(*(session(i) for i in range(count)))


# ---------------------------------------------------------------- bare: the phase


class BareFloor:
    """3 server children and a client child holding the N sessions (an async context: the
    children run inside it); each `rep()` is one push timed to the last folder change."""

    def __init__(self, count: int, workdir: Path, fsync: bool, script: str) -> None:
        self.count = count
        self.fsync = fsync
        name = f"bare-{'fsync' if fsync else 'nofsync'}"
        self.pems = workdir / f"{name}-pems"
        self.directory = workdir / name
        self.addresses = [f"{h}:{free_port(h)}" for h in HOSTS]
        joined = ",".join(self.addresses)
        self.servers = [
            LoggedProcess(f"floor{i + 1}",
                          [script, "--server", a, "--addresses", joined, "--pems", str(self.pems)])
            for i, a in enumerate(self.addresses)
        ]  # fmt: skip
        self.client = LoggedProcess(
            "floor-client",
            [script, "--client", str(count), "--addresses", joined, "--dir", str(self.directory),
             "--pems", str(self.pems), *([] if fsync else ["--no-fsync"])],
        )  # fmt: skip
        self.reps: list[dict[str, object]] = []

    async def __aenter__(self) -> BareFloor:
        self.pems.mkdir(parents=True)
        write_pems(self.pems, HOSTS)
        try:
            for server in self.servers:
                await server.start(ready="floor server listening")
            await self.client.start(ready=rf"floor client: {self.count} connected", timeout=180)
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        for child in [self.client, *self.servers]:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await child.stop(signal.SIGKILL)

    async def rep(self) -> dict[str, object]:
        """One push, after a quiet second: each file's persist time, and each process's CPU."""
        k = len(self.reps) + 1
        cpu = CpuWatch({"client": self.client.pid, **{s.name: s.pid for s in self.servers}})
        await asyncio.sleep(1.0)  # quiet before the clock starts
        cpu.start()
        started = time.time()
        for server in self.servers:
            os.kill(server.pid, signal.SIGUSR1)
        await self.client.wait_for(rf"^floor client: written {k}$", timeout=WAIT)
        used = cpu.read()
        for server in self.servers:
            await server.wait_for(rf"^floor server acks {k}$", timeout=WAIT)
        times = folder_times(self.directory, self.count)
        self.reps.append({**benchlib.summary([t - started for t in times]), "cpu_s": used})
        return self.reps[-1]

    def result(self) -> dict[str, object]:
        maxima = sorted(float(r["max_s"]) for r in self.reps)  # type: ignore[arg-type]
        return {"fsync": self.fsync, "agents": self.count, "repeats": self.reps,
                "max_median_s": maxima[len(maxima) // 2],
                "files_ok": files_ok(self.directory, self.count, self.addresses)}  # fmt: skip


async def run_bare(
    count: int, workdir: Path, repeats: int, fsync: bool, script: str
) -> dict[str, object]:
    """`repeats` pushes of a bare floor, one after the other."""
    async with BareFloor(count, workdir, fsync, script) as floor:
        for _ in range(repeats):
            await floor.rep()
        return floor.result()


def files_ok(directory: Path, count: int, addresses: list[str]) -> int:
    """How many files hold a rotation of the floor's addresses, and their other lines."""
    rotations = {f"host={','.join(rotate(addresses, k))}@roundrobin" for k in range(3)}
    good = 0
    for i in range(1, count + 1):
        lines = (directory / f"agent-{i:04d}" / "agent.properties").read_text().splitlines()
        host = [line for line in lines if line.startswith("host=")]
        good += (
            host[0] in rotations
            and len(host) == 1
            and any(line.startswith("guid=") for line in lines)
        )
    return good


# ---------------------------------------------------------------- project: one process


async def project_floor(count: int, directory: Path, fsync: bool) -> dict[str, object]:
    """Frames to N sockets, N files persisted with the project's properties code, N acks read."""
    if not fsync:
        os.fsync = lambda fd: None  # this child process only
    paths = agent_files(directory, count)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(THREADS))
    accepted: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    all_in = asyncio.Event()
    ids = Identities.fresh("floor")
    server_context = ids.server_context("127.0.0.1")
    client_contexts = [ids.client(f"floor-{i:04d}") for i in range(min(count, 100))]

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append((reader, writer))
        if len(accepted) == count:
            all_in.set()

    server = await asyncio.start_server(
        on_connect, "127.0.0.1", 0, backlog=4096, limit=protocol.READER_LIMIT, ssl=server_context
    )
    port = server.sockets[0].getsockname()[1]

    async def agent(i: int, path: Path) -> None:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, limit=protocol.READER_LIMIT,
            ssl=client_contexts[i % len(client_contexts)], server_hostname="127.0.0.1",
        )  # fmt: skip
        message = await protocol.read_message(reader)
        assert isinstance(message, MsList)
        value = ",".join(message.ms_list) + "@" + message.algorithm
        await asyncio.to_thread(update_properties, path, {config.HOST: value})
        writer.write(
            protocol.encode(Ack(message.version, list(message.ms_list), message.algorithm))
        )
        await writer.drain()
        await reader.read()  # until the server closes
        writer.close()

    agents = [asyncio.create_task(agent(i, p)) for i, p in enumerate(paths)]
    await asyncio.wait_for(all_in.wait(), 120)
    addresses = [f"{h}:8250" for h in HOSTS]
    frames = [
        protocol.encode(MsList(rotate(addresses, r), "roundrobin", 0, 2, 60, 3)) for r in range(3)
    ]
    times: list[float] = []

    async def read_ack(reader: asyncio.StreamReader, started: float) -> None:
        message = await protocol.read_message(reader)
        assert isinstance(message, Ack)
        times.append(time.perf_counter() - started)

    started = time.perf_counter()
    for i, (_, writer) in enumerate(accepted):
        writer.write(frames[i % 3])
    await asyncio.gather(*(read_ack(r, started) for r, _ in accepted))
    for _, writer in accepted:
        writer.close()
    await asyncio.gather(*agents)
    server.close()
    return {"fsync": fsync, "agents": count, **benchlib.summary(times)}


async def run_project(count: int, workdir: Path, fsync: bool, script: str) -> dict[str, object]:
    folder = workdir / f"project-{'fsync' if fsync else 'nofsync'}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, script, "--project", str(count), "--dir", str(folder),
        *([] if fsync else ["--no-fsync"]), stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 180)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"floor child exited {process.returncode}")
    result: dict[str, object] = json.loads(out.decode().splitlines()[-1])
    return result


# ---------------------------------------------------------------- the children's entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", help="listen here as a bare floor server")
    parser.add_argument("--client", type=int, help="be the bare floor's client of N sessions")
    parser.add_argument("--project", type=int, help="run the project floor of N agents")
    parser.add_argument("--addresses", default="")
    parser.add_argument("--pems", type=Path)
    parser.add_argument("--dir", type=Path)
    parser.add_argument("--no-fsync", action="store_true")
    args = parser.parse_args()
    addresses = args.addresses.split(",")
    if args.server:
        asyncio.run(bare_server(args.server, addresses, args.pems))
    elif args.client:
        benchlib.raise_nofile(2 * args.client + 1024)
        asyncio.run(bare_client(args.client, addresses, args.dir, args.pems, not args.no_fsync))
    elif args.project:
        benchlib.raise_nofile(4 * args.project + 1024)
        result = asyncio.run(project_floor(args.project, args.dir, not args.no_fsync))
        benchlib.print_json(result)
    else:
        parser.error("one of --server, --client, --project")


if __name__ == "__main__":
    main()
