"""`agentd swarm`: many agents in one process, each with its own agent.properties, running the
same Agent class as `agentd run`. For labs and benchmarks. An agent that every server refused
for good stops the whole swarm (its servers would refuse the others too)."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import resource
from dataclasses import dataclass
from pathlib import Path

from agentd import config
from agentd.agent import Agent
from agentd.config import AgentSettings
from agentd.failover import EveryServerRefusedError
from agentd.keystore import Keystore
from common.errors import PropertiesError
from common.gc_pacer import GcPacer
from common.properties import AgentProperties, update_properties

logger = logging.getLogger(__name__)

SUMMARY_EVERY = 1.0  # seconds between summary lines (written only when something changed)
PERSIST_THREADS = 16  # fsync releases the GIL: a pool overlaps the agents' file writes
QUIET_ABOVE = 50  # agents; a larger swarm logs summaries instead of a line per agent event
DIALS_AT_ONCE = 64  # connection attempts (TLS handshakes) of a swarm's agents in flight at once


@dataclass(frozen=True)
class SwarmSpec:
    count: int
    directory: Path
    host: str | None = None
    zone: str = config.DEFAULT_ZONE
    cluster: str = ""
    host_type: str = config.DEFAULT_TYPE
    check_interval: int | None = None
    extra: tuple[tuple[str, str], ...] = ()  # more keys for new files
    token: str | None = None  # join token for agents that have no certificate yet


def raise_open_file_limit(wanted: int) -> int:
    """Raise the soft RLIMIT_NOFILE towards `wanted` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


def prepare_properties(spec: SwarmSpec, index: int) -> Path:
    """DIR/agent-NNNN/agent.properties, created from the swarm's options when missing."""
    folder = spec.directory / f"agent-{index:04d}"
    path = folder / "agent.properties"
    if path.exists():
        if spec.token is not None and not Keystore(folder).key_path.exists():
            try:
                update_properties(path, {config.TOKEN: spec.token})
            except OSError as exc:
                raise PropertiesError(f"{path}: cannot write: {exc.strerror or exc}") from None
        return path
    if spec.host is None:
        raise PropertiesError(f"{path}: missing, and no --host given to create it")
    props = AgentProperties.empty(path)
    props.set(config.NAME, f"{spec.directory.name}-{index:04d}")
    props.set(config.HOST, spec.host)
    props.set(config.ZONE, spec.zone)
    props.set(config.TYPE, spec.host_type)
    if spec.cluster:
        props.set(config.CLUSTER, spec.cluster)
    if spec.check_interval is not None:
        props.set(config.CHECK_INTERVAL, str(spec.check_interval))
    for key, value in spec.extra:
        props.set(key, value)
    if spec.token is not None:
        props.set(config.TOKEN, spec.token)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        props.save()
    except OSError as exc:
        raise PropertiesError(f"{path}: cannot create: {exc.strerror or exc}") from None
    return path


def load_agents(spec: SwarmSpec) -> list[Agent]:
    """The swarm's agents; PropertiesError for a bad file, a broken keystore, or an agent with
    neither a certificate nor a token."""
    paths = [prepare_properties(spec, i) for i in range(1, spec.count + 1)]
    agents = [Agent(AgentSettings.from_properties(p)) for p in paths]
    for agent in agents:
        agent.trust.state()
    return agents


def summary(agents: list[Agent]) -> str:
    per_server = collections.Counter(str(a.server) for a in agents if a.server is not None)
    connected = sum(per_server.values())
    spread = ", ".join(f"{s}={n}" for s, n in sorted(per_server.items())) or "-"
    return f"swarm: {connected}/{len(agents)} agents connected ({spread})"


class Swarm:
    def __init__(self, agents: list[Agent]) -> None:
        self.agents = agents
        self._stopping = asyncio.Event()
        self.losses: collections.Counter[str] = collections.Counter()
        self._refused: EveryServerRefusedError | None = None
        gate = asyncio.Semaphore(DIALS_AT_ONCE)
        for agent in agents:
            agent.dial_gate = gate
        if len(agents) > QUIET_ABOVE:
            for agent in agents:
                agent.losses = self.losses

    def stop(self) -> None:
        self._stopping.set()
        for agent in self.agents:
            agent.stop()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(PERSIST_THREADS))
        async with asyncio.TaskGroup() as group:
            for agent in self.agents:
                group.create_task(self._run_agent(agent), name=agent.label)
            group.create_task(self._report())
            group.create_task(GcPacer("swarm").run(self._stopping))
        logger.info("%s", summary(self.agents))
        if self._refused is not None:
            raise self._refused

    async def _run_agent(self, agent: Agent) -> None:
        try:
            await agent.run()
        except EveryServerRefusedError as exc:
            if self._refused is None:
                self._refused = exc
            self.stop()

    async def _report(self) -> None:
        last = ""
        while not self._stopping.is_set():
            for what, count in sorted(self.losses.items()):
                logger.warning("swarm: lost server %s (%d agents)", what, count)
            self.losses.clear()
            line = summary(self.agents)
            if line != last:
                logger.info("%s", line)
                last = line
            try:
                async with asyncio.timeout(SUMMARY_EVERY):
                    await self._stopping.wait()
            except TimeoutError:
                continue
