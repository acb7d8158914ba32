"""The lab's highly available Redis (`msctl lab up --redis-ha`): an embedded master, two
replicas and three sentinels, each a redis-server child of the lab (`redis-server CONF
--sentinel` for a sentinel) on a free loopback port, gone with the lab as the single embedded
Redis is (msctl.embedded_redis: PR_SET_PDEATHSIG, its own process group, umask 077).

Every process requires the lab's generated password: `requirepass` and `masterauth` on the data
nodes, `requirepass` and `sentinel auth-pass` on the sentinels (which also use `requirepass` to
talk to each other). It is only in config files of mode 0600, in a folder of mode 0700, and in
the URL clients get: `redis+sentinel://:PW@S1,S2,S3/lab/0?sentinel_password=PW`.

A data node's life:
- started: the first as master, the others as its replicas; the sentinels are started knowing
  the master, its replicas and each other (`known-replica`, `known-sentinel`, fixed `myid`s),
  so the group is whole as soon as the replicas are in sync, not after a discovery round;
- killed: `lab kill redis` SIGKILLs the node the sentinels name master; after
  `down-after-milliseconds` (2000 here) a quorum of 2 sees it down and one of them promotes a
  replica;
- started again: `lab start redis` waits until the sentinels name a running master and starts
  the killed node as its replica, never as a master: it lost its data (nothing is persisted),
  and replicas of an empty master would copy the emptiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from common.errors import LbError
from msctl.embedded_redis import (
    EmbeddedRedisError,
    RedisServer,
    config_string,
    new_password,
)

T = TypeVar("T")

SERVICE = "lab"
HOST = "127.0.0.1"
QUORUM = 2
DOWN_AFTER_MS = 2000
# how long a failover may take before another sentinel tries (twice this), and the bound on
# reconfiguring the replicas: a lab's data syncs in milliseconds
FAILOVER_TIMEOUT_MS = 5000
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class RedisHaError(LbError):
    """The lab's Redis group cannot do what was asked (no master known, nothing to start)."""


class SentinelServer(RedisServer):
    """A redis-server in sentinel mode: everything in its file, which it rewrites as it learns."""

    def command(self) -> list[str]:
        binary = shutil.which("redis-server")
        if binary is None:
            raise EmbeddedRedisError("redis-server is not on PATH")
        return [binary, str(self.config_file), "--sentinel"]

    @property
    def config_file(self) -> Path:
        return self.workdir / "sentinel.conf"


class RedisHA:
    """The group; `url` is what every client of the lab gets. Same interface as RedisServer
    for the lab (`url`, `kind`, `pid`, `stop`), plus the failover controls."""

    kind = "redis-server: master, 2 replicas, 3 sentinels"
    pid = None  # six processes: see `state`

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.workdir = workdir
        self.password = password or new_password()
        self.nodes = [RedisServer(workdir / f"redis{i}", password=self.password) for i in (1, 2, 3)]
        self.sentinels = [
            SentinelServer(workdir / f"sentinel{i}", password=self.password) for i in (1, 2, 3)
        ]
        master = self.nodes[0]
        for replica in self.nodes[1:]:
            replica.settings = self._data_settings(replica_of=master.port)
        master.settings = self._data_settings(replica_of=None)
        myids = [secrets.token_hex(20) for _ in self.sentinels]
        for sentinel, myid in zip(self.sentinels, myids, strict=True):
            peers = [(s.port, i) for s, i in zip(self.sentinels, myids, strict=True) if i != myid]
            sentinel.settings = self._sentinel_settings(sentinel, myid, peers)

    # -- configuration ----------------------------------------------------------------------------

    def _data_settings(self, *, replica_of: int | None) -> list[str]:
        lines = [
            f"masterauth {config_string(self.password)}",
            # a replica's full sync starts at once (Redis 7 waits 5 s for others to join it)
            "repl-diskless-sync-delay 0",
        ]
        if replica_of is not None:
            lines.append(f"replicaof {HOST} {replica_of}")
        return lines

    def _sentinel_settings(
        self, sentinel: SentinelServer, myid: str, peers: list[tuple[int, str]]
    ) -> list[str]:
        lines = [
            f"port {sentinel.port}",
            f"bind {HOST}",
            "daemonize no",
            f"dir {config_string(str(sentinel.workdir))}",
            f"logfile {config_string(str(sentinel.workdir / 'sentinel.log'))}",
            f"sentinel myid {myid}",
            f"sentinel monitor {SERVICE} {HOST} {self.nodes[0].port} {QUORUM}",
            f"sentinel auth-pass {SERVICE} {config_string(self.password)}",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
        ]
        lines += [f"sentinel known-replica {SERVICE} {HOST} {n.port}" for n in self.nodes[1:]]
        lines += [f"sentinel known-sentinel {SERVICE} {HOST} {p} {i}" for p, i in peers]
        return lines

    @property
    def url(self) -> str:
        password = quote(self.password, safe="")
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://:{password}@{hosts}/{SERVICE}/0?sentinel_password={password}"

    def state(self) -> dict[str, Any]:
        """For lab.json: every process's address and pid (None once killed)."""

        def entry(server: RedisServer) -> dict[str, Any]:
            pid = server.pid if server.running else None
            return {"address": f"{HOST}:{server.port}", "pid": pid}

        return {
            "service": SERVICE,
            "redis": [entry(n) for n in self.nodes],
            "sentinels": [entry(s) for s in self.sentinels],
            "down_after_ms": DOWN_AFTER_MS,
        }

    # -- start and stop ---------------------------------------------------------------------------

    async def start(self) -> RedisHA:
        """Start the data nodes, wait until the replicas are in sync, start the sentinels, wait
        until each names the master and knows its 2 replicas and 2 other sentinels.

        The processes are forked from the caller's (event loop's) thread: a child's
        PR_SET_PDEATHSIG fires when the thread that forked it ends."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.workdir, 0o700)  # the config files hold the password
        try:
            for node in self.nodes:
                node.start()
            await self._until(self._replicas_online, "the replicas in sync with the master")
            for sentinel in self.sentinels:
                sentinel.start()
            await self._until(self._whole, "the sentinels to see the master, replicas and peers")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """SIGTERM everything at once, then wait (SIGKILL what is still there at the timeout)."""
        everyone = [*self.sentinels, *self.nodes]
        for server in everyone:
            if server.process is not None and server.running:
                server.process.terminate()
        for server in everyone:
            if server.process is not None:
                try:
                    server.process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    server.process.kill()
                    server.process.wait()
            server.process = None

    kill = stop

    # -- failover controls ------------------------------------------------------------------------

    async def kill_master(self) -> str:
        """SIGKILL the node the sentinels name master; its address."""
        port = await self._ask_sentinels(self._master_port)
        node = self._node(port)
        if not node.running:
            raise RedisHaError(
                f"the sentinels' master {HOST}:{port} is down already: a failover is under way"
            )
        node.kill()
        return f"{HOST}:{port}"

    async def start_killed(self, timeout: float = READY_TIMEOUT) -> str:
        """Start every killed data node as a replica of the master the sentinels name once it
        is a running one; says what it did."""
        down = [n for n in self.nodes if not n.running]
        if not down:
            raise RedisHaError("every Redis of the lab is running")

        async def running_master() -> int | None:
            port = await self._ask_sentinels(self._master_port)
            return port if self._node(port).running else None

        port = await self._until(running_master, "the sentinels to name a running master", timeout)
        for node in down:
            node.settings = self._data_settings(replica_of=port)
            node.start()
        started = ", ".join(f"{HOST}:{n.port}" for n in down)
        return f"redis {started} started, replica of the master {HOST}:{port}"

    async def summary(self) -> str:
        """One line for the live view: the master the sentinels name, how many of its replicas
        and of the sentinels they see up."""
        try:
            return await self._ask_sentinels(self._describe)
        except RedisHaError as exc:
            return f"redis: {exc}"

    # -- asking the processes ---------------------------------------------------------------------

    def _node(self, port: int) -> RedisServer:
        for node in self.nodes:
            if node.port == port:
                return node
        raise RedisHaError(f"the sentinels name {HOST}:{port}, which is not the lab's")

    @contextlib.asynccontextmanager
    async def _client(self, server: RedisServer) -> AsyncIterator[aioredis.Redis]:
        client = aioredis.Redis(
            host=HOST,
            port=server.port,
            password=self.password,
            decode_responses=True,
            socket_connect_timeout=1.0,
            socket_timeout=1.0,
            retry=Retry(NoBackoff(), 0),  # a process that is down is skipped at once
        )
        try:
            yield client
        finally:
            await client.aclose()

    async def _ask_sentinels(self, question: Callable[[aioredis.Redis], Awaitable[T]]) -> T:
        """The first answer of a running sentinel."""
        reasons = []
        for sentinel in self.sentinels:
            if not sentinel.running:
                continue
            try:
                async with self._client(sentinel) as client:
                    return await question(client)
            except (RedisError, OSError) as exc:
                reasons.append(f"{HOST}:{sentinel.port}: {exc}")
        raise RedisHaError(f"no sentinel answers ({'; '.join(reasons) or 'none running'})")

    @staticmethod
    async def _master_port(sentinel: aioredis.Redis) -> int:
        address = await _sentinel(sentinel, "GET-MASTER-ADDR-BY-NAME")
        if not address:
            raise RedisError(f"no master known for {SERVICE!r}")
        return int(address[1])

    @staticmethod
    async def _describe(sentinel: aioredis.Redis) -> str:
        master = await _sentinel(sentinel, "MASTER")
        replicas = await _sentinel(sentinel, "SLAVES")
        others = await _sentinel(sentinel, "SENTINELS")
        up = sum(not (r["is_sdown"] or r["is_disconnected"]) for r in replicas)
        sentinels = 1 + sum(not s["is_sdown"] for s in others)
        down = ", down: failing over" if master["is_sdown"] or master["is_odown"] else ""
        where = f"{master['ip']}:{master['port']}"
        return f"redis: master {where}{down}, replicas {up}, sentinels {sentinels}"

    async def _replicas_online(self) -> bool:
        async with self._client(self.nodes[0]) as client:
            info = await client.info("replication")
        links = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        online = sum(link.get("state") == "online" for link in links)
        return bool(online == len(self.nodes) - 1)

    async def _whole(self) -> bool:
        for sentinel in self.sentinels:
            async with self._client(sentinel) as client:
                master = await _sentinel(client, "MASTER")
            if (
                int(master["port"]) != self.nodes[0].port
                or not master["is_master"]
                or master["is_sdown"]
                or int(master["num-slaves"]) != len(self.nodes) - 1
                or int(master["num-other-sentinels"]) != len(self.sentinels) - 1
            ):
                return False
        return True

    async def _until(
        self, probe: Callable[[], Awaitable[T | None]], what: str, timeout: float = READY_TIMEOUT
    ) -> T:
        """Poll `probe` (a Redis error counts as not yet) until it gives a truthy value."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    with contextlib.suppress(RedisError, OSError, RedisHaError):
                        found = await probe()
                        if found:
                            return found
                    for server in [*self.nodes, *self.sentinels]:
                        if server.process is not None and server.process.poll() is not None:
                            raise EmbeddedRedisError(
                                f"{server.workdir.name} exited with {server.process.returncode}"
                                f" (its log is in {server.workdir})"
                            )
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise RedisHaError(f"waited {timeout:g}s for {what}") from None


async def _sentinel(client: aioredis.Redis, subcommand: str) -> Any:
    """`SENTINEL <subcommand> lab`, parsed by redis-py (whose typed methods say `| bool`)."""
    return await client.execute_command(f"SENTINEL {subcommand}", SERVICE)  # type: ignore[no-untyped-call]
