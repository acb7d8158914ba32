"""One management server's CPU and RSS per 1,000 idle agents, up to 10,000; the swarms' RSS per
agent.

A redis-server, one `msrv serve`, ping.interval 5 s (the default). Agents are added a step at a
time (default 1,000), each step one more `agentd swarm` process, whose agents are provisioned
keystores of the namespace's CA first (as an enrollment leaves them: bench/benchtls.py), so
every session is mutual TLS 1.3; once a step's agents are all
connected and the startups are over (a few seconds), the server's /proc/<pid>/stat (utime +
stime) and /proc/<pid>/status (VmRSS) are sampled over an idle window (default 10 s); the swarms'
RSS and CPU too.

    .venv/bin/python bench/scale.py [--max 10000] [--step 1000] [--window 10] [--no-metrics]

The server serves Prometheus metrics (`--metrics`), scraped every --scrape seconds (default 5;
Prometheus's default is 15) during each window; `--no-metrics` runs it without, to see what
metrics cost.

Prints a table, then one JSON line (the last line). Targets: 10,000 idle TLS sessions at <= 25%
of one core and <= 400 MB RSS for the server; <= 150 KB per agent for the swarms. (Before TLS
the targets were 200 MB and 100 KB.)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import cpu_share, print_json, print_table, proc_sample
from benchtls import BenchLab
from profiling import Recorder, print_self_time

from msctl.children import LoggedProcess, swarm_ready

DEADLINE = 1200.0
SETTLE = 4.0  # seconds after a step's agents are connected, before the window
TARGET_CPU = 0.25
TARGET_RSS_MB = 400
TARGET_SWARM_KB = 150


async def measure(
    pids: list[int], window: float, scraper: Scraper | None = None
) -> list[tuple[float, int]]:
    """(share of one core, RSS bytes at the end) of each pid over `window` seconds, the
    server's metrics scraped meanwhile when `scraper` is given."""
    first = [proc_sample(p) for p in pids]
    if scraper is None:
        await asyncio.sleep(window)
    else:
        await scraper.run(window)
    last = [proc_sample(p) for p in pids]
    return [(cpu_share(a, b), b.rss_bytes) for a, b in zip(first, last, strict=True)]


class Scraper:
    """GET a server's /metrics every `interval` seconds, as Prometheus would."""

    def __init__(self, url: str, interval: float) -> None:
        self.url = url
        self.interval = interval
        self.seconds: list[float] = []  # each scrape's duration, in the last window
        self.size = 0  # bytes of the last answer

    def _scrape(self) -> None:
        started = time.monotonic()
        with urllib.request.urlopen(self.url, timeout=10) as response:
            self.size = len(response.read())
        self.seconds.append(time.monotonic() - started)

    async def run(self, window: float) -> None:
        """Scrape through one window (`seconds` then holds that window's scrapes)."""
        self.seconds = []
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            await asyncio.to_thread(self._scrape)
            await asyncio.sleep(min(self.interval, max(0.0, deadline - time.monotonic())))


async def run(args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    lab = BenchLab(
        workdir / "lab", servers=1, agents=0, namespace="bench", port=0, metrics=args.metrics
    )
    swarms: list[LoggedProcess] = []
    rows: list[dict[str, object]] = []
    try:
        await lab.start(ping_interval="5")
        server = lab.members[0].child.pid
        scraper = Scraper(lab.members[0].metrics_url, args.scrape) if args.metrics else None
        (cpu, rss), *_ = await measure([server], args.window, scraper)
        rows.append(
            {"agents": 0, "server_cpu": round(cpu, 3), "server_rss_mb": round(rss / 2**20, 1)}
        )
        agents = 0
        while agents < args.max:
            size = min(args.step, args.max - agents)
            k = len(swarms) + 1
            await lab.provision(workdir / f"swarm{k}", size, lab.addresses[0])
            swarm = LoggedProcess(
                f"swarm{k}",
                ["-m", "agentd", "swarm", "--count", str(size), "--dir", str(workdir / f"swarm{k}"),
                 "--host", lab.addresses[0]],
            )  # fmt: skip
            swarms.append(swarm)
            started = time.monotonic()
            await swarm.start(ready=swarm_ready(size), timeout=60 + size / 20)
            connect_s = time.monotonic() - started
            agents += size
            await asyncio.sleep(SETTLE)
            recorder = None
            if args.profile is not None and agents == args.max:
                args.profile.mkdir(parents=True, exist_ok=True)
                recorder = Recorder(server, args.profile / "scale-msrv.txt", args.window)
            samples = await measure([server, *(s.pid for s in swarms)], args.window, scraper)
            if recorder is not None:
                recorder.stop()
            (cpu, rss), swarm_samples = samples[0], samples[1:]
            swarm_rss = sum(r for _, r in swarm_samples)
            rows.append({
                "agents": agents,
                "step_connect_s": round(connect_s, 1),
                "server_cpu": round(cpu, 3),
                "server_rss_mb": round(rss / 2**20, 1),
                "swarms": len(swarms),
                "swarm_cpu": round(sum(c for c, _ in swarm_samples), 3),
                "swarm_rss_mb": round(swarm_rss / 2**20, 1),
                "swarm_kb_per_agent": round(swarm_rss / 1024 / agents, 1),
            })  # fmt: skip
            print(rows[-1], file=sys.stderr, flush=True)
    finally:
        for swarm in swarms:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await swarm.stop(signal.SIGTERM, timeout=20)
        await lab.stop()
    top = rows[-1]
    base = rows[0]
    per_k = (float(top["server_rss_mb"]) - float(base["server_rss_mb"])) / (
        int(top["agents"]) / 1000
    )  # type: ignore[arg-type]
    return {
        "bench": "scale",
        "ping_interval_s": 5,
        "metrics": args.metrics,
        "scrape_interval_s": args.scrape if args.metrics else None,
        "scrape_ms_mean": round(1000 * statistics.mean(scraper.seconds), 1) if scraper else None,
        "scrape_ms_max": round(1000 * max(scraper.seconds), 1) if scraper else None,
        "scrape_bytes": scraper.size if scraper else None,
        "window_s": args.window,
        "steps": rows,
        "server_cpu_at_max": top["server_cpu"],
        "server_rss_mb_at_max": top["server_rss_mb"],
        "server_rss_mb_per_1000": round(per_k, 1),
        "server_cpu_per_1000": round(float(top["server_cpu"]) / (int(top["agents"]) / 1000), 4),  # type: ignore[arg-type]
        "swarm_kb_per_agent": top["swarm_kb_per_agent"],
        "met": {
            "server_cpu_le_25pct": float(top["server_cpu"]) <= TARGET_CPU,  # type: ignore[arg-type]
            "server_rss_le_400mb": float(top["server_rss_mb"]) <= TARGET_RSS_MB,  # type: ignore[arg-type]
            "swarm_le_150kb_per_agent": float(top["swarm_kb_per_agent"]) <= TARGET_SWARM_KB,  # type: ignore[arg-type]
        },
        "revision": benchlib.revision(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max", type=int, default=10_000)
    parser.add_argument("--step", type=int, default=1000)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the server at the max")
    parser.add_argument("--no-metrics", dest="metrics", action="store_false")
    parser.add_argument("--scrape", type=float, default=5.0, help="seconds between scrapes")
    args = parser.parse_args()
    benchlib.raise_nofile(args.max + 1024)  # the server holds one socket per agent
    with benchlib.leftovers_killed(), tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        result = asyncio.run(asyncio.wait_for(run(args, Path(tmp)), DEADLINE))
    if args.profile is not None:
        print_self_time(args.profile / "scale-msrv.txt", f"the server at {args.max} agents")
    cols = [
        "agents",
        "server_cpu",
        "server_rss_mb",
        "swarm_cpu",
        "swarm_rss_mb",
        "swarm_kb_per_agent",
    ]
    print_table([[r.get(c, "-") for c in cols] for r in result["steps"]], cols)  # type: ignore[attr-defined]
    print(f"met: {result['met']}")
    print_json(result)


if __name__ == "__main__":
    main()
