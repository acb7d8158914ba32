"""Redis connections: one place that builds the asyncio client from a URL."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from common.errors import ValidationError


def redis_from_url(url: str, *, timeout: float = 5.0, retries: int | None = None) -> aioredis.Redis:
    """An asyncio client that decodes replies as UTF-8 and gives up on a dead socket.

    `retries` replaces redis-py's own retry policy (a few attempts with a backoff of seconds)
    by that many immediate reconnect attempts: daemons that run their own reconnect loop pass
    0 or 1 so that an outage is seen at once instead of being hidden behind sleeps.
    """
    options: dict[str, Any] = {}
    if retries is not None:
        options["retry"] = Retry(NoBackoff(), retries)
    try:
        return aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            health_check_interval=30,
            **options,
        )
    except ValueError as exc:
        raise ValidationError(f"redis url {url!r}: {exc}") from None
