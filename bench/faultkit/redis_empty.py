"""redis-empty: under N agents (3 servers, roundrobin, check interval 10 s), the lab's redis-server
is SIGKILLed, kept down 20 s, its data deleted, and started again empty. The servers keep the
settings they applied (msrv.resync: an emptied Redis never wipes agents' lists) and say so;
`msctl status` tells the operator to set the settings again, which the operator does with `msctl
config set`, one command every 5 s (a person typing). Twice, in one lab: first in the order they
were first set (`host` first), then as `msctl status` says (`host` last).

Figures, for each: what `msctl status` said; whether every agent stayed connected and kept its
list while Redis was empty; from the first `config set` until the fleet is whole again (every
server applies Redis's new settings version, every agent connected and current, by the registry
and by the swarm's own count); sessions lost (the swarm's "lost server" lines) and sessions
changed (the registry's session tokens before and after: an agent moved, make-before-break, to
another server); settings lost (as set again). What the servers logged. Then whether Redis
holds the CA of before, and whether a server restarted after (SIGTERM, start) takes an agent
certificate of it. Target (`met`): 0 sessions lost, every server agrees, every agent current,
as status says no agent moved, and the CA kept.
"""

from __future__ import annotations

import asyncio
import re
import signal
import ssl
import time
import uuid
from pathlib import Path
from typing import Any

from common.ca import load_ca
from faultkit import fleet
from faultkit.redis_outage import (
    CHECK_INTERVAL,
    DOWN_S,
    NAMESPACE,
    SERVED_LIMIT,
    PersistentLab,
    agreed,
    agreement,
    first_accepted_startup,
    msctl,
    outage,
    server_lines,
    stored,
)
from faultkit.report import FaultReport

DEFAULT_AGENTS = 1000
OPERATOR_PAUSE = 5.0  # seconds between two `msctl config set`
PROBE_LIMIT = 15.0  # seconds for a restarted server to take an agent's certificate
TARGET = (
    f"Redis SIGKILLed, down {DOWN_S:g} s, back empty, the operator sets the settings again "
    "(host last, as msctl status says): 0 sessions lost, every server on Redis's new settings "
    "version, every agent current, no agent moved, the CA kept (a server restarted after "
    "takes the agents' certificates)"
)


async def run(agents: int, workdir: Path) -> FaultReport:
    report = FaultReport("redis-empty", agents, TARGET)
    lab = PersistentLab(workdir / "lab", servers=3, agents=agents, namespace=NAMESPACE, port=0)
    try:
        await lab.start(algorithm="roundrobin", check_interval=CHECK_INTERVAL)
        report.extra["settled_before_s"] = await fleet.wait_settled(lab, agents, SERVED_LIMIT)
        expected = await stored(lab)  # host, then algorithm: the order the lab set them
        ca = (await lab.identities()).ca
        probe = f"probe-{uuid.uuid4().hex[:8]}"
        tls = (await lab.identities()).client(probe)
        host_last = {k: v for k, v in expected.items() if k != "host"} | {"host": expected["host"]}
        first = await _phase(lab, agents, expected)
        report.extra["host_first"] = first
        report.extra["resettled_s"] = await fleet.wait_settled(lab, agents, SERVED_LIMIT)
        last = await _phase(lab, agents, host_last)
        report.extra["host_last"] = last
        report.recover_s = last["whole_s"]
        logged = server_lines(lab, r"msrv\.(?:resync: .*(?:version|back)|trust: .*CA)")
        report.extra["servers_logged"] = list(
            dict.fromkeys(re.sub(r"ms\d+|\d+ sessions", "N", x) for x in logged)
        )
        report.settings_lost = await fleet.settings_lost(lab, expected)
        state = await fleet.fleet_state(lab)
        report.disconnected = agents - state.connected
        held = await fleet.held_lists(lab)
        report.wrong_list = state.behind + fleet.files_disagreeing(lab.directory / "agents", held)
        children = [*(m.child for m in lab.members), lab.swarm]
        report.crashes = fleet.crashed(children, killed=set())
        report.tracebacks = fleet.tracebacks(children)  # before a restart starts a log afresh

        report.extra["after"] = after = await _restarted_server(lab, ca.fingerprint, tls, probe)
        report.tracebacks += fleet.tracebacks([lab.members[0].child])
        report.met = (
            all(p["whole_s"] is not None and p["agreed"] for p in (first, last))
            and first["swarm_lost_server"] == last["swarm_lost_server"] == 0
            and last["sessions_changed"] == 0
            and after["ca_kept"]
            and after["restarted_server_accepts_s"] is not None
            and report.disconnected == report.wrong_list == report.settings_lost == 0
            and report.crashes == report.tracebacks == 0
        )
    finally:
        await lab.stop()
    return report


async def _phase(lab: PersistentLab, agents: int, settings: dict[str, str]) -> dict[str, Any]:
    """One outage that empties Redis, then the operator sets `settings` in their order."""
    before = await fleet.sessions(lab)
    lost_before = fleet.swarm_lost(lab.swarm)
    figures = await outage(lab, empty=True)
    figures.pop("restarted_at")
    while_empty = await fleet.fleet_state(lab)
    figures["while_empty"] = {
        "connected": while_empty.connected,
        "behind": while_empty.behind,
        "sessions_changed": fleet.sessions_changed(before, await fleet.sessions(lab)),
    }
    _, status = await msctl(lab, "status")
    figures["status_says"] = [line for line in status.splitlines() if "Redis" in line]

    figures["order"] = list(settings)
    set_at = time.monotonic()
    for number, (name, value) in enumerate(settings.items()):
        if number:
            await asyncio.sleep(OPERATOR_PAUSE)
        code, output = await msctl(lab, "config", "set", name, value)
        if code != 0:
            figures.setdefault("config_set_failed", []).append(output.strip())
    last_set = time.monotonic()
    whole = await _whole(lab, agents, set_at)
    figures["whole_s"] = whole
    figures["whole_after_last_set_s"] = (
        None if whole is None else round(whole - (last_set - set_at), 2)
    )
    version, versions = await agreement(lab)
    figures["redis_settings_version"] = version
    figures["servers_settings_version"] = versions
    figures["agreed"] = agreed(lab, version, versions)
    figures["sessions_changed"] = fleet.sessions_changed(before, await fleet.sessions(lab))
    figures["swarm_lost_server"] = fleet.swarm_lost(lab.swarm) - lost_before
    _, status = await msctl(lab, "status")
    figures["status_after"] = [
        line.strip() for line in status.splitlines() if "Redis" in line or "converged" in line
    ]
    return figures


async def _restarted_server(
    lab: PersistentLab, fingerprint: str, tls: ssl.SSLContext, probe: str
) -> dict[str, Any]:
    """After the outages: whether Redis holds the CA of before, and whether a server restarted
    now (SIGTERM, start) takes an agent certificate of that CA (seconds from its start until
    it accepted a probe's startup; None: it did not within PROBE_LIMIT)."""
    async with lab.connected() as client:
        now = await load_ca(client, lab.keys)
    victim = lab.members[0]
    await lab.kill_server(victim.server_id, signal.SIGTERM)
    started = time.monotonic()
    await lab.start_server(victim.server_id)
    try:
        accepted: float | None = await first_accepted_startup(
            [victim.listen], tls, probe, PROBE_LIMIT
        )
    except TimeoutError:
        accepted = None
    return {
        "ca_kept": now is not None and now.fingerprint == fingerprint,
        "restarted": victim.server_id,
        "restarted_server_accepts_s": None if accepted is None else round(accepted - started, 2),
    }


async def _whole(lab: PersistentLab, agents: int, since: float) -> float | None:
    """Seconds from `since` until every server applies Redis's settings version and every
    agent is connected and current (registry and swarm); None past the limit."""
    while time.monotonic() - since < SERVED_LIMIT:
        version, versions = await agreement(lab)
        if agreed(lab, version, versions):
            left = SERVED_LIMIT - (time.monotonic() - since)
            served, _ = await fleet.wait_served(lab, agents, left, swarm_too=True)
            if served is not None and (await agreement(lab))[1] == versions:
                return round(time.monotonic() - since, 2)
        await asyncio.sleep(fleet.POLL)
    return None
