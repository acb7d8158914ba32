"""Redis connections: one place that builds the asyncio client from a URL."""

from __future__ import annotations

import redis.asyncio as aioredis

from common.errors import ValidationError


def redis_from_url(url: str, *, timeout: float = 5.0) -> aioredis.Redis:
    """An asyncio client that decodes replies as UTF-8 and gives up on a dead socket."""
    try:
        return aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            health_check_interval=30,
        )
    except ValueError as exc:
        raise ValidationError(f"redis url {url!r}: {exc}") from None
