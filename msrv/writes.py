"""Redis writes queued in order and sent many per round trip.

A storm of startups, acks and disconnects then costs a few pipelines instead of one round trip
(and one pooled connection) each. One writer task sends the queue in order, so a write queued
before another lands before it: a re-assert built before an ack or a disconnect can never land
after it.

Scripts: redis-py asks Redis whether a pipeline's scripts are loaded (SCRIPT EXISTS, a round
trip of its own) before every pipeline; under a storm of acks that was half the writer's work.
The writer asks once, then sends EVALSHA straight away. Redis can lose its scripts (restarted,
emptied, another master after a failover): after a lost connection the writer asks again, and
a batch refused for a missing script (NOSCRIPT: nothing of it ran) is sent again once the scripts
are loaded; should only part of a batch be refused so (its scripts loaded meanwhile by another
client), the refused writes fail with the NoScriptError and the rest stand.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError

from common.errors import LbError

# Queues exactly one command on the pipeline (awaitable: redis-py's scripts are coroutines).
Command = Callable[[Pipeline], Awaitable[object]]

MAX_BATCH = 1000  # commands per pipeline


class BadWriteError(LbError):
    """One caller's write could not be sent (not Redis's fault); the writer goes on."""


class WriteQueue:
    def __init__(self, redis: aioredis.Redis, *, max_batch: int = MAX_BATCH) -> None:
        self.redis = redis
        self.max_batch = max_batch
        self._queue: deque[tuple[Command, asyncio.Future[Any]]] = deque()
        self._wake = asyncio.Event()
        self.stopped = False
        self._loaded: set[str] = set()  # shas of the scripts known to be loaded in Redis

    def submit(self, command: Command) -> asyncio.Future[Any]:
        """Queue one command; the future gets its reply (or its error: a RedisError, or a
        BadWriteError for a command that cannot be sent)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.stopped:
            future.set_exception(RedisError("the writer stopped"))
            return future
        self._queue.append((command, future))
        self._wake.set()
        return future

    async def call(self, command: Command) -> Any:
        return await self.submit(command)

    async def call_many(self, commands: Iterable[Command]) -> list[Any]:
        """Queue the commands together; their replies in order, or the first error."""
        futures = [self.submit(c) for c in commands]
        replies = await asyncio.gather(*futures, return_exceptions=True)
        for reply in replies:
            if isinstance(reply, BaseException):
                raise reply
        return replies

    async def run(self) -> None:
        """The writer: sends whatever queued up while the last batch was in flight."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    size = min(len(self._queue), self.max_batch)
                    await self._send([self._queue.popleft() for _ in range(size)])
        finally:
            self.stopped = True
            while self._queue:
                _, future = self._queue.popleft()
                if not future.done():
                    future.set_exception(RedisError("the writer stopped"))

    async def _send(self, batch: list[tuple[Command, asyncio.Future[Any]]]) -> None:
        batch = [(command, future) for command, future in batch if not future.done()]
        if not batch:
            return
        try:
            replies = await self._execute(batch)
            if all(isinstance(reply, NoScriptError) for reply in replies):
                replies = await self._execute(batch)  # redis-py loads them this time
        except RedisError as exc:
            if isinstance(exc, RedisConnectionError):
                self._loaded.clear()  # it may come back as a Redis without our scripts
            _fail(batch, exc)
            return
        except Exception as exc:  # one command Redis cannot take (a value it cannot encode)
            await self._isolate(batch, exc)
            return
        except BaseException as exc:
            _fail(batch, RedisError(f"write abandoned: {exc!r}"))
            raise
        for (_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(self, batch: list[tuple[Command, asyncio.Future[Any]]]) -> list[Any]:
        """One pipeline of the batch's commands; the scripts checked for (and loaded) only when
        some are not known to be loaded."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for command, _ in batch:
                await command(pipe)
            shas = {script.sha for script in pipe.scripts}
            if shas <= self._loaded:
                pipe.scripts.clear()  # no SCRIPT EXISTS round trip
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        if any(isinstance(reply, NoScriptError) for reply in replies):
            self._loaded.clear()
        else:
            self._loaded |= shas
        return replies

    async def _isolate(
        self, batch: list[tuple[Command, asyncio.Future[Any]]], exc: Exception
    ) -> None:
        """A batch failed on one bad command: that command's caller gets the error, the
        others are sent again one by one. The writer itself never stops for a caller's write."""
        if len(batch) == 1:
            _fail(batch, BadWriteError(f"write refused: {exc!r}"))
            return
        for item in batch:
            await self._send([item])


def _fail(batch: list[tuple[Command, asyncio.Future[Any]]], exc: Exception) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(copy.copy(exc))
