"""Host registry against a real Redis (its Lua scripts need one)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import replace

import redis.asyncio as aioredis

from common.connection import redis_from_url
from common.keys import Keys
from common.records import HostRecord, HostState, load_hosts
from msrv.registry import HostRegistry, Write


def record(host_id: int, session: str, **fields: object) -> HostRecord:
    base = HostRecord(
        id=host_id,
        guid=f"guid-{host_id}",
        name=f"h{host_id}",
        type="routing",
        zone="z1",
        cluster="c1",
        state=HostState.CONNECTED,
        server="ms1",
        session=session,
        last_seen=1.0,
    )
    return replace(base, **fields)  # type: ignore[arg-type]


def run(
    redis_url: str, namespace: str, work: Callable[[aioredis.Redis, Keys], Awaitable[None]]
) -> None:
    async def main() -> None:
        redis = redis_from_url(redis_url)
        try:
            await work(redis, Keys(namespace))
        finally:
            await redis.aclose()

    asyncio.run(main())


def test_ids_are_assigned_once_and_never_reused(redis_url: str, namespace: str) -> None:
    async def work(redis: aioredis.Redis, keys: Keys) -> None:
        registry = HostRegistry(redis, keys)
        ids = await asyncio.gather(*(registry.host_id(f"g{i % 5}") for i in range(40)))
        per_guid = {f"g{i % 5}": ids[i] for i in range(40)}
        assert all(ids[i] == per_guid[f"g{i % 5}"] for i in range(40))
        assert len(set(per_guid.values())) == 5
        await redis.hdel(keys.host_ids_by_guid, "g0")  # retired
        assert await registry.host_id("g0") > max(per_guid.values())

    run(redis_url, namespace, work)


def test_claim_publishes_zone_change_once_and_moves_zones(redis_url: str, namespace: str) -> None:
    async def work(redis: aioredis.Redis, keys: Keys) -> None:
        registry = HostRegistry(redis, keys)
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(keys.events)
        await registry.claim(record(1, "s1"))
        await registry.claim(record(1, "s2"))  # reconnect: ranks unchanged, no event
        await registry.claim(record(1, "s3", zone="z2"))  # moved
        await registry.claim(record(2, "t1", type="storage"))  # not ranked
        await redis.publish(keys.events, '{"type": "end"}')  # marks the end of the stream
        events = []
        async with asyncio.timeout(5):
            while not events or events[-1]["type"] != "end":
                message = await pubsub.get_message(timeout=1)
                if message is not None:
                    events.append(json.loads(message["data"]))
        await pubsub.aclose()
        events.pop()
        assert events == [
            {"type": "hosts.changed", "zone": "z1"},
            {"type": "hosts.changed", "zone": "z2"},
            {"type": "hosts.changed", "zone": "z1"},
        ]
        assert await redis.zrange(keys.zone_hosts("z1"), 0, -1) == []
        assert await redis.zrange(keys.zone_hosts("z2"), 0, -1) == ["1"]

    run(redis_url, namespace, work)


def test_a_lost_session_never_overwrites_a_newer_one(redis_url: str, namespace: str) -> None:
    async def work(redis: aioredis.Redis, keys: Keys) -> None:
        registry = HostRegistry(redis, keys)
        old, new = record(1, "old", server="ms1"), record(1, "new", server="ms2")
        await registry.claim(old)
        await registry.claim(new)
        assert await registry.update(old, state="disconnected") == Write.SUPERSEDED
        await registry.disconnect([old])
        assert await registry.reassert([old]) == [Write.SUPERSEDED]
        assert await registry.update(record(9, "x"), state="x") == Write.MISSING
        (host,) = await load_hosts(redis, keys)
        assert (host.server, host.session) == ("ms2", "new")
        await registry.disconnect([new])
        (host,) = await load_hosts(redis, keys)
        assert host.state == HostState.DISCONNECTED

    run(redis_url, namespace, work)


def test_reassert_rebuilds_what_an_empty_redis_lost(redis_url: str, namespace: str) -> None:
    async def work(redis: aioredis.Redis, keys: Keys) -> None:
        registry = HostRegistry(redis, keys)
        served = [record(4, "a"), record(9, "b", zone="z2")]
        assert await registry.reassert(served) == [Write.WRITTEN, Write.WRITTEN]
        assert await redis.get(keys.host_id_counter) == "9"
        assert await redis.hgetall(keys.host_ids_by_guid) == {"guid-4": "4", "guid-9": "9"}
        assert await redis.zrange(keys.zone_hosts("z2"), 0, -1) == ["9"]
        assert [h.id for h in await load_hosts(redis, keys)] == [4, 9]
        assert await registry.host_id("fresh") == 10

    run(redis_url, namespace, work)
