"""Startup storm: N protocol clients start up at once against real `msrv serve` processes.

Everything on loopback: its own redis-server on a free port, one or three `msrv serve`
processes, and N lean raw-socket clients in this process (an asyncio Protocol each, so the
client side costs little next to the servers). Three rounds, each with all N clients dialling
at the same instant:

- new:   never-seen guids, an empty list held (each gets `ready` then `ms_list`, and acks it);
- known: the same guids again, after every session of the first round ended, each dialling
  the next server (the failover case: hosts move, they already hold a current list);
- floor: the same clients against as many minimal servers (one process each, no Redis) that
  answer `startup` with a `ready` line and `ping` with `pong`.

A client pipelines its `startup` with a `ping`; the `pong` proves the greeting is complete
(a server answers in order), so a late or missing `ms_list` is counted. Latency is from the
instant the round starts to the client's `ready`. Bounded in time; raises RLIMIT_NOFILE itself
(children inherit it); every child is stopped in `finally`, even on Ctrl-C or SIGTERM.

    .venv/bin/python -u bench/startup_storm.py [--clients 1000] [--servers 1] [--rounds N]

Prints a table, then one JSON line (the last line).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.configstore import ConfigStore  # noqa: E402
from common.connection import redis_from_url  # noqa: E402
from common.keys import Keys  # noqa: E402
from common.records import HostState, load_hosts  # noqa: E402
from msctl.children import (  # noqa: E402
    LoggedProcess,
    kill_leftovers,
    msrv_args,
    msrv_env,
    msrv_ready,
)
from msctl.embedded_redis import free_port, start_embedded  # noqa: E402

NAMESPACE = "storm"
DEADLINE = 240.0  # seconds for the whole run
ROUND_LIMIT = 60.0  # seconds for one round
FLOOR_READY = "floor listening on"
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def say(text: str) -> None:
    print(text, flush=True)


def raise_nofile(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} needed")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU time of a live process (0 when unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


# -- the clients ----------------------------------------------------------------------------


def startup_line(guid: str, ms_list: list[str]) -> bytes:
    body = {
        "type": "startup", "protocol": 1, "guid": guid, "name": guid, "host_type": "routing",
        "zone": "storm", "cluster": "c1", "ms_list": ms_list,
        "algorithm": "static" if ms_list else None, "dialled": "",
    }  # fmt: skip
    ping = {"type": "ping", "seq": 1}
    return (json.dumps(body) + "\n" + json.dumps(ping) + "\n").encode()


@dataclass
class Outcome:
    ready_at: float | None = None
    ms_list: list[str] | None = None
    error: str | None = None


class StartupClient(asyncio.Protocol):
    """Sends its startup (and a ping) on connect; done at the pong, or at an error or close."""

    def __init__(self, line: bytes, done: asyncio.Future[Outcome]) -> None:
        self.line = line
        self.done = done
        self.outcome = Outcome()
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.line)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for raw in lines:
            self._on_message(json.loads(raw))

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ready" and self.outcome.ready_at is None:
            self.outcome.ready_at = time.perf_counter()
        elif kind == "ms_list":
            self.outcome.ms_list = message["ms_list"]
            assert self.transport is not None
            ack = {"type": "ack", "version": message["version"]}
            self.transport.write((json.dumps(ack) + "\n").encode())
        elif kind == "error":
            self.outcome.error = f"{message.get('code')}: {message.get('message')}"
            self._finish()
        elif kind == "pong":
            self._finish()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(self.outcome)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.outcome.error = self.outcome.error or f"closed: {exc}"
            self._finish()


async def dial(port: int, line: bytes) -> tuple[asyncio.Transport, Outcome]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Outcome] = loop.create_future()
    transport, _ = await loop.create_connection(
        lambda: StartupClient(line, done), "127.0.0.1", port
    )
    return transport, await done


@dataclass
class Round:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    started: float = 0.0
    total_s: float = 0.0
    server_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    client_cpu_s: float = 0.0

    def figures(self) -> dict[str, Any]:
        latencies = sorted(o.ready_at - self.started for o in self.outcomes if o.ready_at)
        errors = [o.error for o in self.outcomes if o.error]
        n = len(latencies)

        def pick(q: float) -> float:
            return round(latencies[min(n - 1, int(q * n))] * 1000, 1) if n else float("nan")

        return {
            "clients": len(self.outcomes),
            "ok": n,
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "lists": sum(1 for o in self.outcomes if o.ms_list is not None),
            "total_s": round(self.total_s, 3),
            "startups_per_s": round(n / self.total_s) if self.total_s else 0,
            "p50_ms": pick(0.50),
            "p99_ms": pick(0.99),
            "max_ms": round(latencies[-1] * 1000, 1) if n else float("nan"),
            "server_cpu_s": round(self.server_cpu_s, 2),
            "redis_cpu_s": round(self.redis_cpu_s, 2),
            "client_cpu_s": round(self.client_cpu_s, 2),
        }


async def storm(
    name: str, ports: list[int], lines: list[bytes], pids: list[int], redis_pid: int | None
) -> tuple[Round, list[asyncio.Transport]]:
    """All clients dial at once; returns when each has its pong (or failed)."""
    result = Round(name)
    cpu_before = [cpu_seconds(p) for p in pids]
    redis_before = cpu_seconds(redis_pid)
    client_before = time.process_time()
    result.started = time.perf_counter()

    async def one(i: int) -> tuple[asyncio.Transport | None, Outcome]:
        try:
            return await dial(ports[i % len(ports)], lines[i])
        except OSError as exc:
            return None, Outcome(error=f"connect: {exc}")

    async with asyncio.timeout(ROUND_LIMIT):
        pairs = await asyncio.gather(*(one(i) for i in range(len(lines))))
    result.total_s = time.perf_counter() - result.started
    result.server_cpu_s = sum(cpu_seconds(p) - b for p, b in zip(pids, cpu_before, strict=True))
    result.redis_cpu_s = cpu_seconds(redis_pid) - redis_before
    result.client_cpu_s = time.process_time() - client_before
    result.outcomes = [outcome for _, outcome in pairs]
    return result, [t for t, _ in pairs if t is not None]


async def hang_up(transports: list[asyncio.Transport]) -> None:
    for transport in transports:
        transport.close()
    await asyncio.sleep(0)


# -- the floor server -----------------------------------------------------------------------


async def serve_floor(listen: str) -> None:
    """A minimal server: a `ready` line per startup, a `pong` per ping, no registry."""
    host, port = listen.rsplit(":", 1)
    ready = b'{"type":"ready","host_id":1,"server":"floor","ping_interval":60,'
    ready += b'"ping_timeout":3,"check_interval":0}\n'

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while line := await reader.readline():
                kind = json.loads(line).get("type")
                if kind == "startup":
                    writer.write(ready)
                elif kind == "ping":
                    writer.write(b'{"type":"pong","seq":1}\n')
        writer.close()

    server = await asyncio.start_server(handle, host, int(port), backlog=4096)
    print(f"{FLOOR_READY} {listen}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


# -- the run --------------------------------------------------------------------------------


async def wait_disconnected(redis_url: str, limit: float = 30.0) -> None:
    """Until the servers have recorded the end of every session of the last round."""
    client = redis_from_url(redis_url)
    try:
        async with asyncio.timeout(limit):
            while True:
                hosts = await load_hosts(client, Keys(NAMESPACE))
                if all(h.state == HostState.DISCONNECTED for h in hosts):
                    return
                await asyncio.sleep(0.1)
    finally:
        await client.aclose()


async def start_children(
    names: list[str], make_args: Any, ready: Any, env: dict[str, str] | None = None
) -> list[LoggedProcess]:
    children = []
    for name in names:
        port = free_port()
        child = LoggedProcess(name, make_args(name, f"127.0.0.1:{port}"), env)
        child.port = port  # type: ignore[attr-defined]
        children.append(child)
    await asyncio.gather(*(c.start(ready(c.name), timeout=20) for c in children))
    return children


async def stop_all(children: list[LoggedProcess]) -> None:
    for child in children:
        with contextlib.suppress(ProcessLookupError, TimeoutError, OSError):
            await child.stop(signal.SIGTERM, timeout=10)
    kill_leftovers()


async def start_profilers(
    directory: Path, children: list[LoggedProcess]
) -> list[asyncio.subprocess.Process]:
    """py-spy on each server (raw collapsed stacks, one file per server), until stopped."""
    py_spy = str(Path(sys.executable).parent / "py-spy")
    profilers = []
    for child in children:
        output = str(directory / f"{child.name}.txt")
        command = [py_spy, "record", "--format", "raw", "--rate", "250", "--nonblocking"]
        command += ["-o", output, "-p", str(child.pid)]
        profilers.append(
            await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
            )
        )
    await asyncio.sleep(1.0)  # py-spy attaches
    return profilers


async def stop_profilers(profilers: list[asyncio.subprocess.Process]) -> None:
    for profiler in profilers:
        if profiler.returncode is None:
            profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    for profiler in profilers:
        try:
            await asyncio.wait_for(profiler.wait(), 10)
        except TimeoutError:
            profiler.kill()
            await profiler.wait()


async def run(args: argparse.Namespace, redis_url: str, redis_pid: int | None) -> dict[str, Any]:
    redis = redis_from_url(redis_url)
    store = ConfigStore(redis, Keys(NAMESPACE))
    names = [f"ms{i + 1}" for i in range(args.servers)]
    children: list[LoggedProcess] = []
    profilers: list[asyncio.subprocess.Process] = []
    rounds: list[Round] = []
    try:
        await store.set("ping.interval", "60")  # no heartbeat traffic during the run
        children = await start_children(
            names,
            lambda name, listen: msrv_args(listen, name, NAMESPACE),
            msrv_ready,
            msrv_env(redis_url),
        )
        ports = [c.port for c in children]  # type: ignore[attr-defined]
        pids = [c.pid for c in children]
        if args.profile:
            profilers = await start_profilers(args.profile, children)
        await store.set("host", ",".join(f"127.0.0.1:{p}" for p in ports))
        guids = [f"storm-{i:05d}" for i in range(args.clients)]
        lists: list[list[str]] = [[] for _ in guids]
        for repetition in range(args.rounds):
            if repetition:
                await wait_disconnected(redis_url)
            fresh = repetition == 0
            lines = [startup_line(g, lst) for g, lst in zip(guids, lists, strict=True)]
            # the known round dials the next server: the hosts move, as in a failover
            dialled = ports if fresh else ports[1:] + ports[:1]
            result, transports = await storm(
                "new" if fresh else "known", dialled, lines, pids, redis_pid
            )
            if fresh:
                lists = [o.ms_list or [] for o in result.outcomes]
            await asyncio.sleep(0.2)  # let the acks land
            await hang_up(transports)
            rounds.append(result)
            say(f"  {result.name}: {result.figures()['total_s']}s")
        await wait_disconnected(redis_url)
    except Exception:
        for child in children:
            log = Path(tempfile.gettempdir()) / f"storm-{child.name}.log"
            log.write_text("\n".join(child.lines) + "\n")
            say(f"--- {child.name} (whole log in {log})\n{child.tail(20)}")
        raise
    finally:
        await stop_profilers(profilers)
        await stop_all(children)
        await redis.aclose()
    floors = await start_children(
        names, lambda name, listen: [__file__, "--floor-server", listen], lambda _: FLOOR_READY
    )
    try:
        ports = [c.port for c in floors]  # type: ignore[attr-defined]
        lines = [startup_line(g, []) for g in guids]
        result, transports = await storm("floor", ports, lines, [c.pid for c in floors], None)
        await hang_up(transports)
        rounds.append(result)
    finally:
        await stop_all(floors)
    return {r.name if r.name != "known" or i < 2 else f"known{i}": r.figures()
            for i, r in enumerate(rounds)}  # fmt: skip


COLUMNS = {  # figure -> header
    "ok": "ok", "errors": "errors", "lists": "lists", "total_s": "total s",
    "startups_per_s": "startups/s", "p50_ms": "p50 ms", "p99_ms": "p99 ms", "max_ms": "max ms",
    "server_cpu_s": "server cpu", "redis_cpu_s": "redis cpu", "client_cpu_s": "client cpu",
}  # fmt: skip


def report(args: argparse.Namespace, rounds: dict[str, Any]) -> None:
    say(f"{args.clients} clients, {args.servers} server(s)")
    say(f"{'round':<8}" + "".join(f"{h:>11}" for h in COLUMNS.values()))
    for name, figures in rounds.items():
        say(f"{name:<8}" + "".join(f"{figures[c]!s:>11}" for c in COLUMNS))
        if figures["first_error"]:
            say(f"  first error: {figures['first_error']}")
    floor = rounds["floor"]["total_s"]
    ratios = {
        f"{name}_to_floor": round(figures["total_s"] / floor, 2)
        for name, figures in rounds.items()
        if name != "floor" and floor
    }
    say("ratios: " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    summary = {"bench": "startup_storm", "clients": args.clients, "servers": args.servers}
    say(json.dumps({**summary, **rounds, **ratios}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--servers", type=int, choices=(1, 3), default=1)
    parser.add_argument("--rounds", type=int, default=2, help="1 new, then known rounds")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy each server into DIR/<id>.txt"
    )
    parser.add_argument("--floor-server", metavar="HOST:PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.floor_server:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve_floor(args.floor_server))
        return
    raise_nofile(2 * args.clients + 1024)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C, so every `finally` stops its children
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with tempfile.TemporaryDirectory(prefix="bench-storm-") as tmp:
        redis = start_embedded(Path(tmp))
        redis_process = getattr(redis, "process", None)
        try:
            rounds = asyncio.run(
                asyncio.wait_for(
                    run(args, redis.url, redis_process.pid if redis_process else None),
                    DEADLINE,
                )
            )
        finally:
            kill_leftovers()
            redis.stop()
    report(args, rounds)


if __name__ == "__main__":
    main()
