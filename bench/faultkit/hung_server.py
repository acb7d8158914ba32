"""`hung-server`: the server holding a third of the agents is SIGSTOPped for 40 s, then
SIGCONTed; the same again with the agents behind HAProxy (faultkit.silence has the run and
its figures).

A stopped process sends no reset: its kernel still holds its connections and completes new
handshakes into its accept queue (4,096 deep), so a TCP health check still passes. Our agents
notice the silence of their sessions (ping.interval 5 s x ping.timeout 3) and fail over through
their lists; behind HAProxy, they dial HAProxy again, which may send them back to the stopped
server. After SIGCONT the resumed server finds its sessions dead or superseded and drops them.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import haproxy
from benchtls import BenchLab

from faultkit.report import FaultReport
from faultkit.silence import HOLD, SILENCE_LIMIT, VICTIM, SideBySide
from msctl.lab import Lab

DEFAULT_AGENTS = 1000
WITHIN = SILENCE_LIMIT + 10.0
TARGET = (
    f"ours: every agent served again within {WITHIN:.0f} s of the SIGSTOP (ping 5 s x 3), "
    f"no duplicate session and the registry right after SIGCONT ({HOLD:.0f} s), 0 crashes"
)


@dataclass
class Stop:
    """SIGSTOP the victim server; SIGCONT it."""

    lab: Lab

    def begin(self) -> None:
        os.kill(self.lab.member(VICTIM).child.pid, signal.SIGSTOP)

    def end(self) -> None:
        os.kill(self.lab.member(VICTIM).child.pid, signal.SIGCONT)


async def run(agents: int, workdir: Path) -> FaultReport:
    lab = BenchLab(
        workdir / "lab", servers=3, agents=agents, namespace="faults", port=0,
        tls_san=(haproxy.HOST,),
    )  # fmt: skip
    side_by_side = SideBySide("hung-server", TARGET, lab, agents, workdir, Stop(lab), WITHIN)
    try:
        return await side_by_side.run()
    finally:
        await lab.stop()
