"""disk-full: agents whose properties folder is a full tmpfs get a new list.

One server (repush interval 10 s, the default); the agents' folder is a tmpfs of this scenario's
own, just large enough for their files: `agents - 1` agents of an `agentd swarm` and one
`agentd run`. Once every agent holds its list, the tmpfs is filled (a file takes every free
block) and `host` gets a new list (a second, unreachable entry: nobody moves). For FULL_FOR
seconds (two repushes) the registry is read every POLL seconds. Then the filler is removed.

Figures: agents that acked the new list while the disk was full (target 0: the registry records
what an agent acked), agent.properties files that changed while full (byte for byte) and
temporary files left, "cannot save" log lines per agent (target: exactly one each, however
many times the list came), seconds from the filler's removal to the first and the last agent's
ack of the new list (target: within the server's repush interval), "writable again" lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from benchtls import BenchLab, Identities

from common.records import load_hosts
from faultkit.fleet import crashed, files_disagreeing, traceback_texts, tracebacks, wait_served
from faultkit.report import FaultReport
from msctl.children import LoggedProcess
from tests.support.tmpfs import fill

DEFAULT_AGENTS = 100
REPUSH = 10.0  # msrv's default --repush-interval
TARGET = (
    f"0 acks while full, files intact, 1 'cannot save' line per agent, every agent acked "
    f"within {REPUSH:.0f}s (the repush interval) of space returning"
)
FULL_FOR = 25.0  # seconds the disk stays full: two repushes
POLL = 0.5
RECOVER_LIMIT = 60.0
KIB_PER_AGENT = 24  # tmpfs pages of one agent's folder (4 small files) with room to spare
CANNOT_SAVE = r"cannot save host="
WRITABLE = r"writable again"


@contextlib.contextmanager
def tmpfs(path: Path, size_kib: int) -> Iterator[Path]:
    """A tmpfs of `size_kib` at `path` (mounting needs root, or CAP_SYS_ADMIN)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0755", "tmpfs", str(path)],
        check=False,
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        raise RuntimeError(f"disk-full mounts a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def snapshot(agents_dir: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in agents_dir.glob("agent-*/agent.properties")}


def temp_files(agents_dir: Path) -> int:
    return len(list(agents_dir.glob("agent-*/.agent.properties.*.tmp")))


async def holding(lab: BenchLab, value: str) -> int:
    """Hosts whose registry record holds `value` (what they acked)."""
    async with lab.connected() as client:
        hosts = await load_hosts(client, lab.keys)
    return sum(",".join(h.ms_list) == value for h in hosts)


def write_agent(ids: Identities, folder: Path, name: str, host: str) -> Path:
    """An agent's folder: agent.properties and a keystore issued by the namespace's CA."""
    folder.mkdir(parents=True)
    guid = str(uuid.uuid4())
    path = folder / "agent.properties"
    lines = [f"host={host}@static", f"guid={guid}", f"name={name}", "zone=default"]
    path.write_text("# the agentd run of the disk-full fault\n" + "\n".join(lines) + "\n")
    ids.provision(folder, guid)
    return path


async def start_run_agent(lab: BenchLab, folder: Path, name: str) -> LoggedProcess:
    """One `agentd run` with a provisioned keystore, connected."""
    path = write_agent(await lab.identities(), folder, name, lab.addresses[0])
    child = LoggedProcess(name, ["-m", "agentd", "run", "--properties", str(path)])
    await child.start(ready=r": connected to", timeout=30)
    return child


async def while_full(lab: BenchLab, new: str) -> int:
    """The most hosts seen holding `new` while the disk is full."""
    most = 0
    until = time.monotonic() + FULL_FOR
    while time.monotonic() < until:
        most = max(most, await holding(lab, new))
        await asyncio.sleep(POLL)
    return most


async def until_acked(lab: BenchLab, new: str, agents: int) -> tuple[float | None, float | None]:
    """Seconds until the first and until every agent acked `new` (None: not within the limit)."""
    started = time.monotonic()
    first = None
    while time.monotonic() - started < RECOVER_LIMIT:
        count = await holding(lab, new)
        if count and first is None:
            first = time.monotonic() - started
        if count == agents:
            return first, time.monotonic() - started
        await asyncio.sleep(0.1)
    return first, None


async def run(agents: int, workdir: Path) -> FaultReport:
    report = FaultReport("disk-full", agents, TARGET)
    swarm_size = agents - 1
    lab = BenchLab(workdir / "lab", servers=1, agents=swarm_size, port=0)
    agents_dir = lab.directory / "agents"
    runner: LoggedProcess | None = None
    with tmpfs(agents_dir, 256 + KIB_PER_AGENT * agents):
        try:
            await lab.start()
            name = f"agent-{agents:04d}"
            runner = await start_run_agent(lab, agents_dir / name, "disk-full-run")
            served, _ = await wait_served(lab, agents, 60.0)
            if served is None:
                raise RuntimeError("the agents were not all served before the fault")
            children = [c for c in [lab.swarm, runner] if c is not None]
            before = snapshot(agents_dir)
            filler = fill(agents_dir)
            new = f"{lab.addresses[0]},127.0.0.1:9"
            await lab.configure(host=new)
            acked_full = await while_full(lab, new)
            after = snapshot(agents_dir)
            changed = sum(after.get(p) != b for p, b in before.items())
            left = temp_files(agents_dir)
            said = {c.name: c.count(CANNOT_SAVE) for c in children}
            repushes = lab.members[0].child.count(r"pushed again")
            filler.unlink()
            first, every = await until_acked(lab, new, agents)
            report.recover_s = every
            served, state = await wait_served(lab, agents, 30.0)
            async with lab.connected() as client:
                hosts = await load_hosts(client, lab.keys)
            held = {h.guid: ",".join(h.ms_list) for h in hosts}
            report.disconnected = agents - state.connected
            report.wrong_list = state.behind + files_disagreeing(agents_dir, held)
            all_children = [*children, *(m.child for m in lab.members)]
            report.crashes = crashed(all_children, set())
            report.tracebacks = tracebacks(all_children)
            writable = sum(c.count(WRITABLE) for c in children)
            report.extra = {
                "traceback_texts": traceback_texts(all_children),
                "acked_while_full": acked_full,
                "files_changed_while_full": changed,
                "temp_files_left": left,
                "cannot_save_lines": sum(said.values()),
                "cannot_save_lines_by_process": said,
                "lists_pushed_again_while_full": repushes,
                "writable_again_lines": writable,
                "first_ack_after_space_s": None if first is None else round(first, 2),
                "every_ack_after_space_s": None if every is None else round(every, 2),
            }
            report.met = (
                acked_full == 0
                and changed == 0
                and left == 0
                and sum(said.values()) == agents
                and every is not None
                and every <= REPUSH
                and report.disconnected == 0
                and report.wrong_list == 0
                and report.crashes == 0
                and report.tracebacks == 0
            )
            return report
        finally:
            if runner is not None:
                with contextlib.suppress(ProcessLookupError, TimeoutError):
                    await runner.stop(signal.SIGTERM, timeout=10)
            await lab.stop()
