"""Convergence of real agents: time from `host` being set to each agent having persisted its new
list, against the floor of the same run.

A redis-server, 3 `msrv serve` and one `agentd swarm` of N agents (roundrobin, so the agents are
spread over the 3 servers). K times, `host` is rotated (A,B,C -> B,C,A -> ...): the clock starts
before the setting is written (what `msctl config set` runs); each agent's list is persisted
when its agent.properties has been renamed into place (the folder's mtime: the rename is the
folder's last change), and acked when its server recorded the ack (the registry's last_seen,
stamped when the ack arrives). The file's host= is checked against the registry after each
repetition. Between repetitions the agents move to their new first entry (make-before-break)
and the run waits for that to settle. ping.interval is 60 s so heartbeats do not mix in.

Every session is mutual TLS 1.3: the swarm's agents are provisioned keystores of the
namespace's CA, as an enrollment leaves them (bench/benchtls.py).

The floors, in the same run (bench/convergence_floor.py): the bare floor, laid out as this run
(3 one-line TLS server processes, one client process holding the N sessions, rewriting the
`host=` line of N files with a bare temp-file, fsync, rename, fsync-folder write on 16 threads,
acking each; timed by the folders' mtimes as the agents are). With fsync, its processes stay up
beside the lab, and each agents' repetition comes right after one push of the floor's, so that
the two meet the same load on the machine (other work on it changes both); without fsync, and
the project floor of the rounds before (one process, the project's properties code, with and
without fsync), run before the lab.

    .venv/bin/python bench/convergence.py [--agents 3000] [--repeats 3] [--profile DIR] [--wait]

With --wait, each change is made by `msctl config set host ... --wait` (a child process, as an
operator runs it; its polling of the registry then competes for the same two cores), and the
time it reports (every connected host holds the new list) is shown beside the bench's own
figures.

Prints a table, then one JSON line (the last line). Target: each repetition's agents' max <=
1.5 x the max of the bare floor's (fsync) repetition just before it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
from benchlib import HostView, lab_views, on_first_entry, print_json, print_table, summary
from benchtls import BenchLab
from convergence_floor import BareFloor, CpuWatch, folder_times, rotate, run_bare, run_project
from profiling import Recorder, print_self_time

from agentd import config
from common.configstore import ConfigStore
from common.properties import AgentProperties
from msctl.lab import Lab

POLL = 0.1
SETTLE = 20.0  # seconds given to the moves to the new first entries after a repetition
WAIT = 90.0  # seconds for one repetition to converge
DEADLINE = 900.0  # seconds for the whole run
WAIT_REPORT = re.compile(r"every connected host holds it \(\d+ hosts, ([\d.]+) s\)")
TARGET_RATIO = 1.5


# ---------------------------------------------------------------- the agents


async def wait_settled(lab: Lab, count: int, limit: float, strict: bool = True) -> int:
    """Until every host is connected and sits on its list's first entry. (A host's acked
    version is not checked: a new session starts its record at 0 when the list is current.)
    Returns how many are not settled when `limit` passes (raises instead when `strict`)."""
    deadline = time.monotonic() + limit
    while True:
        done = on_first_entry(lab, await lab_views(lab))
        if done == count:
            return 0
        if time.monotonic() > deadline:
            if not strict:
                return count - done
            raise TimeoutError(f"only {done}/{count} agents settled")
        await asyncio.sleep(0.5)


async def wait_persisted(agents_dir: Path, count: int, since: float, limit: float) -> float:
    """Poll the folders every 100 ms until all changed after `since`; then a last look once the
    writes are over (a folder also changes when the temp file is made, before the rename).
    Returns the time (time.time) of the poll that saw them all."""
    deadline = time.monotonic() + limit
    while True:
        started = time.monotonic()
        changed = sum(1 for t in folder_times(agents_dir, count) if t > since)
        if changed >= count:
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {changed}/{count} agents persisted a new list")
        await asyncio.sleep(max(0.0, POLL - (time.monotonic() - started)))


def check_files(agents_dir: Path, views: list[HostView], host: list[str]) -> int:
    """How many agent.properties hold the list the registry has for their guid, and that list
    is a rotation of `host` (roundrobin)."""
    by_guid = {v.guid: v.ms_list for v in views}
    rotations = {",".join(rotate(host, k)) for k in range(len(host))}
    good = 0
    for folder in agents_dir.glob("agent-*"):
        props = AgentProperties.load(folder / "agent.properties")
        listed = (props.get(config.HOST) or "").split("@")[0]
        if listed in rotations and by_guid.get(props.get(config.GUID) or "") == listed:
            good += 1
    return good


async def run_agents(
    args: argparse.Namespace, workdir: Path, floor: BareFloor
) -> tuple[int, list[dict[str, object]]]:
    """The agents' repetitions, each right after one of `floor`'s (same conditions)."""
    lab = BenchLab(workdir / "lab", servers=3, agents=args.agents, namespace="bench", port=0)
    rows: list[dict[str, object]] = []
    profiles: Profiles | None = None
    try:
        await lab.start(algorithm="roundrobin", ping_interval="60")
        base = lab.addresses
        agents_dir = workdir / "lab" / "agents"
        off_at_start = await wait_settled(
            lab, args.agents, SETTLE + args.agents / 100, strict=False
        )
        assert lab.swarm is not None
        pids = {"swarm": lab.swarm.pid, **{m.server_id: m.child.pid for m in lab.members}}
        redis_pid = getattr(lab.embedded, "pid", None)  # none for fakeredis
        cpu = CpuWatch({**pids, **({"redis": redis_pid} if isinstance(redis_pid, int) else {})})
        if args.profile is not None:
            profiles = Profiles(args.profile, pids)
        for k in range(1, args.repeats + 1):
            host = rotate(base, k)
            floor_max = float((await floor.rep())["max_s"])  # type: ignore[arg-type]
            if profiles is not None:
                profiles.start()
            await asyncio.sleep(1.0)  # quiet before the clock starts
            before = await lab.configure()  # the version now
            cpu.start()
            started = time.time()
            if args.wait:
                waiting = asyncio.create_task(config_set_wait(lab, ",".join(host)))
                version = await wait_version(lab, before, started)
            else:
                version = await lab.configure(host=",".join(host))
            seen = await wait_persisted(agents_dir, args.agents, started, WAIT)
            used = cpu.read()
            if profiles is not None:
                profiles.stop()
            reported = None
            if args.wait:
                reported, returned_s = await waiting
                returned_s -= started
            await asyncio.sleep(1.0)  # the last renames land
            persisted = [t - started for t in folder_times(agents_dir, args.agents)]
            unsettled = await wait_settled(lab, args.agents, SETTLE, strict=False)
            good = check_files(agents_dir, await lab_views(lab), host)
            rows.append({
                "repeat": k,
                "host": ",".join(h.split(":")[0] for h in host),
                "version": version,
                "persisted": summary(persisted),
                "bare_floor_max_s": floor_max,  # the bare floor's repetition just before
                "ratio": round(max(persisted) / floor_max, 2),
                "seen_by_poll_s": round(seen - started, 3),
                "cpu_s": used,  # each process's CPU from the clock's start to the poll seeing all
                "wait_reported_s": reported,
                "wait_returned_s": round(returned_s, 3) if reported is not None else None,
                "files_ok": good,
                "off_first_entry_after_s": {SETTLE: unsettled},
            })  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    finally:
        if profiles is not None:
            profiles.stop()
        await lab.stop()
    return off_at_start, rows


class Profiles:
    """py-spy of the swarm and the servers around each repetition's change (from the quiet
    second before it until every file is persisted), each process's samples gathered in
    DIR/convergence-NAME.txt."""

    def __init__(self, directory: Path, pids: dict[str, int]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.pids = pids
        self.recorders: dict[str, Recorder] = {}
        for name in pids:
            self.path(name).write_text("")

    def path(self, name: str, part: str = "") -> Path:
        return self.directory / f"convergence-{name}{part}.txt"

    def start(self) -> None:
        self.recorders = {
            name: Recorder(pid, self.path(name, "-part"), WAIT) for name, pid in self.pids.items()
        }

    def stop(self) -> None:
        for name, recorder in self.recorders.items():
            recorder.stop()
            part = self.path(name, "-part")
            if part.exists():
                with self.path(name).open("a") as gathered:
                    gathered.write(part.read_text())
                part.unlink()
        self.recorders = {}


async def config_set_wait(lab: Lab, host: str) -> tuple[float, float]:
    """Run `msctl config set host HOST --wait`; (the time it reports, when it returned). The
    URL goes in the environment (it holds the lab's Redis password)."""
    env = {**os.environ, "MSRV_REDIS_URL": lab.url, "MSRV_NAMESPACE": lab.namespace}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "msctl", "config", "set", "host", host, "--wait", "--timeout",
        str(WAIT), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    out, err = await process.communicate()
    returned = time.time()
    found = WAIT_REPORT.search(out.decode())
    if process.returncode != 0 or found is None:
        raise RuntimeError(f"msctl config set --wait: {out.decode()}{err.decode()}")
    return float(found.group(1)), returned


async def wait_version(lab: Lab, before: int, since: float) -> int:
    """The config version once `msctl config set` moved it past `before`."""
    async with lab.connected() as client:
        store = ConfigStore(client, lab.keys)
        while (version := await store.version()) == before:
            if time.time() - since > WAIT:
                raise TimeoutError("msctl config set never changed the config version")
            await asyncio.sleep(0.01)
    return version


# ---------------------------------------------------------------- the run


FLOOR_SCRIPT = str(Path(__file__).resolve().parent / "convergence_floor.py")


async def run(args: argparse.Namespace) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-convergence-") as tmp:
        workdir = Path(tmp)
        nofsync = await run_bare(args.agents, workdir, args.repeats, False, FLOOR_SCRIPT)
        project = [
            await run_project(args.agents, workdir, fsync, FLOOR_SCRIPT) for fsync in (True, False)
        ]
        async with BareFloor(args.agents, workdir, True, FLOOR_SCRIPT) as floor:
            off_at_start, reps = await run_agents(args, workdir, floor)
            bare = floor.result()
    project_max = float(project[0]["max_s"])  # type: ignore[arg-type]
    maxima = sorted(float(r["persisted"]["max_s"]) for r in reps)  # type: ignore[index]
    ratios = sorted(float(r["ratio"]) for r in reps)  # type: ignore[arg-type]
    median = maxima[len(maxima) // 2]
    result: dict[str, object] = {
        "bench": "convergence",
        "agents": args.agents,
        "servers": 3,
        "load_at_start": args.load_at_start,
        "off_first_entry_at_start": off_at_start,
        "repeats": reps,
        "bare_floor_fsync": bare,
        "bare_floor_nofsync": nofsync,
        "project_floor_fsync": project[0],
        "project_floor_nofsync": project[1],
        "agents_max_median_s": median,
        "agents_max_worst_s": maxima[-1],
        # each repetition's max against the bare floor's repetition run just before it
        "ratio_median": ratios[len(ratios) // 2],
        "ratio_worst": ratios[-1],
        "ratio_median_project_floor": round(median / project_max, 2),
        "target_ratio": TARGET_RATIO,
        "met": ratios[-1] <= TARGET_RATIO,
        "revision": benchlib.revision(),
    }
    return result


def cpu_cell(used: dict[str, float], main: str) -> str:
    """`swarm 1.2, servers 0.6`: the agents' (or the floor client's) process, then the servers'."""
    servers = sum(v for name, v in used.items() if name.startswith(("ms", "floor")))
    return f"{main} {used[main]}, servers {round(servers, 2)}"


def print_result(result: dict[str, object]) -> None:
    rows: list[list[object]] = []
    for rep in result["repeats"]:  # type: ignore[attr-defined]
        p = rep["persisted"]
        name = f"agents rep {rep['repeat']} ({rep['host']})"
        ok = f"{rep['files_ok']}/{result['agents']}"
        waited = rep.get("wait_reported_s") or "-"
        used = rep["cpu_s"]
        cpu = cpu_cell(used, "swarm")
        rows.append([name, p["p50_s"], p["p99_s"], p["max_s"], rep["ratio"],
                     rep["seen_by_poll_s"], waited, ok, cpu])  # fmt: skip
    for key, label in (("bare_floor_fsync", "bare floor, fsync"),
                       ("bare_floor_nofsync", "bare floor, no fsync")):  # fmt: skip
        for k, f in enumerate(result[key]["repeats"], 1):  # type: ignore[index]
            used = f["cpu_s"]
            cpu = cpu_cell(used, "client")
            rows.append(
                [f"{label}, rep {k}", f["p50_s"], f["p99_s"], f["max_s"], "-", "-", "-", "-", cpu]
            )
    for key, label in (("project_floor_fsync", "floor (one process, project's properties "
                        "code), fsync"), ("project_floor_nofsync", "floor (one process, "
                        "project's properties code), no fsync")):  # fmt: skip
        f = result[key]
        rows.append([label, f["p50_s"], f["p99_s"], f["max_s"], "-", "-", "-", "-", "-"])  # type: ignore[index]
    header = ["run", "p50 s", "p99 s", "max s", "x floor", "poll saw all s", "--wait s",
              "files ok", "CPU s"]  # fmt: skip
    print_table(rows, header)
    print(f"load average at the start: {result['load_at_start']}")
    print(f"agents max / bare floor max (fsync; each repetition against the floor's run just "
          f"before it): median {result['ratio_median']}, worst {result['ratio_worst']} "
          f"(target <= {TARGET_RATIO}); median rep against the project floor: "
          f"{result['ratio_median_project_floor']}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--profile", type=Path, default=None, help="py-spy the swarm and servers into DIR"
    )
    parser.add_argument("--wait", action="store_true", help="change with msctl config set --wait")
    args = parser.parse_args()
    args.load_at_start = [round(x, 2) for x in os.getloadavg()]
    benchlib.raise_nofile(4 * args.agents + 1024)
    with benchlib.leftovers_killed():
        result = asyncio.run(asyncio.wait_for(run(args), DEADLINE))
    if args.profile is not None:
        for name in ("swarm", "ms1", "ms2", "ms3"):
            print_self_time(args.profile / f"convergence-{name}.txt", name)
    print_result(result)
    print_json(result)


if __name__ == "__main__":
    main()
