"""Real `agentd run` and `agentd swarm` processes for tests."""

from __future__ import annotations

import re
from pathlib import Path

from common.properties import AgentProperties
from tests.support.logged_process import LoggedProcess


def write_properties(folder: Path, name: str, host: str, **extra: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agent.properties"
    lines = [f"# test agent {name}", f"host={host}", f"name={name}", "zone=z1"]
    lines += [f"{key}={value}" for key, value in extra.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def host_value(path: Path) -> str | None:
    return AgentProperties.load(path).get("host")


class AgentProcess(LoggedProcess):
    def __init__(self, path: Path, name: str) -> None:
        super().__init__(name, ["-m", "agentd", "-v", "run", "--properties", str(path)])
        self.path = path

    async def wait_connected(self, address: str, timeout: float = 10.0, *, count: int = 1) -> float:
        """Wait for the `count`-th time this agent lands on `address` (connect or switch)."""
        where = re.escape(address)
        pattern = rf"(connected to {where}( |$)|switched \S+ -> {where}( |$))"
        return await self.wait_for(pattern, timeout, count=count)


async def start_agent(folder: Path, name: str, host: str, **extra: str) -> AgentProcess:
    agent = AgentProcess(write_properties(folder, name, host, **extra), name)
    await agent.start(ready=rf"agent {re.escape(name)}: connected to")
    return agent


class SwarmProcess(LoggedProcess):
    def __init__(self, directory: Path, count: int, host: str, *extra: str) -> None:
        args = ["-m", "agentd", "swarm", "--count", str(count), "--dir", str(directory)]
        super().__init__(f"swarm {directory.name}", [*args, "--host", host, *extra])
        self.directory = directory
        self.size = count

    def properties(self) -> list[Path]:
        return sorted(self.directory.glob("agent-*/agent.properties"))
