"""Redis connections: one place that builds the asyncio client from a URL, and one that makes a
URL fit to print (`redacted`).

A URL is parsed by redis-py: `redis://[[user]:password@]host[:port][/db]`, `rediss://` (TLS)
and `unix://` all work wherever a URL is taken; so does
`redis+sentinel://[[user]:password@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]`, which redis-py has
no URL for (common.sentinel parses it and builds the client from redis-py's Sentinel).
"""

from __future__ import annotations

import re
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from common.errors import ValidationError
from common.sentinel import SentinelUrl, is_sentinel_url, parse_sentinel_url, sentinel_client

REDACTED = "***"
_QUERY_PASSWORD = re.compile(r"(?i)([?&](?:sentinel_)?password=)([^&#]*)")


def _hide(url: str) -> tuple[str, list[str]]:
    """(`url` with its secrets replaced by ***, the secrets as written in it)."""
    scheme, sep, rest = url.partition("://")
    prefix = scheme + sep if sep else ""
    if not sep:
        rest = url
    # The userinfo ends at the last '@' before any query or fragment, which also covers a
    # password with an unescaped '/' or '@' in it (redis-py would misread that URL; it must
    # still not be printed).
    head_end = min((i for i in (rest.find("?"), rest.find("#")) if i != -1), default=len(rest))
    userinfo, at, after = rest[:head_end].rpartition("@")
    secrets = []
    if at:
        user, colon, password = userinfo.partition(":")
        if colon:  # user:password, or :password
            secrets.append(password)
            userinfo = f"{user}:{REDACTED}"
        else:  # one word: redis-py takes it as a user name, redis-cli as the password
            secrets.append(user)
            userinfo = REDACTED
        rest = f"{userinfo}@{after}{rest[head_end:]}"
    secrets += [m.group(2) for m in _QUERY_PASSWORD.finditer(rest)]
    rest = _QUERY_PASSWORD.sub(rf"\g<1>{REDACTED}", rest)
    return prefix + rest, [s for s in secrets if s]


def redacted(url: str) -> str:
    """`url` as logs, errors and terminal output show it: the password (after `user:` or a
    lone `:` in the userinfo, or in a `password=` or `sentinel_password=` query argument)
    replaced by `***`; a userinfo of one word is hidden whole. Everything else (scheme, user,
    hosts, port, service, db) is kept."""
    return _hide(url)[0]


def redis_from_url(
    url: str,
    *,
    timeout: float = 5.0,
    retries: int | None = None,
    max_connections: int | None = None,
) -> aioredis.Redis:
    """An asyncio client that decodes replies as UTF-8 and gives up on a dead socket.

    `retries` replaces redis-py's own retry policy (a few attempts with a backoff of seconds)
    by that many immediate reconnect attempts: daemons that run their own reconnect loop pass
    0 or 1 so that an outage is seen at once instead of being hidden behind sleeps.

    `max_connections` caps the pool, and a command then waits (up to `timeout`) for a free
    connection. Without it redis-py's pool refuses the 101st concurrent command ("Too many
    connections").

    A `redis+sentinel://` URL gives a client of the master the sentinels name, found again
    through them after a failover (common.sentinel), with the same options.
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "health_check_interval": 30,
    }
    if retries is not None:
        options["retry"] = Retry(NoBackoff(), retries)
    if is_sentinel_url(url):
        parsed = _parsed_sentinel_url(url)
        return sentinel_client(parsed, options, timeout=timeout, max_connections=max_connections)
    try:
        if max_connections is not None:
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=timeout, **options
            )
            return aioredis.Redis.from_pool(pool)
        return aioredis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise _refused(url, exc) from None


def check_redis_url(url: str) -> None:
    """Raise ValidationError (one line, passwords hidden) for a URL `redis_from_url` would
    refuse; connects to nothing, so a daemon can refuse its command line at once."""
    if is_sentinel_url(url):
        _parsed_sentinel_url(url)
        return
    try:
        parse_url(url)
    except ValueError as exc:
        raise _refused(url, exc) from None


def _parsed_sentinel_url(url: str) -> SentinelUrl:
    try:
        return parse_sentinel_url(url)
    except ValidationError as exc:  # its message quotes nothing of the userinfo
        raise ValidationError(f"redis url {redacted(url)!r}: {exc}") from None


def _refused(url: str, exc: ValueError) -> ValidationError:
    """redis-py's reason for refusing `url`, unless it would show part of a password."""
    shown, secrets = _hide(url)
    # redis-py's list of schemes lacks the one it has no URL for
    detail = str(exc).replace("unix://)", "unix://, redis+sentinel://)")
    # urllib's messages quote parts of a malformed URL ("Port could not be cast to integer
    # value as '...'"), which for a password with an unescaped '/' is part of the password
    pieces = [p for s in secrets for p in re.split(r"[/?#:@&=]", s) if p]
    if any(piece in detail for piece in pieces):
        detail = "not a valid URL (details hidden: they would show part of the password)"
    return ValidationError(f"redis url {shown!r}: {detail}")
