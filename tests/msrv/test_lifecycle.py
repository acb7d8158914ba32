"""Sessions over real sockets: bad input, heartbeats, superseded sessions, graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import json

from common.protocol import Ack, Error, ErrorCode, MsList, Ping, Pong, Startup, encode
from common.records import HostState, ServerState
from tests.support.fleet import fleet
from tests.support.tls import identity
from tests.support.wire_client import WireClient

STARTUP_WITHOUT_GUID = json.dumps(
    {
        "type": "startup",
        "name": "n",
        "host_type": "routing",
        "zone": "z",
        "cluster": "c",
        "ms_list": [],
        "algorithm": None,
        "dialled": "",
        "protocol": 1,
    }
).encode()

BAD_INPUTS = {
    "garbage": (b"\x00\xff\xfe\x80 not even text\n", ErrorCode.BAD_JSON),
    "one MiB line": (b"x" * (1 << 20) + b"\n", ErrorCode.LINE_TOO_LONG),
    "invalid JSON": (b'{"type": "startup", guid: }\n', ErrorCode.BAD_JSON),
    "startup without guid": (STARTUP_WITHOUT_GUID + b"\n", ErrorCode.BAD_MESSAGE),
    "not an object": (b"[1, 2, 3]\n", ErrorCode.BAD_MESSAGE),
}


async def _send_ignoring_resets(client: WireClient, data: bytes) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        await client.send_raw(data)


def test_bad_input_gets_error_and_close_others_unaffected(redis_url: str, namespace: str) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=1) as f:
            await f.set("host", "a,b")
            good = [await f.connect(0, f"good{i}") for i in range(3)]
            for client in good:
                await client.startup()
            for label, (data, code) in BAD_INPUTS.items():
                bad = await f.connect()
                sender = asyncio.create_task(_send_ignoring_resets(bad, data))
                error = await bad.wait_error_and_close()
                await sender
                assert error.code == code, label
            # unknown message types are logged and ignored, the session goes on
            odd = await f.connect(0, "odd")
            await odd.send_raw(b'{"type": "telemetry", "cpu": 3}\n')
            assert (await odd.startup()).ms_list is not None
            for client in good:
                assert await client.sync() == []
                assert not client.closed.is_set()
            assert f.servers[0].count("unknown message type 'telemetry'") == 1
            assert {h.name for h in await f.hosts()} == {"good0", "good1", "good2", "odd"}

    asyncio.run(scenario())


def test_silent_agent_is_disconnected_after_ping_timeout(redis_url: str, namespace: str) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=1) as f:
            await f.set("ping.interval", "1")
            await f.set("ping.timeout", "2")
            alive, silent = await f.connect(0, "alive"), await f.connect(0, "silent")
            ready = (await alive.startup()).ready
            assert (ready.ping_interval, ready.ping_timeout) == (1, 2)
            alive.keepalive(0.3)
            await silent.startup()
            async with asyncio.timeout(6):
                await silent.closed.wait()
            await f.servers[0].wait_for("silent for 2s; disconnected")
            assert not alive.closed.is_set()
            assert await alive.send(Ping(7)) is None and await alive.next() == Pong(7)
            states = {h.name: h.state for h in await f.hosts()}
            assert states == {"alive": HostState.CONNECTED, "silent": HostState.DISCONNECTED}

    asyncio.run(scenario())


def test_racing_sessions_of_one_guid_newer_wins(redis_url: str, namespace: str) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=2) as f:
            await f.set("host", "a,b")
            old = await f.connect(0, "twin")
            await old.startup(name="old-name")
            new = await f.connect(1, "twin")
            await new.startup(name="new-name")
            # the old server has not noticed yet: its late writes must not win
            await old.send(Ack(1, ["a", "b"], "static"))
            error = await old.wait_error_and_close()
            assert error.code == ErrorCode.SUPERSEDED
            await f.servers[0].wait_for("1 session ended")
            result = await f.msctl("hosts", "--json")
            assert result.exit_code == 0, result.output
            (host,) = json.loads(result.output)
            assert (host["server"], host["state"], host["name"]) == ("ms2", "connected", "new-name")
            assert await new.sync() == []

    asyncio.run(scenario())


def test_old_session_closing_late_does_not_mark_newer_disconnected(
    redis_url: str, namespace: str
) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=2) as f:
            old = await f.connect(0, "twin")
            await old.startup()
            new = await f.connect(1, "twin")
            await new.startup()
            await old.close()
            await f.servers[0].wait_for("1 session ended")
            (host,) = await f.hosts()
            assert (host.server, host.state) == ("ms2", HostState.CONNECTED)

    asyncio.run(scenario())


def test_sigterm_closes_sessions_marks_hosts_and_deregisters(
    redis_url: str, namespace: str
) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=2) as f:
            clients = [await f.connect(0, "h0"), await f.connect(0, "h1"), await f.connect(1, "h2")]
            for client in clients:
                await client.startup()
            assert await f.servers[0].stop() == 0
            for client in clients[:2]:
                error = await client.wait_error_and_close()
                assert (error.code, error.retryable) == (ErrorCode.SHUTTING_DOWN, True)
            states = {h.name: (h.state, h.server) for h in await f.hosts()}
            assert states == {
                "h0": (HostState.DISCONNECTED, "ms1"),
                "h1": (HostState.DISCONNECTED, "ms1"),
                "h2": (HostState.CONNECTED, "ms2"),
            }
            result = await f.msctl("servers", "--json")
            servers = {s["id"]: s for s in json.loads(result.output)}
            assert servers["ms1"]["state"] == ServerState.STOPPED
            assert (servers["ms2"]["state"], servers["ms2"]["address"]) == (
                ServerState.RUNNING,
                f.addresses[1],
            )
            # the stopped server refuses nobody: it is gone
            tls = identity(await f.ca(), "h3")
            try:
                await WireClient.connect("127.0.0.1", f.servers[0].port, tls, timeout=2)
            except OSError:
                pass
            else:
                raise AssertionError("ms1 still accepts connections")

    asyncio.run(scenario())


def test_startup_for_another_protocol_is_refused(redis_url: str, namespace: str) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=1) as f:
            client = await f.connect(0, "g")
            startup = Startup("g", "n", "routing", "z", "c", [], None, "", protocol=99)
            await client.send(startup)
            error = await client.wait_error_and_close()
            assert isinstance(error, Error) and error.code == ErrorCode.UNSUPPORTED_PROTOCOL
            assert await f.hosts() == []
            assert not [m for m in client.received if isinstance(m, MsList)]
            assert encode(Ping()) == b'{"type":"ping","seq":0}\n'

    asyncio.run(scenario())
