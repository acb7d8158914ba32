"""Failover and failback of real agents, side by side with HAProxy in front of the same servers
and with a floor, in one run.

1. ours: a redis-server, 3 `msrv serve`, one `agentd swarm` of N agents (roundrobin, so a third
   of them prefer each server; check interval T). ms1 is SIGKILLed; time until every agent that
   was on it is registered on another server.
2. failback: ms1 starts again; time (from its readiness line) until all of those agents are back
   on it, and the new sessions it saw per 100 ms, peak against the mean over the window.
3. HAProxy: `host` becomes HAProxy's one address (TCP mode, leastconn, health checks every
   200 ms, fall 1 rise 1, redispatch, retries 3, connect timeout 200 ms) in front of the same 3
   servers; check interval 0. The same agents persist that one-entry list and move behind
   HAProxy, which spreads them. The server holding the most is SIGKILLed; time until all of its
   agents are registered on another server.
4. floor: 3 minimal asyncio servers (one child process each) that answer one line, and N
   minimal clients (one child process) holding the 3 addresses, a third on each; server 1 is
   SIGKILLed; each of its clients reconnects to the next address and waits for the answer; time
   until the last one has it. No registry.

Times of 1-3 come from the registry: each host's last_seen is stamped by the server when the
session starts (ping.interval is 60 s, so nothing else moves it during a phase); the registry is
also polled every 100 ms and the poll that saw the end is reported too.

    .venv/bin/python bench/failover.py [--agents 3000] [--check-interval 10] [--profile DIR]

Prints a table, then one JSON line (the last line). Targets: ours <= HAProxy, ours <= 1.5 x
floor; failback all back <= T + 2 s, peak per 100 ms <= 3 x mean.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import HostView, host_views, print_json, print_table
from profiling import Recorder

from msctl.children import LoggedProcess
from msctl.lab import Lab

POLL = 0.1
DEADLINE = 900.0
WAIT = 60.0  # seconds for one failover
ANSWER = b"ready\n"
ME = str(Path(__file__).resolve())


# ---------------------------------------------------------------- registry helpers


async def views_of(lab: Lab) -> list[HostView]:
    client = lab.redis()
    try:
        return await host_views(client, lab.keys)
    finally:
        await client.aclose()


async def poll_until(
    lab: Lab, done: Callable[[list[HostView]], bool], limit: float, what: str
) -> tuple[float, list[HostView]]:
    """Poll the registry every 100 ms until `done`; returns (time.time of that poll, views)."""
    deadline = time.monotonic() + limit
    while True:
        started = time.monotonic()
        views = await views_of(lab)
        if done(views):
            return time.time(), views
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {limit:g}s")
        await asyncio.sleep(max(0.0, POLL - (time.monotonic() - started)))


def settled(lab: Lab, count: int) -> Callable[[list[HostView]], bool]:
    """Every host connected, on its list's first entry."""
    ids = {m.listen: m.server_id for m in lab.members}

    def check(views: list[HostView]) -> bool:
        on_first = [
            v
            for v in views
            if v.state == "connected" and ids.get(v.ms_list.split(",")[0]) == v.server
        ]
        return len(on_first) == count

    return check


def moved(
    victims: set[int], away_from: str | None, to: str | None
) -> Callable[[list[HostView]], bool]:
    """Every victim connected, elsewhere than `away_from` (or on `to`)."""

    def check(views: list[HostView]) -> bool:
        ok = [
            v
            for v in views
            if v.id in victims
            and v.state == "connected"
            and (away_from is None or v.server != away_from)
            and (to is None or v.server == to)
        ]
        return len(ok) == len(victims)

    return check


async def failover_of(lab: Lab, server_id: str, views: list[HostView]) -> dict[str, object]:
    """SIGKILL `server_id`; time until its agents are registered elsewhere."""
    victims = {v.id for v in views if v.server == server_id and v.state == "connected"}
    killed = time.time()
    await lab.kill_server(server_id, signal.SIGKILL)
    seen, after = await poll_until(lab, moved(victims, server_id, None), WAIT, "failover")
    times = [v.last_seen - killed for v in after if v.id in victims]
    spread = collections.Counter(v.server for v in after if v.id in victims)
    return {
        "killed": server_id,
        "agents_moved": len(victims),
        "to": dict(sorted(spread.items())),
        **benchlib.summary(times),
        "seen_by_poll_s": round(seen - killed, 3),
    }


def per_100ms(arrivals: list[float]) -> dict[str, object]:
    """Peak and mean of arrivals per 100 ms over the window from the first to the last."""
    first = min(arrivals)
    bins = collections.Counter(int((t - first) / POLL) for t in arrivals)
    width = max(bins) + 1
    mean = len(arrivals) / width
    peak = max(bins.values())
    return {
        "window_s": round(width * POLL, 1),
        "peak_per_100ms": peak,
        "mean_per_100ms": round(mean, 1),
        "peak_to_mean": round(peak / mean, 2),
    }


# ---------------------------------------------------------------- HAProxy


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def haproxy_config(listen: str, servers: list[str], maxconn: int) -> str:
    backends = "\n".join(f"    server {f'ms{i + 1}'} {a}" for i, a in enumerate(servers))
    return f"""global
    maxconn {maxconn}
    log stderr format raw local0 notice

defaults
    mode tcp
    log global
    timeout connect 200ms
    timeout client 10m
    timeout server 10m
    retries 3
    option redispatch 1
    default-server check inter 200ms fall 1 rise 1

frontend agents
    bind {listen}
    maxconn {maxconn}
    default_backend servers

backend servers
    balance leastconn
{backends}
"""


class HAProxy:
    def __init__(self, directory: Path, servers: list[str], agents: int) -> None:
        exe = shutil.which("haproxy") or "/usr/sbin/haproxy"
        self.listen = f"127.0.0.10:{free_port('127.0.0.10')}"
        self.config = directory / "haproxy.cfg"
        self.config.write_text(haproxy_config(self.listen, servers, 2 * agents + 1000))
        self.process = subprocess.Popen(
            [exe, "-f", str(self.config), "-db"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(directory / "haproxy.log").open("wb"),
        )

    async def wait_listening(self, timeout: float = 10.0) -> None:
        host, port = self.listen.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited {self.process.returncode}")
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# ---------------------------------------------------------------- the real agents


async def run_lab(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    n = args.agents
    lab = Lab(workdir / "lab", servers=3, agents=n, namespace="bench", port=0)
    haproxy: HAProxy | None = None
    recorder: Recorder | None = None
    result: dict[str, object] = {}
    try:
        await lab.start(
            algorithm="roundrobin", check_interval=str(args.check_interval), ping_interval="60"
        )
        _, views = await poll_until(lab, settled(lab, n), 60 + n / 50, "start")
        assert lab.swarm is not None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            recorder = Recorder(lab.swarm.pid, args.profile / "failover-swarm.txt", 60)
        await asyncio.sleep(1.0)
        result["ours"] = await failover_of(lab, "ms1", views)
        victims = {v.id for v in views if v.server == "ms1"}
        await asyncio.sleep(1.0)
        await lab.start_server("ms1")
        ready = time.time()
        limit = 3 * args.check_interval + 30
        seen, after = await poll_until(lab, moved(victims, None, "ms1"), limit, "failback")
        back = [v.last_seen - ready for v in after if v.id in victims]
        result["failback"] = {
            "check_interval_s": args.check_interval,
            "agents_back": len(back),
            **benchlib.summary(back),
            "seen_by_poll_s": round(seen - ready, 3),
            **per_100ms(back),
        }
        if recorder is not None:
            recorder.stop()
        if args.haproxy:
            # the same agents, configured with one address: HAProxy's
            haproxy = HAProxy(workdir, lab.addresses, n)
            await haproxy.wait_listening()
            await lab.configure(check_interval="0", host=haproxy.listen)
            _, views = await poll_until(
                lab,
                lambda vs: (
                    sum(1 for v in vs if v.state == "connected" and v.ms_list == haproxy.listen)
                    == n
                ),  # type: ignore[union-attr]
                60 + n / 50,
                "move behind haproxy",
            )
            await asyncio.sleep(2.0)  # the make-before-break moves close their old sessions
            views = await views_of(lab)
            spread = collections.Counter(v.server for v in views if v.state == "connected")
            target = spread.most_common(1)[0][0]
            result["haproxy"] = {
                "spread": dict(sorted(spread.items())),
                **await failover_of(lab, target, views),
            }
    finally:
        if recorder is not None:
            recorder.stop()
        if haproxy is not None:
            haproxy.stop()
        await lab.stop()
    return result


# ---------------------------------------------------------------- the floor


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


async def run_floor(count: int) -> dict[str, object]:
    me = ME
    addresses = [f"127.0.0.{i}:{free_port(f'127.0.0.{i}')}" for i in (1, 2, 3)]
    servers = [
        LoggedProcess(f"floor{i + 1}", [me, "--floor-server", a]) for i, a in enumerate(addresses)
    ]
    for server in servers:
        await server.start(ready="floor server listening")
    clients = LoggedProcess(
        "floor-clients", [me, "--floor-clients", str(count), "--addresses", ",".join(addresses)]
    )
    try:
        await clients.start(ready=rf"floor clients: {count} connected", timeout=60)
        await asyncio.sleep(1.0)
        killed = time.time()
        await servers[0].stop(signal.SIGKILL)
        await clients.wait_for(r"^floor result ", timeout=WAIT + 10)
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


# ---------------------------------------------------------------- the run


async def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        lab = await run_lab(args, Path(tmp))
    floor = await run_floor(args.agents)
    ours = lab["ours"]
    fb = lab["failback"]
    result: dict[str, object] = {
        "bench": "failover",
        "agents": args.agents,
        "servers": 3,
        **lab,
        "floor": floor,
    }
    ours_max = float(ours["max_s"])  # type: ignore[index]
    floor_max = float(floor["max_s"])  # type: ignore[arg-type]
    ratios: dict[str, float] = {"ours_to_floor": round(ours_max / floor_max, 2)}
    met = {"ours_le_1.5x_floor": ours_max <= 1.5 * floor_max}
    if "haproxy" in lab:
        ha_max = float(lab["haproxy"]["max_s"])  # type: ignore[index]
        ratios["ours_to_haproxy"] = round(ours_max / ha_max, 2)
        ratios["haproxy_to_floor"] = round(ha_max / floor_max, 2)
        met["ours_le_haproxy"] = ours_max <= ha_max
    met["failback_le_T+2"] = float(fb["max_s"]) <= args.check_interval + 2  # type: ignore[index]
    met["failback_peak_le_3x_mean"] = float(fb["peak_to_mean"]) <= 3  # type: ignore[index]
    result["ratios"] = ratios
    result["met"] = met
    result["revision"] = benchlib.revision()
    return result


def print_result(result: dict[str, object]) -> None:
    rows = []
    for key in ("ours", "haproxy", "floor"):
        if key in result:
            r = result[key]
            moved_n = r.get("agents_moved", r.get("clients_moved"))  # type: ignore[attr-defined]
            rows.append(
                [
                    f"failover {key}",
                    moved_n,
                    r["p50_s"],
                    r["p99_s"],
                    r["max_s"],
                    r.get("seen_by_poll_s", "-"),
                ]
            )  # type: ignore[index,attr-defined]
    fb = result["failback"]
    rows.append(
        [
            "failback ours",
            fb["agents_back"],
            fb["p50_s"],
            fb["p99_s"],
            fb["max_s"],
            fb["seen_by_poll_s"],
        ]
    )  # type: ignore[index]
    print_table(rows, ["phase", "agents", "p50 s", "p99 s", "max s", "poll saw all s"])
    print(
        f"failback: peak {fb['peak_per_100ms']}/100ms, mean {fb['mean_per_100ms']}/100ms "  # type: ignore[index]
        f"over {fb['window_s']}s (peak/mean {fb['peak_to_mean']})"  # type: ignore[index]
    )
    print(f"ratios: {result['ratios']}  met: {result['met']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=3000)
    parser.add_argument("--check-interval", type=int, default=10)
    parser.add_argument("--no-haproxy", dest="haproxy", action="store_false")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the swarm into DIR")
    parser.add_argument("--floor-server", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--floor-clients", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--addresses", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    benchlib.raise_nofile(2 * args.agents + 1024)
    if args.floor_server is not None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(floor_server(args.floor_server))
        return
    if args.floor_clients is not None:
        asyncio.run(floor_clients(args.floor_clients, args.addresses.split(","), WAIT))
        return
    if args.haproxy and shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists():
        raise SystemExit("haproxy not found: apt-get install -y haproxy, or pass --no-haproxy")
    with benchlib.leftovers_killed():
        result = asyncio.run(asyncio.wait_for(run(args), DEADLINE))
    print_result(result)
    print_json(result)


if __name__ == "__main__":
    main()
