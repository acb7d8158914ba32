"""redis-restart: under N agents (3 servers, roundrobin, check interval 10 s), the lab's
redis-server, which keeps an AOF fsync'd at every write, is SIGKILLed, kept down 20 s (longer
than the agents' silence limit of 15 s) and started again with its data.

Figures: from the kill until every server logged Redis unreachable; from the restart until every
server logged it was back (resynchronised); sessions lost (the swarm's "lost server" lines, and
the registry's session tokens before and after: 0 changed means no agent reconnected); the
settings version in Redis beside the one each server applies; settings lost; then a change (the
check interval) made after the restart and the time until every agent acknowledged it. Target:
0 sessions lost, every server on Redis's version, every agent current, 0 settings lost.
"""

from __future__ import annotations

import time
from pathlib import Path

from faultkit import fleet
from faultkit.redis_outage import (
    CHECK_INTERVAL,
    DOWN_S,
    NAMESPACE,
    RESYNC_LIMIT,
    SERVED_LIMIT,
    PersistentLab,
    agreed,
    outage,
    server_lines,
    stored,
    wait_agreed,
)
from faultkit.report import FaultReport

DEFAULT_AGENTS = 1000
TARGET = (
    f"Redis (AOF, appendfsync always) SIGKILLed, down {DOWN_S:g} s, back with its data: 0 "
    "sessions lost, every server on Redis's settings version, every agent current, 0 settings lost"
)


async def run(agents: int, workdir: Path) -> FaultReport:
    report = FaultReport("redis-restart", agents, TARGET)
    lab = PersistentLab(workdir / "lab", servers=3, agents=agents, namespace=NAMESPACE, port=0)
    try:
        await lab.start(algorithm="roundrobin", check_interval=CHECK_INTERVAL)
        report.extra["settled_before_s"] = await fleet.wait_settled(lab, agents, SERVED_LIMIT)
        expected = await stored(lab)
        before = await fleet.sessions(lab)
        lost_before = fleet.swarm_lost(lab.swarm)

        figures = await outage(lab, empty=False)
        restarted = figures.pop("restarted_at")
        report.extra.update(figures)
        recover, _ = await fleet.wait_served(lab, agents, SERVED_LIMIT, swarm_too=True)
        if recover is not None:
            report.recover_s = round(time.monotonic() - restarted, 2)
        version, versions = await wait_agreed(lab, RESYNC_LIMIT)
        report.extra["redis_settings_version"] = version
        report.extra["servers_settings_version"] = versions
        report.extra["sessions_changed"] = fleet.sessions_changed(before, await fleet.sessions(lab))
        report.extra["swarm_lost_server"] = fleet.swarm_lost(lab.swarm) - lost_before
        report.settings_lost = await fleet.settings_lost(lab, expected)
        report.extra["servers_logged"] = server_lines(lab, r"msrv\.resync: ")

        # the changes flow again: one made after the restart reaches every agent
        change = await lab.configure(check_interval="30")
        report.extra["change_after_acked_s"] = await fleet.wait_acked(
            lab, agents, change, SERVED_LIMIT
        )
        _, state = await fleet.wait_served(lab, agents, SERVED_LIMIT, swarm_too=True)
        report.disconnected = agents - state.connected
        held = await fleet.held_lists(lab)
        report.wrong_list = state.behind + fleet.files_disagreeing(lab.directory / "agents", held)
        children = [*(m.child for m in lab.members), lab.swarm]
        report.crashes = fleet.crashed(children, killed=set())
        report.tracebacks = fleet.tracebacks(children)
        report.met = (
            report.recover_s is not None
            and report.extra["sessions_changed"] == 0
            and report.extra["swarm_lost_server"] == 0
            and agreed(lab, version, versions)
            and report.extra["change_after_acked_s"] is not None
            and report.disconnected == report.wrong_list == report.settings_lost == 0
            and report.crashes == report.tracebacks == 0
        )
    finally:
        await lab.stop()
    return report
