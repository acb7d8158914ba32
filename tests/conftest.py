"""Shared fixtures: a real redis-server for the test session, a factory for tests that must
stop, kill or restart one, a fresh namespace per test, and fakeredis for fast unit tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from msctl.children import kill_leftovers
from tests.support.redis_server import (
    FakeRedisTcp,
    RedisServer,
    have_redis_server,
    real_redis_required,
)


@pytest.fixture(autouse=True)
def no_leftover_children() -> Iterator[None]:
    """Whatever a test started through msctl.children is killed when it ends, pass or fail."""
    yield
    kill_leftovers()


def pytest_report_header(config: pytest.Config) -> str:
    if have_redis_server():
        return "redis: real redis-server processes"
    return "redis: redis-server not found, testing against fakeredis's TCP server"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer | FakeRedisTcp]:
    server: RedisServer | FakeRedisTcp
    if have_redis_server():
        server = RedisServer(tmp_path_factory.mktemp("redis"))
    elif real_redis_required():
        pytest.fail("MSRV_TEST_REQUIRE_REDIS is set but redis-server is not on PATH")
    else:
        server = FakeRedisTcp()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer | FakeRedisTcp) -> str:
    return redis_server.url


@pytest.fixture
def namespace() -> str:
    """A namespace of its own for each test, so tests share the server but not keys."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start extra redis-server processes a test may kill or restart; all stopped after."""
    if not have_redis_server():
        pytest.skip("needs the redis-server binary (kill/restart)")
    started: list[RedisServer] = []

    def make(*, persist: bool = False) -> RedisServer:
        server = RedisServer(tmp_path / f"redis-{len(started)}", persist=persist)
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.kill()
