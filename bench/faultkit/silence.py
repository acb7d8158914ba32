"""A server that falls silent without a reset (SIGSTOPped, or its network cut), seen by our
agents and then by the same agents behind HAProxy: the shared run of `hung-server` and
`partition`.

One lab: Redis, 3 servers (ms1 is the victim), one swarm of N agents, roundrobin (a third of
the agents prefer each server), check interval 0 (no failback: the resumed server must end
with the sessions the registry gives it, none), and the heartbeat an operator runs:
ping.interval 5 s, ping.timeout 3 (the defaults: a session silent for 15 s is dead, to the
agent and to the server).

1. ours: the fault hits ms1 for HOLD seconds. Its agents notice the silence (15-20 s: the
   silence is checked at each ping) and fail over through their lists.
2. HAProxy (bench/faultkit/proxy.py: TCP mode, check inter 200ms, redispatch, 1 h timeouts):
   `host` becomes HAProxy's one address, the same agents move behind it (leastconn spreads
   them, a third on ms1); the same fault hits ms1 for HOLD seconds. An agent notices the
   silence the same way and dials HAProxy again, which sends it to whichever server its
   health check calls UP: `routed_to_victim` counts the connections it sent to ms1 during
   the fault (its `stot`).

Figures of each episode, from the registry polled every POLL seconds:
- served_s: from the fault's start until every agent is served (connected on a server that
  is not the victim while the fault lasts, on any running server after it, and holding its
  list); `served_in_fault` whether that came before the fault ended; `victims_p50_s` and
  `victims_max_s` from the first poll that saw each of the victim's agents served.
- after the fault: `victim_sessions_at_end` (the victim's own count, `msrv_sessions`, at its
  first scrape) and `settled_s`, until every running server's count equals the hosts the
  registry puts on it, their sum is N and every agent is served; `duplicates` (sessions
  beyond N) and `mismatched` (servers whose count is not the registry's) at that point;
  `victim_log`, what the victim logged from the fault on (env FAULTS_DUMP=DIR: those lines
  are written to DIR/victim-ours.log and DIR/victim-haproxy.log, and every child's whole log
  to DIR/NAME.log at the end).
"""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import haproxy
from failover_timing import poll_until, quiescent, settled
from prometheus_client.parser import text_string_to_metric_families

from common.configstore import ConfigStore
from common.records import HostRecord, HostState, load_hosts, load_servers
from faultkit.fleet import crashed, files_disagreeing, settings_lost, tracebacks, wait_served
from faultkit.proxy import ProductionHAProxy
from faultkit.report import FaultReport
from msctl.convergence import current_hosts
from msctl.lab import Lab

VICTIM = "ms1"
HOLD = 40.0  # seconds the fault lasts
POLL = 0.25
PING = {"ping.interval": "5", "ping.timeout": "3"}
SILENCE_LIMIT = 15.0  # ping.interval x ping.timeout
SETTLE_LIMIT = 90.0  # seconds after the fault for every figure to settle
# what the victim logged from the fault on: how it noticed its sessions were gone
VICTIM_LOG = {
    "silent": re.compile(r"silent for \d+s; disconnected"),
    "superseded": re.compile(r"superseded"),
    "redis_lost": re.compile(r"Redis unreachable"),
    "resynced": re.compile(r"Redis is back; resynchronised"),
    "ended": re.compile(r"sessions? ended"),
}
DUMP = os.environ.get("FAULTS_DUMP")  # a folder for the victim's log of each episode


class Fault(Protocol):
    def begin(self) -> None: ...
    def end(self) -> None: ...


@dataclass
class Registry:
    """One read of the registry: hosts, and whether each holds its list."""

    hosts: list[HostRecord]
    current: dict[int, bool]

    def served(self, host: HostRecord, away: str | None) -> bool:
        return (
            host.state == HostState.CONNECTED
            and host.server != away
            and self.current.get(host.id, False)
        )

    def served_count(self, away: str | None) -> int:
        return sum(self.served(h, away) for h in self.hosts)

    def on(self) -> Counter[str]:
        return Counter(h.server for h in self.hosts if h.state == HostState.CONNECTED)


async def read_registry(lab: Lab) -> Registry:
    async with lab.connected() as client:
        snapshot = await ConfigStore(client, lab.keys).snapshot()
        hosts = await load_hosts(client, lab.keys)
        servers = await load_servers(client, lab.keys)
    return Registry(hosts, current_hosts(snapshot, hosts, servers))


def scrape_sessions(url: str) -> int | None:
    """A server's own count of its sessions (msrv_sessions, summed over zones); None when its
    metrics do not answer."""
    try:
        with urllib.request.urlopen(url, timeout=2.0) as reply:
            text = reply.read().decode()
    except OSError:
        return None
    return int(
        sum(
            sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "msrv_sessions"
            for sample in family.samples
        )
    )


async def sessions_by_server(lab: Lab) -> dict[str, int | None]:
    running = [m for m in lab.members if m.running]
    counts = await asyncio.gather(
        *(asyncio.to_thread(scrape_sessions, m.metrics_url) for m in running)
    )
    return {m.server_id: n for m, n in zip(running, counts, strict=True)}


@dataclass
class Episode:
    """One fault on VICTIM while `agents` agents run, polled until everything settled."""

    lab: Lab
    agents: int
    fault: Fault
    proxy: ProductionHAProxy | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    async def run(self) -> dict[str, Any]:
        before = await read_registry(self.lab)
        victims = {h.id for h in before.hosts if h.server == VICTIM}
        self.figures["victim_agents"] = len(victims)
        stat_before = await self.proxy.stats() if self.proxy is not None else None
        mark = len(self.lab.member(VICTIM).child.lines)
        started = time.monotonic()
        self.fault.begin()
        try:
            seen = await self._during(started, victims)
        finally:
            stat_after = await self.proxy.stats() if self.proxy is not None else None
            self.fault.end()
        ended = time.monotonic()
        if stat_before is not None and stat_after is not None:
            self.figures["routed_to_victim"] = stat_after[VICTIM].total - stat_before[VICTIM].total
        await self._after(started, ended, seen, victims)
        lines = self.lab.member(VICTIM).child.lines[mark:]
        self.figures["victim_log"] = {
            name: sum(bool(pattern.search(line)) for line in lines)
            for name, pattern in VICTIM_LOG.items()
        }
        if DUMP:
            path = Path(DUMP, f"victim-{'haproxy' if self.proxy else 'ours'}.log")
            await asyncio.to_thread(path.write_text, "\n".join(lines) + "\n")
        return self.figures

    async def _during(self, started: float, victims: set[int]) -> dict[int, float]:
        """Poll until the fault has lasted HOLD: when each victim was first seen served."""
        seen: dict[int, float] = {}
        up: list[bool] = []
        while (now := time.monotonic()) - started < HOLD:
            registry = await read_registry(self.lab)
            at = time.monotonic() - started
            for host in registry.hosts:
                if host.id in victims and host.id not in seen and registry.served(host, VICTIM):
                    seen[host.id] = at
            if "served_s" not in self.figures and registry.served_count(VICTIM) == self.agents:
                self.figures["served_s"] = round(at, 2)
            if self.proxy is not None:
                up.append((await self.proxy.stats())[VICTIM].status.startswith("UP"))
            await asyncio.sleep(max(0.0, POLL - (time.monotonic() - now)))
        registry = await read_registry(self.lab)
        self.figures["served_in_fault"] = "served_s" in self.figures
        self.figures["unserved_at_fault_end"] = self.agents - registry.served_count(VICTIM)
        if seen:
            self.figures["victims_p50_s"] = round(statistics.median(seen.values()), 2)
            self.figures["victims_max_s"] = round(max(seen.values()), 2)
        if up:
            self.figures["victim_checked_up_share"] = round(sum(up) / len(up), 2)
        return seen

    async def _after(
        self, started: float, ended: float, seen: dict[int, float], victims: set[int]
    ) -> None:
        """After the fault: until every agent is served and every server's own count of its
        sessions is the registry's."""
        figures = self.figures
        first = True
        while True:
            registry = await read_registry(self.lab)
            sessions = await sessions_by_server(self.lab)
            at = time.monotonic()
            if first:
                figures["victim_sessions_at_end"] = sessions.get(VICTIM)
                first = False
            if "served_s" not in figures and registry.served_count(None) == self.agents:
                figures["served_s"] = round(at - started, 2)
            on = registry.on()
            mismatched = sorted(s for s, n in sessions.items() if n != on.get(s, 0))
            total = sum(n or 0 for n in sessions.values())
            settled = "served_s" in figures and not mismatched and total == self.agents
            if settled or at - ended > SETTLE_LIMIT:
                figures["settled_s"] = round(at - ended, 2) if settled else None
                figures["sessions"] = dict(sorted(sessions.items()))
                figures["registry_on"] = dict(sorted(on.items()))
                figures["duplicates"] = max(0, total - self.agents)
                figures["mismatched"] = mismatched
                figures["unserved"] = self.agents - registry.served_count(None)
                return
            await asyncio.sleep(POLL)


async def behind_haproxy(lab: Lab, workdir: Path, agents: int) -> ProductionHAProxy:
    """The lab's agents moved behind a production HAProxy in front of its servers."""
    proxy = ProductionHAProxy(workdir, {m.server_id: m.listen for m in lab.members}, agents)
    await proxy.wait_ready()
    await lab.configure(host=proxy.listen)
    took, state = await wait_served(lab, agents, 120 + agents / 20)
    if took is None:
        raise TimeoutError(f"agents never all behind haproxy: {state}")
    await quiescent(lab)
    return proxy


@dataclass
class SideBySide:
    """Both episodes on one lab, and the scenario's report."""

    name: str
    target: str
    lab: Lab
    agents: int
    workdir: Path
    fault: Fault
    within: float  # ours: every agent served within this many seconds of the fault's start

    async def run(self) -> FaultReport:
        lab = self.lab
        settings = {"indirect.agent.lb.algorithm": "roundrobin",
                    "indirect.agent.lb.check.interval": "0", **PING}  # fmt: skip
        extra: dict[str, Any] = {"ping_interval_s": 5, "ping_timeout": 3, "hold_s": HOLD}
        await lab.start(**settings)
        took, state = await wait_served(lab, self.agents, 120 + self.agents / 20)
        if took is None:
            raise TimeoutError(f"the lab never served every agent: {state}")
        # each agent on its first entry (a third on each server): the moves off the server
        # they all dialled first are paced, and must be over before the fault
        await poll_until(lab, settled(lab, self.agents), 60 + self.agents / 20, "settle")
        await quiescent(lab)
        extra["ours"] = ours = await Episode(lab, self.agents, self.fault).run()
        if not haproxy.installed():
            extra["haproxy"] = "not installed (apt-get install haproxy)"
            return await self.report(ours, settings, extra)
        proxy = await behind_haproxy(lab, self.workdir, self.agents)
        try:
            extra["haproxy"] = await Episode(lab, self.agents, self.fault, proxy).run()
            extra["haproxy"]["status_changes"] = len(proxy.status_changes())
            settings["host"] = proxy.listen
            return await self.report(ours, settings, extra)  # while the agents are behind it
        finally:
            proxy.stop()

    async def report(
        self, ours: dict[str, Any], settings: dict[str, str], extra: dict[str, Any]
    ) -> FaultReport:
        lab = self.lab
        if DUMP:
            for child in [*(m.child for m in lab.members), lab.swarm]:
                if child is not None:
                    path = Path(DUMP, f"{child.name}.log")
                    await asyncio.to_thread(path.write_text, "\n".join(child.lines) + "\n")
        registry = await read_registry(lab)
        lists = {h.guid: ",".join(h.ms_list) for h in registry.hosts}
        children = [*(m.child for m in lab.members), lab.swarm]
        report = FaultReport(
            scenario=self.name,
            agents=self.agents,
            target=self.target,
            disconnected=self.agents - sum(h.state == HostState.CONNECTED for h in registry.hosts),
            wrong_list=files_disagreeing(lab.directory / "agents", lists)
            + sum(not c for c in registry.current.values()),
            settings_lost=await settings_lost(lab, settings),
            crashes=crashed(children, killed=set()),
            tracebacks=tracebacks(children),
            recover_s=ours.get("served_s"),
            extra=extra,
        )
        theirs = extra["haproxy"] if isinstance(extra["haproxy"], dict) else None
        report.met = (
            ours.get("served_in_fault") is True
            and (ours.get("served_s") or 1e9) <= self.within
            and ours.get("settled_s") is not None
            and ours.get("duplicates") == 0
            and not ours.get("mismatched")
            and report.disconnected == 0
            and report.wrong_list == 0
            and report.settings_lost == 0
            and report.crashes == 0
            and report.tracebacks == 0
            # behind HAProxy too, our servers must end with the sessions the registry says
            and (theirs is None or (theirs["duplicates"] == 0 and not theirs["mismatched"]))
        )
        return report
