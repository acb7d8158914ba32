"""Real `agentd run` and `agentd swarm` processes for tests.

Every agent needs credentials (DESIGN.md, Trust): `ca=` gives it a keystore issued straight
from that CA (tests/support/keystores.py, for tests that are not about enrollment); a `token`
property (a join token of the namespace) has it enroll at start, for real.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from common.ca import CertificateAuthority
from common.properties import AgentProperties
from tests.support.keystores import provision
from tests.support.logged_process import LoggedProcess


def write_properties(
    folder: Path, name: str, host: str, *, ca: CertificateAuthority | None = None, **extra: str
) -> Path:
    """folder/agent.properties for agent `name` on `host`, with the `extra` keys (`token=` among
    them for an agent that enrolls). With `ca`, the agent is enrolled already: a `guid` line
    (unless given) and a keystore for that guid issued by `ca`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "agent.properties"
    if ca is not None:
        extra.setdefault("guid", f"g-{name}-{uuid.uuid4().hex[:12]}")
        provision(folder, ca, extra["guid"])
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


async def start_agent(
    folder: Path, name: str, host: str, *, ca: CertificateAuthority | None = None, **extra: str
) -> AgentProcess:
    """Write the agent's properties (and keystore, with `ca`), start it, wait until it is
    connected. It needs `ca` or a `token`."""
    if ca is None and "token" not in extra:
        raise TypeError("start_agent: give the agent credentials: ca= or token=")
    agent = AgentProcess(write_properties(folder, name, host, ca=ca, **extra), name)
    await agent.start(ready=rf"agent {re.escape(name)}: connected to")
    return agent


def provision_swarm(
    directory: Path, count: int, host: str, ca: CertificateAuthority, **extra: str
) -> None:
    """The properties files `agentd swarm --dir directory` would create (agent-NNNN, named
    `<directory name>-NNNN`), each agent enrolled already (a keystore issued by `ca`)."""
    for index in range(1, count + 1):
        name = f"{directory.name}-{index:04d}"
        write_properties(directory / f"agent-{index:04d}", name, host, ca=ca, **extra)


class SwarmProcess(LoggedProcess):
    """`agentd swarm`; its agents need credentials: `token` (one join token with a use for each
    agent not enrolled yet, passed as --token) or keystores written first (`provision_swarm`)."""

    def __init__(
        self, directory: Path, count: int, host: str, *extra: str, token: str | None = None
    ) -> None:
        args = ["-m", "agentd", "swarm", "--count", str(count), "--dir", str(directory)]
        if token is not None:
            args += ["--token", token]
        super().__init__(f"swarm {directory.name}", [*args, "--host", host, *extra])
        self.directory = directory
        self.size = count

    def properties(self) -> list[Path]:
        return sorted(self.directory.glob("agent-*/agent.properties"))
