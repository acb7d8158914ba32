"""An agent that moves, make-before-break, to a server it is already on under another address
(behind a TCP pass-through such as HAProxy) keeps the one new session, and the registry says so.

Found by bench/faults.py hung-server while the agents moved behind HAProxy: the server hangs up
on the old session when the new one of the same host starts (`superseded`), and the agent read
that before the new session's `ready`. Its session loop then dialled once more beside the move
under way; the move took its new session, the loop's extra one was closed, and that extra
session, registered last, owned the host in the registry: its close marked the host
disconnected while the agent stayed connected, until the server's next re-assert hung up on
the agent's real session (30 s later).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

from tests.support.agents import start_agent
from tests.support.fleet import fleet
from tests.support.redis_server import free_port

PROXY_HOST = "127.0.0.2"
DELAY = 0.2  # seconds


class Forwarder:
    """A TCP pass-through on PROXY_HOST to one server (TLS goes through untouched). What the
    server sends takes DELAY more to reach the agent than on a direct connection, so that the
    server's hang-up of the old session always comes before the new session's `ready` (the
    order the race needs; without the delay it comes first most of the time)."""

    def __init__(self, target: str) -> None:
        self.target_host, port = target.rsplit(":", 1)
        self.target_port = int(port)
        self.address = f"{PROXY_HOST}:{free_port(PROXY_HOST)}"
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> Forwarder:
        host, port = self.address.rsplit(":", 1)
        self.listener = await asyncio.start_server(self._handle, host, int(port))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.listener.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for writer in self.writers:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        await self.listener.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        self.writers.append(up_writer)
        for source, sink, delay in ((reader, up_writer, 0.0), (up_reader, writer, DELAY)):
            task = asyncio.create_task(self._pipe(source, sink, delay))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, delay: float) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await source.read(65536):
                await asyncio.sleep(delay)
                sink.write(data)
                await sink.drain()
        sink.close()


def test_a_move_to_the_same_server_keeps_one_session_and_the_registry_right(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        options = ("--tls-san", PROXY_HOST)
        async with fleet(
            redis_url, namespace, servers=1, server_options=options, verbose=True
        ) as f:
            (server,) = f.servers
            await f.set("host", server.address)
            async with Forwarder(server.address) as proxy:
                agent = await start_agent(tmp_path / "a1", "a1", server.address, ca=await f.ca())
                await f.set("host", proxy.address)
                await agent.wait_for(
                    rf"switched {re.escape(server.address)} -> {re.escape(proxy.address)}"
                )
                hosts = await f.wait_hosts(
                    lambda hs: hs[0].state == "connected" and hs[0].ms_list == (proxy.address,)
                )
                await asyncio.sleep(2.0)  # an extra session would have come and gone by now
                (record,) = await f.hosts()  # the session the move opened owns the host:
                assert (record.session, record.state) == (hosts[0].session, "connected")
                assert server.count(r"started \(zone") == 2, server.tail(20)  # first, the move
                assert not agent.matching("lost server"), agent.tail(20)
                assert agent.count("connected to") == 1, agent.tail(20)
                await agent.stop()

    asyncio.run(scenario())
