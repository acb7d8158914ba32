"""Certificates issued per guid and revoked with their host (`remove_host`), against a real
redis-server: the move into `ns:revoked`, the `hosts.revoked` event, and pruning."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from common.connection import redis_from_url
from common.keys import Keys
from common.records import HostBusyError, HostRecord, HostState, remove_host
from common.revocation import is_revoked, record_issued

Work = Callable[[Any, Keys], Awaitable[None]]


def in_redis(redis_url: str, namespace: str, work: Work) -> None:
    async def main() -> None:
        redis = redis_from_url(redis_url)
        try:
            await work(redis, Keys(namespace))
        finally:
            await redis.aclose()

    asyncio.run(main())


async def add_host(redis: Any, keys: Keys, host_id: int, guid: str) -> None:
    """A disconnected host as a server leaves it (what remove_host reads and removes)."""
    record = HostRecord(
        host_id, guid, name=f"kvm{host_id}", type="routing", zone="z1",
        state=HostState.DISCONNECTED, server="ms1",
    )  # fmt: skip
    await redis.hset(keys.host(host_id), mapping=record.to_hash())
    await redis.hset(keys.host_ids_by_guid, guid, host_id)
    await redis.zadd(keys.zone_hosts("z1"), {str(host_id): host_id})


async def events_while(redis: Any, keys: Keys, action: Awaitable[object]) -> list[dict[str, Any]]:
    """The events published on the channel while `action` runs (subscribed before it)."""
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(keys.events)
    try:
        await action
        await redis.publish(keys.events, json.dumps({"type": "test.end"}))
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(5):
            while not seen or seen[-1]["type"] != "test.end":
                message = await pubsub.get_message(timeout=1)
                if message is not None:
                    seen.append(json.loads(message["data"]))
        return seen[:-1]
    finally:
        await pubsub.aclose()


def test_removing_a_host_revokes_every_certificate_issued_to_it(
    redis_url: str, namespace: str
) -> None:
    later = time.time() + 86400

    async def work(redis: Any, keys: Keys) -> None:
        await add_host(redis, keys, 1, "guid-1")
        await add_host(redis, keys, 2, "guid-2")
        await record_issued(redis, keys, "guid-1", "a1", later)
        await record_issued(redis, keys, "guid-1", "a2", later + 100)  # a renewal
        await record_issued(redis, keys, "guid-2", "b1", later)
        assert not await is_revoked(redis, keys, "a1")

        seen = await events_while(redis, keys, remove_host(redis, keys, 1))

        assert {"type": "hosts.revoked", "guid": "guid-1"} in seen
        assert {"type": "hosts.changed", "zone": "z1"} in seen
        assert await redis.hgetall(keys.revoked) == {
            "a1": f"{later:.3f}",
            "a2": f"{later + 100:.3f}",
        }
        assert not await redis.exists(keys.host_certificates("guid-1"))
        assert await is_revoked(redis, keys, "a1") and await is_revoked(redis, keys, "a2")
        assert not await is_revoked(redis, keys, "b1")  # another host's
        assert not await is_revoked(redis, keys, "ff")  # never issued
        assert await redis.hgetall(keys.host_certificates("guid-2")) == {"b1": f"{later:.3f}"}
        assert not await redis.exists(keys.host(1))

    in_redis(redis_url, namespace, work)


def test_a_host_with_no_certificate_is_removed_all_the_same(redis_url: str, namespace: str) -> None:
    async def work(redis: Any, keys: Keys) -> None:
        await add_host(redis, keys, 3, "guid-3")
        seen = await events_while(redis, keys, remove_host(redis, keys, 3))
        assert {"type": "hosts.revoked", "guid": "guid-3"} in seen
        assert not await redis.exists(keys.host(3), keys.revoked, keys.host_certificates("guid-3"))
        assert await redis.hget(keys.host_ids_by_guid, "guid-3") is None

    in_redis(redis_url, namespace, work)


def test_revoked_certificates_past_their_expiry_are_dropped_at_a_removal(
    redis_url: str, namespace: str
) -> None:
    now = time.time()

    async def work(redis: Any, keys: Keys) -> None:
        await redis.hset(keys.revoked, mapping={"old": f"{now - 1:.3f}", "live": f"{now + 60}"})
        await add_host(redis, keys, 4, "guid-4")
        await record_issued(redis, keys, "guid-4", "c1", now + 3600)
        await remove_host(redis, keys, 4)
        assert set(await redis.hkeys(keys.revoked)) == {"live", "c1"}
        assert not await is_revoked(redis, keys, "old")

    in_redis(redis_url, namespace, work)


def test_recording_a_certificate_drops_the_guids_expired_ones(
    redis_url: str, namespace: str
) -> None:
    now = time.time()

    async def work(redis: Any, keys: Keys) -> None:
        await record_issued(redis, keys, "guid-5", "d1", now - 1)  # issued, since expired
        await record_issued(redis, keys, "guid-5", "d2", now + 60)
        await record_issued(redis, keys, "guid-5", "d3", now + 3600)
        assert set(await redis.hkeys(keys.host_certificates("guid-5"))) == {"d2", "d3"}

    in_redis(redis_url, namespace, work)


def test_a_guid_that_belongs_to_another_host_now_keeps_its_certificates(
    redis_url: str, namespace: str
) -> None:
    """Two records of one guid (a re-assert after Redis lost its data can leave an old one):
    removing the one the guid no longer maps to revokes nothing of the other's."""

    async def work(redis: Any, keys: Keys) -> None:
        await add_host(redis, keys, 6, "guid-6")
        await add_host(redis, keys, 7, "guid-6")  # the guid now maps to 7
        await record_issued(redis, keys, "guid-6", "e1", time.time() + 60)
        seen = await events_while(redis, keys, remove_host(redis, keys, 6))
        assert not any(event["type"] == "hosts.revoked" for event in seen)
        assert not await is_revoked(redis, keys, "e1")
        assert await redis.hget(keys.host_ids_by_guid, "guid-6") == "7"
        await remove_host(redis, keys, 7)
        assert await is_revoked(redis, keys, "e1")

    in_redis(redis_url, namespace, work)


def test_a_connected_host_is_refused_and_keeps_its_certificates(
    redis_url: str, namespace: str
) -> None:
    async def work(redis: Any, keys: Keys) -> None:
        await add_host(redis, keys, 8, "guid-8")
        await redis.hset(keys.host(8), "state", str(HostState.CONNECTED))
        await redis.set(keys.server_alive("ms1"), "1", ex=60)
        await record_issued(redis, keys, "guid-8", "f1", time.time() + 60)
        with pytest.raises(HostBusyError):
            await remove_host(redis, keys, 8)
        assert not await is_revoked(redis, keys, "f1")
        assert await redis.hkeys(keys.host_certificates("guid-8")) == ["f1"]

    in_redis(redis_url, namespace, work)
