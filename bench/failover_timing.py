"""A failover read off the registry: poll it every 100 ms until a condition holds; SIGKILL a
server and time until every agent that was on it is registered on another server.

A host's last_seen is stamped by the server when the session starts (the failover bench sets
ping.interval to 60 s, so nothing else moves it during a phase): a move's time is that stamp
minus the kill. The poll that saw the end is reported too. The kill waits until the swarm and
the servers are idle (`quiescent`), so that no move or handshake of before is still running.
"""

from __future__ import annotations

import asyncio
import collections
import signal
import time
from collections.abc import Callable

import benchlib
from benchlib import HostView, lab_views, on_first_entry

from msctl.lab import Lab

POLL = 0.1
WAIT = 60.0  # seconds for one failover

Condition = Callable[[list[HostView]], bool]


async def poll_until(
    lab: Lab, done: Condition, limit: float, what: str
) -> tuple[float, list[HostView]]:
    """Poll the registry every 100 ms until `done`; returns (time.time of that poll, views)."""
    deadline = time.monotonic() + limit
    while True:
        started = time.monotonic()
        views = await lab_views(lab)
        if done(views):
            return time.time(), views
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {limit:g}s")
        await asyncio.sleep(max(0.0, POLL - (time.monotonic() - started)))


async def quiescent(lab: Lab, limit: float = 60.0, busy: float = 0.1) -> float:
    """Until the swarm and every running server used less than `busy` of a core over one
    second (a lab whose registry looks settled can still be closing the old sessions of its
    agents' moves, or finishing handshakes); returns the seconds waited."""
    started = time.monotonic()
    pids = [m.child.pid for m in lab.members if m.running]
    if lab.swarm is not None:
        pids.append(lab.swarm.pid)
    while time.monotonic() - started < limit:
        first = [benchlib.proc_sample(p) for p in pids]
        await asyncio.sleep(1.0)
        last = [benchlib.proc_sample(p) for p in pids]
        if all(benchlib.cpu_share(a, b) < busy for a, b in zip(first, last, strict=True)):
            break
    return round(time.monotonic() - started, 1)


def settled(lab: Lab, count: int) -> Condition:
    """Every host connected, on its list's first entry."""
    return lambda views: on_first_entry(lab, views) == count


def moved(victims: set[int], away_from: str | None, to: str | None) -> Condition:
    """Every victim connected, elsewhere than `away_from` (or on `to`)."""

    def check(views: list[HostView]) -> bool:
        ok = [
            v
            for v in views
            if v.id in victims
            and v.state == "connected"
            and (away_from is None or v.server != away_from)
            and (to is None or v.server == to)
        ]
        return len(ok) == len(victims)

    return check


async def failover_of(lab: Lab, server_id: str) -> tuple[dict[str, object], set[int]]:
    """Once the lab is quiet, SIGKILL `server_id`; time until its agents (the hosts connected
    to it then) are registered elsewhere. Returns the figures and those hosts' ids."""
    waited = await quiescent(lab)
    views = await lab_views(lab)
    victims = {v.id for v in views if v.server == server_id and v.state == "connected"}
    watched = {
        m.server_id: m.child.pid for m in lab.members if m.running and m.server_id != server_id
    }
    if lab.swarm is not None:
        watched["swarm"] = lab.swarm.pid
    before = {name: benchlib.proc_sample(pid) for name, pid in watched.items()}
    killed = time.time()
    await lab.kill_server(server_id, signal.SIGKILL)
    seen, after = await poll_until(lab, moved(victims, server_id, None), WAIT, "failover")
    cpu = {
        name: round(
            (benchlib.proc_sample(pid).cpu_ticks - before[name].cpu_ticks) / benchlib.CLK_TCK, 2
        )
        for name, pid in watched.items()
    }
    times = [v.last_seen - killed for v in after if v.id in victims]
    spread = collections.Counter(v.server for v in after if v.id in victims)
    figures: dict[str, object] = {
        "killed": server_id,
        "agents_moved": len(victims),
        "to": dict(sorted(spread.items())),
        **benchlib.summary(times),
        "seen_by_poll_s": round(seen - killed, 3),
        "quiet_after_s": waited,
        "cpu_s": cpu,  # each process's CPU from the kill to the poll that saw the end
    }
    return figures, victims
