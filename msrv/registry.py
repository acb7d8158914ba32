"""Hosts and servers in Redis (layout in common.records).

Every write a server makes about a host carries that session's token. The startup of a session
claims the host unconditionally (the newest session wins); any later write, from that session or
from a re-assert, is a Lua compare of the token, so a server that lost a session never
overwrites state written by a newer session of the same host.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis

from common import events
from common.events import EventType
from common.keys import Keys
from common.records import HostRecord, ServerRecord, ServerState

logger = logging.getLogger(__name__)

# KEYS: host hash, guid map, id counter, zone set, zones set
# ARGV: mode ('claim' | 'assert'), token, id, guid, zone, events channel, hosts.changed event,
#       ranked ('1' | '0'), then the hash's field/value pairs.
# Returns {status, previous zone}: status 1 written, 0 superseded (assert only).
_WRITE_SESSION = """
local current = redis.call('HGET', KEYS[1], 'session')
if ARGV[1] == 'assert' and current and current ~= ARGV[2] then return {0, ''} end
local old_zone = redis.call('HGET', KEYS[1], 'zone') or ''
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('HSETNX', KEYS[2], ARGV[4], ARGV[3])
if tonumber(redis.call('GET', KEYS[3]) or '0') < tonumber(ARGV[3]) then
  redis.call('SET', KEYS[3], ARGV[3])
end
redis.call('SADD', KEYS[5], ARGV[5])
local moved
if ARGV[8] == '1' then
  moved = redis.call('ZADD', KEYS[4], ARGV[3], ARGV[3])
else
  moved = redis.call('ZREM', KEYS[4], ARGV[3])
end
if moved == 1 then redis.call('PUBLISH', ARGV[6], ARGV[7]) end
return {1, old_zone}
"""

# KEYS: host hash; ARGV: token, then field/value pairs. 1 written, 0 superseded, -1 missing.
_UPDATE = """
local current = redis.call('HGET', KEYS[1], 'session')
if not current then return -1 end
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""


class Write(enum.IntEnum):
    MISSING = -1
    SUPERSEDED = 0
    WRITTEN = 1


def _pairs(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


@dataclass
class HostRegistry:
    redis: aioredis.Redis
    keys: Keys

    def __post_init__(self) -> None:
        self._write = self.redis.register_script(_WRITE_SESSION)
        self._update = self.redis.register_script(_UPDATE)
        # Serialises this server's writes about hosts, so a re-assert built before an ack or
        # a disconnect can never land after it.
        self.lock = asyncio.Lock()

    async def host_id(self, guid: str) -> int:
        """The guid's id; a new guid takes the next id (a lost race burns one, never reused)."""
        known = await self.redis.hget(self.keys.host_ids_by_guid, guid)
        if known is not None:
            return int(known)
        candidate = int(await self.redis.incr(self.keys.host_id_counter))
        if await self.redis.hsetnx(self.keys.host_ids_by_guid, guid, candidate):
            return candidate
        return int(cast(str, await self.redis.hget(self.keys.host_ids_by_guid, guid)))

    def _write_args(self, mode: str, record: HostRecord) -> tuple[list[str], list[str | int]]:
        keys = [
            self.keys.host(record.id),
            self.keys.host_ids_by_guid,
            self.keys.host_id_counter,
            self.keys.zone_hosts(record.zone),
            self.keys.zones,
        ]
        args: list[str | int] = [
            mode,
            record.session,
            record.id,
            record.guid,
            record.zone,
            self.keys.events,
            events.hosts_changed(record.zone),
            "1" if record.ranked else "0",
            *_pairs(record.to_hash()),
        ]
        return keys, args

    async def claim(self, record: HostRecord) -> None:
        """Record a new session of the host; a host that moved zone leaves its old one."""
        async with self.lock:
            keys, args = self._write_args("claim", record)
            _, old_zone = await self._write(keys=keys, args=args)
            if old_zone and old_zone != record.zone:
                async with self.redis.pipeline(transaction=True) as pipe:
                    pipe.zrem(self.keys.zone_hosts(old_zone), record.id)
                    pipe.publish(self.keys.events, events.hosts_changed(old_zone))
                    await pipe.execute()

    async def update(self, record: HostRecord, **fields: str) -> Write:
        """Write some fields if the record's session still owns the host."""
        async with self.lock:
            args: list[str | int] = [record.session, *_pairs(fields)]
            return Write(int(await self._update(keys=[self.keys.host(record.id)], args=args)))

    async def reassert(self, records: Sequence[HostRecord]) -> list[Write]:
        """Re-write the hosts this server serves (recreating what an emptied Redis lost);
        a host now owned by a newer session is left alone and reported SUPERSEDED."""
        if not records:
            return []
        async with self.lock, self.redis.pipeline(transaction=False) as pipe:
            for record in records:
                keys, args = self._write_args("assert", record)
                await self._write(keys=keys, args=args, client=pipe)
            replies = await pipe.execute()
        return [Write(int(status)) for status, _ in replies]

    async def disconnect(self, records: Sequence[HostRecord]) -> None:
        """Mark hosts disconnected, each only if its session is still the one recorded."""
        if not records:
            return
        now = f"{time.time():.3f}"
        async with self.lock, self.redis.pipeline(transaction=False) as pipe:
            for record in records:
                args = [record.session, "state", "disconnected", "last_seen", now]
                await self._update(keys=[self.keys.host(record.id)], args=args, client=pipe)
            await pipe.execute()


@dataclass
class ServerRegistry:
    redis: aioredis.Redis
    keys: Keys
    server_id: str
    address: str
    ttl: float

    def __post_init__(self) -> None:
        self.started = time.time()

    async def register(self) -> None:
        if await self.redis.exists(self.keys.server_alive(self.server_id)):
            logger.warning(
                "server %s: another process with this id looks alive (or was killed less than "
                "%.0fs ago); taking the id over",
                self.server_id,
                self.ttl,
            )
        await self.refresh(agents=0)
        await self.redis.publish(self.keys.events, self._event(EventType.SERVER_UP))

    def _event(self, kind: EventType) -> str:
        return events.encode_event(kind, id=self.server_id, address=self.address)

    async def refresh(self, agents: int) -> None:
        now = time.time()
        record = ServerRecord(
            self.server_id, self.address, ServerState.RUNNING, agents, self.started, now
        )
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.sadd(self.keys.servers, self.server_id)
            pipe.hset(self.keys.server(self.server_id), items=_pairs(record.to_hash()))
            pipe.set(self.keys.server_alive(self.server_id), f"{now:.3f}", px=int(self.ttl * 1000))
            await pipe.execute()

    async def deregister(self) -> None:
        """Stay listed as stopped (so `msctl servers` shows it), with no liveness key."""
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(self.keys.server(self.server_id), items=["state", str(ServerState.STOPPED)])
            pipe.delete(self.keys.server_alive(self.server_id))
            pipe.publish(self.keys.events, self._event(EventType.SERVER_DOWN))
            await pipe.execute()
