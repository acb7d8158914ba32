"""common.durability against a real master with two replicas (and its sentinels): a confirmed
write is on a replica when the call returns; with the replicas frozen, the call fails after
REPLICA_WAIT saying so (and `msctl config set` exits 1); a lone Redis waits for nothing."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Iterator

import fakeredis
import pytest
import redis
import redis.asyncio as aioredis
from click.testing import CliRunner

from common.ca import ensure_ca, load_ca
from common.configstore import ConfigStore
from common.connection import redis_from_url
from common.durability import REPLICA_WAIT, NotReplicatedError, confirm_replicated
from common.keys import Keys
from common.tokens import create_token
from msctl.cli import cli
from tests.support.sentinel import SentinelCluster, sentinel_cluster

VALIDITY = "ca.framework.cert.validity.period"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    with sentinel_cluster(tmp_path_factory.mktemp("sentinel")) as started:
        yield started


def _on_each_replica(cluster: SentinelCluster, key: str) -> list[str | None]:
    values = []
    for node in cluster.replicas:
        with redis.Redis.from_url(cluster.node_url(node), decode_responses=True) as client:
            values.append(client.hget(key, VALIDITY))
    return values


@pytest.mark.timeout(30)
def test_a_confirmed_change_is_on_a_replica_when_set_returns(
    cluster: SentinelCluster, namespace: str
) -> None:
    keys = Keys(namespace)

    async def scenario() -> None:
        client = redis_from_url(cluster.url)
        try:
            # written on one pooled connection, confirmed through another (the probe's)
            for value in ("100", "200", "300"):
                await ConfigStore(client, keys).set(VALIDITY, value)
                # WAIT 1 vouches for one replica; the other may be a moment behind
                assert value in _on_each_replica(cluster, keys.settings)
        finally:
            await client.aclose()

    asyncio.run(scenario())


@pytest.mark.timeout(45)
def test_with_the_replicas_frozen_a_change_fails_saying_it_is_on_the_master_only(
    cluster: SentinelCluster, namespace: str
) -> None:
    """The replicas stay connected (SIGSTOP: the master counts them until repl-timeout) but
    confirm nothing: WAIT 1 finds none. A WAIT on a connection that wrote nothing would
    return 2 at once; the probe is what makes it wait."""
    keys = Keys(namespace)
    argv = ["config", "set", VALIDITY, "42", "--redis-url", cluster.url, "--namespace", namespace]

    async def with_client(work: Callable[[aioredis.Redis], Awaitable[object]]) -> None:
        client = redis_from_url(cluster.url)
        try:
            await work(client)
        finally:
            await client.aclose()

    async def token_refused(client: aioredis.Redis) -> None:
        with pytest.raises(NotReplicatedError, match=r"^join token [0-9a-f]{8}: the change is"):
            await create_token(client, keys, ttl_seconds=60, uses=1)

    async def ca_refused(client: aioredis.Redis) -> None:
        with pytest.raises(NotReplicatedError, match=r"^the new CA sha256:[0-9a-f]{64}: the"):
            await ensure_ca(client, Keys(f"{namespace}-ca"))
        assert await load_ca(client, Keys(f"{namespace}-ca")) is not None  # on the master

    asyncio.run(with_client(lambda client: ensure_ca(client, keys)))  # confirmed: replicas run
    frozen = [node.process for node in cluster.replicas if node.process is not None]
    for process in frozen:
        process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = CliRunner().invoke(cli, argv)
        waited = time.monotonic() - started
        asyncio.run(with_client(token_refused))
        asyncio.run(with_client(ca_refused))
    finally:
        for process in frozen:
            process.send_signal(signal.SIGCONT)
    assert result.exit_code == 1, result.output
    assert result.output == (
        f"Error: {VALIDITY}: the change is on the Redis master, but no replica confirmed it "
        f"within {REPLICA_WAIT:g}s; a failover now would lose it (see INFO replication on the "
        "master)\n"
    )
    assert REPLICA_WAIT <= waited < REPLICA_WAIT + 3
    with redis.Redis.from_url(cluster.node_url(cluster.master), decode_responses=True) as master:
        assert master.hget(keys.settings, VALIDITY) == "42"
    # thawed, the replicas catch up, and setting the same value again confirms it
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, result.output
    assert "42" in _on_each_replica(cluster, keys.settings)


@pytest.mark.timeout(30)
def test_a_lone_redis_waits_for_no_replica(redis_url: str, namespace: str) -> None:
    async def scenario() -> None:
        client = redis_from_url(redis_url)
        try:
            assert (await client.info("replication"))["connected_slaves"] == 0
            started = time.monotonic()
            await ConfigStore(client, Keys(namespace)).set(VALIDITY, "100")
            assert time.monotonic() - started < REPLICA_WAIT / 3
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_a_store_without_info_is_taken_as_having_no_replica() -> None:
    async def scenario() -> None:
        client = fakeredis.FakeAsyncRedis(decode_responses=True)
        await confirm_replicated(client, Keys("unit"), "anything", timeout=0.01)

    asyncio.run(scenario())
