"""Options every msctl command shares, and how errors map to exit codes 1 and 2
(common.errors.Rejected and Failed)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.connection import redacted, redis_from_url
from common.errors import Failed, LbError, Rejected, ValidationError
from common.keys import DEFAULT_NAMESPACE, DEFAULT_REDIS_URL, Keys

T = TypeVar("T")


@dataclass(frozen=True)
class CliConfig:
    redis_url: str
    namespace: str

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)

    def redis(self) -> aioredis.Redis:
        return msctl_redis(self.redis_url)


def msctl_redis(url: str) -> aioredis.Redis:
    """A client like the daemons', except that bytes in Redis that are not UTF-8 decode to lone
    surrogates (`surrogateescape`) instead of failing the command: msctl shows them escaped
    (msctl.tables.printable), and `--json` as `\\udcff` escapes, which give the bytes back."""
    client = redis_from_url(url)
    client.connection_pool.connection_kwargs["encoding_errors"] = "surrogateescape"
    return client


LAB_DIR_ENV = "MSCTL_LAB_DIR"
DEFAULT_LAB_DIR = "lab"


def lab_connection(lab_dir: str | None = None) -> tuple[str, str] | None:
    """(redis_url, namespace) of a running `msctl lab up`, from its lab.json, if there is one."""
    folder = Path(lab_dir or os.environ.get(LAB_DIR_ENV) or DEFAULT_LAB_DIR)
    try:
        state = json.loads((folder / "lab.json").read_text())
        os.kill(int(state["control_pid"]), 0)  # a lab.json left by a crashed lab is ignored
        return str(state["redis_url"]), str(state["namespace"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resolve_connection(redis_url: str | None, namespace: str | None) -> CliConfig:
    """Option or env var first; then a running lab's lab.json (./lab, or $MSCTL_LAB_DIR);
    then the defaults."""
    lab = lab_connection() if redis_url is None and namespace is None else None
    if lab is not None:
        redis_url, namespace = lab
    try:
        return CliConfig(
            redis_url or DEFAULT_REDIS_URL, Keys(namespace or DEFAULT_NAMESPACE).namespace
        )
    except ValidationError as exc:
        raise Rejected(str(exc)) from None


def connection_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add --redis-url and --namespace (env MSRV_REDIS_URL, MSRV_NAMESPACE); pass `cli`.

    With neither given, a running lab's lab.json (./lab/, or $MSCTL_LAB_DIR) supplies both, so
    that msctl in a second terminal works against `msctl lab up`.
    """

    @click.option(
        "--redis-url",
        envvar="MSRV_REDIS_URL",
        default=None,
        help=f"Redis holding the settings [env MSRV_REDIS_URL; default {DEFAULT_REDIS_URL}]",
    )
    @click.option(
        "--namespace",
        envvar="MSRV_NAMESPACE",
        default=None,
        help=f"prefix of every key and channel [env MSRV_NAMESPACE; default {DEFAULT_NAMESPACE}]",
    )
    @functools.wraps(func)
    def wrapper(redis_url: str | None, namespace: str | None, **kwargs: Any) -> Any:
        return func(cli=resolve_connection(redis_url, namespace), **kwargs)

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
    except (Rejected, Failed):
        raise  # already says its exit code
    except ValidationError as exc:
        raise Rejected(str(exc)) from None
    except (RedisError, OSError) as exc:
        raise Failed(f"redis at {redacted(cli.redis_url)}: {exc}") from None
    except LbError as exc:  # StoreUnavailableError and the rest: a run-time failure
        raise Failed(str(exc)) from None
