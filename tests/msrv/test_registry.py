"""Host registry against a real Redis (its Lua scripts need one)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from redis.exceptions import ResponseError

from common.connection import redis_from_url
from common.keys import Keys
from common.records import HostRecord, HostState, load_hosts
from msrv.registry import HostRegistry, Write
from msrv.writes import BadWriteError


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
    redis_url: str, namespace: str, work: Callable[[HostRegistry, Keys], Awaitable[None]]
) -> None:
    """`work` gets a registry whose writer runs (queued writes need it)."""

    async def main() -> None:
        redis = redis_from_url(redis_url)
        registry = HostRegistry(redis, Keys(namespace))
        writer = asyncio.create_task(registry.run())
        try:
            await work(registry, Keys(namespace))
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            await redis.aclose()

    asyncio.run(main())


def test_start_assigns_ids_once_in_one_script_and_never_reuses_them(
    redis_url: str, namespace: str
) -> None:
    async def work(registry: HostRegistry, keys: Keys) -> None:
        redis = registry.redis
        racing = [record(0, f"s{i}", guid=f"g{i % 5}") for i in range(40)]
        started = await asyncio.gather(*(registry.start(r, live_for=60) for r in racing))
        ids = {s.record.guid: s.record.id for s in started}
        assert sorted(ids.values()) == [1, 2, 3, 4, 5]  # none burned
        assert all(s.record.id == ids[s.record.guid] for s in started)
        assert sum(s.new for s in started) == 5
        assert await redis.get(keys.host_id_counter) == "5"
        assert await redis.zrange(keys.zone_hosts("z1"), 0, -1) == ["1", "2", "3", "4", "5"]
        (host,) = [h for h in await load_hosts(redis, keys) if h.id == ids["g0"]]
        assert host.guid == "g0" and host.session in {f"s{i}" for i in range(0, 40, 5)}
        await redis.hdel(keys.host_ids_by_guid, "g0")  # retired
        again = await registry.start(record(0, "t", guid="g0", name='hôte "ü" 🖥'), live_for=60)
        assert again.new and again.record.id == 6
        fields = await redis.hgetall(keys.host(6))
        assert HostRecord.from_hash(6, fields) == again.record  # as given (packed as JSON)

    run(redis_url, namespace, work)


def test_a_failed_write_fails_only_its_caller_and_the_queue_goes_on(
    redis_url: str, namespace: str
) -> None:
    async def work(registry: HostRegistry, keys: Keys) -> None:
        await registry.redis.set(keys.host(1), "not a hash")
        bad, good = record(1, "a"), record(2, "b")
        results = await asyncio.gather(
            registry.reassert([bad]), registry.reassert([good]), return_exceptions=True
        )
        assert isinstance(results[0], ResponseError)
        assert results[1] == [Write.WRITTEN]

    run(redis_url, namespace, work)


def test_start_publishes_zone_change_once_and_moves_zones(redis_url: str, namespace: str) -> None:
    async def work(registry: HostRegistry, keys: Keys) -> None:
        redis = registry.redis
        write = functools.partial(registry.start, live_for=60)
        pubsub = redis.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(keys.events)
        await write(record(1, "s1"))
        await write(record(1, "s2"))  # reconnect: ranks unchanged, no event
        await write(record(1, "s3", zone="z2"))  # moved
        await write(record(2, "t1", type="storage"))  # not ranked
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
    async def work(registry: HostRegistry, keys: Keys) -> None:
        redis = registry.redis
        old = (await registry.start(record(1, "old", server="ms1"), live_for=60)).record
        new = (await registry.start(record(1, "new", server="ms2"), live_for=60)).record
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
    async def work(registry: HostRegistry, keys: Keys) -> None:
        redis = registry.redis
        served = [record(4, "a"), record(9, "b", zone="z2")]
        assert await registry.reassert(served) == [Write.WRITTEN, Write.WRITTEN]
        assert await redis.get(keys.host_id_counter) == "9"
        assert await redis.hgetall(keys.host_ids_by_guid) == {"guid-4": "4", "guid-9": "9"}
        assert await redis.zrange(keys.zone_hosts("z2"), 0, -1) == ["9"]
        assert [h.id for h in await load_hosts(redis, keys)] == [4, 9]
        fresh = await registry.start(record(0, "f", guid="fresh"), live_for=60)
        assert fresh.new and fresh.record.id == 10

    run(redis_url, namespace, work)


def test_a_write_redis_cannot_encode_fails_only_its_caller_and_the_writer_goes_on(
    redis_url: str, namespace: str
) -> None:
    """A lone surrogate once raised UnicodeEncodeError out of the writer, which died."""

    async def work(registry: HostRegistry, keys: Keys) -> None:
        good, bad = record(1, "a"), record(2, "b", guid="\udc00")
        results = await asyncio.gather(
            registry.reassert([good]), registry.reassert([bad]), return_exceptions=True
        )
        assert results[0] == [Write.WRITTEN]
        assert isinstance(results[1], BadWriteError)
        assert await registry.reassert([record(3, "c")]) == [Write.WRITTEN]

    run(redis_url, namespace, work)


def test_a_startup_older_than_the_live_session_writes_nothing(
    redis_url: str, namespace: str
) -> None:
    """A startup read late (its agent gave it up and connected elsewhere) must not take the
    host over; an older attempt is accepted once the newer session is not live."""

    async def work(registry: HostRegistry, keys: Keys) -> None:
        now = time.time()
        live = await registry.start(
            record(0, "new", server="ms2", attempt=200, last_seen=now), live_for=60
        )
        late = await registry.start(record(0, "old", server="ms1", attempt=100), live_for=60)
        assert late.stale and late.record.id == live.record.id
        (host,) = await load_hosts(registry.redis, keys)
        assert (host.session, host.server) == ("new", "ms2")
        # a session not heard from within live_for is not live: an older attempt takes over
        assert not (await registry.start(record(0, "old", attempt=100), live_for=1e-6)).stale
        # newer attempts always win; a disconnected host takes any attempt
        assert not (await registry.start(record(0, "n", attempt=300), live_for=1e12)).stale
        await registry.disconnect([(await load_hosts(registry.redis, keys))[0]])
        assert not (await registry.start(record(0, "o", attempt=1), live_for=1e12)).stale

    run(redis_url, namespace, work)
