"""Failover and failback of a swarm, with real msrv processes and a real redis-server.

N agents (static algorithm, so all prefer ms1) run in one `agentd swarm`; ms1 is killed with
SIGKILL; we time until every agent is registered on another server. ms1 then returns, and with
check interval T we time until every agent is back, and count the connections per 100 ms it saw
(from the registry, polled every 100 ms).

    python bench/failover_failback.py [--agents 1000] [--check-interval 10]

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import itertools

from common.records import load_hosts
from msctl.lab import Lab

POLL = 0.1


async def on_server(lab: Lab, server_id: str) -> tuple[int, int]:
    """(agents connected to `server_id`, agents connected anywhere)."""
    client = lab.redis()
    try:
        hosts = await load_hosts(client, lab.keys)
    finally:
        await client.aclose()
    connected = [h for h in hosts if h.state == "connected"]
    return sum(1 for h in connected if h.server == server_id), len(connected)


async def wait_until(lab: Lab, server_id: str, want_on: int | None, want_off: int | None,
                     limit: float) -> list[tuple[float, int]]:  # fmt: skip
    """Poll every 100 ms until the counts match; returns (time, count on server_id) samples."""
    samples = []
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        started = time.monotonic()
        on, anywhere = await on_server(lab, server_id)
        samples.append((started, on))
        if (want_on is None or on == want_on) and (want_off is None or anywhere - on == want_off):
            return samples
        await asyncio.sleep(max(0.0, POLL - (time.monotonic() - started)))
    raise TimeoutError(f"{server_id}: counts not reached in {limit}s (last {samples[-1]})")


async def run(agents: int, check: int) -> dict[str, object]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * agents + 1024)), hard))
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        lab = Lab(Path(tmp), servers=3, agents=agents, namespace="bench", port=0)
        try:
            await lab.start(algorithm="static", check_interval=str(check))
            await wait_until(lab, "ms1", agents, 0, 60)
            killed = time.monotonic()
            await lab.kill_server("ms1", signal.SIGKILL)
            samples = await wait_until(lab, "ms1", 0, agents, 60)
            failover = samples[-1][0] - killed
            await lab.start_server("ms1")
            back = time.monotonic()
            samples = await wait_until(lab, "ms1", agents, None, 3 * check + 30)
            failback = samples[-1][0] - back
        finally:
            await lab.stop()
    arrivals = [b - a for (_, a), (_, b) in itertools.pairwise(samples)]
    moving = [n for n in arrivals if n > 0]
    first = next(i for i, n in enumerate(arrivals) if n > 0)
    last = max(i for i, n in enumerate(arrivals) if n > 0)
    window = arrivals[first : last + 1]
    mean = sum(window) / len(window)
    return {
        "agents": agents,
        "check_interval_s": check,
        "failover_s": round(failover, 3),
        "failback_s": round(failback, 3),
        "failback_target_s": check + 2,
        "failback_window_s": round(len(window) * POLL, 1),
        "peak_per_100ms": max(moving),
        "mean_per_100ms": round(mean, 1),
        "peak_to_mean": round(max(moving) / mean, 2),
        "peak_per_s": max(sum(arrivals[i : i + 10]) for i in range(len(arrivals))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--check-interval", type=int, default=10)
    args = parser.parse_args()
    result = asyncio.run(run(args.agents, args.check_interval))
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key.ljust(width)}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
