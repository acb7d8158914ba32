"""kill-rounds: 3 servers under N agents (roundrobin, check interval 10 s, so agents also fail
back while servers die); every 5 s a random server is SIGKILLed and started again at once, 10
rounds. Then the fleet is given a bounded time to be whole: every agent connected and holding
its list, in the registry and in its agent.properties.

Figures: per round, the victim, how many agents it held, and how long its restart took to listen;
agents the swarm reported losing their server; at the end agents disconnected, holding a wrong
list (the registry's lag plus files that disagree with it), settings lost, crashes (a server
found not running before a round, or any child ended at the end), tracebacks in every log
(including the logs of the killed runs: a restart starts a child's lines afresh), and the time
from the last restart until the fleet was whole (`recover_s`).
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import benchlib
from benchtls import BenchLab

from faultkit import fleet
from faultkit.report import FaultReport

DEFAULT_AGENTS = 3000
ROUNDS = 10
PERIOD = 5.0  # seconds from one kill to the next
CHECK_INTERVAL = "10"
RECOVER_LIMIT = 120.0  # seconds after the last restart for the fleet to be whole
TARGET = (
    f"after {ROUNDS} kills {PERIOD:g} s apart: all connected and current within "
    f"{RECOVER_LIMIT:g} s, 0 crashes, 0 tracebacks"
)
SEED = 16


async def run(agents: int, workdir: Path) -> FaultReport:
    report = FaultReport("kill-rounds", agents, TARGET)
    lab = BenchLab(workdir / "lab", servers=3, agents=agents, namespace="faults", port=0)
    try:
        await lab.start(algorithm="roundrobin", check_interval=CHECK_INTERVAL)
        report.extra["settled_before_s"] = await fleet.wait_settled(lab, agents, RECOVER_LIMIT)
        expected = {
            "host": ",".join(lab.addresses),
            "indirect.agent.lb.algorithm": "roundrobin",
            "indirect.agent.lb.check.interval": CHECK_INTERVAL,
        }
        earlier_tracebacks, rounds, last_restart = await _rounds(lab, report)
        report.extra["rounds"] = rounds
        limit = RECOVER_LIMIT - (time.monotonic() - last_restart)
        recover, state = await fleet.wait_served(lab, agents, limit, swarm_too=True)
        if recover is not None:
            report.recover_s = round(time.monotonic() - last_restart, 2)
        children = [*(m.child for m in lab.members), lab.swarm]
        report.disconnected = agents - state.connected
        held = await fleet.held_lists(lab)
        report.wrong_list = state.behind + fleet.files_disagreeing(lab.directory / "agents", held)
        report.settings_lost = await fleet.settings_lost(lab, expected)
        report.crashes += fleet.crashed(children, killed=set())
        report.tracebacks = earlier_tracebacks + fleet.tracebacks(children)
        report.extra["swarm_lost_server"] = fleet.swarm_lost(lab.swarm)
        report.extra["swarm_connected"] = fleet.swarm_connected(lab.swarm)
        report.extra["on_first_entry"] = benchlib.on_first_entry(lab, await benchlib.lab_views(lab))
        report.met = (
            report.recover_s is not None
            and report.disconnected == 0
            and report.wrong_list == 0
            and report.settings_lost == 0
            and report.crashes == 0
            and report.tracebacks == 0
        )
    finally:
        await lab.stop()
    return report


async def _rounds(lab: BenchLab, report: FaultReport) -> tuple[int, list[dict[str, object]], float]:
    """Kill a random server and start it again, every PERIOD seconds. Returns the tracebacks
    the killed runs logged, each round's figures, and when the last restart was done."""
    rng = random.Random(SEED)
    tracebacks = 0
    rounds: list[dict[str, object]] = []
    restarted = time.monotonic()
    for number in range(1, ROUNDS + 1):
        began = time.monotonic()
        for member in lab.members:  # a server that died by itself: a crash; start it again
            if not member.running:
                report.crashes += 1
                tracebacks += fleet.tracebacks([member.child])
                await lab.start_server(member.server_id)
        victim = rng.choice(lab.members)
        held = await fleet.served_by(lab, victim.server_id)
        await lab.kill_server(victim.server_id)
        tracebacks += fleet.tracebacks([victim.child])
        killed = time.monotonic()
        await lab.start_server(victim.server_id)
        restarted = time.monotonic()
        rounds.append(
            {
                "round": number,
                "victim": victim.server_id,
                "held": held,
                "restart_s": round(restarted - killed, 2),
            }
        )
        if number < ROUNDS:
            await asyncio.sleep(max(0.0, PERIOD - (time.monotonic() - began)))
    return tracebacks, rounds, restarted
