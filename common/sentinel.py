"""Redis through Sentinel: the `redis+sentinel://` URL and the client that finds the master.

    redis+sentinel://[[user]:password@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB][?OPTIONS]

- HOST:PORT: the sentinels (hostname, IPv4 or [IPv6]; the port defaults to 26379).
- SERVICE: the master's name in the sentinels' `sentinel monitor` line; DB: 0 by default.
- user and password (percent-escaped): the master's (and so its replicas'), as in `redis://`.
- OPTIONS: `sentinel_password=` (percent-escaped) and `sentinel_username=`, for sentinels that
  require a password of their own (`requirepass` in sentinel.conf); no other option is taken.

The client is redis-py's: `Sentinel.master_for` gives a pool whose every new connection asks
the sentinels where the master is, so a client finds the new master after a failover by
itself once its old connections fail. A connection still open to a demoted master turns the
`READONLY` reply into a ConnectionError and reconnects (redis-py's SentinelManagedConnection).
Added here: a blocking pool (`max_connections` waits for a free connection, as for
`redis://`), a one-line reason per sentinel when no master is known, a client whose `aclose`
also closes its connections to the sentinels, and `moved_master`, for a long-lived client to
ask now and then whether the sentinels still name the master its connections are open to: a
master demoted by a manual failover, or cut off from the sentinels, keeps its connections and
takes writes until Sentinel reconfigures it (SIGKILL needs none of this: its connections die).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from common.addresses import parse_address_list
from common.errors import ValidationError

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379
OPTIONS = ("sentinel_password", "sentinel_username")
# A sentinel answers SENTINEL MASTERS at once; one that takes longer is as good as gone, and
# the next one is asked.
SENTINEL_TIMEOUT = 2.0


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(SCHEME + "://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Raise ValidationError naming the part at fault; the message never holds a password."""
    rest = url[len(SCHEME) + 3 :]
    rest, _, query = rest.partition("?")
    # the userinfo ends at the last '@' (a password may hold an unescaped '/'), as in redacted
    userinfo, at, location = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts, slash, path = location.partition("/")
    if not hosts:
        raise ValidationError("no sentinel given: write HOST:PORT[,HOST:PORT...] after '//'")
    try:
        addresses = parse_address_list(hosts, DEFAULT_PORT)
    except ValidationError as exc:
        raise ValidationError(f"sentinel {exc}") from None
    service, _, db = path.partition("/")
    service = unquote(service)
    if not slash or not service:
        raise ValidationError("no service name: write /SERVICE (the master's name) after the hosts")
    if re.search(r"\s", service):
        raise ValidationError(f"service name {service!r}: no spaces")
    if db and not re.fullmatch(r"\d{1,5}", db):
        raise ValidationError(f"db {db!r}: give a number (the part after /{service}/)")
    return SentinelUrl(
        tuple(a.endpoint(DEFAULT_PORT) for a in addresses),
        service,
        int(db or 0),
        username,
        password,
        **_options(query),
    )


def _options(query: str) -> dict[str, str]:
    options = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in OPTIONS:
            raise ValidationError(f"option {name!r} not taken (only {', '.join(OPTIONS)})")
        options[name] = value
    return options


class Sentinels(Sentinel):
    """redis-py's Sentinel, whose MasterNotFoundError says in one line what each sentinel
    answered (unreachable, does not know the service, sees its master down)."""

    async def discover_master(self, service_name: str) -> tuple[str, int]:
        reasons = []
        for index, sentinel in enumerate(self.sentinels):
            kwargs = sentinel.connection_pool.connection_kwargs
            where = f"{kwargs['host']}:{kwargs['port']}"
            try:
                masters = cast(dict[str, dict[str, Any]], await sentinel.sentinel_masters())
            except AuthenticationError as exc:
                reasons.append(f"{where} refused the credentials ({exc})")
                continue
            except (RedisConnectionError, RedisTimeoutError) as exc:
                reasons.append(f"{where} unreachable ({exc})")
                continue
            except ResponseError as exc:
                reasons.append(f"{where} is not a sentinel ({exc})")
                continue
            state = masters.get(service_name)
            if state is None:
                reasons.append(f"{where} does not know it")
            elif not self.check_master_state(state, service_name):
                reasons.append(f"{where} sees its master {state['ip']}:{state['port']} down")
            else:  # as redis-py does: ask the sentinel that answered first next time
                self.sentinels[0], self.sentinels[index] = sentinel, self.sentinels[0]
                return state["ip"], int(state["port"])
        raise MasterNotFoundError(
            f"no Redis master known for service {service_name!r}: {'; '.join(reasons)}"
        )


class BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """The master's pool with a cap: past `max_connections` a command waits (up to `timeout`)
    for a free connection instead of failing."""


class SentinelMaster(aioredis.Redis):
    """The master's client; the client that owns the pool also closes its sentinels' ones."""

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        close = close_connection_pool
        if close is None:
            close = self.auto_close_connection_pool
        await super().aclose(close_connection_pool)
        pool = self.connection_pool
        if close and isinstance(pool, SentinelConnectionPool):
            await pool.sentinel_manager.aclose()


def sentinel_client(
    parsed: SentinelUrl,
    options: dict[str, Any],
    *,
    timeout: float,
    max_connections: int | None,
) -> aioredis.Redis:
    """A client of the master of `parsed`; `options` are the master connections' (timeouts,
    decoding, retry), as redis_from_url gives them to a `redis://` client."""
    bound = min(timeout, SENTINEL_TIMEOUT)
    sentinel_options: dict[str, Any] = {
        "socket_connect_timeout": bound,
        "socket_timeout": bound,
        # one immediate retry replaces a stale socket after a sentinel restart; a sentinel
        # that is down is skipped for the next one at once
        "retry": Retry(NoBackoff(), 1),
        "username": parsed.sentinel_username,
        "password": parsed.sentinel_password,
    }
    sentinels = Sentinels(  # type: ignore[no-untyped-call]
        list(parsed.sentinels),
        sentinel_kwargs=sentinel_options,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **options,
    )
    if max_connections is None:
        client = sentinels.master_for(parsed.service, redis_class=SentinelMaster)
    else:
        client = sentinels.master_for(
            parsed.service,
            redis_class=SentinelMaster,
            connection_pool_class=BlockingSentinelPool,
            max_connections=max_connections,
            timeout=timeout,
        )
    return cast(SentinelMaster, client)


async def moved_master(client: aioredis.Redis) -> str | None:
    """For a client of a redis+sentinel:// URL whose connections are open to a master the
    sentinels no longer name: close them all (those in use too: a subscriber's read fails as
    on any lost connection), so that the next command reaches the new master, and say so.
    None otherwise: another kind of client, no connection yet, the same master, or sentinels
    that cannot tell now (their own outage is no reason to leave a master that answers)."""
    pool = client.connection_pool
    if not isinstance(pool, SentinelConnectionPool) or pool.master_address is None:
        return None
    known = pool.master_address
    try:
        named = await pool.sentinel_manager.discover_master(pool.service_name)
    except (RedisConnectionError, RedisTimeoutError):
        return None
    if tuple(named) == tuple(known):
        return None
    await pool.disconnect(inuse_connections=True)
    return (
        f"the sentinels name {named[0]}:{named[1]} master of {pool.service_name!r}, "
        f"not {known[0]}:{known[1]}"
    )
