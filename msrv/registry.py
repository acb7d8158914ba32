"""Hosts and servers in Redis (layout in common.records).

Every write a server makes about a host carries that session's token. The startup of a session
claims the host unconditionally (the newest session wins); any later write, from that session or
from a re-assert, is a Lua compare of the token, so a server that lost a session never
overwrites state written by a newer session of the same host.

A startup is one script (guid -> id, taking the next id for a new guid, and the claim), and
sessions' writes are queued in order and pipelined (msrv.writes): a storm of startups costs a
few round trips, with no lock and no pooled connection per agent.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline

from common import events
from common.events import EventType
from common.keys import Keys
from common.records import HostRecord, HostState, ServerRecord, ServerState
from msrv.writes import Command, WriteQueue

logger = logging.getLogger(__name__)

# KEYS: guid map, id counter, zone set, zones set
# ARGV: host key prefix (the id is appended), guid, zone, events channel, hosts.changed event,
#       ranked ('1' | '0'), the hash's fields (a JSON array: field, value, field, value...),
#       the startup's attempt stamp, now (Unix seconds), how recent a live session's last_seen is.
# Returns {id, previous zone, 1 if the guid was new, the host's rank in the zone (its size for
# an unranked host, which ranks last), the zone's size, 1 if refused as stale}. The guid's id
# and the session's record in one step: a new guid takes the next id (none is burned or
# reused); the newest attempt wins: a startup whose attempt is older than that of the host's
# live session (connected, last_seen recent) was given up by its agent and writes nothing.
_START_SESSION = """
local id = redis.call('HGET', KEYS[1], ARGV[2])
local new = 0
if id then
  if tonumber(redis.call('GET', KEYS[2]) or '0') < tonumber(id) then
    redis.call('SET', KEYS[2], id)
  end
else
  id = tostring(redis.call('INCR', KEYS[2]))
  redis.call('HSET', KEYS[1], ARGV[2], id)
  new = 1
end
local host = ARGV[1] .. id
if new == 0 then
  local live = redis.call('HMGET', host, 'attempt', 'state', 'last_seen')
  if (tonumber(live[1] or '') or 0) > tonumber(ARGV[8]) and live[2] == 'connected'
      and tonumber(ARGV[9]) - (tonumber(live[3] or '') or 0) < tonumber(ARGV[10]) then
    return {tonumber(id), '', 0, 0, 0, 1}
  end
end
local old_zone = redis.call('HGET', host, 'zone') or ''
redis.call('HSET', host, unpack(cjson.decode(ARGV[7])))
redis.call('SADD', KEYS[4], ARGV[3])
local moved
if ARGV[6] == '1' then
  moved = redis.call('ZADD', KEYS[3], id, id)
else
  moved = redis.call('ZREM', KEYS[3], id)
end
if moved == 1 then redis.call('PUBLISH', ARGV[4], ARGV[5]) end
local count = redis.call('ZCARD', KEYS[3])
local rank = count
if ARGV[6] == '1' then rank = redis.call('ZRANK', KEYS[3], id) end
return {tonumber(id), old_zone, new, rank, count, 0}
"""

# KEYS: host hash, guid map, id counter, zone set, zones set
# ARGV: mode ('claim' | 'assert'), token, id, guid, zone, events channel, hosts.changed event,
#       ranked ('1' | '0'), the hash's fields (a JSON array).
# Returns {status, previous zone}: status 1 written, 0 superseded (assert only).
_WRITE_SESSION = """
local current = redis.call('HGET', KEYS[1], 'session')
if ARGV[1] == 'assert' and current and current ~= ARGV[2] then return {0, ''} end
local old_zone = redis.call('HGET', KEYS[1], 'zone') or ''
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[9])))
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

# KEYS: host hash; ARGV: token, fields (JSON array). 1 written, 0 superseded, -1 missing.
_UPDATE = """
local current = redis.call('HGET', KEYS[1], 'session')
if not current then return -1 end
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], unpack(cjson.decode(ARGV[2])))
return 1
"""


class Write(enum.IntEnum):
    MISSING = -1
    SUPERSEDED = 0
    WRITTEN = 1


def _pairs(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


def _packed(fields: dict[str, str]) -> str:
    """A hash's fields as one script argument: redis-py encodes each argument in Python, and
    a dozen pairs per write cost more than the rest of a startup."""
    return _JSON.encode(_pairs(fields))


_JSON = json.JSONEncoder(separators=(",", ":"))  # json.dumps with options builds one per call


@dataclass(frozen=True)
class Started:
    """A session's record as registered, whether its guid was new, and its zone as the
    registration saw it: the host's rank (ranked hosts; others rank last) and the zone's size."""

    record: HostRecord
    new: bool
    rank: int
    count: int
    stale: bool = False  # refused: the host has a live session of a newer attempt


@dataclass
class HostRegistry:
    """Sessions' writes go through one ordered queue (`run` is its writer), many per round trip;
    `host_id` and `claim` write directly, for tools and tests."""

    redis: aioredis.Redis
    keys: Keys

    def __post_init__(self) -> None:
        self._start = self.redis.register_script(_START_SESSION)
        self._write = self.redis.register_script(_WRITE_SESSION)
        self._update = self.redis.register_script(_UPDATE)
        self.writes = WriteQueue(self.redis)

    async def run(self) -> None:
        await self.writes.run()

    async def start(self, record: HostRecord, *, live_for: float) -> Started:
        """Register a new session of the host: the guid's id (the next one for a new guid) and
        its record, in one script; a host that moved zone then leaves its old one. `record.id`
        is ignored. A startup older than the host's live session (connected, last_seen within
        `live_for` seconds) is refused: `stale`, nothing written."""
        keys = [
            self.keys.host_ids_by_guid,
            self.keys.host_id_counter,
            self.keys.zone_hosts(record.zone),
            self.keys.zones,
        ]
        args: list[str | int] = [
            self.keys.host_prefix,  # the script appends the id it finds or takes
            record.guid,
            record.zone,
            self.keys.events,
            events.hosts_changed(record.zone),
            "1" if record.ranked else "0",
            _packed(record.to_hash()),
            record.attempt,
            f"{time.time():.3f}",
            f"{live_for:.3f}",
        ]
        host_id, old_zone, new, rank, count, stale = await self.writes.call(
            lambda pipe: self._start(keys=keys, args=args, client=pipe)
        )
        started = Started(
            replace(record, id=int(host_id)), bool(new), int(rank), int(count), bool(stale)
        )
        if started.stale:
            return started
        if old_zone and old_zone != record.zone:
            await self.writes.call_many(self._leave_zone(started.record.id, old_zone))
        return started

    def _leave_zone(self, host_id: int, zone: str) -> list[Command]:
        zone_key = self.keys.zone_hosts(zone)
        event = events.hosts_changed(zone)

        async def remove(pipe: Pipeline) -> object:
            return pipe.zrem(zone_key, host_id)

        async def publish(pipe: Pipeline) -> object:
            return pipe.publish(self.keys.events, event)

        return [remove, publish]

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
            _packed(record.to_hash()),
        ]
        return keys, args

    async def claim(self, record: HostRecord) -> None:
        """Record a new session of a host whose id is known, directly (not queued)."""
        keys, args = self._write_args("claim", record)
        _, old_zone = await self._write(keys=keys, args=args)
        if old_zone and old_zone != record.zone:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self.keys.zone_hosts(old_zone), record.id)
                pipe.publish(self.keys.events, events.hosts_changed(old_zone))
                await pipe.execute()

    def _update_command(self, record: HostRecord, fields: dict[str, str]) -> Command:
        keys = [self.keys.host(record.id)]
        args: list[str | int] = [record.session, _packed(fields)]
        return lambda pipe: self._update(keys=keys, args=args, client=pipe)

    async def update(self, record: HostRecord, **fields: str) -> Write:
        """Write some fields if the record's session still owns the host."""
        return Write(int(await self.writes.call(self._update_command(record, fields))))

    async def reassert(self, records: Sequence[HostRecord]) -> list[Write]:
        """Re-write the hosts this server serves (recreating what an emptied Redis lost);
        a host now owned by a newer session is left alone and reported SUPERSEDED."""

        def command(record: HostRecord) -> Command:
            keys, args = self._write_args("assert", record)
            return lambda pipe: self._write(keys=keys, args=args, client=pipe)

        replies = await self.writes.call_many(command(r) for r in records)
        return [Write(int(status)) for status, _ in replies]

    async def touch(self, records: Sequence[HostRecord]) -> list[Write]:
        """Write the hosts' last_seen, each only if its session is still the one recorded."""
        replies = await self.writes.call_many(
            self._update_command(r, {"last_seen": f"{r.last_seen:.3f}"}) for r in records
        )
        return [Write(int(reply)) for reply in replies]

    async def disconnect(self, records: Sequence[HostRecord]) -> None:
        """Mark hosts disconnected, each only if its session is still the one recorded."""
        fields = {"state": str(HostState.DISCONNECTED), "last_seen": f"{time.time():.3f}"}
        await self.writes.call_many(self._update_command(r, fields) for r in records)


@dataclass
class ServerRegistry:
    redis: aioredis.Redis
    keys: Keys
    server_id: str
    address: str
    ttl: float

    def __post_init__(self) -> None:
        self.started = time.time()

    async def register(self, settings_version: int) -> None:
        if await self.redis.exists(self.keys.server_alive(self.server_id)):
            logger.warning(
                "server %s: another process with this id looks alive (or was killed less than "
                "%.0fs ago); taking the id over",
                self.server_id,
                self.ttl,
            )
        await self.refresh(agents=0, settings_version=settings_version)
        await self.redis.publish(self.keys.events, self._event(EventType.SERVER_UP))

    def _event(self, kind: EventType) -> str:
        return events.encode_event(kind, id=self.server_id, address=self.address)

    async def refresh(self, agents: int, settings_version: int) -> None:
        now = time.time()
        record = ServerRecord(
            self.server_id,
            self.address,
            ServerState.RUNNING,
            agents,
            self.started,
            now,
            settings_version,
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
