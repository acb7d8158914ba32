"""Reading a fault's figures off a lab: the registry (connected, current), the agents' files,
the settings, and the children's logs and exit codes."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import benchlib

from common.configstore import ConfigStore
from common.errors import PropertiesError
from common.properties import AgentProperties
from common.records import HostState, load_hosts, load_servers
from msctl.children import LoggedProcess
from msctl.convergence import Convergence
from msctl.lab import Lab

POLL = 0.25


@dataclass(frozen=True)
class FleetState:
    registered: int
    connected: int
    behind: int  # connected hosts that do not hold the list they should

    def served(self, agents: int) -> bool:
        """Every agent connected and holding its list."""
        return self.connected == agents and self.behind == 0


async def fleet_state(lab: Lab) -> FleetState:
    async with lab.connected() as client:
        snapshot = await ConfigStore(client, lab.keys).snapshot()
        hosts = await load_hosts(client, lab.keys)
        servers = await load_servers(client, lab.keys)
    state = Convergence.of_fleet(snapshot, hosts, servers)
    connected = sum(h.state == HostState.CONNECTED for h in hosts)
    return FleetState(len(hosts), connected, len(state.behind))


async def sessions(lab: Lab) -> dict[str, str]:
    """guid -> session token of every connected host (a token changes only when its agent
    starts a new session)."""
    async with lab.connected() as client:
        hosts = await load_hosts(client, lab.keys)
    return {h.guid: h.session for h in hosts if h.state == HostState.CONNECTED}


async def served_by(lab: Lab, server_id: str) -> int:
    """How many connected hosts the registry has on `server_id`."""
    async with lab.connected() as client:
        hosts = await load_hosts(client, lab.keys)
    return sum(h.state == HostState.CONNECTED and h.server == server_id for h in hosts)


def sessions_changed(before: Mapping[str, str], after: Mapping[str, str]) -> int:
    """Hosts connected `before` that are not connected on the same session `after`."""
    return sum(after.get(guid) != token for guid, token in before.items())


async def settings_versions(lab: Lab) -> dict[str, int]:
    """Server id -> the settings version it applies, for every running server."""
    async with lab.connected() as client:
        servers = await load_servers(client, lab.keys)
    return {s.id: s.settings_version for s in servers if s.alive}


LOST_SERVER = re.compile(r"lost server .*?(?:\((\d+) agents\))?$")


def swarm_lost(swarm: LoggedProcess | None) -> int:
    """Agents the swarm reported losing their server (a large swarm's summary lines say how
    many: "(N agents)"; a small one's lines are one agent each)."""
    if swarm is None:
        return 0
    found = (LOST_SERVER.search(line) for line in list(swarm.lines))
    return sum(int(m.group(1) or 1) for m in found if m is not None)


SWARM_SUMMARY = re.compile(r"swarm: (\d+)/(\d+) agents connected")


def swarm_connected(swarm: LoggedProcess | None) -> int | None:
    """How many agents the swarm's last summary line says are connected (the agents' own
    view, beside the registry's): None before its first summary."""
    for line in reversed(list(swarm.lines) if swarm is not None else []):
        found = SWARM_SUMMARY.search(line)
        if found is not None:
            return int(found.group(1))
    return None


async def wait_served(
    lab: Lab, agents: int, limit: float, *, swarm_too: bool = False
) -> tuple[float | None, FleetState]:
    """Poll until every agent is connected and current: (seconds it took, or None when `limit`
    passed first; the last state seen). With `swarm_too`, the lab swarm's own last summary
    must also say every agent is connected (the registry can lag a server's death)."""
    started = time.monotonic()
    while True:
        state = await fleet_state(lab)
        if state.served(agents) and (not swarm_too or swarm_connected(lab.swarm) == agents):
            return time.monotonic() - started, state
        if time.monotonic() - started > limit:
            return None, state
        await asyncio.sleep(POLL)


async def wait_settled(lab: Lab, agents: int, limit: float) -> float | None:
    """Until every agent is served and on its list's first entry (a lab's start moves agents
    to it, paced): the seconds it took, None when `limit` passed first."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        if (await fleet_state(lab)).served(agents):
            views = await benchlib.lab_views(lab)
            if benchlib.on_first_entry(lab, views) == agents:
                return round(time.monotonic() - started, 2)
        await asyncio.sleep(POLL)
    return None


async def wait_acked(lab: Lab, agents: int, version: int, limit: float) -> float | None:
    """Until every agent is connected and has acknowledged a list of settings `version` or
    later: the seconds it took, None when `limit` passed first."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        async with lab.connected() as client:
            hosts = await load_hosts(client, lab.keys)
        there = [h for h in hosts if h.state == HostState.CONNECTED and h.acked_version >= version]
        if len(there) == agents:
            return round(time.monotonic() - started, 2)
        await asyncio.sleep(POLL)
    return None


async def settings_lost(lab: Lab, expected: Mapping[str, str]) -> int:
    """How many of `expected` (name -> value as set) Redis no longer holds as set."""
    async with lab.connected() as client:
        store = ConfigStore(client, lab.keys)
        lost = 0
        for name, value in expected.items():
            entry = await store.get(name)
            lost += entry.value != value
    return lost


def tracebacks(children: Iterable[LoggedProcess | None]) -> int:
    """Lines that start a Python traceback in the children's logs."""
    return sum(
        sum("Traceback (most recent call last)" in line for line in child.lines)
        for child in children
        if child is not None
    )


def traceback_texts(children: Iterable[LoggedProcess | None], limit: int = 3) -> list[str]:
    """The first `limit` tracebacks in the children's logs, each with the line before it (what
    logged it) and up to its exception's line, so a run's report shows what went wrong."""
    texts: list[str] = []
    for child in children:
        lines = list(child.lines) if child is not None else []
        for at, line in enumerate(lines):
            if "Traceback (most recent call last)" not in line or len(texts) >= limit:
                continue
            end = at + 1
            while end < len(lines) and lines[end][:1] in (" ", "\t"):
                end += 1
            assert child is not None
            texts.append("\n".join([f"[{child.name}]", *lines[max(at - 1, 0) : end + 1]]))
    return texts


def crashed(children: Iterable[LoggedProcess | None], killed: set[str]) -> int:
    """Children that have ended although nobody stopped them (`killed`: the names the scenario
    killed itself and did not start again)."""
    return sum(
        1
        for child in children
        if child is not None
        and child.process is not None
        and child.process.returncode is not None
        and child.name not in killed
    )


async def held_lists(lab: Lab) -> dict[str, str]:
    """guid -> the list (CSV) the registry says each host holds (for files_disagreeing)."""
    async with lab.connected() as client:
        hosts = await load_hosts(client, lab.keys)
    return {h.guid: ",".join(h.ms_list) for h in hosts}


def files_disagreeing(agents_dir: Path, lists_by_guid: Mapping[str, str]) -> int:
    """agent.properties files that do not parse, or whose `host=` list (before `@`) is not the
    one the registry says their agent holds (`agentd swarm`'s agent-NNNN/agent.properties)."""
    wrong = 0
    for path in sorted(agents_dir.glob("agent-*/agent.properties")):
        try:
            props = AgentProperties.load(path)
        except PropertiesError:
            wrong += 1
            continue
        held = lists_by_guid.get(props.get("guid") or "")
        if held is not None and (props.get("host") or "").partition("@")[0] != held:
            wrong += 1
    return wrong


def open_fds(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


@dataclass
class ProcessWatch:
    """A child's RSS and open descriptors every `every` seconds, while `run` runs (a task)."""

    pid: int
    every: float = 0.5
    rss: list[tuple[float, int]] = field(default_factory=list)  # (monotonic, bytes)
    fds: list[tuple[float, int]] = field(default_factory=list)

    async def run(self) -> None:
        while True:
            now = time.monotonic()
            try:
                self.rss.append((now, benchlib.proc_sample(self.pid).rss_bytes))
                self.fds.append((now, open_fds(self.pid)))
            except OSError:  # the process is gone
                return
            await asyncio.sleep(self.every)

    def peak(self, since: float = 0.0) -> int:
        return max((v for t, v in self.rss if t >= since), default=0)
