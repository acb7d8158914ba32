"""A Redis Sentinel deployment for tests: a master, its replicas and the sentinels watching them,
each a real redis-server process on a free loopback port, in a directory of its own.

Sentinels here act fast (a master silent for `down_after_ms` is down; quorum 2 of 3), so a
test sees a whole failover in a few seconds. Readiness is polled, never slept on: every node
answers, every replica is online at the master, and every sentinel names the master and
knows its replicas and the other sentinels (which takes a sentinel's first hello, about 2 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from msctl.embedded_redis import die_with_parent, free_port, wait_for_redis
from tests.support.redis_server import have_redis_server, real_redis_required

READY_TIMEOUT = 15.0


class Node:
    """One redis-server process, data node or sentinel, configured by a file of its own (mode
    0600: it may hold passwords); `lines` are its configuration beyond the common ones."""

    def __init__(self, workdir: Path, name: str, lines: list[str], *, sentinel: bool = False):
        self.workdir = workdir / name
        self.name = name
        self.port = free_port()
        self.lines = lines
        self.sentinel = sentinel
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        return self.workdir / ("sentinel.conf" if self.sentinel else "redis.conf")

    def start(self, password: str | None) -> Node:
        binary = shutil.which("redis-server")
        assert binary is not None, "redis-server is not on PATH"
        self.workdir.mkdir(parents=True, exist_ok=True)
        common = [f"port {self.port}", "bind 127.0.0.1", "protected-mode no", "daemonize no"]
        common += [f'dir "{self.workdir}"', f'logfile "{self.workdir / "redis.log"}"']
        # a sentinel rewrites its file (what it learnt): it is written once, at the first start
        if not (self.sentinel and self.config_file.exists()):
            self.config_file.write_text("\n".join([*common, *self.lines]) + "\n")
            self.config_file.chmod(0o600)
        args = [binary, str(self.config_file), *(["--sentinel"] if self.sentinel else [])]
        self.process = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - it makes one system call
        )
        auth = f":{password}@" if password else ""
        wait_for_redis(f"redis://{auth}127.0.0.1:{self.port}/0", process=self.process)
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def tail(self, n: int = 20) -> str:
        log = self.workdir / "redis.log"
        lines = log.read_text(errors="replace").splitlines() if log.exists() else []
        return f"--- {self.name}\n" + "\n".join(lines[-n:])


class SentinelCluster:
    """`replicas` replicas of a master and `sentinels` sentinels monitoring it as `service`.

    `password`: the master's and replicas' (requirepass and masterauth; the sentinels get it as
    auth-pass); `sentinel_password`: the sentinels' own. `url` is the redis+sentinel:// URL of
    it all."""

    def __init__(
        self,
        workdir: Path,
        *,
        service: str = "lab",
        replicas: int = 2,
        sentinels: int = 3,
        quorum: int = 2,
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 3000,
        password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        self.service = service
        self.password = password
        self.sentinel_password = sentinel_password
        auth = [f'requirepass "{password}"', f'masterauth "{password}"'] if password else []
        # a replica's first sync starts at once (Redis 7 waits 5 s for others to join it)
        data = [*auth, 'save ""', "appendonly no", "repl-diskless-sync-delay 0"]
        self.master = Node(workdir, "master", data)
        self.replicas = [
            Node(workdir, f"replica{i + 1}", [*data, f"replicaof 127.0.0.1 {self.master.port}"])
            for i in range(replicas)
        ]
        watch = [
            f"sentinel monitor {service} 127.0.0.1 {self.master.port} {quorum}",
            f"sentinel down-after-milliseconds {service} {down_after_ms}",
            f"sentinel failover-timeout {service} {failover_timeout_ms}",
            f"sentinel parallel-syncs {service} {max(1, replicas)}",
        ]
        if password:
            watch.append(f'sentinel auth-pass {service} "{password}"')
        if sentinel_password:
            watch += [f'requirepass "{sentinel_password}"']
            watch += [f'sentinel sentinel-pass "{sentinel_password}"']
        self.sentinels = [
            Node(workdir, f"sentinel{i + 1}", watch, sentinel=True) for i in range(sentinels)
        ]

    @property
    def data_nodes(self) -> list[Node]:
        return [self.master, *self.replicas]

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        query = f"?sentinel_password={self.sentinel_password}" if self.sentinel_password else ""
        return f"redis+sentinel://{auth}{hosts}/{self.service}/0{query}"

    def node_url(self, node: Node) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{node.port}/0"

    def node_at(self, port: int) -> Node:
        (node,) = [n for n in self.data_nodes if n.port == port]
        return node

    # -- start and stop ---------------------------------------------------------------------------

    def start(self, *, data: bool = True) -> SentinelCluster:
        """Start everything and wait until the deployment is whole. `data=False` starts the
        sentinels only: they watch a master that does not run (yet; `start_data`)."""
        if data:
            self.start_data()
        for sentinel in self.sentinels:
            sentinel.start(self.sentinel_password)
        if data:
            self.wait_until(self._whole, "the sentinels never saw the whole deployment")
        return self

    def start_data(self) -> None:
        """The master and its replicas, until each replica is online at the master."""
        for node in self.data_nodes:
            node.start(self.password)
        self.wait_until(self._replicas_online, "the replicas never came online")

    def stop(self) -> None:
        for node in [*self.sentinels, *self.data_nodes]:
            node.kill()

    def tails(self) -> str:
        return "\n".join(node.tail() for node in [*self.data_nodes, *self.sentinels])

    # -- what the nodes say -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _client(self, node: Node) -> Iterator[redis.Redis]:
        password = self.sentinel_password if node.sentinel else self.password
        client = redis.Redis(
            port=node.port, password=password, decode_responses=True, socket_timeout=1.0
        )
        try:
            yield client
        finally:
            client.close()

    def _replicas_online(self) -> bool:
        with self._client(self.master) as client:
            info = client.info("replication")
        online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
        return sum(v.get("state") == "online" for v in online) == len(self.replicas)

    def _whole(self) -> bool:
        for sentinel in self.sentinels:
            with self._client(sentinel) as client:
                state: dict[str, Any] = client.sentinel_master(self.service)
            if (
                int(state["port"]) != self.master.port
                or not state["is_master"]
                or state["is_sdown"]
                or int(state["num-slaves"]) != len(self.replicas)
                or int(state["num-other-sentinels"]) != len(self.sentinels) - 1
            ):
                return False
        return True

    def sees_master_down(self) -> bool:
        """Whether every sentinel sees the master it watches subjectively down."""
        for sentinel in self.sentinels:
            with self._client(sentinel) as client:
                if not client.sentinel_master(self.service)["is_sdown"]:
                    return False
        return True

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll `condition` (a node not answering yet counts as False) until it holds; fail
        with `what` and the nodes' logs after READY_TIMEOUT."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            with contextlib.suppress(redis.ConnectionError, redis.ResponseError):
                if condition():
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}:\n{self.tails()}")
            time.sleep(0.05)

    # -- failover ---------------------------------------------------------------------------------

    async def _ask(self, node: Node, *command: Any) -> Any:
        password = self.sentinel_password if node.sentinel else self.password
        client = aioredis.Redis(port=node.port, password=password, decode_responses=True)
        try:
            return await client.execute_command(*command)
        finally:
            await client.aclose()

    async def ask_sentinel(self, *command: Any) -> Any:
        """`command`'s reply from the first sentinel that runs."""
        return await self._ask(next(s for s in self.sentinels if s.running), *command)

    async def role(self, node: Node) -> str:
        """What `node` says it is (ROLE): master or slave."""
        return str((await self._ask(node, "ROLE"))[0])

    async def wait_role(self, node: Node, role: str, timeout: float = 20.0) -> None:
        """Until `node` says (ROLE) it is `role`: master or slave."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    if await self.role(node) == role:
                        return
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"{node.name} never {role}:\n{self.tails()}") from None

    async def master_port(self) -> int:
        """The master's port, as every running sentinel names it (they agree, or this fails)."""
        ports = {
            int((await self._ask(s, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.service))[1])
            for s in self.sentinels
            if s.running
        }
        assert len(ports) == 1, f"the sentinels disagree on the master: {ports}"
        return ports.pop()

    async def kill_master(self) -> Node:
        """SIGKILL the node that is master now."""
        node = self.node_at(await self.master_port())
        node.kill()
        return node

    async def wait_new_master(self, old: Node, timeout: float = 20.0) -> Node:
        """Until every running sentinel names a master other than `old`, and that node says it
        is one (ROLE); that node."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    with contextlib.suppress(redis.ConnectionError, AssertionError):
                        port = await self.master_port()
                        if port != old.port:
                            node = self.node_at(port)
                            if await self.role(node) == "master":
                                return node
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"no new master within {timeout}s:\n{self.tails()}") from None


@contextlib.contextmanager
def sentinel_cluster(
    workdir: Path, *, data: bool = True, **options: Any
) -> Iterator[SentinelCluster]:
    """A started SentinelCluster (options as its constructor's), every process of it killed
    at the end. Skips the test without a redis-server binary (fails it in CI)."""
    if not have_redis_server():
        if real_redis_required():
            pytest.fail("MSRV_TEST_REQUIRE_REDIS is set but redis-server is not on PATH")
        pytest.skip("needs the redis-server binary (Sentinel)")
    cluster = SentinelCluster(workdir, **options)
    try:
        yield cluster.start(data=data)
    finally:
        cluster.stop()
