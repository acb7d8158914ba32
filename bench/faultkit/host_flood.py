"""host-flood: a client with a valid join token tries to enroll 5,000 hosts.

One server, an `agentd swarm` of `agents` good agents connected to it (zone `default`), then a
join token of USES uses (common.tokens.create_token, as `msctl token create --uses N`) and
faultkit/_flood_client.py (its own process): HOSTS hosts, distinct guids, real CSRs, enrolling
on the wire as agentd does (the CA pinned by the token's fingerprint, then `enroll`), AT_ONCE
at a time; each host that gets a certificate starts up with it in zone `default`.

Figures: hosts enrolled (target: exactly the token's uses) and refused, the token's uses left,
the server's CPU seconds and RSS (before, peak, after) over the flood, its log lines, the zone
sizes before and after, the good hosts whose rank in their zone changed, and good sessions lost
(target 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from benchlib import CLK_TCK, ProcSample, proc_sample
from benchtls import BenchLab

from common.tokens import list_tokens
from faultkit.fleet import (
    ProcessWatch,
    crashed,
    sessions,
    sessions_changed,
    swarm_lost,
    traceback_texts,
    tracebacks,
    wait_served,
)
from faultkit.report import FaultReport
from msctl.children import LoggedProcess

DEFAULT_AGENTS = 1000
HOSTS = 5000
USES = 100
AT_ONCE = 32
FLOOD_LIMIT = 900.0  # seconds
TARGET = f"{HOSTS} enrollments on a token of {USES} uses: {USES} enrolled, 0 good sessions lost"
CLIENT = Path(__file__).with_name("_flood_client.py")
RESULT = "flood-result "
MB = 1024 * 1024


async def zones(lab: BenchLab) -> dict[str, list[str]]:
    """Zone -> its ranked host ids, in rank order."""
    async with lab.connected() as client:
        names = sorted(cast(set[str], await client.smembers(lab.keys.zones)))
        return {
            name: cast(list[str], await client.zrange(lab.keys.zone_hosts(name), 0, -1))
            for name in names
        }


def ranks_changed(before: dict[str, list[str]], after: dict[str, list[str]]) -> int:
    """Hosts ranked before whose rank in their zone is not the same after."""
    changed = 0
    for zone, ids in before.items():
        now = {host_id: rank for rank, host_id in enumerate(after.get(zone, []))}
        changed += sum(now.get(host_id) != rank for rank, host_id in enumerate(ids))
    return changed


def flood_result(client: LoggedProcess) -> dict[str, object]:
    for line in reversed(client.lines):
        if line.startswith(RESULT):
            result: dict[str, object] = json.loads(line.removeprefix(RESULT))
            return result
    return {"missing": client.tail(20)}


async def flood(lab: BenchLab, token: str) -> LoggedProcess:
    server = lab.members[0]
    args = [str(CLIENT), "--address", server.listen, "--hosts", str(HOSTS)]
    client = LoggedProcess("flood", [*args, "--at-once", str(AT_ONCE)], env={"AGENTD_TOKEN": token})
    await client.start()
    assert client.process is not None
    await asyncio.wait_for(client.process.wait(), FLOOD_LIMIT)
    await client.stop()
    return client


async def run(agents: int, workdir: Path) -> FaultReport:
    lab = BenchLab(workdir / "lab", servers=1, agents=agents, port=0)
    client: LoggedProcess | None = None
    watching: asyncio.Task[None] | None = None
    try:
        await lab.start()
        served, _ = await wait_served(lab, agents, 60.0)
        if served is None:
            raise RuntimeError("the agents were not all served before the flood")
        server = lab.members[0]
        before = Before(await zones(lab), await sessions(lab), swarm_lost(lab.swarm))
        token = await lab.join_token(USES)
        watch = ProcessWatch(server.child.pid)
        watching = asyncio.create_task(watch.run())
        await asyncio.sleep(2.0)
        first = proc_sample(server.child.pid)
        before.log_lines = len(server.child.lines)
        client = await flood(lab, token)
        last = proc_sample(server.child.pid)
        await asyncio.sleep(5.0)  # two gc pacer passes
        return await judge(lab, before, client, watch, (first, last))
    finally:
        if watching is not None:
            watching.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watching
        if client is not None:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await client.stop(signal.SIGKILL, timeout=5)
        await lab.stop()


@dataclass
class Before:
    zones: dict[str, list[str]]
    sessions: dict[str, str]  # the good agents' session tokens
    lost: int  # agents the swarm said lost their server
    log_lines: int = 0  # the server's


async def judge(
    lab: BenchLab,
    before: Before,
    client: LoggedProcess,
    watch: ProcessWatch,
    cpu: tuple[ProcSample, ProcSample],
) -> FaultReport:
    report = FaultReport("host-flood", lab.agents, TARGET)
    server = lab.members[0]
    rss_after = proc_sample(server.child.pid).rss_bytes
    zones_after = await zones(lab)
    now = await sessions(lab)
    moved = sessions_changed(before.sessions, now)
    lost = swarm_lost(lab.swarm) - before.lost
    async with lab.connected() as redis:
        uses_left = sum(t.uses_left for t in await list_tokens(redis, lab.keys))
    _, state = await wait_served(lab, lab.agents, 10.0)
    children = [lab.swarm, server.child]
    report.disconnected = sum(guid not in now for guid in before.sessions)
    report.wrong_list = state.behind
    report.crashes = crashed(children, set())
    report.tracebacks = tracebacks([*children, client])
    result = flood_result(client)
    cpu_s = (cpu[1].cpu_ticks - cpu[0].cpu_ticks) / CLK_TCK
    report.extra = {
        "traceback_texts": traceback_texts([*children, client]),
        "hosts_tried": HOSTS,
        "token_uses": USES,
        "enrolled": result.get("enrolled"),
        "refused": result.get("refused"),
        "failed_otherwise": result.get("failed"),
        "started_up": result.get("started_up"),
        "token_uses_left": uses_left,
        "flood_s": round(cpu[1].at - cpu[0].at, 1),
        "server_cpu_s": round(cpu_s, 1),
        "server_cpu_ms_per_host": round(cpu_s * 1000 / HOSTS, 2),
        "rss_mb_before": round(cpu[0].rss_bytes / MB, 1),
        "rss_mb_peak": round(watch.peak() / MB, 1),
        "rss_mb_after": round(rss_after / MB, 1),
        "server_log_lines": len(server.child.lines) - before.log_lines,
        "zone_sizes_before": {z: len(ids) for z, ids in before.zones.items()},
        "zone_sizes_after": {z: len(ids) for z, ids in zones_after.items()},
        "good_ranks_changed": ranks_changed(before.zones, zones_after),
        "good_sessions_lost": max(moved, lost),
        "flood": result,
    }
    report.met = (
        result.get("enrolled") == USES
        and result.get("started_up") == USES
        and uses_left == 0
        and max(moved, lost) == 0
        and report.crashes == 0
        and report.tracebacks == 0
    )
    return report
