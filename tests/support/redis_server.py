"""Test-side view of the embedded Redis: the same classes the lab uses."""

from __future__ import annotations

import os

from msctl.embedded_redis import FakeRedisTcp, RedisServer, free_port, have_redis_server

__all__ = ["FakeRedisTcp", "RedisServer", "free_port", "have_redis_server", "real_redis_required"]


def real_redis_required() -> bool:
    """CI sets MSRV_TEST_REQUIRE_REDIS=1 so that it always tests against a real redis-server."""
    return os.environ.get("MSRV_TEST_REQUIRE_REDIS", "") not in ("", "0")
