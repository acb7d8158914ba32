"""Real `msrv serve` child processes on free loopback ports, waited on by their readiness line.

Every log line of a server is kept, so a test can wait for a line that proves the server did
something (instead of sleeping).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import AsyncIterator

from msctl.children import LoggedProcess, msrv_args, msrv_env, msrv_ready
from tests.support.redis_server import free_port

READY_TIMEOUT = 15.0
VERSION_LINE = re.compile(r"settings (?:now )?at version (\d+)")


class MsrvProcess(LoggedProcess):
    def __init__(
        self,
        server_id: str,
        redis_url: str,
        namespace: str,
        *,
        verbose: bool = False,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.server_id = server_id
        self.port = free_port()
        args = msrv_args(self.address, server_id, namespace, *extra)
        super().__init__(server_id, [*args, "-v"] if verbose else args, env=msrv_env(redis_url))

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def wait_version(self, version: int, timeout: float = 10.0) -> None:
        """Until this server has applied settings version `version` (or a later one)."""

        def applied() -> float | None:
            for line, at in zip(self.lines, self.times, strict=True):
                found = VERSION_LINE.search(line)
                if found and int(found.group(1)) >= version:
                    return at
            return None

        await self.wait_until(applied, timeout, f"settings version {version} never applied")

    async def start(  # type: ignore[override]
        self, ready: str | None = None, timeout: float = READY_TIMEOUT
    ) -> MsrvProcess:
        await super().start(ready or msrv_ready(self.server_id), timeout)
        return self


@contextlib.asynccontextmanager
async def run_servers(
    count: int,
    redis_url: str,
    namespace: str,
    *,
    verbose: bool = False,
    extra: tuple[str, ...] = (),
) -> AsyncIterator[list[MsrvProcess]]:
    """Start `count` servers (ms1, ms2, ...) at once, each with the `extra` options of
    `msrv serve`; kill whatever is left afterwards."""
    servers = [
        MsrvProcess(f"ms{i + 1}", redis_url, namespace, verbose=verbose, extra=extra)
        for i in range(count)
    ]
    try:
        await asyncio.gather(*(s.start() for s in servers))
        yield servers
    finally:
        for server in servers:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await server.stop(signal.SIGKILL)
