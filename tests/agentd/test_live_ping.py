"""Live ping settings, agent side: an `ms_list` carries ping.interval and ping.timeout, and the
agent takes them for its session (next ping, silence limit) and acks naming the list as pushed.
An in-process agent against a scripted server on a real socket (TLS, with certificates from a CA
made for the test)."""

import asyncio
import contextlib
import time

import pytest

from agentd.agent import Agent
from agentd.config import AgentSettings
from common import protocol
from common.ca import CertificateAuthority
from common.protocol import Ack, MsList, Ping, Ready
from tests.support.agents import host_value, write_properties
from tests.support.keystores import server_tls


class ScriptedServer:
    """Each connection: reads the startup, sends `ready` (ping every 60 s, timeout x3), then, on
    the first connection only, `push`. Never answers pings. What the first connection receives
    goes to `received` as (message, arrival time), None at its end."""

    def __init__(self, push):
        self.push = push  # a function of the server's own address
        self.received = asyncio.Queue()
        self.pushed_at = 0.0
        self.connections = 0
        self.address = ""

    async def serve(self, reader, writer):
        self.connections += 1
        first = self.connections == 1
        await protocol.read_message(reader)
        writer.write(protocol.encode(Ready(1, self.address, 60, 3, 0)))
        if first:
            writer.write(protocol.encode(self.push(self.address)))
            self.pushed_at = time.monotonic()
        await writer.drain()
        while True:
            message = await protocol.read_message(reader)
            if first:
                self.received.put_nowait((message, time.monotonic()))
            if message is None:
                break
        writer.close()

    async def next(self, timeout=10.0):
        async with asyncio.timeout(timeout):
            return await self.received.get()


@contextlib.asynccontextmanager
async def running(tmp_path, push):
    """A scripted server pushing `push(its address)`, and an agent whose list is that address."""
    ca = CertificateAuthority.create("live-ping")
    server = ScriptedServer(push)
    listener = await asyncio.start_server(
        server.serve, "127.0.0.1", 0, limit=protocol.READER_LIMIT, ssl=server_tls(ca)
    )
    server.address = f"127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    path = write_properties(tmp_path, "hv0", server.address, ca=ca)
    agent = Agent(AgentSettings.from_properties(path))
    task = asyncio.create_task(agent.run())
    try:
        yield server, agent
    finally:
        agent.stop()
        await task
        listener.close()


@pytest.mark.timeout(30)
def test_an_ms_list_changes_the_ping_settings_of_the_session_and_is_acked_as_pushed(tmp_path):
    def push(address):
        return MsList([address, "127.0.0.1:9"], "static", 0, 7, ping_interval=1, ping_timeout=2)

    async def scenario():
        async with running(tmp_path, push) as (server, agent):
            ack, _ = await server.next()
            assert ack == Ack(7, [server.address, "127.0.0.1:9"], "static")
            assert host_value(agent.settings.path) == f"{server.address},127.0.0.1:9@static"
            ping, at = await server.next()
            assert isinstance(ping, Ping)
            assert 0.8 <= at - server.pushed_at < 1.5  # the new 1 s interval, not 60 s
            # no pongs: silent past the new 1 s x 2 (the old limit was 60 s x 3), seen at a tick
            while (message := await server.next())[0] is not None:
                assert isinstance(message[0], Ping)
            assert 2.0 <= message[1] - server.pushed_at < 3.5

    asyncio.run(scenario())
