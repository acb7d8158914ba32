"""Settings in Redis: get, list, set and unset, for global and cluster scope.

Every accepted change writes the value, bumps the version and publishes a `config.changed`
event in one MULTI/EXEC (optimistic: WATCH the version and the hash, retry on conflict).
Setting a value to what it already is, or unsetting what is not set, changes nothing.
Either way the command returns only once a replica holds the settings, when the master has
replicas (common.durability): a failover right after cannot lose an acknowledged change.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from common import events
from common.durability import confirm_replicated
from common.errors import ValidationError
from common.keys import Keys
from common.settings import (
    SETTINGS,
    EffectiveSettings,
    Scope,
    Source,
    resolve,
    spec_for,
)


@dataclass(frozen=True)
class ConfigEntry:
    name: str
    value: str | None
    default: str | None
    source: Source
    scopes: tuple[str, ...]
    help: str

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "value": self.value,
            "default": self.default,
            "source": str(self.source),
            "scopes": list(self.scopes),
            "help": self.help,
        }


@dataclass(frozen=True)
class ConfigChange:
    name: str
    value: str | None
    cluster: str | None
    version: int
    changed: bool


@dataclass(frozen=True)
class ConfigSnapshot:
    """Every stored setting at one version of one epoch (None: nothing was ever set, or Redis
    lost it)."""

    version: int
    global_values: dict[str, str]
    cluster_values: dict[str, dict[str, str]] = field(default_factory=dict)
    epoch: str | None = None

    def effective(self, cluster: str | None = None) -> EffectiveSettings:
        overrides = self.cluster_values.get(cluster) if cluster is not None else None
        return EffectiveSettings.from_maps(self.global_values, overrides)


class ConfigStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    def _hash_for(self, name: str, cluster: str | None) -> str:
        spec = spec_for(name)
        if cluster is None:
            return self.keys.settings
        if Scope.CLUSTER not in spec.scopes:
            raise ValidationError(f"{name}: is global only; --cluster does not apply to it")
        if not cluster.strip() or any(c.isspace() or c == ":" for c in cluster):
            raise ValidationError(f"cluster {cluster!r}: not a valid cluster id")
        return self.keys.cluster_settings(cluster)

    async def version(self) -> int:
        return int(await self.redis.get(self.keys.settings_version) or 0)

    async def stamp(self) -> tuple[str | None, int]:
        """(epoch, version) of the stored settings: what a server polls."""
        epoch, version = await self.redis.mget(self.keys.settings_epoch, self.keys.settings_version)
        return cast(str | None, epoch), int(version or 0)

    async def set(self, name: str, raw: str, cluster: str | None = None) -> ConfigChange:
        """Validate and store a value; raises ValidationError (Redis untouched) when bad."""
        hash_key = self._hash_for(name, cluster)
        value = spec_for(name).normalise(raw)
        return await self._write(name, value, cluster, hash_key)

    async def unset(self, name: str, cluster: str | None = None) -> ConfigChange:
        return await self._write(name, None, cluster, self._hash_for(name, cluster))

    async def _write(
        self, name: str, value: str | None, cluster: str | None, hash_key: str
    ) -> ConfigChange:
        """Write, then wait for a replica (also when nothing changed: an earlier write of the
        same value that no replica confirmed is confirmed now)."""
        change = await self._transact(name, value, cluster, hash_key)
        where = f" (cluster {cluster})" if cluster is not None else ""
        await confirm_replicated(self.redis, self.keys, f"{name}{where}")
        return change

    async def _transact(
        self, name: str, value: str | None, cluster: str | None, hash_key: str
    ) -> ConfigChange:
        version_key = self.keys.settings_version
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(version_key, hash_key)
                    current = await pipe.hget(hash_key, name)
                    version = int(await pipe.get(version_key) or 0)
                    if current == value:
                        await pipe.reset()  # type: ignore[no-untyped-call]
                        return ConfigChange(name, value, cluster, version, changed=False)
                    remaining = await pipe.hlen(hash_key)
                    pipe.multi()  # type: ignore[no-untyped-call]
                    if value is None:
                        pipe.hdel(hash_key, name)
                        if cluster is not None and remaining <= 1:
                            pipe.srem(self.keys.clusters_with_overrides, cluster)
                    else:
                        pipe.hset(hash_key, name, value)
                        if cluster is not None:
                            pipe.sadd(self.keys.clusters_with_overrides, cluster)
                    pipe.set(version_key, version + 1)
                    pipe.set(self.keys.settings_epoch, uuid.uuid4().hex, nx=True)
                    scope = Scope.CLUSTER if cluster is not None else Scope.GLOBAL
                    pipe.publish(
                        self.keys.events,
                        events.config_changed(version + 1, name, str(scope), cluster),
                    )
                    await pipe.execute()
                    return ConfigChange(name, value, cluster, version + 1, changed=True)
                except WatchError:
                    continue

    async def snapshot(self) -> ConfigSnapshot:
        """All stored settings, read consistently (retried if a change lands in between)."""
        keys = self.keys
        while True:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.get(keys.settings_version)
                pipe.hgetall(keys.settings)
                pipe.smembers(keys.clusters_with_overrides)
                pipe.get(keys.settings_epoch)
                raw_version, global_values, clusters, epoch = await pipe.execute()
            version = int(raw_version or 0)
            if not clusters:
                return ConfigSnapshot(version, dict(global_values), epoch=epoch)
            ordered = sorted(clusters)
            async with self.redis.pipeline(transaction=True) as pipe:
                for cluster in ordered:
                    pipe.hgetall(keys.cluster_settings(cluster))
                pipe.get(keys.settings_version)
                *cluster_maps, again = await pipe.execute()
            if int(again or 0) == version:
                overrides = {c: dict(m) for c, m in zip(ordered, cluster_maps, strict=True) if m}
                return ConfigSnapshot(version, dict(global_values), overrides, epoch)

    async def entries(self, cluster: str | None = None) -> list[ConfigEntry]:
        """Every setting with its effective value, default and source."""
        snapshot = await self.snapshot()
        overrides = snapshot.cluster_values.get(cluster, {}) if cluster is not None else None
        result = []
        for name, spec in SETTINGS.items():
            value, source = resolve(name, snapshot.global_values, overrides)
            result.append(
                ConfigEntry(
                    name,
                    value,
                    spec.default,
                    source,
                    tuple(str(s) for s in Scope if s in spec.scopes),
                    spec.help,
                )
            )
        return result

    async def get(self, name: str, cluster: str | None = None) -> ConfigEntry:
        spec_for(name)
        if cluster is not None:
            self._hash_for(name, cluster)
        for entry in await self.entries(cluster):
            if entry.name == name:
                return entry
        raise AssertionError(f"{name} missing from SETTINGS")
