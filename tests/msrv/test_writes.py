"""The write queue's scripts against a real Redis: asked for once, sent again when Redis lost
them (restarted, emptied, another master)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from common.connection import redis_from_url
from msrv.writes import WriteQueue

ECHO = "return 'echo ' .. ARGV[1]"


def run(redis_url: str, work: Callable[[WriteQueue, Any], Awaitable[None]]) -> None:
    async def main() -> None:
        redis = redis_from_url(redis_url)
        queue = WriteQueue(redis)
        writer = asyncio.create_task(queue.run())
        try:
            await work(queue, redis)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            await redis.aclose()

    asyncio.run(main())


@pytest.fixture
def checks(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many scripts each SCRIPT EXISTS of redis-py's pipelines asked about."""
    asked: list[int] = []
    real = Pipeline.load_scripts

    async def counting(self: Pipeline) -> None:
        asked.append(len(self.scripts))
        await real(self)

    monkeypatch.setattr(Pipeline, "load_scripts", counting)
    return asked


def test_scripts_are_checked_for_once_then_sent_straight(redis_url: str, checks: list[int]):
    async def work(queue: WriteQueue, redis: Any) -> None:
        echo = redis.register_script(ECHO)
        for n in range(3):
            replies = await queue.call_many(
                lambda pipe, i=i: echo(args=[i], client=pipe) for i in range(n, n + 5)
            )
            assert replies == [f"echo {i}" for i in range(n, n + 5)]
        assert checks == [1]

    run(redis_url, work)


def test_a_batch_refused_for_a_lost_script_is_sent_again_once_loaded(
    redis_url: str, checks: list[int]
):
    async def work(queue: WriteQueue, redis: Any) -> None:
        echo = redis.register_script(ECHO)
        assert await queue.call(lambda pipe: echo(args=["a"], client=pipe)) == "echo a"
        await redis.script_flush()  # as a restarted or emptied Redis, or a new master
        replies = await queue.call_many(
            lambda pipe, i=i: echo(args=[i], client=pipe) for i in range(3)
        )
        assert replies == ["echo 0", "echo 1", "echo 2"]
        assert checks == [1, 1]  # the first batch, then the one sent again

    run(redis_url, work)


def test_writes_refused_for_a_lost_script_fail_alone_when_the_rest_of_the_batch_ran(
    redis_url: str, checks: list[int]
):
    async def work(queue: WriteQueue, redis: Any) -> None:
        echo = redis.register_script(ECHO)
        assert await queue.call(lambda pipe: echo(args=["a"], client=pipe)) == "echo a"
        await redis.script_flush()
        commands = [
            lambda pipe: echo(args=["refused"], client=pipe),
            lambda pipe: pipe.script_load(ECHO),  # another client loads it meanwhile
            lambda pipe: echo(args=["ran"], client=pipe),
        ]
        refused, loaded, ran = await asyncio.gather(
            *(queue.submit(c) for c in commands), return_exceptions=True
        )
        assert isinstance(refused, NoScriptError)
        assert (loaded, ran) == (echo.sha, "echo ran")
        assert await queue.call(lambda pipe: echo(args=["b"], client=pipe)) == "echo b"
        assert checks == [1, 1]  # asked again after the refusal

    run(redis_url, work)
