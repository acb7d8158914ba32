"""Options every msctl command shares, and the errors that map to exit codes 1 and 2."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.connection import redis_from_url
from common.errors import LbError, StoreUnavailableError, ValidationError
from common.keys import DEFAULT_NAMESPACE, DEFAULT_REDIS_URL, Keys

T = TypeVar("T")


class Rejected(click.ClickException):
    """A value or usage was refused: exit 2, Redis untouched."""

    exit_code = 2


class Failed(click.ClickException):
    """The command could not do its job at run time: exit 1."""

    exit_code = 1


@dataclass(frozen=True)
class CliConfig:
    redis_url: str
    namespace: str

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)

    def redis(self) -> aioredis.Redis:
        return redis_from_url(self.redis_url)


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --redis-url and --namespace (env MSRV_REDIS_URL, MSRV_NAMESPACE); pass `cli`."""

    @click.option(
        "--redis-url",
        envvar="MSRV_REDIS_URL",
        default=DEFAULT_REDIS_URL,
        show_default=True,
        help="Redis holding the settings [env MSRV_REDIS_URL]",
    )
    @click.option(
        "--namespace",
        envvar="MSRV_NAMESPACE",
        default=DEFAULT_NAMESPACE,
        show_default=True,
        help="prefix of every key and channel [env MSRV_NAMESPACE]",
    )
    @functools.wraps(func)
    def wrapper(redis_url: str, namespace: str, **kwargs: Any) -> Any:
        try:
            cli = CliConfig(redis_url, Keys(namespace).namespace)
        except ValidationError as exc:
            raise Rejected(str(exc)) from None
        return func(cli=cli, **kwargs)

    return wrapper


def run_async(cli: CliConfig, work: Callable[[aioredis.Redis], Coroutine[Any, Any, T]]) -> T:
    """Run `work` with a Redis client; map our errors to exit codes and close the client."""

    async def main() -> T:
        try:
            client = cli.redis()
        except ValidationError as exc:
            raise Rejected(str(exc)) from None
        try:
            return await work(client)
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    except ValidationError as exc:
        raise Rejected(str(exc)) from None
    except (RedisError, OSError) as exc:
        raise Failed(f"redis at {cli.redis_url}: {exc}") from None
    except (StoreUnavailableError, LbError) as exc:
        raise Failed(str(exc)) from None
