"""Child processes of the lab (and of tests and benchmarks): `msrv serve` and `agentd swarm`.

A child's stderr log lines are kept, so a caller waits for the line that proves something
happened (a server listening, a swarm connected) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
import time
from collections.abc import Callable

from common.errors import LbError
from msctl.embedded_redis import die_with_parent

_LIVE: set[LoggedProcess] = set()


def kill_leftovers() -> list[str]:
    """SIGKILL (and reap) every child started here that is still running; returns their names.

    A safety net for tests and aborted runs: nothing started through this module outlives it.
    """
    killed = []
    for child in list(_LIVE):
        process = child.process
        _LIVE.discard(child)
        if process is None or process.returncode is not None:
            continue
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(process.pid, signal.SIGKILL)
            os.waitpid(process.pid, 0)
            killed.append(child.name)
    return killed


class ChildError(LbError):
    """A child exited, or did not log what was awaited in time."""


class LoggedProcess:
    def __init__(self, name: str, args: list[str], env: dict[str, str] | None = None) -> None:
        self.name = name
        self.args = args
        self.env = env
        self.lines: list[str] = []
        self.times: list[float] = []  # monotonic arrival time of each line
        self.process: asyncio.subprocess.Process | None = None
        self._changed = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, ready: str | None = None, timeout: float = 15.0) -> LoggedProcess:
        # the child gets its settings from its arguments and `env`, never from a stray MSRV_*
        # variable of ours
        env = {k: v for k, v in os.environ.items() if not k.startswith("MSRV_")}
        env.update(self.env or {})
        self.lines.clear()
        self.times.clear()
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            preexec_fn=die_with_parent,
        )
        _LIVE.add(self)
        self._reader = asyncio.create_task(self._read(self.process))
        if ready is not None:
            await self.wait_for(ready, timeout)
        return self

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        assert process.stderr is not None
        async for raw in process.stderr:
            async with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self.times.append(time.monotonic())
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def matching(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        return [line for line in self.lines if regex.search(line)]

    def count(self, pattern: str) -> int:
        return len(self.matching(pattern))

    async def wait_for(self, pattern: str, timeout: float = 10.0, *, count: int = 1) -> float:
        """Wait until `count` lines match; returns the arrival time of the last one needed."""
        regex = re.compile(pattern)
        what = f"fewer than {count} lines matching {pattern!r}"

        def enough() -> float | None:
            hits = [t for line, t in zip(self.lines, self.times, strict=True) if regex.search(line)]
            return hits[count - 1] if len(hits) >= count else None

        return await self.wait_until(enough, timeout, what)

    async def wait_until(
        self, test: Callable[[], float | None], timeout: float, what: str
    ) -> float:
        """Wait until `test()` (re-run on each new line) returns a time; fail on exit or timeout."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                while True:
                    found = test()
                    if found is not None:
                        return found
                    if self._reader is not None and self._reader.done():
                        raise ChildError(f"{self.name} exited: {self.tail()}")
                    await self._changed.wait()
        except TimeoutError:
            raise ChildError(f"{self.name}: {what}:\n{self.tail()}") from None

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
        _LIVE.discard(self)
        return code


REDIS_URL_ENV = "MSRV_REDIS_URL"


def msrv_args(listen: str, server_id: str, namespace: str, *extra: str) -> list[str]:
    """`msrv serve`'s arguments, without the Redis URL: give it with `msrv_env` (a URL can hold a
    password, and every user on the machine sees a process's arguments through `ps`)."""
    return ["-m", "msrv", "serve", "--listen", listen, "--id", server_id,
            "--namespace", namespace, *extra]  # fmt: skip


def msrv_env(redis_url: str) -> dict[str, str]:
    """The environment that gives an `msrv serve` child its Redis URL (msrv reads
    MSRV_REDIS_URL); unlike the arguments, /proc/PID/environ is readable by its owner only."""
    return {REDIS_URL_ENV: redis_url}


def msrv_ready(server_id: str) -> str:
    """The log line a server writes once it accepts agents."""
    return rf"msrv {re.escape(server_id)} listening on"


def swarm_ready(count: int) -> str:
    """The summary line of a swarm whose agents are all connected."""
    return rf"swarm: {count}/{count} agents connected"
