"""Maintenance and pacing (issue 13's measure): a server taken out of service under a fleet, and
how much of the fleet a fourth server moves with each algorithm; every session mutual TLS 1.3.

A redis-server, 3 `msrv serve -v` (DEBUG: a line with a millisecond stamp for each session
started and closed), one `agentd swarm` of N agents (provisioned keystores), roundrobin (so a
third of them on each server), ping interval 60 s, move.rate R, check interval 10 s: with 0,
17-21 of 3,000 agents stayed off their first entry for 120 s after the start's moves, in two
runs, with no warning (an agent logs a move not taken at DEBUG only; with no checker nothing
moves it again), so the fleet never settled; the checker returns them. Once settled, no agent
is off its first entry, so the checker moves nobody during a phase.

1. maintenance: once the lab is quiet, the server holding the most agents is taken out of
   service (common.maintenance.begin, what `msctl servers maintenance ID` does). Its agents
   move, make-before-break, paced at R a second, to their next entry. Timed from the begin:
   - `last_arrival_s`: the last of its agents started on another server (their DEBUG lines);
   - `empty_s`: its last session closed (its DEBUG lines): it holds 0 sessions;
   - `maintenance_s`: its state became `maintenance` (its INFO line; it finishes on its
     housekeeping tick, every 2 s, after it holds none); the registry polled every 100 ms
     saw both too (`*_by_poll_s`).
   Sessions lost: the hosts the registry showed in any state but `connected` in any poll while
   it ran, and the agents the swarm's "lost server" lines count. Arrivals per 100 ms on each
   receiving server, from its DEBUG "started" lines (ms stamps): the busiest 100 ms (sliding,
   a window starting at each arrival; and fixed bins from the first) beside the mean over the
   span from the first arrival to the last. Target: empty <= 1.2 x agents / R (6 s for 1,000
   at 200/s), no session lost. Where the time goes: when the agents saved the new list (every
   agent gets one: the server leaves every list), from their folders' mtimes, and each
   process's share of a core per 500 ms (/proc, sampled every 100 ms).
2. cancel: `cancel-maintenance`; time until every list holds the server again and every agent
   is back on its first entry, the agents moved back, sessions lost.
3. a fourth server, per algorithm (roundrobin, shuffle, rendezvous; the algorithm set and the
   fleet settled before each run): ms4 started (once), `host` set to the four addresses; once
   settled, the agents whose first entry changed (the registry's acked lists before and
   after) and the agents that changed server, and those now on ms4; beside them the count the
   algorithm predicts (common.algorithms over the registered ids). Then `host` back to the
   three, settled, before the next. Expected: rendezvous about 1/4 (the issue's test bound:
   35 %), roundrobin and shuffle most of the fleet.

    .venv/bin/python bench/maintenance.py [--agents 3000] [--move-rate 200]
        [--check-interval 10] [--algorithms roundrobin,shuffle,rendezvous]

Prints a table, then one JSON line (the last line). Bounded: the run is cancelled after
DEADLINE seconds, and every child is killed on any exit.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import collections
import datetime
import functools
import itertools
import os
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import HostView, lab_views, on_first_entry, print_json, print_table
from benchtls import BenchLab
from failover_timing import POLL, quiescent

from agentd import config
from common import algorithms, maintenance
from common.properties import AgentProperties
from common.records import ServerState, load_servers
from msctl.children import LoggedProcess
from msctl.lab import LabServer

DEADLINE = 900.0  # seconds for the whole run
PHASE_LIMIT = 120.0  # seconds for one phase to settle
ALGORITHMS = ("roundrobin", "shuffle", "rendezvous")
MOVE_RATE = "indirect.agent.lb.move.rate"

STAMP = r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) "
STARTED = re.compile(STAMP + r"DEBUG .*: (\S+): host (\d+) \(.*\) from .* started ")
CLOSED = re.compile(
    STAMP + r"DEBUG .*: (\S+): host (\d+) \(.*\) from .* (closed the connection|connection lost)"
)
IN_MAINTENANCE = re.compile(STAMP + r"INFO +\S+: (\S+): in maintenance")
LOST = re.compile(r"lost server .*?(?:\((\d+) agents\))?$")


@dataclass
class VerboseLab(BenchLab):
    """A BenchLab whose servers log at DEBUG (`msrv serve -v`)."""

    async def start_server(self, server_id: str) -> LabServer:
        member = self.member(server_id)
        if "-v" not in member.child.args:
            member.child.args.append("-v")
        return await super().start_server(server_id)


# ---------------------------------------------------------------- logs


def stamp(text: str) -> float:
    """A log line's asctime (local time, ms) as time.time."""
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def matches(child: LoggedProcess, regex: re.Pattern[str], since: float) -> list[re.Match[str]]:
    """The lines of `child` matching `regex` stamped at or after `since` (time.time; the stamp
    is truncated to the millisecond, so one ms of slack)."""
    found = (regex.match(line) for line in list(child.lines))
    return [m for m in found if m is not None and stamp(m.group(1)) >= since - 0.001]


def swarm_lost(lab: VerboseLab) -> int:
    """Agents the swarm has reported losing their server: a large swarm's summary lines say
    how many ("(N agents)"), a small one's lines are one agent each."""
    assert lab.swarm is not None
    total = 0
    for line in list(lab.swarm.lines):
        found = LOST.search(line)
        if found is not None:
            total += int(found.group(1) or 1)
    return total


def arrivals_per_100ms(times: Sequence[float]) -> dict[str, object]:
    """Arrivals from the first to the last: the busiest 100 ms (a window starting at each
    arrival; and fixed bins from the first) beside the mean over that span."""
    ordered = sorted(times)
    if not ordered:
        return {"count": 0}
    first = ordered[0]
    span = ordered[-1] - first
    sliding = max(bisect.bisect_left(ordered, t + POLL) - i for i, t in enumerate(ordered))
    fixed = max(collections.Counter(int((t - first) / POLL) for t in ordered).values())
    mean = len(ordered) / max(span / POLL, 1.0)
    return {
        "count": len(ordered),
        "span_s": round(span, 3),
        "peak_per_100ms": sliding,
        "peak_fixed_bins_per_100ms": fixed,
        "mean_per_100ms": round(mean, 1),
        "peak_to_mean": round(sliding / mean, 2),
    }


class CpuTimeline:
    """Each process's share of a core per 0.5 s from `begun`, sampled from /proc every 100 ms
    while it runs (`stop` ends it)."""

    BIN = 0.5

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.samples: dict[str, list[benchlib.ProcSample]] = {name: [] for name in pids}
        self.begun = time.monotonic()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            for name, pid in self.pids.items():
                self.samples[name].append(benchlib.proc_sample(pid))
            await asyncio.sleep(POLL)

    def stop(self) -> dict[str, list[float]]:
        self._task.cancel()
        shares: dict[str, list[float]] = {}
        for name, samples in self.samples.items():
            edges: dict[int, benchlib.ProcSample] = {}
            for sample in samples:
                edges.setdefault(int((sample.at - self.begun) / self.BIN), sample)
            bins = sorted(edges)
            shares[name] = [
                round(benchlib.cpu_share(edges[a], edges[b]), 2)
                for a, b in itertools.pairwise(bins)
            ]
        return shares


def lab_pids(lab: VerboseLab) -> dict[str, int]:
    pids = {m.server_id: m.child.pid for m in lab.members if m.running}
    if lab.swarm is not None:
        pids["swarm"] = lab.swarm.pid
    return pids


def persisted(lab: VerboseLab, guids: set[str], since: float) -> dict[str, object]:
    """When the agents saved a list after `since` (each folder's last change: the rename of its
    agent.properties), from `since`: the whole fleet's and the agents of `guids`."""
    fleet, mine = [], []
    for folder in (lab.directory / "agents").glob("agent-*"):
        changed = folder.stat().st_mtime_ns / 1e9 - since
        if changed < 0:
            continue
        fleet.append(changed)
        if AgentProperties.load(folder / "agent.properties").get(config.GUID) in guids:
            mine.append(changed)

    def spread(values: list[float]) -> dict[str, object]:
        if not values:
            return {"count": 0}
        return {
            "count": len(values),
            "first_s": round(min(values), 3),
            "p50_s": round(benchlib.pct(values, 50), 3),
            "last_s": round(max(values), 3),
        }

    return {"fleet": spread(fleet), "moving": spread(mine)}


# ---------------------------------------------------------------- registry


class Watch:
    """The registry polled every 100 ms: every host seen in a state other than `connected`."""

    def __init__(self, lab: VerboseLab) -> None:
        self.lab = lab
        self.not_connected: set[int] = set()
        self.polls = 0

    async def views(self) -> list[HostView]:
        views = await lab_views(self.lab)
        self.polls += 1
        self.not_connected |= {v.id for v in views if v.state != "connected"}
        return views

    async def servers(self) -> dict[str, Any]:
        client = self.lab.redis()
        try:
            return {s.id: s for s in await load_servers(client, self.lab.keys)}
        finally:
            await client.aclose()


async def poll(watch: Watch, done: Any, limit: float, what: str) -> tuple[float, Any]:
    """Poll (views, servers) every 100 ms until `done(views, servers)` returns something."""
    deadline = time.monotonic() + limit
    while True:
        started = time.monotonic()
        views = await watch.views()
        found = done(views, await watch.servers())
        if found:
            return time.time(), found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not reached within {limit:g}s")
        await asyncio.sleep(max(0.0, POLL - (time.monotonic() - started)))


def expected_lists(algorithm: str, host: Sequence[str], ids: Sequence[int]) -> dict[int, str]:
    """Every host's list as the algorithm orders it (all the lab's hosts are one zone)."""
    return _expected(algorithm, tuple(host), tuple(sorted(ids)))


@functools.lru_cache(maxsize=8)
def _expected(algorithm: str, host: tuple[str, ...], ordered: tuple[int, ...]) -> dict[int, str]:
    sort = algorithms.get(algorithm).sort
    return {i: ",".join(sort(host, ordered, i)) for i in ordered}


async def settle(
    lab: VerboseLab, watch: Watch, algorithm: str, host: Sequence[str], what: str
) -> float:
    """Until every host holds the list `algorithm` gives it over `host` and is connected to its
    first entry; then until the processes are quiet. Returns the seconds to the settled poll."""
    started = time.time()

    state: list[str] = []

    def done(views: list[HostView], _servers: Any) -> bool:
        expected = expected_lists(algorithm, host, [v.id for v in views])
        on_first = on_first_entry(lab, views)
        listed = sum(1 for v in views if v.ms_list == expected[v.id])
        state[:] = [
            f"{len(views)} hosts, {on_first} on their first entry, {listed} on {algorithm}'s list"
        ]
        return on_first == lab.agents == listed

    try:
        seen, _ = await poll(watch, done, PHASE_LIMIT, what)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}: {state[0] if state else 'no poll'}") from None
    await quiescent(lab)
    return round(seen - started, 3)


# ---------------------------------------------------------------- 1, 2: maintenance, cancel


async def maintenance_phase(lab: VerboseLab, rate: float) -> dict[str, Any]:
    await quiescent(lab)
    views = await lab_views(lab)
    held = collections.Counter(v.server for v in views if v.state == "connected")
    target = min(held, key=lambda s: (-held[s], s))
    movers = {v.id for v in views if v.server == target and v.state == "connected"}
    member = lab.member(target)
    watch = Watch(lab)
    lost_before = swarm_lost(lab)
    client = lab.redis()
    cpu = CpuTimeline(lab_pids(lab))
    begun = time.time()
    try:
        await maintenance.begin(client, lab.keys, target)
    finally:
        await client.aclose()

    empty_seen: list[float] = []

    def done(views: list[HostView], servers: Any) -> bool:
        mine = [v for v in views if v.id in movers]
        if not empty_seen and all(v.server != target and v.state == "connected" for v in mine):
            empty_seen.append(time.time())
        return bool(empty_seen) and servers[target].state == ServerState.MAINTENANCE

    maintained_seen, _ = await poll(watch, done, PHASE_LIMIT, f"{target} in maintenance")
    cpu_shares = cpu.stop()
    saved = persisted(lab, {v.guid for v in views if v.id in movers}, begun)
    await quiescent(lab)  # the swarm sums its losses into a line a second
    after = await watch.views()
    moved_to = collections.Counter(v.server for v in after if v.id in movers)

    arrivals: dict[str, list[float]] = collections.defaultdict(list)
    for m in lab.members:
        if m.server_id == target or not m.running:
            continue
        for found in matches(m.child, STARTED, begun):
            if int(found.group(3)) in movers:
                arrivals[m.server_id].append(stamp(found.group(1)))
    closes = [stamp(f.group(1)) for f in matches(member.child, CLOSED, begun)]
    marked = [stamp(f.group(1)) for f in matches(member.child, IN_MAINTENANCE, begun)]
    every = sorted(t for times in arrivals.values() for t in times)
    target_s = round(1.2 * len(movers) / rate, 3)

    def since(t: float | None) -> float | None:
        return None if t is None else round(t - begun, 3)

    empty = since(max(closes)) if closes else None
    return {
        "server": target,
        "agents": len(movers),
        "to": dict(sorted(moved_to.items())),
        "first_arrival_s": since(every[0]) if every else None,
        "last_arrival_s": since(every[-1]) if every else None,
        "empty_s": empty,
        "sessions_closed": len(closes),
        "maintenance_s": since(marked[0]) if marked else None,
        "empty_by_poll_s": since(empty_seen[0]),
        "maintenance_by_poll_s": since(maintained_seen),
        "target_s": target_s,
        "lost": {
            "not_connected_in_registry": len(watch.not_connected),
            "swarm_lost_server": swarm_lost(lab) - lost_before,
            "polls": watch.polls,
        },
        "arrivals_source": "receiving servers' DEBUG 'started' lines (ms stamps)",
        "arrivals": {s: arrivals_per_100ms(t) for s, t in sorted(arrivals.items())},
        "arrivals_all": arrivals_per_100ms(every),
        "lists_persisted": saved,
        "cpu_per_500ms": cpu_shares,
    }


async def cancel_phase(lab: VerboseLab, target: str) -> dict[str, Any]:
    member = lab.member(target)
    address = member.listen
    views = await lab_views(lab)
    away = {v.id for v in views}
    watch = Watch(lab)
    lost_before = swarm_lost(lab)
    client = lab.redis()
    cpu = CpuTimeline(lab_pids(lab))
    begun = time.time()
    try:
        await maintenance.cancel(client, lab.keys, target)
    finally:
        await client.aclose()

    def done(views: list[HostView], servers: Any) -> bool:
        listed = all(address in v.ms_list.split(",") for v in views)
        return (
            listed
            and servers[target].state == ServerState.RUNNING
            and on_first_entry(lab, views) == lab.agents
        )

    seen, _ = await poll(watch, done, PHASE_LIMIT, f"{target} back in service")
    cpu_shares = cpu.stop()
    await quiescent(lab)
    after = await watch.views()
    back = {v.id for v in after if v.server == target} & away
    arrivals = [
        stamp(f.group(1)) for f in matches(member.child, STARTED, begun) if int(f.group(3)) in back
    ]
    return {
        "server": target,
        "settled_by_poll_s": round(seen - begun, 3),
        "agents_back": len(back),
        "last_arrival_s": round(max(arrivals) - begun, 3) if arrivals else None,
        "lost": {
            "not_connected_in_registry": len(watch.not_connected),
            "swarm_lost_server": swarm_lost(lab) - lost_before,
            "polls": watch.polls,
        },
        "arrivals": arrivals_per_100ms(arrivals),
        "first_arrival_s": round(min(arrivals) - begun, 3) if arrivals else None,
        "cpu_per_500ms": cpu_shares,
    }


# ---------------------------------------------------------------- 3: a fourth server


async def fourth_server(
    lab: VerboseLab, three: list[str], algorithm: str, current: str
) -> dict[str, Any]:
    """With the fleet settled on `three` under `algorithm`: `host` = the four addresses; the
    agents whose first entry changed and that changed server. Leaves `host` on the three."""
    watch = Watch(lab)
    if algorithm != current:
        await lab.configure(algorithm=algorithm)
        await settle(lab, watch, algorithm, three, f"{algorithm} set")
    if len(lab.members) < 4:
        await lab.add_server()
    four = [*three, lab.members[3].listen]
    new_server = lab.members[3].server_id
    before = {v.id: v for v in await lab_views(lab)}
    watch = Watch(lab)
    lost_before = swarm_lost(lab)
    await lab.configure(host=",".join(four))
    settle_s = await settle(lab, watch, algorithm, four, f"{algorithm}: four servers")
    after = {v.id: v for v in await lab_views(lab)}
    lost = {
        "not_connected_in_registry": len(watch.not_connected),
        "swarm_lost_server": swarm_lost(lab) - lost_before,
    }
    ids = sorted(before)
    old, new = expected_lists(algorithm, three, ids), expected_lists(algorithm, four, ids)
    predicted = sum(1 for i in ids if old[i].split(",")[0] != new[i].split(",")[0])
    changed = sum(
        1 for i in ids if before[i].ms_list.split(",")[0] != after[i].ms_list.split(",")[0]
    )
    moved = sum(1 for i in ids if before[i].server != after[i].server)
    on_new = sum(1 for v in after.values() if v.server == new_server)
    n = len(ids)

    # back to the three servers for the next run
    watch = Watch(lab)
    await lab.configure(host=",".join(three))
    restore_s = await settle(lab, watch, algorithm, three, f"{algorithm}: back to three")
    lost["restore_not_connected_in_registry"] = len(watch.not_connected)
    lost["restore_swarm_lost_server"] = swarm_lost(lab) - lost_before - lost["swarm_lost_server"]
    return {
        "algorithm": algorithm,
        "agents": n,
        "first_entry_changed": changed,
        "first_entry_changed_pct": round(100 * changed / n, 1),
        "predicted_first_entry_changed": predicted,
        "moved_server": moved,
        "moved_server_pct": round(100 * moved / n, 1),
        "on_new_server": on_new,
        "settle_s": settle_s,
        "restore_settle_s": restore_s,
        "lost": lost,
    }


# ---------------------------------------------------------------- the run


async def run(args: argparse.Namespace) -> dict[str, Any]:
    n = args.agents
    runs: list[dict[str, Any]] = []
    result: dict[str, Any] = {
        "bench": "maintenance",
        "agents": n,
        "servers": 3,
        "move_rate": args.move_rate,
        "check_interval_s": args.check_interval,
        "load_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with tempfile.TemporaryDirectory(prefix="bench-maintenance-") as tmp:
        lab = VerboseLab(Path(tmp) / "lab", servers=3, agents=n, namespace="bench", port=0)
        try:
            await lab.start(
                algorithm="roundrobin",
                check_interval=str(args.check_interval),
                ping_interval="60",
                **{MOVE_RATE: f"{args.move_rate:g}"},
            )
            three = list(lab.addresses)
            watch = Watch(lab)
            result["start_settle_s"] = await settle(lab, watch, "roundrobin", three, "start")
            phase = await maintenance_phase(lab, args.move_rate)
            result["maintenance"] = phase
            result["cancel"] = await cancel_phase(lab, str(phase["server"]))
            current = "roundrobin"
            for algorithm in args.algorithms:
                runs.append(await fourth_server(lab, three, algorithm, current))
                current = algorithm
            result["fourth_server"] = runs
        except BaseException:
            for child in [lab.swarm, *(m.child for m in lab.members)]:
                if child is not None:
                    warnings = [line for line in child.lines if " WARNING " in line]
                    print(f"--- {child.name}: {len(warnings)} warnings, the last:", file=sys.stderr)
                    print("\n".join(warnings[-10:]), file=sys.stderr)
            raise
        finally:
            await lab.stop()
    m, cancel = result["maintenance"], result["cancel"]
    losses = [m["lost"], cancel["lost"], *(r["lost"] for r in runs)]
    met = {
        "empty_le_1.2x_agents_over_rate": m["empty_s"] is not None
        and m["empty_s"] <= m["target_s"],
        "maintenance_state_le_1.2x_agents_over_rate": m["maintenance_s"] is not None
        and m["maintenance_s"] <= m["target_s"],
        "no_session_lost": not any(v for d in losses for k, v in d.items() if k != "polls"),
    }
    for r in runs:
        if r["algorithm"] == "rendezvous":
            met["rendezvous_le_35pct"] = r["first_entry_changed_pct"] <= 35
    result["met"] = met
    result["load_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["revision"] = benchlib.revision()
    return result


def print_result(result: dict[str, Any]) -> None:
    m = result["maintenance"]
    c = result["cancel"]
    print(
        f"maintenance of {m['server']} ({m['agents']} agents, move.rate {result['move_rate']:g}/s)"
        f" -> {m['to']}"
    )
    rows = [
        ["last arrival elsewhere", m["last_arrival_s"]],
        ["empty (its last session closed)", m["empty_s"]],
        ["state maintenance", m["maintenance_s"]],
        ["empty, seen by the registry poll", m["empty_by_poll_s"]],
        ["maintenance, seen by the registry poll", m["maintenance_by_poll_s"]],
        ["target (1.2 x agents / rate)", m["target_s"]],
        ["cancel: all back on their first entry (poll)", c["settled_by_poll_s"]],
    ]
    print_table(rows, ["from the begin", "s"])
    print(f"lost: maintenance {m['lost']}, cancel {c['lost']}")
    print(f"lists persisted after the begin: {m['lists_persisted']}")
    for name, shares in m["cpu_per_500ms"].items():
        print(f"cpu per 500 ms, {name}: {shares}")
    for server, a in m["arrivals"].items():
        print(f"arrivals on {server}: {a}")
    print(f"arrivals back on {c['server']}: {c['arrivals']}")
    rows = [
        [r["algorithm"], r["first_entry_changed"], f"{r['first_entry_changed_pct']}%",
         r["predicted_first_entry_changed"], r["moved_server"], f"{r['moved_server_pct']}%",
         r["on_new_server"], r["settle_s"], r["lost"]["swarm_lost_server"]]
        for r in result["fourth_server"]
    ]  # fmt: skip
    print_table(rows, ["a fourth server", "first entry changed", "%", "predicted",
                       "moved server", "%", "on ms4", "settled s", "lost"])  # fmt: skip
    print(f"met: {result['met']}  load: {result['load_at_start']} -> {result['load_at_end']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=3000)
    parser.add_argument("--move-rate", type=float, default=200.0)
    parser.add_argument(
        "--check-interval",
        type=int,
        default=10,
        help="s; returns an agent whose move found its first entry busy (0: none does)",
    )
    parser.add_argument(
        "--algorithms",
        type=lambda s: [a for a in s.split(",") if a],
        default=list(ALGORITHMS),
        help="comma-separated, run in that order (empty: none)",
    )
    args = parser.parse_args()
    for name in args.algorithms:
        algorithms.get(name)
    benchlib.raise_nofile(2 * args.agents + 1024)
    with benchlib.leftovers_killed():
        result = asyncio.run(asyncio.wait_for(run(args), DEADLINE))
    print_result(result)
    print_json(result)


if __name__ == "__main__":
    main()
