"""wire-fuzz: generated and mutated frames, and idle connections, against a server that serves
1,000 good agents.

One server, an `agentd swarm` of `agents` agents connected to it (provisioned keystores), then
FUZZ_SECONDS of faultkit/_fuzz_client.py (its own process: WORKERS connections at once sending
hypothesis cases built from the protocol's message classes and mutations of real frames, over
TLS with client certificates of the namespace's CA, over TLS without a certificate, and in plain
TCP; IDLE idle connections besides). The server's RSS and open descriptors are sampled every
SAMPLE seconds from before the fuzz until after it.

Figures: frames and connections the fuzzer made, what the server answered, good sessions lost
(a swarm agent whose registry session token or state changed, or that the swarm reported
losing its server), tracebacks in the server's and the swarm's logs, the server's RSS before,
at its peak and after (once its descriptors are back, up to SETTLE seconds for the RSS to come
within 10 % of before), descriptors before and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import proc_sample
from benchtls import BenchLab

from faultkit.fleet import (
    ProcessWatch,
    crashed,
    open_fds,
    sessions,
    sessions_changed,
    swarm_lost,
    traceback_texts,
    tracebacks,
    wait_served,
)
from faultkit.report import FaultReport
from msctl.children import LoggedProcess
from msctl.lab import LabServer

DEFAULT_AGENTS = 1000
FUZZ_SECONDS = 60.0
WORKERS = 16
IDLE = 100
SAMPLE = 0.5
SETTLE = 60.0  # seconds after the fuzz for descriptors and RSS to come back
RSS_SLACK = 0.10
TARGET = (
    f"{FUZZ_SECONDS:.0f}s of fuzz: 0 good sessions lost, 0 tracebacks, server RSS back within "
    f"{RSS_SLACK:.0%} of before"
)
CLIENT = Path(__file__).with_name("_fuzz_client.py")
RESULT = "fuzz-result "
MB = 1024 * 1024


async def settle(server: LabServer, rss_before: int, fds_before: int) -> float:
    """Seconds until the server's descriptors are back to `fds_before` (+10) and its RSS within
    RSS_SLACK of `rss_before`, or SETTLE."""
    started = time.monotonic()
    while time.monotonic() - started < SETTLE:
        rss = proc_sample(server.child.pid).rss_bytes
        if open_fds(server.child.pid) <= fds_before + 10 and rss <= rss_before * (1 + RSS_SLACK):
            break
        await asyncio.sleep(SAMPLE)
    return time.monotonic() - started


def fuzz_result(client: LoggedProcess) -> dict[str, object]:
    for line in reversed(client.lines):
        if line.startswith(RESULT):
            result: dict[str, object] = json.loads(line.removeprefix(RESULT))
            return result
    return {"missing": client.tail(20)}


@dataclass
class Before:
    """The server and the good agents before the fuzz."""

    sessions: dict[str, str]  # guid -> session token of the connected good agents
    rss: int
    fds: int
    lost: int  # agents the swarm said lost their server


async def fuzz(lab: BenchLab, server: LabServer) -> tuple[LoggedProcess, float]:
    """Run the fuzz client to its end; (the client, when it started)."""
    args = [str(CLIENT), "--address", server.listen, "--namespace", lab.namespace]
    args += ["--seconds", str(FUZZ_SECONDS), "--workers", str(WORKERS), "--idle", str(IDLE)]
    client = LoggedProcess("fuzzer", args, env={"MSRV_REDIS_URL": lab.url})
    started = time.monotonic()
    await client.start()
    assert client.process is not None
    await asyncio.wait_for(client.process.wait(), FUZZ_SECONDS + 120)
    await client.stop()
    return client, started


async def judge(
    lab: BenchLab, before: Before, client: LoggedProcess, watch: ProcessWatch, started: float
) -> FaultReport:
    """After the fuzz: sessions, logs, and the server's memory once it settled."""
    report = FaultReport("wire-fuzz", lab.agents, TARGET)
    server = lab.members[0]
    assert lab.swarm is not None and client.process is not None
    settle_s = await settle(server, before.rss, before.fds)
    rss_after = proc_sample(server.child.pid).rss_bytes
    fds_after = open_fds(server.child.pid)
    peak = watch.peak(since=started)
    after = await sessions(lab)
    moved = sessions_changed(before.sessions, after)
    lost = swarm_lost(lab.swarm) - before.lost
    _, state = await wait_served(lab, lab.agents, 10.0)
    children = [lab.swarm, server.child]
    report.disconnected = sum(guid not in after for guid in before.sessions)
    report.wrong_list = state.behind
    report.crashes = crashed(children, set()) + (client.process.returncode != 0)
    report.tracebacks = tracebacks([*children, client])
    result = fuzz_result(client)
    report.extra = {
        "traceback_texts": traceback_texts([*children, client]),
        "frames_sent": result.get("frames_sent"),
        "connections": result.get("connections"),
        "idle_connections": result.get("idle_connections"),
        "good_sessions_lost": max(moved, lost),
        "sessions_changed": moved,
        "swarm_lost_server": lost,
        "rss_mb_before": round(before.rss / MB, 1),
        "rss_mb_peak": round(peak / MB, 1),
        "rss_mb_after": round(rss_after / MB, 1),
        "rss_after_vs_before": round(rss_after / before.rss - 1, 3),
        "settle_s": round(settle_s, 1),
        "fds_before": before.fds,
        "fds_after": fds_after,
        "server_warnings": server.child.count(r" WARNING "),
        "fuzz": result,
    }
    report.met = (
        moved + lost == 0
        and report.disconnected == 0
        and report.tracebacks == 0
        and report.crashes == 0
        and rss_after <= before.rss * (1 + RSS_SLACK)
    )
    return report


async def run(agents: int, workdir: Path) -> FaultReport:
    lab = BenchLab(workdir / "lab", servers=1, agents=agents, port=0)
    client: LoggedProcess | None = None
    sampling: asyncio.Task[None] | None = None
    try:
        await lab.start()
        served, _ = await wait_served(lab, agents, 60.0)
        if served is None:
            raise RuntimeError("the agents were not all served before the fuzz")
        server = lab.members[0]
        assert lab.swarm is not None
        watch = ProcessWatch(server.child.pid, SAMPLE)
        sampling = asyncio.create_task(watch.run())
        await asyncio.sleep(5 * SAMPLE)
        before = Before(
            await sessions(lab),
            int(statistics.median(v for _, v in watch.rss)),
            open_fds(server.child.pid),
            swarm_lost(lab.swarm),
        )
        client, started = await fuzz(lab, server)
        return await judge(lab, before, client, watch, started)
    finally:
        if sampling is not None:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        if client is not None:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await client.stop(signal.SIGKILL, timeout=5)
        await lab.stop()
