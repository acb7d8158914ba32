"""Trust against a live server serving 200 real agents (an `agentd swarm` that enrolled with a
join token): each bad peer is refused with a logged reason, no good session is lost (every
host keeps its session token in Redis, the swarm reports no lost server), and the server's
open descriptors and memory come back to where they were."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from agentd.keystore import csr_pem
from common import events
from common.ca import CertificateAuthority, new_key
from common.protocol import Ca, Enroll, Enrolled, Error, ErrorCode, Startup, encode
from common.records import HostRecord
from common.revocation import record_issued
from common.tokens import create_token, parse_token
from tests.support.agents import SwarmProcess
from tests.support.fleet import Fleet, fleet
from tests.support.msrv_process import MsrvProcess
from tests.support.tls import anonymous, identity, issued
from tests.support.wire_client import WireClient

GOOD = 200
IDLE = 2000
HANDSHAKE_TIMEOUT = "1"  # seconds: --startup-timeout bounds the TLS handshake too
RSS_SLACK = 32 * 1024 * 1024  # what a freed burst of 2,000 connections may leave behind


def startup(guid: str) -> Startup:
    return Startup(guid, "x", "routing", "z1", "", [], None, "")


def rss(server: MsrvProcess) -> int:
    for line in Path(f"/proc/{server.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def settled_growth(server: MsrvProcess, before: int, timeout: float = 10.0) -> int:
    """How much larger than `before` the server's memory is once it is under RSS_SLACK, or
    after `timeout` seconds."""
    growth = rss(server) - before
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                growth = rss(server) - before
                if growth < RSS_SLACK:
                    break
                await asyncio.sleep(0.2)
    return growth


def open_fds(server: MsrvProcess) -> int:
    return len(os.listdir(f"/proc/{server.pid}/fd"))


async def wait_fds(server: MsrvProcess, at_most: int, timeout: float = 15.0) -> None:
    """Until the server holds no more descriptors than `at_most` (its refused peers freed)."""
    async with asyncio.timeout(timeout):
        while True:
            if open_fds(server) <= at_most:
                return
            await asyncio.sleep(0.1)


def sessions(hosts: list[HostRecord]) -> dict[str, tuple[str, str]]:
    return {h.guid: (h.session, h.state) for h in hosts}


async def refused(client: WireClient) -> Error | None:
    """The server's error (None when it closed without one), then the close."""
    error = None
    while True:
        try:
            message = await client.next(5.0)
        except (ConnectionError, OSError):
            return error
        if message is None:
            return error
        if isinstance(message, Error):
            error = message


async def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closed a raw connection within `timeout` (EOF or reset)."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            return await loop.sock_recv(sock, 4096) == b""
    except (ConnectionError, OSError):
        return True


async def enroll_once(f: Fleet, ca: CertificateAuthority, token: str, guid: str) -> object:
    parsed = parse_token(token)
    client = await WireClient.connect("127.0.0.1", f.servers[0].port, anonymous(ca))
    f.clients.append(client)
    assert isinstance(await client.next(), Ca)
    csr = csr_pem(new_key(), guid).decode()
    await client.send(Enroll(guid, parsed.id, parsed.secret, csr))
    return await client.next()


@dataclass
class Stage:
    """A live server, its 200 good agents and what their sessions were."""

    f: Fleet
    server: MsrvProcess
    swarm: SwarmProcess
    ca: CertificateAuthority
    victim: HostRecord  # a good host whose guid the intruders present
    before: dict[str, tuple[str, str]]

    async def check(self, name: str, attack: Attack, log: str, peers: int) -> None:
        """Run `attack`; the server logs `log`, frees the peer, and no good session moved."""
        fds = open_fds(self.server)
        logged = self.server.count(log)  # an earlier attack may have logged the same reason
        await attack(self)
        await self.server.wait_for(log, timeout=15, count=logged + peers)  # one line a peer
        await wait_fds(self.server, fds)
        assert sessions(await self.f.hosts()) == self.before, f"{name}: a good session moved"
        assert not self.swarm.matching("lost server"), f"{name}: {self.swarm.tail(10)}"


Attack = Callable[[Stage], Awaitable[None]]


async def no_certificate(stage: Stage) -> None:
    client = await WireClient.connect("127.0.0.1", stage.server.port, anonymous(stage.ca))
    stage.f.clients.append(client)
    assert isinstance(await client.next(), Ca)
    await client.send(startup(stage.victim.guid))
    error = await refused(client)
    assert error is not None and error.code == ErrorCode.NO_CERTIFICATE


async def other_ca(stage: Stage) -> None:
    other = CertificateAuthority.create("intruder")
    tls = identity(other, stage.victim.guid, trusting=stage.ca)
    client = await WireClient.connect("127.0.0.1", stage.server.port, tls)
    stage.f.clients.append(client)
    assert await refused(client) is None  # the handshake failed: not a word


async def another_hosts_guid(stage: Stage) -> None:
    client = await stage.f.connect(0, "intruder-guid")
    await client.send(startup(stage.victim.guid))
    error = await refused(client)
    assert error is not None and error.code == ErrorCode.WRONG_HOST


async def plaintext(stage: Stage) -> None:
    with socket.create_connection(("127.0.0.1", stage.server.port)) as sock:
        sock.setblocking(False)
        sock.sendall(encode(startup(stage.victim.guid)))  # a startup, in clear
        assert await closed_by_server(sock, 5.0)


async def never_finishes(stage: Stage) -> None:
    with socket.create_connection(("127.0.0.1", stage.server.port)) as sock:
        sock.setblocking(False)
        sock.sendall(b"\x16\x03\x01\x00\x50")  # the start of a ClientHello, and no more
        assert await closed_by_server(sock, 5.0)


async def idle_burst(stage: Stage) -> None:
    loop = asyncio.get_running_loop()
    socks: list[socket.socket] = []
    try:
        for _ in range(IDLE):
            sock = socket.socket()
            sock.setblocking(False)
            socks.append(sock)
            await loop.sock_connect(sock, ("127.0.0.1", stage.server.port))
        assert all(await asyncio.gather(*(closed_by_server(s, 15.0) for s in socks)))
    finally:
        for sock in socks:
            sock.close()


async def reused_token(stage: Stage) -> None:
    single, _ = await create_token(stage.f.redis, stage.f.keys, ttl_seconds=60, uses=1)
    assert isinstance(await enroll_once(stage.f, stage.ca, single, "fresh-1"), Enrolled)
    second = await enroll_once(stage.f, stage.ca, single, "fresh-2")
    assert isinstance(second, Error) and second.code == ErrorCode.BAD_TOKEN


ATTACKS: list[tuple[str, Attack, str, int]] = [  # name, attack, its log line, peers refused
    ("no certificate", no_certificate, "no client certificate", 1),
    ("a certificate of another CA", other_ca, "TLS handshake failed", 1),
    ("another host's guid", another_hosts_guid, "certificate is for guid intruder-guid", 1),
    ("plaintext", plaintext, "TLS handshake failed", 1),
    ("a handshake never finished", never_finishes, "TLS handshake not done within", 1),
    ("2,000 idle connections", idle_burst, "TLS handshake not done within", IDLE),
    ("a reused single-use token", reused_token, "join token [0-9a-f]+ is used up", 1),
]


def test_bad_peers_are_refused_and_good_sessions_stay(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, IDLE + 1024)), hard))

    async def scenario() -> None:
        options = ("--startup-timeout", HANDSHAKE_TIMEOUT)
        async with fleet(redis_url, namespace, servers=1, server_options=options) as f:
            server = f.servers[0]
            await f.set("host", server.address)
            token, _ = await create_token(f.redis, f.keys, ttl_seconds=600, uses=GOOD)
            swarm = SwarmProcess(tmp_path / "swarm", GOOD, server.address, "--token", token)
            await swarm.start(ready=rf"swarm: {GOOD}/{GOOD} agents connected", timeout=60)
            try:
                good = await f.wait_hosts(
                    lambda hs: len(hs) == GOOD and all(h.state == "connected" for h in hs)
                )
                stage = Stage(f, server, swarm, await f.ca(), good[0], sessions(good))
                memory = rss(server)
                for name, attack, log, peers in ATTACKS:
                    await stage.check(name, attack, log, peers)
                # the server gives freed memory back after its next collection (every 2 s)
                growth = await settled_growth(server, memory)
                assert growth < RSS_SLACK, f"server memory grew by {growth / 2**20:.1f} MiB"
            finally:
                await swarm.stop()

    asyncio.run(scenario())


def test_hosts_remove_revokes_the_certificate_of_a_stopped_host(
    redis_url: str, namespace: str
) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=1) as f:
            ca = await f.ca()
            context, serial, expires = issued(ca, "victim")
            await record_issued(f.redis, f.keys, "victim", serial, expires)  # as enrollment does
            port = f.servers[0].port
            first = await WireClient.connect("127.0.0.1", port, context, guid="victim")
            host_id = (await first.startup()).ready.host_id
            await first.close()
            await f.wait_hosts(lambda hs: hs[0].state == "disconnected")
            result = await f.msctl("hosts", "remove", str(host_id))
            assert result.exit_code == 0, result.output
            again = await WireClient.connect("127.0.0.1", port, context, guid="victim")
            f.clients.append(again)
            await again.send(startup("victim"))
            error = await refused(again)
            assert error is not None and error.code == ErrorCode.REVOKED
            await f.servers[0].wait_for(f"certificate {serial} is revoked")
            assert await f.hosts() == []  # refused before anything was registered

    asyncio.run(scenario())


def test_a_live_session_whose_certificate_is_revoked_is_closed(
    redis_url: str, namespace: str
) -> None:
    """`hosts remove` refuses a host connected to a live server, but its revocation can still
    race with a reconnection: a server holding a session of a revoked certificate ends it."""

    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=1) as f:
            context, serial, expires = issued(await f.ca(), "victim")
            client = await WireClient.connect(
                "127.0.0.1", f.servers[0].port, context, guid="victim"
            )
            f.clients.append(client)
            await client.startup()
            bystander = await f.connect(0, "bystander")
            await bystander.startup()
            await f.redis.hset(f.keys.revoked, serial, f"{expires:.3f}")
            await f.redis.publish(f.keys.events, events.hosts_revoked("victim"))
            error = await refused(client)
            assert error is not None and error.code == ErrorCode.REVOKED
            await f.servers[0].wait_for(f"certificate {serial} revoked; closing")
            assert not bystander.closed.is_set()
            await bystander.sync()

    asyncio.run(scenario())
