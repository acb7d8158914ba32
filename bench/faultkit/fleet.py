"""Reading a fault's figures off a lab: the registry (connected, current), the agents' files,
the settings, and the children's logs and exit codes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

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


async def wait_served(lab: Lab, agents: int, limit: float) -> tuple[float | None, FleetState]:
    """Poll until every agent is connected and current: (seconds it took, or None when `limit`
    passed first; the last state seen)."""
    started = time.monotonic()
    while True:
        state = await fleet_state(lab)
        if state.served(agents):
            return time.monotonic() - started, state
        if time.monotonic() - started > limit:
            return None, state
        await asyncio.sleep(POLL)


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
