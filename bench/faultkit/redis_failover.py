"""redis-failover: under N agents (3 servers, roundrobin, check interval 10 s), the lab's Redis is
highly available (msctl.redis_ha, `msctl lab up --redis-ha`: a master, 2 replicas, 3 sentinels,
quorum 2) and every process reaches it through its `redis+sentinel://` URL. A setting is changed
with `msctl config set` (which returns 0 only once a replica has it), then the master is
SIGKILLed.

Figures, from the kill: the first startup a server accepted (a probe offers one to the servers
in turn, every 50 ms, each refused as retryable while Redis is away); every server resubscribed
(its "Redis is back" line); a change made with `msctl config set` once the probe got in,
acknowledged by every agent (from the kill and from the set); sessions lost (the swarm's "lost
server" lines; the registry's session tokens before and after); settings lost (the one changed
just before the kill among them); the sentinels' down-after-milliseconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from benchtls import BenchLab

from faultkit import fleet
from faultkit.redis_outage import (
    CHECK_INTERVAL,
    RESYNC_LIMIT,
    SERVED_LIMIT,
    agreed,
    agreement,
    first_accepted_startup,
    msctl,
    stored,
    wait_agreed,
)
from faultkit.report import FaultReport
from msctl.redis_ha import DOWN_AFTER_MS

DEFAULT_AGENTS = 3000
NAMESPACE = "faults"
BACK = "Redis is back"
ACKED_BEFORE = ("ca.framework.cert.validity.period", "200")  # set just before the kill
CHANGE_AFTER = ("indirect.agent.lb.check.interval", "30")
TARGET = (
    f"master SIGKILLed (sentinels: down-after {DOWN_AFTER_MS} ms, quorum 2): 0 sessions lost, "
    "0 settings lost, a change after it acknowledged by every agent"
)


async def run(agents: int, workdir: Path) -> FaultReport:
    report = FaultReport("redis-failover", agents, TARGET)
    lab = BenchLab(
        workdir / "lab", servers=3, agents=agents, namespace=NAMESPACE, port=0, redis_ha=True
    )
    try:
        await lab.start(algorithm="roundrobin", check_interval=CHECK_INTERVAL)
        report.extra["down_after_ms"] = DOWN_AFTER_MS
        report.extra["settled_before_s"] = await fleet.wait_settled(lab, agents, SERVED_LIMIT)
        code, output = await msctl(lab, "config", "set", *ACKED_BEFORE)
        report.extra["acknowledged_before"] = output.strip() if code == 0 else f"FAILED: {output}"
        expected = await stored(lab)
        tls = (await lab.identities()).client(guid := f"probe-{uuid.uuid4().hex[:8]}")
        before = await fleet.sessions(lab)
        lost_before = fleet.swarm_lost(lab.swarm)
        back = [m.child.count(BACK) + 1 for m in lab.members]

        report.extra["killed"] = await lab.kill_redis()
        killed = time.monotonic()
        accepted = await first_accepted_startup(lab.addresses, tls, guid)
        report.extra["first_startup_accepted_s"] = round(accepted - killed, 2)
        await asyncio.gather(
            *(
                m.child.wait_for(BACK, RESYNC_LIMIT, count=n)
                for m, n in zip(lab.members, back, strict=True)
            )
        )
        report.extra["every_server_resynced_s"] = round(time.monotonic() - killed, 2)

        set_at = time.monotonic()
        code, output = await msctl(lab, "config", "set", *CHANGE_AFTER)
        report.extra["change_after"] = output.strip() if code == 0 else f"FAILED: {output}"
        expected[CHANGE_AFTER[0]] = CHANGE_AFTER[1]  # the others as before the kill
        version, _ = await agreement(lab)
        acked = await fleet.wait_acked(lab, agents, version, SERVED_LIMIT)
        if acked is not None:
            report.extra["change_acked_by_all_s"] = round(time.monotonic() - killed, 2)
            report.extra["change_acked_after_set_s"] = round(time.monotonic() - set_at, 2)
        recover, state = await fleet.wait_served(lab, agents, SERVED_LIMIT, swarm_too=True)
        if recover is not None:
            report.recover_s = round(time.monotonic() - killed, 2)

        version, versions = await wait_agreed(lab, RESYNC_LIMIT)
        report.extra["redis_settings_version"] = version
        report.extra["servers_settings_version"] = versions
        report.extra["sessions_changed"] = fleet.sessions_changed(before, await fleet.sessions(lab))
        report.extra["swarm_lost_server"] = fleet.swarm_lost(lab.swarm) - lost_before
        report.settings_lost = await fleet.settings_lost(lab, expected)
        report.disconnected = agents - state.connected
        held = await fleet.held_lists(lab)
        report.wrong_list = state.behind + fleet.files_disagreeing(lab.directory / "agents", held)
        children = [*(m.child for m in lab.members), lab.swarm]
        report.crashes = fleet.crashed(children, killed=set())
        report.tracebacks = fleet.tracebacks(children)
        report.met = (
            acked is not None
            and report.recover_s is not None
            and report.extra["sessions_changed"] == report.extra["swarm_lost_server"] == 0
            and agreed(lab, version, versions)
            and report.disconnected == report.wrong_list == report.settings_lost == 0
            and report.crashes == report.tracebacks == 0
        )
    finally:
        await lab.stop()
    return report
