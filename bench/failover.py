"""Failover and failback of real agents, side by side with HAProxy in front of the same servers
and with a floor, in one run; every session mutual TLS 1.3.

1. ours: a redis-server, 3 `msrv serve`, one `agentd swarm` of N agents (roundrobin, so a third
   of them prefer each server; check interval T), enrolled with a join token at the start. ms1
   is SIGKILLed; time until every agent that was on it is registered on another server.
2. failback: ms1 starts again; time (from its readiness line) until all of those agents are back
   on it, and the new sessions it saw per 100 ms, peak against the mean over the window.
3. HAProxy: `host` becomes HAProxy's one address (TCP mode, leastconn, health checks every
   200 ms, fall 1 rise 1, redispatch, retries 3, connect timeout 200 ms) in front of the same 3
   servers; check interval 0. HAProxy passes TLS through (it never decrypts): the agents' TLS
   sessions end at msrv, which sees their certificates as before. An agent verifies the server's
   certificate against the address it dials, HAProxy's, so the servers run with
   `--tls-san 127.0.0.10` (HAProxy's host) from the start. The same agents persist that
   one-entry list and move behind HAProxy, which spreads them. The server holding the most is
   SIGKILLed; time until all of its agents are registered on another server.
4. floor: 3 minimal asyncio servers (one child process each) that answer one line, and N
   minimal clients (one child process) holding the 3 addresses, a third on each; server 1 is
   SIGKILLed; each of its clients reconnects to the next address and waits for the answer; time
   until the last one has it. No registry. Each connection does the same TLS handshake as ours
   (failover_floor.py); the plaintext floor of the rounds before TLS is run too, for comparison
   (`floor_plain`, not a target).

Times of 1-3 come from the registry: each host's last_seen is stamped by the server when the
session starts (ping.interval is 60 s, so nothing else moves it during a phase); the registry is
also polled every 100 ms and the poll that saw the end is reported too.

    .venv/bin/python bench/failover.py [--agents 3000] [--check-interval 10] [--no-haproxy]
        [--no-plain-floor] [--profile DIR]

Prints a table, then one JSON line (the last line). Targets: ours <= HAProxy, ours <= 1.5 x
floor (TLS); failback all back <= T + 2 s, peak per 100 ms <= 3 x mean.

This file runs 1 and 2 and puts the run together; HAProxy is in haproxy.py, the floor in
failover_floor.py, the registry polling and the timing of a failover in failover_timing.py.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
import failover_floor
import haproxy
from benchlib import print_json, print_table
from benchtls import BenchLab
from failover_timing import POLL, WAIT, failover_of, moved, poll_until, settled
from profiling import Recorder

from msctl.lab import Lab

DEADLINE = 900.0
ME = str(Path(__file__).resolve())


# ---------------------------------------------------------------- the real agents


async def run_lab(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    """Ours, failback, then the same agents behind HAProxy (unless --no-haproxy)."""
    n = args.agents
    lab = BenchLab(
        workdir / "lab",
        servers=3,
        agents=n,
        namespace="bench",
        port=0,
        tls_san=(haproxy.HOST,) if args.haproxy else (),
    )
    recorder: Recorder | None = None
    result: dict[str, object] = {}
    try:
        await lab.start(
            algorithm="roundrobin", check_interval=str(args.check_interval), ping_interval="60"
        )
        await poll_until(lab, settled(lab, n), 60 + n / 50, "start")
        assert lab.swarm is not None
        if args.profile is not None:
            args.profile.mkdir(parents=True, exist_ok=True)
            recorder = Recorder(lab.swarm.pid, args.profile / "failover-swarm.txt", 60)
        await asyncio.sleep(1.0)
        result["ours"], victims = await failover_of(lab, "ms1")
        await asyncio.sleep(1.0)
        result["failback"] = await failback(lab, victims, args.check_interval)
        if recorder is not None:
            recorder.stop()
        if args.haproxy:
            # the same agents, configured with one address: HAProxy's
            result["haproxy"] = await haproxy.run_phase(lab, workdir, n)
    finally:
        if recorder is not None:
            recorder.stop()
        await lab.stop()
    return result


async def failback(lab: Lab, victims: set[int], check_interval: int) -> dict[str, object]:
    """Start ms1 again; time (from its readiness) until every victim is back on it."""
    await lab.start_server("ms1")
    ready = time.time()
    limit = 3 * check_interval + 30
    seen, after = await poll_until(lab, moved(victims, None, "ms1"), limit, "failback")
    back = [v.last_seen - ready for v in after if v.id in victims]
    return {
        "check_interval_s": check_interval,
        "agents_back": len(back),
        **benchlib.summary(back),
        "seen_by_poll_s": round(seen - ready, 3),
        **per_100ms(back),
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


# ---------------------------------------------------------------- the run


async def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        lab = await run_lab(args, Path(tmp))
    floor = await failover_floor.run_phase(args.agents, ME, WAIT, tls=True)
    plain = None
    if args.plain_floor:
        plain = await failover_floor.run_phase(args.agents, ME, WAIT, tls=False)
    ours = lab["ours"]
    fb = lab["failback"]
    result: dict[str, object] = {
        "bench": "failover",
        "agents": args.agents,
        "servers": 3,
        **lab,
        "floor": floor,
    }
    if plain is not None:
        result["floor_plain"] = plain
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


def print_result(result: dict[str, Any]) -> None:
    rows: list[list[object]] = []
    for key in ("ours", "haproxy", "floor", "floor_plain"):
        if key in result:
            r = result[key]
            moved_n = r.get("agents_moved", r.get("clients_moved"))
            rows.append([f"failover {key}", moved_n, r["p50_s"], r["p99_s"], r["max_s"],
                         r.get("seen_by_poll_s", "-")])  # fmt: skip
    fb = result["failback"]
    rows.append(["failback ours", fb["agents_back"], fb["p50_s"], fb["p99_s"], fb["max_s"],
                 fb["seen_by_poll_s"]])  # fmt: skip
    print_table(rows, ["phase", "agents", "p50 s", "p99 s", "max s", "poll saw all s"])
    print(
        f"failback: peak {fb['peak_per_100ms']}/100ms, mean {fb['mean_per_100ms']}/100ms "
        f"over {fb['window_s']}s (peak/mean {fb['peak_to_mean']})"
    )
    print(f"ratios: {result['ratios']}  met: {result['met']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=3000)
    parser.add_argument("--check-interval", type=int, default=10)
    parser.add_argument("--no-haproxy", dest="haproxy", action="store_false")
    parser.add_argument("--no-plain-floor", dest="plain_floor", action="store_false",
                        help="skip the plaintext floor (run for comparison only)")  # fmt: skip
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the swarm into DIR")
    parser.add_argument("--floor-server", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--floor-clients", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--addresses", default="", help=argparse.SUPPRESS)
    parser.add_argument("--floor-pems", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    benchlib.raise_nofile(2 * args.agents + 1024)
    if args.floor_server is not None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(failover_floor.floor_server(args.floor_server, args.floor_pems))
        return
    if args.floor_clients is not None:
        addresses = args.addresses.split(",")
        asyncio.run(
            failover_floor.floor_clients(args.floor_clients, addresses, WAIT, args.floor_pems)
        )
        return
    if args.haproxy and not haproxy.installed():
        raise SystemExit("haproxy not found: apt-get install -y haproxy, or pass --no-haproxy")
    with benchlib.leftovers_killed():
        result = asyncio.run(asyncio.wait_for(run(args), DEADLINE))
    print_result(result)
    print_json(result)


if __name__ == "__main__":
    main()
