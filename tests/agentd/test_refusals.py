"""Real `agentd run` and `agentd swarm` processes against tiny servers that refuse every
startup: a refusal that retrying cannot cure, from every server of a pass, stops the agent with
exit code 2 and one line; one server that may answer later keeps it retrying. The servers
speak TLS with a certificate from a CA made for the test, which issued the agents' keystores."""

import asyncio
import contextlib
import json
import signal
import socket

import pytest

from common.ca import CertificateAuthority
from tests.support.agents import AgentProcess, SwarmProcess, provision_swarm, write_properties
from tests.support.keystores import server_tls

FAST_BACKOFF = {"failover.backoff.initial": "0.05", "failover.backoff.max": "0.2"}
FOR_GOOD = ("unsupported_protocol", "protocol 1 not supported (this server speaks 2)", False)
FOR_NOW = ("unavailable", "server cannot register hosts now; retry", True)


@pytest.fixture
def ca():
    return CertificateAuthority.create("refusals")


@contextlib.asynccontextmanager
async def refusing_server(ca, code, message, retryable):
    """Answers every startup line with an `error`, then closes; yields its address."""
    refusal = {"type": "error", "code": code, "message": message, "retryable": retryable}

    async def refuse(reader, writer):
        with contextlib.suppress(ConnectionError):
            await reader.readline()
            writer.write(json.dumps(refusal).encode() + b"\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0, ssl=server_tls(ca))
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


def closed_port() -> str:
    """An address where nothing listens (connection refused at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


async def exit_code(process, timeout):
    """Wait for the process to end by itself; its code."""
    async with asyncio.timeout(timeout):
        await process.process.wait()
    return await process.stop()


def error_lines(process):
    return [line for line in process.lines if line.startswith("Error:")]


@pytest.mark.timeout(30)
def test_every_server_refusing_for_good_stops_the_agent_with_exit_2(ca, tmp_path):
    async def scenario():
        async with refusing_server(ca, *FOR_GOOD) as a, refusing_server(ca, *FOR_GOOD) as b:
            path = write_properties(tmp_path / "hv0", "hv0", f"{a},{b}", ca=ca, **FAST_BACKOFF)
            agent = await AgentProcess(path, "hv0").start()
            code = await exit_code(agent, timeout=10)
        assert code == 2, agent.tail()
        reason = f"refused: {FOR_GOOD[1]}"
        assert error_lines(agent) == [
            f"Error: agent hv0: every server refused it: {a}: {reason}; {b}: {reason}"
        ], agent.tail()
        assert not agent.matching("Traceback"), agent.tail()
        assert not agent.matching("no server reachable"), agent.tail()  # no second pass

    asyncio.run(scenario())


@pytest.mark.timeout(30)
@pytest.mark.parametrize("other", ["refused for now", "unreachable"])
def test_a_server_that_may_answer_later_keeps_the_agent_retrying(other, ca, tmp_path):
    async def scenario():
        async with contextlib.AsyncExitStack() as servers:
            a = await servers.enter_async_context(refusing_server(ca, *FOR_GOOD))
            if other == "unreachable":
                b = closed_port()
            else:
                b = await servers.enter_async_context(refusing_server(ca, *FOR_NOW))
            path = write_properties(tmp_path / "hv0", "hv0", f"{a},{b}", ca=ca, **FAST_BACKOFF)
            agent = await AgentProcess(path, "hv0").start()
            await agent.wait_for(r"agent hv0: no server reachable \(pass 3: ", timeout=10)
            code = await agent.stop(signal.SIGTERM)
        assert code == 0, agent.tail()
        assert error_lines(agent) == [], agent.tail()
        assert agent.count(r"no server reachable \(pass 1: .*protocol 1 not supported") == 1

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_every_server_refusing_for_good_stops_a_swarm_with_exit_2(ca, tmp_path):
    async def scenario():
        async with refusing_server(ca, *FOR_GOOD) as a, refusing_server(ca, *FOR_GOOD) as b:
            provision_swarm(tmp_path / "swarm", 3, f"{a},{b}", ca)
            swarm = SwarmProcess(tmp_path / "swarm", 3, f"{a},{b}")
            await swarm.start()
            code = await exit_code(swarm, timeout=10)
        assert code == 2, swarm.tail()
        errors = error_lines(swarm)
        assert len(errors) == 1, swarm.tail()
        assert errors[0].startswith("Error: agent swarm-000"), errors
        assert f"every server refused it: {a}: refused: {FOR_GOOD[1]}; {b}: " in errors[0]
        assert not swarm.matching("Traceback"), swarm.tail()

    asyncio.run(scenario())
