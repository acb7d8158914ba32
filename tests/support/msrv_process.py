"""Real `msrv serve` child processes on free loopback ports, waited on by their readiness line.

Every log line of a server is kept, so a test can wait for a line that proves the server did
something (instead of sleeping).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator

from tests.support.redis_server import free_port

READY_TIMEOUT = 15.0


class MsrvProcess:
    def __init__(self, server_id: str, redis_url: str, namespace: str, *, verbose: bool) -> None:
        self.server_id = server_id
        self.redis_url = redis_url
        self.namespace = namespace
        self.port = free_port()
        self.verbose = verbose
        self.lines: list[str] = []
        self.process: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> MsrvProcess:
        args = [sys.executable, "-m", "msrv", "serve", "--listen", self.address]
        args += ["--id", self.server_id, "--redis-url", self.redis_url]
        args += ["--namespace", self.namespace]
        if self.verbose:
            args.append("-v")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSRV_")}
        self.process = await asyncio.create_subprocess_exec(
            *args, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env
        )
        self._reader = asyncio.create_task(self._read(self.process))
        await self.wait_for(rf"msrv {re.escape(self.server_id)} listening on", READY_TIMEOUT)
        return self

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            async with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    def count(self, pattern: str) -> int:
        regex = re.compile(pattern)
        return sum(1 for line in self.lines if regex.search(line))

    async def wait_for(self, pattern: str, timeout: float = 10.0, *, count: int = 1) -> None:
        """Wait until `count` log lines match `pattern`; fail if the process exits first."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                while self.count(pattern) < count:
                    if self.process is not None and self.process.returncode is not None:
                        raise AssertionError(f"{self.server_id} exited: {self.tail()}")
                    if self._reader is not None and self._reader.done():
                        raise AssertionError(f"{self.server_id} closed stderr: {self.tail()}")
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"{self.server_id}: no {count} lines matching {pattern!r}: {self.tail()}"
            ) from None

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.lines[-n:])

    async def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 10.0) -> int:
        process = self.process
        if process is None:
            return 0
        if process.returncode is None:
            process.send_signal(sig)
        async with asyncio.timeout(timeout):
            code = await process.wait()
            if self._reader is not None:
                await self._reader
        return code


@contextlib.asynccontextmanager
async def run_servers(
    count: int, redis_url: str, namespace: str, *, verbose: bool = False
) -> AsyncIterator[list[MsrvProcess]]:
    """Start `count` servers (ms1, ms2, ...) at once; kill whatever is left afterwards."""
    servers = [
        MsrvProcess(f"ms{i + 1}", redis_url, namespace, verbose=verbose) for i in range(count)
    ]
    try:
        await asyncio.gather(*(s.start() for s in servers))
        yield servers
    finally:
        for server in servers:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await server.stop(signal.SIGKILL)
