"""The server's own life: a signal during startup, a shared task that fails."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import ssl

import pytest

import msrv.server
from common.connection import redis_from_url
from common.records import ServerState, load_servers
from msrv.config import ServerSettings
from msrv.server import Server
from tests.support.msrv_process import MsrvProcess
from tests.support.redis_server import free_port
from tests.support.tls import identity, namespace_ca
from tests.support.wire_client import WireClient


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_redis_is_unreachable_at_start_stops_the_server(
    namespace: str, sig: signal.Signals
) -> None:
    """It used to retry for ever and ignore both signals (SIGKILL was needed)."""

    async def scenario() -> None:
        nowhere = f"redis://127.0.0.1:{free_port()}/0"
        server = MsrvProcess("ms1", nowhere, namespace)
        await server.start(ready="Redis unreachable")
        assert await server.stop(sig, timeout=5) == 0
        assert server.matching("stopped before it started")

    asyncio.run(scenario())


def test_a_shared_task_that_fails_stops_the_server_with_exit_1(
    redis_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A failed shared task (the registry writer, killed by one hostile startup) once left a
    half-alive server that listened and answered pings but completed no startup. The test makes
    a bug of its own in the resync task, since hostile input no longer reaches one."""

    async def scenario() -> int:
        port = free_port()
        server = Server(
            ServerSettings.build(f"127.0.0.1:{port}", None, "ms1", redis_url, namespace)
        )
        connected = asyncio.Event()

        async def failing_resync() -> None:
            await connected.wait()
            raise RuntimeError("a bug in a shared task")

        server.ctx.resync.run = failing_resync  # type: ignore[method-assign]
        tls = await _identity(redis_url, namespace, "h1")
        serving = asyncio.create_task(server.serve())
        client = await _connect_when_listening(port, serving, tls)
        await client.startup("h1")
        connected.set()
        code = await asyncio.wait_for(serving, 10)
        error = await client.wait_error_and_close()
        assert error.code == "shutting_down"
        await client.close()
        with pytest.raises(OSError):
            await WireClient.connect("127.0.0.1", port, tls, timeout=2)
        redis = redis_from_url(redis_url)
        (record,) = await load_servers(redis, server.keys)
        await redis.aclose()
        assert record.state == ServerState.STOPPED
        return code

    with caplog.at_level(logging.INFO):
        assert asyncio.run(scenario()) == 1
    assert "shared task 'resync' ended (RuntimeError('a bug in a shared task'))" in caplog.text


async def _identity(redis_url: str, namespace: str, guid: str) -> ssl.SSLContext:
    """A client certificate for `guid` from the namespace's CA (the server loads the same CA
    when it starts, whichever of the two creates it)."""
    redis = redis_from_url(redis_url)
    try:
        return identity(await namespace_ca(redis, namespace), guid)
    finally:
        await redis.aclose()


async def _connect_when_listening(
    port: int, serving: asyncio.Task[int], tls: ssl.SSLContext
) -> WireClient:
    async with asyncio.timeout(10):
        while True:
            if serving.done():
                raise AssertionError(f"the server ended: {serving.result()}")
            try:
                return await WireClient.connect("127.0.0.1", port, tls, timeout=1)
            except OSError:
                await asyncio.sleep(0.05)


def test_a_shutdown_that_hangs_is_cut_short_with_exit_1(
    redis_url: str,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever a shutdown waits for, SIGTERM ends the process within shutdown_timeout plus a
    grace period (a demo once saw a server outlive its supervisor's 10 s wait)."""
    exits: list[int] = []

    async def scenario() -> None:
        port = free_port()
        settings = ServerSettings.build(f"127.0.0.1:{port}", None, "ms1", redis_url, namespace)
        server = Server(dataclasses.replace(settings, shutdown_timeout=0.2))
        exited = asyncio.Event()

        def fake_exit(code: int) -> None:
            exits.append(code)
            exited.set()

        async def hanging_deregister() -> None:
            await asyncio.Event().wait()

        monkeypatch.setattr(msrv.server.os, "_exit", fake_exit)
        server.servers.deregister = hanging_deregister  # type: ignore[method-assign]
        tls = await _identity(redis_url, namespace, "h1")
        serving = asyncio.create_task(server.serve())
        await (await _connect_when_listening(port, serving, tls)).close()
        server._on_signal()
        await asyncio.wait_for(exited.wait(), 0.2 + msrv.server.SHUTDOWN_GRACE + 2)
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving

    with caplog.at_level(logging.INFO):
        asyncio.run(scenario())
    assert exits == [1]
    assert "shutdown not done after 3s (at: deregistering); exiting now" in caplog.text
