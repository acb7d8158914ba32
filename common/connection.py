"""Redis connections: one place that builds the asyncio client from a URL."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from common.errors import ValidationError


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
    """
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": timeout,
        "socket_timeout": timeout,
        "health_check_interval": 30,
    }
    if retries is not None:
        options["retry"] = Retry(NoBackoff(), retries)
    try:
        if max_connections is not None:
            pool = aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=timeout, **options
            )
            return aioredis.Redis.from_pool(pool)
        return aioredis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise ValidationError(f"redis url {url!r}: {exc}") from None
