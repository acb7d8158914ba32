"""A whole system on this machine: Redis (embedded unless given), management servers on
loopback addresses, and a swarm of agents, as child processes that stop together.

`msctl lab up`, `msctl lab demo` and the benchmarks build on `Lab`.

The Redis URL can hold a password (the embedded Redis always has one): servers get it in their
environment, lab.json (mode 0600) keeps it for `msctl` in a second terminal, and output shows it
through `common.connection.redacted`. With `redis_ha`, the embedded Redis is a master, two
replicas and three sentinels (msctl.redis_ha) and every client gets its `redis+sentinel://` URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.configstore import ConfigStore
from common.connection import redacted
from common.keys import Keys
from common.properties import atomic_write
from common.tokens import create_token
from msctl.children import (
    ChildError,
    LoggedProcess,
    msrv_args,
    msrv_env,
    msrv_ready,
    swarm_ready,
)
from msctl.embedded_redis import FakeRedisTcp, RedisServer, free_port, start_embedded
from msctl.options import msctl_redis
from msctl.redis_ha import RedisHA

logger = logging.getLogger(__name__)

STATE_FILE = "lab.json"
TOKEN_ENV = "AGENTD_TOKEN"
LAB_TOKEN_TTL = 86400
DEFAULT_PORT = 8250
METRICS_PORT = 9250  # each server's /metrics, on its own loopback address


def pick_listen(index: int, port: int | None) -> str:
    """127.0.0.<index>:<port> when it can be bound (port 8250 by default), else a free port on
    that address, else a free port on 127.0.0.1."""
    host = f"127.0.0.{index}"
    for candidate in ([port or DEFAULT_PORT] if port != 0 else []) + [0]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, candidate))
            except OSError as exc:
                if exc.errno not in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
                    raise
                continue
            return f"{host}:{sock.getsockname()[1]}"
    return f"127.0.0.1:{free_port()}"


@dataclass
class LabServer:
    server_id: str
    listen: str
    child: LoggedProcess
    metrics: str = ""  # HOST:PORT of its Prometheus metrics

    @property
    def metrics_url(self) -> str:
        return f"http://{self.metrics}/metrics"

    @property
    def running(self) -> bool:
        process = self.child.process
        return process is not None and process.returncode is None


@dataclass
class Lab:
    directory: Path
    servers: int = 3
    agents: int = 0
    redis_url: str | None = None
    namespace: str = "lab"
    port: int | None = None  # None: 8250 where free; 0: always a free port
    swarm_args: tuple[str, ...] = ()
    metrics: bool = True  # each server serves /metrics (benches measure its cost)
    redis_ha: bool = False  # embedded: master, 2 replicas, 3 sentinels (needs redis-server)
    members: list[LabServer] = field(default_factory=list)
    swarm: LoggedProcess | None = None
    embedded: RedisServer | FakeRedisTcp | RedisHA | None = None
    control_reply: dict[str, Any] | None = None  # the answer to the last `msctl lab kill|start`

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)

    @property
    def url(self) -> str:
        assert self.redis_url is not None
        return self.redis_url

    @property
    def ha(self) -> RedisHA | None:
        return self.embedded if isinstance(self.embedded, RedisHA) else None

    @property
    def addresses(self) -> list[str]:
        return [m.listen for m in self.members]

    def redis(self) -> aioredis.Redis:
        return msctl_redis(self.url)

    @contextlib.asynccontextmanager
    async def connected(self) -> AsyncIterator[aioredis.Redis]:
        """A Redis client for one piece of work, closed after it."""
        client = self.redis()
        try:
            yield client
        finally:
            await client.aclose()

    async def start(self, **settings: str) -> None:
        """Redis, servers, the `host` setting (plus `settings`), then the agents."""
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.redis_url is None and self.redis_ha:
            self.embedded = await RedisHA(self.directory / "redis-ha").start()
            self.redis_url = self.embedded.url
        elif self.redis_url is None:
            self.embedded = start_embedded(self.directory / "redis")
            self.redis_url = self.embedded.url
        else:
            await self.check_redis()
        await asyncio.gather(*(self.add_server() for _ in range(self.servers)))
        await self.configure(host=",".join(self.addresses), **settings)
        if self.agents:
            await self.start_swarm()
        self.write_state()

    async def check_redis(self) -> None:
        client = self.redis()
        try:
            await client.ping()
        except (RedisError, OSError) as exc:
            raise ChildError(f"redis at {redacted(self.url)}: {exc}") from None
        finally:
            await client.aclose()

    async def configure(self, **values: str) -> int:
        """Set settings (names with '_' for '.'); returns the config version."""
        async with self.connected() as client:
            store = ConfigStore(client, self.keys)
            for name, value in values.items():
                await store.set(SHORT_NAMES.get(name, name), value)
            return await store.version()

    async def join_token(self, uses: int) -> str:
        """A join token for `uses` agents of this lab (valid for a day)."""
        async with self.connected() as client:
            token, _ = await create_token(client, self.keys, ttl_seconds=LAB_TOKEN_TTL, uses=uses)
        return token

    async def start_swarm(self) -> None:
        """The lab's agents, enrolled with a token the lab makes (passed in the environment:
        a token on the command line would be in every user's `ps`)."""
        host = ",".join(self.addresses)
        args = ["-m", "agentd", "swarm", "--count", str(self.agents)]
        args += ["--dir", str(self.directory / "agents"), "--host", host, *self.swarm_args]
        env = {TOKEN_ENV: await self.join_token(self.agents)}
        self.swarm = LoggedProcess("swarm", args, env=env)
        await self.swarm.start(ready=swarm_ready(self.agents), timeout=60 + self.agents / 50)

    async def add_server(self) -> LabServer:
        """Start one more server (ms4, ms5, ...) on the next loopback address."""
        index = len(self.members) + 1
        listen = pick_listen(index, self.port)
        server_id = f"ms{index}"
        args = msrv_args(listen, server_id, self.namespace)
        metrics = ""
        if self.metrics:
            metrics = pick_listen(index, 0 if self.port == 0 else METRICS_PORT)
            args += ["--metrics", metrics]
        child = LoggedProcess(server_id, args, env=msrv_env(self.url))
        self.members.append(LabServer(server_id, listen, child, metrics))
        return await self.start_server(server_id)

    def member(self, server_id: str) -> LabServer:
        for m in self.members:
            if server_id in (m.server_id, m.listen):
                return m
        raise KeyError(f"no server {server_id!r} in this lab (servers: {self.server_ids()})")

    def server_ids(self) -> str:
        return ", ".join(m.server_id for m in self.members)

    async def start_server(self, server_id: str) -> LabServer:
        member = self.member(server_id)
        if not member.running:
            await member.child.start(ready=msrv_ready(member.server_id))
            self.write_state()
        return member

    async def kill_server(self, server_id: str, sig: signal.Signals = signal.SIGKILL) -> int:
        member = self.member(server_id)
        code = await member.child.stop(sig) if member.running else 0
        self.write_state()
        return code

    async def kill_redis(self) -> str:
        """SIGKILL the master of the lab's Redis group (the sentinels then promote a replica)."""
        address = await self._group().kill_master()
        self.write_state()
        return f"redis master {address} killed"

    async def start_redis(self) -> str:
        """Start the killed Redis again, as a replica of the master once there is one."""
        done = await self._group().start_killed()
        self.write_state()
        return done

    def _group(self) -> RedisHA:
        if self.ha is None:
            raise ChildError("this lab's Redis is not highly available (msctl lab up --redis-ha)")
        return self.ha

    def answer(self, request_id: str, result: str, *, ok: bool) -> None:
        """Answer a control request in lab.json, where `msctl lab kill|start` waits for it."""
        self.control_reply = {"id": request_id, "ok": ok, "result": result}
        self.write_state()

    async def stop(self) -> None:
        """Stop every child: agents first (clean goodbyes), then servers, then Redis."""
        if self.swarm is not None:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await self.swarm.stop(signal.SIGTERM, timeout=20)
        for member in self.members:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await member.child.stop(signal.SIGTERM, timeout=10)
        for child in [*(m.child for m in self.members), self.swarm]:
            process = child.process if child is not None else None
            if process is not None and process.returncode is None:
                process.kill()
                await process.wait()
        if self.embedded is not None:
            self.embedded.stop()
        with contextlib.suppress(FileNotFoundError):
            (self.directory / STATE_FILE).unlink()

    def state(self) -> dict[str, Any]:
        def pid(child: LoggedProcess | None) -> int | None:
            process = child.process if child is not None else None
            return process.pid if process is not None and process.returncode is None else None

        return {
            "redis_url": self.redis_url,
            "namespace": self.namespace,
            "embedded_redis": self.embedded.kind if self.embedded is not None else None,
            "embedded_redis_pid": self.embedded.pid if self.embedded is not None else None,
            "redis_ha": self.ha.state() if self.ha is not None else None,
            "control_pid": os.getpid(),
            "servers": [
                {
                    "id": m.server_id,
                    "listen": m.listen,
                    "metrics": m.metrics_url,
                    "pid": pid(m.child),
                }
                for m in self.members
            ],
            "swarm": {"pid": pid(self.swarm), "agents": self.agents},
            "control": self.control_reply,
        }

    def write_state(self) -> None:
        """lab.json, replaced atomically; mode 0600 from its first byte (the Redis password)."""
        data = json.dumps(self.state(), indent=2) + "\n"
        atomic_write(self.directory / STATE_FILE, data.encode(), mode=0o600)


SHORT_NAMES = {
    "algorithm": "indirect.agent.lb.algorithm",
    "check_interval": "indirect.agent.lb.check.interval",
    "ping_interval": "ping.interval",
    "ping_timeout": "ping.timeout",
}


def read_state(directory: Path) -> dict[str, Any]:
    path = directory / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no lab running here (start one with `msctl lab up`)"
        ) from None
    return state
