"""agent-crash-writes: SIGKILL `agentd run` inside a write of its list, 300 times.

One server; `host` is changed every PUSH_EVERY seconds for the whole run (its second entry a new
unreachable address each time, so every push is a list never seen before and the agent stays on
its first entry), so lists arrive at the agents continuously. Each agent's folder is watched
with inotify: once the agent is back and has acked a list after its restart, the next creation
of its temporary file (`.agent.properties.*.tmp`, the first step of common.properties'
atomic_write) starts a delay drawn uniformly from [0, window), then SIGKILL; `window` is how
long the agent's last WINDOW_OF writes took from the temporary file's creation to its rename
(their median; the folder's fsync after the rename is part of the write too, and the killer's
own delays add to the drawn one, so some kills land after the rename). After each kill:

- agent.properties parses, every other line is as it was, and its `host` is the last list the
  agent logged as persisted (old: the write did not land) or a list pushed after that one (new:
  it landed before the agent could log it), never anything else;
- a temporary file left behind (the kill landed before the rename) is counted, and must be gone
  once the agent is started again (AgentSettings removes it);
- the agent is started again and must connect and ack a list within COME_BACK seconds.

The agents (`--agents`, default 1) share the kills, each killed in turn. At the end the pushes
stop, a last list is set, and every agent must hold it (file and registry).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from benchtls import BenchLab, Identities

from common.configstore import ConfigStore
from common.errors import PropertiesError
from common.properties import AgentProperties
from common.records import HostState, load_hosts
from faultkit.fleet import crashed, files_disagreeing, tracebacks, wait_served
from faultkit.inotify import IN_CREATE, IN_MOVED_TO, FolderWatch
from faultkit.report import FaultReport
from msctl.children import LoggedProcess

DEFAULT_AGENTS = 1
TARGET = "300 kills inside writes: every file parses (old or new list), 0 agents not back"
KILLS = 300
PUSH_EVERY = 0.01  # seconds between two changes of `host`
WARMUP_WRITES = 30  # writes timed before the first kill
WINDOW_OF = 50  # the last writes whose median duration is the kill window
COME_BACK = 30.0  # seconds for a restarted agent to connect and ack
FIRST_PORT = 10_000  # the unreachable second entries: 127.0.0.1:10000, :10001, ...
TMP_PREFIX = ".agent.properties."
HEADER = "# agent of the agent-crash-writes fault\n# comments and other keys must survive\n"


def fake_entry(k: int) -> str:
    return f"127.0.0.1:{FIRST_PORT + k % 50_000}"


@dataclass
class Kill:
    delay: float  # from the temporary file's creation to the SIGKILL


class WriteKiller(threading.Thread):
    """Watches one agent's folder; when armed, kills the agent `uniform(0, window)` seconds
    after its next temporary file appears. Also times writes (creation to rename)."""

    def __init__(self, folder: Path, rng: random.Random) -> None:
        super().__init__(daemon=True, name=f"killer {folder.name}")
        self.folder = folder
        self.path = folder / "agent.properties"
        self.rng = rng
        self.durations: list[float] = []
        self.windows: list[float] = []  # the window of each kill
        self._watch = FolderWatch(folder, IN_CREATE | IN_MOVED_TO)
        self._halt = threading.Event()
        self._armed: tuple[int, asyncio.AbstractEventLoop, asyncio.Future[Kill]] | None = None
        self._lock = threading.Lock()
        self._created: float | None = None

    def arm(self, pid: int) -> asyncio.Future[Kill]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Kill] = loop.create_future()
        with self._lock:
            self._armed = (pid, loop, future)
        return future

    def disarm(self) -> None:
        with self._lock:
            self._armed = None

    def stop(self) -> None:
        self._halt.set()

    def run(self) -> None:
        try:
            while not self._halt.is_set():
                for event in self._watch.read(0.2):
                    self._on(event.mask, event.name, time.monotonic())
        finally:
            self._watch.close()

    def _on(self, mask: int, name: str, at: float) -> None:
        if mask & IN_MOVED_TO and name == self.path.name and self._created is not None:
            self.durations.append(at - self._created)
            self._created = None
        if not (mask & IN_CREATE and name.startswith(TMP_PREFIX)):
            return
        self._created = at
        with self._lock:
            armed, self._armed = self._armed, None
        if armed is None:
            return
        pid, loop, future = armed
        window = statistics.median(self.durations[-WINDOW_OF:] or [0.001])
        self.windows.append(window)
        delay = self.rng.uniform(0.0, window)
        time.sleep(max(0.0, at + delay - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        loop.call_soon_threadsafe(future.set_result, Kill(time.monotonic() - at))


@dataclass
class Tally:
    kills: int = 0
    parsed: int = 0
    old: int = 0
    new: int = 0
    bad: list[str] = field(default_factory=list)  # what a file held that it must not
    temp_left: int = 0  # kills that landed before the rename (a temporary file was left)
    temp_kept: int = 0  # temporary files still there once the agent was started again
    not_back: int = 0
    crashes: int = 0
    tracebacks: int = 0
    delays: list[float] = field(default_factory=list)
    back_s: list[float] = field(default_factory=list)


class Pusher:
    """Changes `host` every PUSH_EVERY seconds: `A,<a new unreachable entry>`."""

    def __init__(self, lab: BenchLab) -> None:
        self.lab = lab
        self.server = lab.addresses[0]
        self.order: dict[str, int] = {}  # list (csv) -> when it was pushed (its number)
        self.count = 0
        self._done = asyncio.Event()

    def value(self, k: int) -> str:
        return f"{self.server},{fake_entry(k)}"

    async def run(self) -> None:
        async with self.lab.connected() as client:
            store = ConfigStore(client, self.lab.keys)
            while not self._done.is_set():
                started = time.monotonic()
                value = self.value(self.count)
                self.order[value] = self.count
                await store.set("host", value)
                self.count += 1
                await asyncio.sleep(max(0.0, PUSH_EVERY - (time.monotonic() - started)))

    def stop(self) -> None:
        self._done.set()


class CrashAgent:
    """One `agentd run`, killed and started again."""

    def __init__(self, folder: Path, name: str) -> None:
        self.folder = folder
        self.path = folder / "agent.properties"
        self.name = name
        args = ["-m", "agentd", "-v", "run", "--properties", str(self.path)]
        self.child = LoggedProcess(name, args)
        self.others: dict[str, str | None] = {}  # every key but host, as written

    def write(self, ids: Identities, host: str) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        guid = str(uuid.uuid4())
        lines = [f"host={host}", f"guid={guid}", f"name={self.name}", "zone=z1", "workers=4"]
        self.path.write_text(HEADER + "\n".join(lines) + "\n")
        ids.provision(self.folder, guid)
        props = AgentProperties.load(self.path)
        self.others = {k: v for k, v in props.as_dict().items() if k != "host"}

    async def start(self, tally: Tally) -> bool:
        """Start the agent; whether it connected and acked a list within COME_BACK seconds."""
        started = time.monotonic()
        try:
            await self.child.start(ready=r": connected to", timeout=COME_BACK)
            left = COME_BACK - (time.monotonic() - started)
            await self.child.wait_for(r": persisted host=", timeout=max(left, 1.0))
        except Exception:  # ChildError: it exited or said nothing in time
            tally.not_back += 1
            return False
        tally.back_s.append(time.monotonic() - started)
        return True

    def temp_files(self) -> list[Path]:
        return list(self.folder.glob(f"{TMP_PREFIX}*.tmp"))


PERSISTED = re.compile(r": persisted host=(\S+)@static ")


def judge(agent: CrashAgent, kill: Kill, pusher: Pusher, tally: Tally) -> list[Path]:
    """After a kill: the file parses, every line but `host` is as written, and `host` is the
    last list the agent said it persisted (old: the write did not land) or a list pushed after
    it (new: it landed, the log line had not been written yet). Returns the temporary files the
    kill left."""
    tally.kills += 1
    tally.delays.append(kill.delay)
    left = agent.temp_files()
    tally.temp_left += bool(left)
    try:
        props = AgentProperties.load(agent.path)
    except PropertiesError as exc:
        tally.bad.append(f"unparsable: {exc}")
        return left
    tally.parsed += 1
    others = {k: v for k, v in props.as_dict().items() if k != "host"}
    if others != agent.others or not agent.path.read_text().startswith(HEADER):
        tally.bad.append(f"other lines changed: {others}")
    value = (props.get("host") or "").removesuffix("@static")
    logged = [m.group(1) for line in agent.child.lines if (m := PERSISTED.search(line))]
    last = logged[-1] if logged else None
    if value == last:
        tally.old += 1
    elif value in pusher.order and pusher.order[value] > pusher.order.get(last or "", -1):
        tally.new += 1
    else:
        tally.bad.append(f"host={value!r} (last persisted {last!r})")
    return left


async def cycle(agent: CrashAgent, killer: WriteKiller, pusher: Pusher, tally: Tally) -> bool:
    """Kill the running agent inside a write, judge the file, start it again."""
    process = agent.child.process
    assert process is not None
    future = killer.arm(process.pid)
    try:
        async with asyncio.timeout(COME_BACK):
            kill = await future
            code = await process.wait()
            await agent.child.stop(timeout=5)
    except TimeoutError:
        killer.disarm()
        tally.bad.append(f"{agent.name}: no write to kill within {COME_BACK:.0f}s")
        return False
    if code != -signal.SIGKILL:
        tally.crashes += 1
    tally.tracebacks += tracebacks([agent.child])
    left = judge(agent, kill, pusher, tally)
    back = await agent.start(tally)
    tally.temp_kept += any(path.exists() for path in left)
    return back


async def warm_up(killers: list[WriteKiller]) -> None:
    """Until each agent's writes were timed WARMUP_WRITES times."""
    for _ in range(1200):
        if all(len(k.durations) >= WARMUP_WRITES for k in killers):
            break
        await asyncio.sleep(0.1)


@dataclass
class Stage:
    lab: BenchLab
    agents: list[CrashAgent] = field(default_factory=list)
    killers: list[WriteKiller] = field(default_factory=list)
    tally: Tally = field(default_factory=Tally)
    pusher: Pusher | None = None
    pushing: asyncio.Task[None] | None = None

    async def start(self, count: int, workdir: Path) -> Pusher:
        await self.lab.start()
        ids = await self.lab.identities()
        for index in range(1, count + 1):
            agent = CrashAgent(workdir / "agents" / f"agent-{index:04d}", f"crash-{index:04d}")
            agent.write(ids, f"{self.lab.addresses[0]}@static")
            self.agents.append(agent)
            killer = WriteKiller(agent.folder, random.Random(index))
            killer.start()
            self.killers.append(killer)
        self.pusher = pusher = Pusher(self.lab)
        self.pushing = asyncio.create_task(pusher.run())
        await asyncio.gather(*(a.start(self.tally) for a in self.agents))
        await warm_up(self.killers)
        return pusher

    async def kill_all(self, pusher: Pusher) -> None:
        """KILLS kills, shared by the agents, each agent killed in turn."""
        per_agent = -(-KILLS // len(self.agents))

        async def rounds(agent: CrashAgent, killer: WriteKiller, count: int) -> None:
            for _ in range(count):
                if not await cycle(agent, killer, pusher, self.tally):
                    return

        counts = [max(0, min(per_agent, KILLS - i * per_agent)) for i in range(len(self.agents))]
        await asyncio.gather(
            *(rounds(*each) for each in zip(self.agents, self.killers, counts, strict=True))
        )

    async def stop_pushing(self) -> None:
        if self.pusher is not None:
            self.pusher.stop()
        if self.pushing is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(self.pushing, 10)

    async def stop(self) -> None:
        for killer in self.killers:
            killer.stop()
        for agent in self.agents:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await agent.child.stop(signal.SIGTERM, timeout=10)
        await self.lab.stop()


async def settle(stage: Stage, pusher: Pusher, report: FaultReport, workdir: Path) -> None:
    """The pushes stopped: one last list, which every agent must hold (file and registry)."""
    lab, tally, agents = stage.lab, stage.tally, stage.agents
    final = f"{lab.addresses[0]},{fake_entry(pusher.count + 1)}"
    await lab.configure(host=final)
    report.recover_s, state = await wait_served(lab, len(agents), 30.0)
    async with lab.connected() as client:
        hosts = await load_hosts(client, lab.keys)
    held = {h.guid: ",".join(h.ms_list) for h in hosts}
    report.disconnected = len(agents) - state.connected
    report.wrong_list = state.behind + files_disagreeing(workdir / "agents", held)
    report.wrong_list += sum(",".join(h.ms_list) != final for h in hosts)
    children = [a.child for a in agents]
    report.crashes = tally.crashes + crashed(children, set())
    report.crashes += sum(not m.running for m in lab.members)
    report.tracebacks = tally.tracebacks + tracebacks([*children, *(m.child for m in lab.members)])
    connected = sum(h.state == HostState.CONNECTED for h in hosts)
    report.extra = figures(tally, stage.killers, pusher, connected)
    report.met = (
        tally.kills == KILLS
        and tally.parsed == KILLS
        and not tally.bad
        and tally.not_back == 0
        and tally.temp_kept == 0
        and report.disconnected == 0
        and report.wrong_list == 0
        and report.crashes == 0
        and report.tracebacks == 0
    )


async def run(agents: int, workdir: Path) -> FaultReport:
    report = FaultReport("agent-crash-writes", agents, TARGET)
    stage = Stage(BenchLab(workdir / "lab", servers=1, agents=0, port=0))
    switch = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)  # the killer threads' timing, against the event loop's
    try:
        pusher = await stage.start(agents, workdir)
        await stage.kill_all(pusher)
        await stage.stop_pushing()
        await settle(stage, pusher, report, workdir)
        return report
    finally:
        sys.setswitchinterval(switch)
        await stage.stop_pushing()
        await stage.stop()


def figures(
    tally: Tally, killers: list[WriteKiller], pusher: Pusher, connected: int
) -> dict[str, object]:
    durations = [d for k in killers for d in k.durations]
    windows = [w for k in killers for w in k.windows]
    return {
        "kills": tally.kills,
        "files_parsed": tally.parsed,
        "old_list": tally.old,
        "new_list": tally.new,
        "bad_files": len(tally.bad),
        "bad_examples": tally.bad[:5],
        "kills_before_rename": tally.temp_left,
        "temp_files_kept_after_restart": tally.temp_kept,
        "agents_not_back": tally.not_back,
        "connected_at_end": connected,
        "kill_window_ms_p50": round(statistics.median(windows or [0]) * 1000, 2),
        "write_ms_p50": round(statistics.median(durations) * 1000, 2) if durations else None,
        "kill_delay_ms_p50": round(statistics.median(tally.delays or [0]) * 1000, 2),
        "kill_delay_ms_max": round(max(tally.delays, default=0) * 1000, 2),
        "back_s_p50": round(statistics.median(tally.back_s), 2) if tally.back_s else None,
        "back_s_max": round(max(tally.back_s, default=0), 2),
        "lists_pushed": pusher.count,
    }
