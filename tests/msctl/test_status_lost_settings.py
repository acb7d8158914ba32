"""`msctl status` after Redis lost its data: it says what the servers actually do."""

from __future__ import annotations

import asyncio

from click.testing import CliRunner, Result

from common.configstore import ConfigStore
from common.connection import redis_from_url
from common.keys import Keys
from msctl.cli import cli
from msrv.registry import ServerRegistry


def msctl(redis_url: str, namespace: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--redis-url", redis_url, "--namespace", namespace])


def servers(redis_url: str, namespace: str, versions: dict[str, int], host: str = "") -> None:
    """Running servers applying the given settings versions; `host` set in Redis if given."""

    async def main() -> None:
        redis = redis_from_url(redis_url)
        keys = Keys(namespace)
        try:
            if host:
                await ConfigStore(redis, keys).set("host", host)
            for number, (server_id, version) in enumerate(versions.items(), start=1):
                registry = ServerRegistry(redis, keys, server_id, f"10.0.0.{number}:8250", ttl=60)
                await registry.register(settings_version=version)
        finally:
            await redis.aclose()

    asyncio.run(main())


def test_servers_ahead_of_an_emptied_redis(redis_url: str, namespace: str) -> None:
    servers(redis_url, namespace, {"ms1": 5, "ms2": 5, "ms3": 4})
    result = msctl(redis_url, namespace, "status")
    assert result.exit_code == 0, result.output
    assert "config version  0\n" in result.output
    assert "servers apply   version 5: ms1, ms2; version 4: ms3\n" in result.output
    warning = (
        "warning: Redis lost its settings: Redis is at config version 0, running servers apply "
        "version 5: ms1, ms2; version 4: ms3. They keep pushing their last-known lists "
        "(agents keep theirs). Set the settings again with `msctl config set`: the servers "
        "apply the next change, so set every one that is not the default, `host` last"
    )
    assert warning in result.output
    assert "push no list" not in result.output


def test_servers_in_step_with_redis(redis_url: str, namespace: str) -> None:
    servers(redis_url, namespace, {"ms1": 1, "ms2": 1}, host="a,b")
    result = msctl(redis_url, namespace, "status")
    assert result.exit_code == 0, result.output
    assert "config version  1\n" in result.output
    assert "servers apply" not in result.output
    assert "warning" not in result.output


def test_a_server_behind_redis_shows_in_the_summary_only(redis_url: str, namespace: str) -> None:
    """A server polls every few seconds: one still at the previous version is no data loss."""
    servers(redis_url, namespace, {"ms1": 1, "ms2": 0}, host="a,b")
    result = msctl(redis_url, namespace, "status")
    assert "servers apply   version 1: ms1; version 0: ms2\n" in result.output
    assert "warning" not in result.output


def test_fresh_servers_with_host_unset_push_no_list(redis_url: str, namespace: str) -> None:
    servers(redis_url, namespace, {"ms1": 0})
    result = msctl(redis_url, namespace, "status")
    assert "warning: `host` is not set: servers push no list" in result.output
    assert "lost" not in result.output
