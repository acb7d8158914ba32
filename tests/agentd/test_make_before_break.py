"""Failback is make-before-break: the agent closes its old session only after the new one is
ready, and keeps it when the preferred server accepts the connection but never completes the
startup. A real agent between two scripted servers on real sockets (TLS, with certificates from a
CA made for the test)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agentd.agent import Agent
from agentd.config import AgentSettings
from common import protocol
from common.ca import CertificateAuthority
from common.protocol import Ready
from tests.support.agents import write_properties
from tests.support.keystores import server_tls
from tests.support.redis_server import free_port

CA = CertificateAuthority.create("make-before-break")

CHECK_INTERVAL = 1


class Scripted:
    """Answers each startup with `ready` (check interval 1 s) after `delay`, unless `mute`;
    records when it sent `ready` and when each connection ended."""

    def __init__(self, port: int, *, mute: bool = False, delay: float = 0.0) -> None:
        self.address = f"127.0.0.1:{port}"
        self.port, self.mute, self.delay = port, mute, delay
        self.ready_at: list[float] = []
        self.ended_at: list[float] = []
        self.startups = asyncio.Event()
        self.ended = asyncio.Event()

    async def listen(self) -> None:
        self.listener = await asyncio.start_server(
            self.serve, "127.0.0.1", self.port, ssl=server_tls(CA)
        )

    async def close(self) -> None:
        self.listener.close()
        await self.listener.wait_closed()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if await protocol.read_message(reader) is None:
                return
            self.startups.set()
            if not self.mute:
                await asyncio.sleep(self.delay)
                writer.write(protocol.encode(Ready(1, self.address, 60, 3, CHECK_INTERVAL)))
                await writer.drain()
                self.ready_at.append(time.monotonic())
            while await reader.read(4096):
                pass
        except ConnectionError:
            pass
        finally:
            self.ended_at.append(time.monotonic())
            self.ended.set()
            writer.close()


async def failback(
    tmp_path: Path, preferred: Scripted
) -> tuple[Agent, asyncio.Task[None], Scripted]:
    """An agent on the second entry of its list (the first is down), then the first is up."""
    current = Scripted(free_port())
    await current.listen()
    path = write_properties(tmp_path, "hv0", f"{preferred.address},{current.address}@static", ca=CA)
    path.write_text(path.read_text() + "connect.timeout=1\n")
    agent = Agent(AgentSettings.from_properties(path))
    task = asyncio.create_task(agent.run())
    await asyncio.wait_for(current.startups.wait(), 5)
    await preferred.listen()
    await asyncio.wait_for(preferred.startups.wait(), CHECK_INTERVAL * 3)
    return agent, task, current


@pytest.mark.timeout(30)
def test_the_old_session_closes_only_after_the_new_one_is_ready(tmp_path: Path) -> None:
    async def scenario() -> None:
        preferred = Scripted(free_port(), delay=0.3)  # a slow startup: the window is visible
        agent, task, current = await failback(tmp_path, preferred)
        await asyncio.wait_for(current.ended.wait(), 5)
        assert preferred.ready_at and current.ended_at[0] >= preferred.ready_at[0]
        assert agent.server is not None and str(agent.server) == preferred.address
        agent.stop()
        await task
        await preferred.close()
        await current.close()

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_a_preferred_server_that_never_completes_the_startup_is_not_taken(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        preferred = Scripted(free_port(), mute=True)
        agent, task, current = await failback(tmp_path, preferred)
        await asyncio.sleep(2.5)  # past the connect timeout (1 s) and another check
        assert current.ended_at == []  # the old session was never closed
        assert agent.server is not None and str(agent.server) == current.address
        agent.stop()
        await task
        await preferred.close()
        await current.close()

    asyncio.run(scenario())
