"""Hostile and broken peers against real `msrv serve` processes: no frame or connection may take
the server, or another agent's session, down."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path

from common.protocol import ErrorCode, Ping, Pong, Startup
from common.tokens import create_token
from msctl.children import swarm_ready
from tests.support.agents import SwarmProcess, start_agent
from tests.support.fleet import Fleet, fleet

GUID = "g-hostile"
STARTUP = {
    "type": "startup",
    "guid": GUID,
    "name": "n",
    "host_type": "routing",
    "zone": "z1",
    "cluster": "",
    "ms_list": [],
    "algorithm": None,
    "dialled": "",
    "protocol": 1,
}


def startup_line(**fields: object) -> bytes:
    # ensure_ascii: a lone surrogate travels as the valid JSON escape \udc00
    return json.dumps({**STARTUP, **fields}, ensure_ascii=True).encode() + b"\n"


async def refused(f: Fleet, data: bytes, guid: str | None = None) -> tuple[str, str]:
    """What the server answers `data` with, from a client whose certificate is for `guid`
    (a fresh guid when None)."""
    client = await f.connect(0, guid)
    with contextlib.suppress(ConnectionError, OSError):
        await client.send_raw(data)
    error = await client.wait_error_and_close()
    return error.code, error.message


async def fresh_agent_is_served(f: Fleet, guid: str) -> None:
    client = await f.connect(0, guid)
    greeting = await client.startup(zone="z1")
    assert greeting.ready.server == f.addresses[0]


def test_hostile_startups_get_an_error_and_nothing_else_moves(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """A lone surrogate in guid or zone once killed the registry writer (every later startup
    hung); oversize and control-character fields were stored and printed."""

    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=1) as f:
            await f.set("host", f.addresses[0])
            token, _ = await create_token(f.redis, f.keys, ttl_seconds=600, uses=10)
            swarm = SwarmProcess(
                tmp_path / "swarm", 10, f"{f.addresses[0]}@static", "--token", token
            )
            await swarm.start(ready=swarm_ready(10), timeout=20)
            before = {h.guid: h.session for h in await f.hosts()}
            hostile = {
                "surrogate guid": startup_line(guid="\udc00"),
                "surrogate zone": startup_line(zone="z\udc00"),
                "10 KB guid": startup_line(guid="g" * 10_000),
                "ESC in name": startup_line(name="evil\x1b[2J"),
                "NUL in zone": startup_line(zone="z\x00"),
                "BEL in cluster": startup_line(cluster="\x07"),
                "space in type": startup_line(host_type="my type"),
                "junk list entry": startup_line(ms_list=["a b"]),
                "huge number": startup_line(protocol=1 << 70),
                "float protocol": startup_line(protocol=1.5),
            }
            for label, data in hostile.items():
                # the certificate is the startup's guid's, so that only the hostile value is
                # wrong; a guid that cannot be a certificate's CN (a lone surrogate, 10 KB) is
                # presented with a fresh guid's, and its refusal must still be bad_message
                code, message = await refused(f, data, None if "guid" in label else GUID)
                assert code == ErrorCode.BAD_MESSAGE, (label, code, message)
                assert len(message) < 200 and message.isprintable(), (label, message)
            assert "guid: is 10000 characters long" in f.servers[0].tail(60)
            await fresh_agent_is_served(f, "fresh-1")
            after = {h.guid: h.session for h in await f.hosts() if h.guid != "fresh-1"}
            assert after == before  # no hostile host stored, no real session taken over
            assert not swarm.matching("lost server")
            await swarm.stop()

    asyncio.run(scenario())


def test_deep_nesting_and_many_blank_lines(redis_url: str, namespace: str) -> None:
    """`[` x 2000 raised RecursionError in the connection callback; 50,000 blank lines recursed
    in read_message."""

    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=1) as f:
            code, _ = await refused(f, b"[" * 2000 + b"\n")
            assert code == ErrorCode.BAD_JSON
            code, _ = await refused(f, b'{"type": "ping", "seq": ' + b"[" * 5000 + b"\n")
            assert code == ErrorCode.BAD_JSON
            client = await f.connect()
            await client.send_raw(b"\n" * 50_000 + b"\r\n" * 1000)
            await client.send(Ping(5))
            assert await client.next() == Pong(5)
            await fresh_agent_is_served(f, "fresh-2")
            assert not any("RecursionError" in line for line in f.servers[0].lines)

    asyncio.run(scenario())


def test_connection_without_startup_is_closed_at_the_startup_timeout(
    redis_url: str, namespace: str
) -> None:
    """A connection that only pinged was held for ever."""

    async def scenario() -> None:
        async with fleet(
            redis_url, namespace, servers=1, server_options=("--startup-timeout", "1")
        ) as f:
            pinger, mute = await f.connect(), await f.connect()
            pinger.keepalive(0.2)
            for client in (pinger, mute):
                error = await client.wait_error_and_close(timeout=5)
                assert error.code == ErrorCode.STARTUP_TIMEOUT
            assert f.servers[0].count("sent no startup within 1s; closing") == 2
            # a real startup in time is not affected, and its session outlives the timeout:
            # a bare connection opened after it has been closed for it by then
            agent = await f.connect(0, "in-time")
            await agent.startup()
            agent.keepalive(0.2)
            late = await f.connect()
            assert (await late.wait_error_and_close()).code == ErrorCode.STARTUP_TIMEOUT
            assert not agent.closed.is_set()
            assert await agent.sync() == []

    asyncio.run(scenario())


def test_a_startup_read_late_does_not_take_over_a_newer_session(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """After a stall (SIGSTOP, SIGCONT) a server worked through startups its agents had given
    up long ago, claimed their hosts and marked them disconnected."""

    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=2) as f:
            stalled, healthy = f.servers
            host = ",".join(f.addresses)
            await f.set("host", host)
            token, _ = await create_token(f.redis, f.keys, ttl_seconds=600, uses=1)
            guid = "g-a1"
            # Over TLS a server stalled before the handshake ends gets no startup at all (the
            # agent gives up in the handshake): the startup read late is one sent after the
            # handshake, on a test client's connection standing for the agent's.
            given_up = await f.connect(0, guid)
            attempt = time.time_ns() // 1_000_000  # the agent's clock: older than its next try
            assert stalled.process is not None
            stalled.process.send_signal(signal.SIGSTOP)
            try:
                # the startup waits in the stalled server's socket buffer; the agent gives up
                # on that server (as on every try there) and lands on the healthy one
                await given_up.send(
                    Startup(guid, "a1", "routing", "z1", "", [], None, "", 1, attempt)
                )
                agent = await start_agent(
                    tmp_path / "a1",
                    "a1",
                    f"{host}@static",
                    guid=guid,
                    token=token,
                    **{"connect.timeout": "1"},
                )
                await agent.wait_connected(healthy.address)
            finally:
                stalled.process.send_signal(signal.SIGCONT)
            error = await given_up.wait_error_and_close()
            assert error.code == ErrorCode.SUPERSEDED
            await stalled.wait_for("refused: the host has a newer live session")
            (record,) = await f.hosts()
            assert (record.server, record.state) == ("ms2", "connected")
            # the healthy session is intact: a change reaches the agent through it, acked
            await f.set("indirect.agent.lb.check.interval", "7")
            await f.wait_hosts(lambda hosts: hosts[0].check_interval == 7)
            assert not agent.matching("lost server")
            await agent.stop()

    asyncio.run(scenario())
