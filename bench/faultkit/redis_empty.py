"""redis-empty: under N agents (3 servers, roundrobin), the lab's redis-server is SIGKILLed,
kept down 20 s, its data deleted, and started again empty. The servers keep the settings they
applied (msrv.resync: an emptied Redis never wipes agents' lists) and say so; `msctl status`
tells the operator to set the settings again, which the operator does with `msctl config set`,
in the order they were first set.

Figures: what the servers logged about it (msrv.resync's lines) and what `msctl status` said;
whether every agent stayed connected and kept its list while Redis was empty; from the first
`config set` until the fleet is whole again (every server applies Redis's new settings version,
every agent connected and current, by the registry and by the swarm's own count); sessions lost
(the swarm's "lost server" lines; the registry's session tokens before and after, which also
change when an agent moves, make-before-break, to another server); settings lost (as set
again). Target: 0 sessions lost, every server agrees, every agent current.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from faultkit import fleet
from faultkit.redis_outage import (
    DOWN_S,
    NAMESPACE,
    SERVED_LIMIT,
    PersistentLab,
    agreement,
    msctl,
    outage,
    server_lines,
    stored,
)
from faultkit.report import FaultReport

DEFAULT_AGENTS = 1000
TARGET = (
    f"Redis SIGKILLed, down {DOWN_S:g} s, back empty, the operator sets the settings again: "
    "0 sessions lost, every server on Redis's new settings version, every agent current"
)


async def run(agents: int, workdir: Path) -> FaultReport:
    report = FaultReport("redis-empty", agents, TARGET)
    lab = PersistentLab(workdir / "lab", servers=3, agents=agents, namespace=NAMESPACE, port=0)
    try:
        await lab.start(algorithm="roundrobin")
        report.extra["settled_before_s"] = await fleet.wait_settled(lab, agents, SERVED_LIMIT)
        expected = await stored(lab)  # host, then algorithm: the order the lab set them
        before = await fleet.sessions(lab)
        lost_before = fleet.swarm_lost(lab.swarm)

        figures = await outage(lab, empty=True)
        report.extra.update((k, v) for k, v in figures.items() if k != "restarted_at")
        report.extra["servers_logged"] = server_lines(lab, r"msrv\.resync: .*(?:version|back)")
        while_empty = await fleet.fleet_state(lab)
        report.extra["while_empty"] = {
            "connected": while_empty.connected,
            "behind": while_empty.behind,
            "sessions_changed": fleet.sessions_changed(before, await fleet.sessions(lab)),
        }
        _, status = await msctl(lab, "status")
        report.extra["status_says"] = [line for line in status.splitlines() if "Redis" in line]

        set_at = time.monotonic()
        for name, value in expected.items():
            code, output = await msctl(lab, "config", "set", name, value)
            if code != 0:
                report.extra.setdefault("config_set_failed", []).append(output.strip())
        report.recover_s = await _whole(lab, agents, set_at)
        version, versions = await agreement(lab)
        report.extra["redis_settings_version"] = version
        report.extra["servers_settings_version"] = versions
        report.extra["sessions_changed"] = fleet.sessions_changed(before, await fleet.sessions(lab))
        report.extra["swarm_lost_server"] = fleet.swarm_lost(lab.swarm) - lost_before
        report.settings_lost = await fleet.settings_lost(lab, expected)
        _, status = await msctl(lab, "status")
        report.extra["status_after"] = [
            line for line in status.splitlines() if "Redis" in line or "converged" in line
        ]

        state = await fleet.fleet_state(lab)
        report.disconnected = agents - state.connected
        held = await fleet.held_lists(lab)
        report.wrong_list = state.behind + fleet.files_disagreeing(lab.directory / "agents", held)
        children = [*(m.child for m in lab.members), lab.swarm]
        report.crashes = fleet.crashed(children, killed=set())
        report.tracebacks = fleet.tracebacks(children)
        report.met = (
            report.recover_s is not None
            and report.extra["swarm_lost_server"] == 0
            and set(versions.values()) == {version}
            and len(versions) == len(lab.members)
            and report.disconnected == report.wrong_list == report.settings_lost == 0
            and report.crashes == report.tracebacks == 0
        )
    finally:
        await lab.stop()
    return report


async def _whole(lab: PersistentLab, agents: int, since: float) -> float | None:
    """Seconds from `since` until every server applies Redis's settings version and every
    agent is connected and current (registry and swarm); None past the limit."""
    while time.monotonic() - since < SERVED_LIMIT:
        version, versions = await agreement(lab)
        agreed = len(versions) == len(lab.members) and set(versions.values()) == {version}
        if agreed:
            left = SERVED_LIMIT - (time.monotonic() - since)
            served, _ = await fleet.wait_served(lab, agents, left, swarm_too=True)
            if served is not None and (await agreement(lab))[1] == versions:
                return round(time.monotonic() - since, 2)
        await asyncio.sleep(fleet.POLL)
    return None
