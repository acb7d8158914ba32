"""ConfigStore logic on fakeredis (fast); the CLI tests cover it against a real redis-server."""

import asyncio
import json

import fakeredis
import pytest

from common.configstore import ConfigStore
from common.errors import ValidationError
from common.keys import Keys
from common.settings import CHECK_INTERVAL, Source


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def store():
    return ConfigStore(fakeredis.aioredis.FakeRedis(decode_responses=True), Keys("unit"))


def test_set_normalises_bumps_the_version_and_reads_back(store):
    async def scenario():
        change = await store.set("host", " b , a:9 ")
        assert (change.value, change.version, change.changed) == ("b,a:9", 1, True)
        entry = await store.get("host")
        assert (entry.value, entry.source) == ("b,a:9", Source.GLOBAL)
        return await store.version()

    assert run(scenario()) == 1


def test_same_value_or_unset_of_nothing_changes_nothing(store):
    async def scenario():
        await store.set("host", "a")
        again = await store.set("host", "a")
        nothing = await store.unset(CHECK_INTERVAL)
        return again, nothing, await store.version()

    again, nothing, version = run(scenario())
    assert not again.changed and not nothing.changed
    assert version == 1


def test_rejected_values_touch_nothing(store):
    async def scenario():
        for name, value, cluster in [
            ("host", "a,,b", None),
            ("hots", "a", None),
            ("host", "a", "c1"),
            (CHECK_INTERVAL, "-1", "c1"),
            (CHECK_INTERVAL, "1", "bad cluster"),
        ]:
            with pytest.raises(ValidationError):
                await store.set(name, value, cluster)
        return await store.redis.keys("*")

    assert run(scenario()) == []


def test_cluster_overrides_and_fallback(store):
    async def scenario():
        await store.set(CHECK_INTERVAL, "10")
        await store.set(CHECK_INTERVAL, "3", cluster="c1")
        snap = await store.snapshot()
        assert snap.effective("c1").check_interval == 3
        assert snap.effective("c2").check_interval == 10
        assert snap.effective().check_interval == 10
        entry = await store.get(CHECK_INTERVAL, cluster="c1")
        assert (entry.value, entry.source) == ("3", Source.CLUSTER)
        await store.unset(CHECK_INTERVAL, cluster="c1")
        snap = await store.snapshot()
        assert snap.cluster_values == {}
        assert snap.effective("c1").check_interval == 10
        assert await store.redis.smembers(store.keys.clusters_with_overrides) == set()
        return snap.version

    assert run(scenario()) == 3


def test_each_change_publishes_one_event_with_its_version(store):
    async def scenario():
        pubsub = store.redis.pubsub()
        await pubsub.subscribe(store.keys.events)
        await pubsub.get_message(timeout=1)  # subscribe confirmation
        await store.set("host", "a,b")
        await store.set(CHECK_INTERVAL, "5", cluster="c9")
        await store.unset("host")
        got = []
        while len(got) < 3:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message:
                got.append(json.loads(message["data"]))
        await pubsub.aclose()
        return got

    got = run(scenario())
    assert got == [
        {"type": "config.changed", "version": 1, "key": "host", "scope": "global", "cluster": None},
        {
            "type": "config.changed",
            "version": 2,
            "key": CHECK_INTERVAL,
            "scope": "cluster",
            "cluster": "c9",
        },
        {"type": "config.changed", "version": 3, "key": "host", "scope": "global", "cluster": None},
    ]


def test_entries_list_every_setting_with_default_and_source(store):
    async def scenario():
        await store.set("indirect.agent.lb.algorithm", "roundrobin")
        return await store.entries()

    rows = {e.name: (e.value, e.default, e.source) for e in run(scenario())}
    assert rows == {
        "host": (None, None, Source.DEFAULT),
        "indirect.agent.lb.algorithm": ("roundrobin", "static", Source.GLOBAL),
        CHECK_INTERVAL: ("0", "0", Source.DEFAULT),
        "ping.interval": ("5", "5", Source.DEFAULT),
        "ping.timeout": ("3", "3", Source.DEFAULT),
        "ca.framework.cert.validity.period": ("365", "365", Source.DEFAULT),
        "indirect.agent.lb.move.rate": ("200", "200", Source.DEFAULT),
    }
