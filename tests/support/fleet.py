"""A test fleet: settings in Redis, real `msrv serve` processes, protocol clients.

Used inside `asyncio.run` (the suite has no async plugin): `async with fleet(...) as f:`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from click.testing import CliRunner, Result

from common.ca import CertificateAuthority
from common.configstore import ConfigStore
from common.connection import redis_from_url
from common.keys import Keys
from common.records import HostRecord, load_hosts
from tests.support.msrv_process import MsrvProcess, run_servers
from tests.support.tls import anonymous, identity, namespace_ca
from tests.support.wire_client import WireClient


@dataclass
class Fleet:
    redis: aioredis.Redis
    redis_url: str
    namespace: str
    servers: list[MsrvProcess]
    clients: list[WireClient] = field(default_factory=list)
    _ca: CertificateAuthority | None = None

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)

    @property
    def store(self) -> ConfigStore:
        return ConfigStore(self.redis, self.keys)

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.servers]

    async def set(self, name: str, value: str, cluster: str | None = None) -> int:
        """Change a setting and wait until every running server has applied it (its log says
        so), so that a startup right after sees the new value wherever it lands."""
        change = await self.store.set(name, value, cluster)
        assert change.changed
        await asyncio.gather(*(s.wait_version(change.version) for s in self.servers if s.running))
        return change.version

    async def forget_connections(self) -> None:
        """Drop pooled Redis connections (after a test restarted Redis), as a new msctl would."""
        await self.redis.connection_pool.disconnect()

    async def ca(self) -> CertificateAuthority:
        if self._ca is None:
            self._ca = await namespace_ca(self.redis, self.namespace)
        return self._ca

    async def connect(
        self, server: int = 0, guid: str | None = None, *, certificate: bool = True, **options: bool
    ) -> WireClient:
        """A TLS client of server `server` with a certificate for `guid` (a fresh guid when
        None), or none when `certificate` is False (it may only enroll)."""
        guid = guid or f"g-{uuid.uuid4().hex[:12]}"
        ca = await self.ca()
        tls = identity(ca, guid) if certificate else anonymous(ca)
        client = await WireClient.connect(
            "127.0.0.1", self.servers[server].port, tls, guid=guid if certificate else "", **options
        )
        self.clients.append(client)
        return client

    async def hosts(self) -> list[HostRecord]:
        return await load_hosts(self.redis, self.keys)

    async def wait_hosts(
        self, check: Callable[[list[HostRecord]], bool], timeout: float = 5.0
    ) -> list[HostRecord]:
        """Poll the registry until `check(hosts)` holds (a hash write sends no event)."""
        hosts: list[HostRecord] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    hosts = await self.hosts()
                    if check(hosts):
                        return hosts
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"registry never matched; last seen: {hosts}") from None

    async def msctl(self, *args: str) -> Result:
        """Run msctl in a thread (it runs its own event loop)."""
        from msctl.cli import cli

        argv = [*args, "--redis-url", self.redis_url, "--namespace", self.namespace]
        return await asyncio.to_thread(CliRunner().invoke, cli, argv)


@contextlib.asynccontextmanager
async def fleet(
    redis_url: str,
    namespace: str,
    *,
    servers: int = 3,
    settings: Iterable[tuple[str, str]] = (),
    verbose: bool = False,
    server_options: tuple[str, ...] = (),
) -> AsyncIterator[Fleet]:
    redis = redis_from_url(redis_url)
    store = ConfigStore(redis, Keys(namespace))
    for name, value in settings:
        await store.set(name, value)
    try:
        async with run_servers(
            servers, redis_url, namespace, verbose=verbose, extra=server_options
        ) as processes:
            f = Fleet(redis, redis_url, namespace, processes)
            try:
                yield f
            finally:
                await asyncio.gather(*(c.close() for c in f.clients))
            for server in processes:  # a server must never log an unhandled exception
                assert not any("Traceback" in line for line in server.lines), server.tail(60)
    finally:
        await redis.aclose()


async def gather_limited(coroutines: Iterable[object], limit: int = 100) -> list[object]:
    """Run awaitables at most `limit` at a time (many connects at once overflow the backlog)."""
    semaphore = asyncio.Semaphore(limit)

    async def one(coroutine: object) -> object:
        async with semaphore:
            return await coroutine  # type: ignore[misc]

    return await asyncio.gather(*(one(c) for c in coroutines))
