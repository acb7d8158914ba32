"""Hosts and servers in Redis (layout in common.records, scripts in common.host_scripts).

A startup is two scripts: the guid's id (HOST_ID), then the session's record and zone
(START_SESSION), whose keys need the id. Sessions' writes are queued in order and pipelined
(msrv.writes): a storm of startups costs a few round trips, with no lock and no pooled
connection per agent.

A Redis master failover (common.durability): none of these writes waits for a replica. What a
lost write held is written again by the server that holds it: every server re-asserts the
hosts it serves when it resyncs after the failover (and every reassert interval), ids, zones
and id counter included (`reassert`); its own record and liveness key at the next refresh.
A failover is seen as any outage: the writer's errors (a ReadOnlyError from a demoted master
among them) fail the startups waiting on them, which are refused as retryable.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import redis.asyncio as aioredis

from common import events, host_scripts
from common.events import EventType
from common.keys import Keys
from common.records import HostRecord, HostState, ServerRecord, ServerState
from msrv.writes import Command, WriteQueue

logger = logging.getLogger(__name__)


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
    registration saw it: the host's rank (ranked hosts; others rank last) and the zone's size.
    `stale`: refused, the host has a live session of a newer attempt; nothing was written.
    `revoked`: refused, the session's certificate is revoked; nothing was written."""

    record: HostRecord
    new: bool
    rank: int
    count: int
    stale: bool = False
    revoked: bool = False


@dataclass
class HostRegistry:
    """Sessions' writes go through one ordered queue (`run` is its writer), many per round
    trip."""

    redis: aioredis.Redis
    keys: Keys

    def __post_init__(self) -> None:
        self._host_id = self.redis.register_script(host_scripts.HOST_ID)
        self._start = self.redis.register_script(host_scripts.START_SESSION)
        self._leave = self.redis.register_script(host_scripts.LEAVE_ZONE)
        self._assert = self.redis.register_script(host_scripts.ASSERT_SESSION)
        self._update = self.redis.register_script(host_scripts.UPDATE_SESSION)
        self.writes = WriteQueue(self.redis)

    async def run(self) -> None:
        await self.writes.run()

    async def start(self, record: HostRecord, *, live_for: float) -> Started:
        """Register a new session of the host: the guid's id (the next one for a new guid),
        then its record and zone; a host that moved zone then leaves its old one. `record.id`
        is ignored. A startup older than the host's live session (connected, last_seen within
        `live_for` seconds) is refused: `stale`, nothing written."""
        id_keys = [self.keys.host_ids_by_guid, self.keys.host_id_counter, self.keys.revoked]
        host_id, new = await self.writes.call(
            lambda pipe: self._host_id(
                keys=id_keys, args=[record.guid, record.cert_serial], client=pipe
            )
        )
        if int(host_id) < 0:
            return Started(record, False, 0, 0, revoked=True)
        record = replace(record, id=int(host_id))
        keys = [self.keys.host(record.id), self.keys.zone_hosts(record.zone), self.keys.zones]
        args: list[str | int] = [
            record.id,
            record.zone,
            self.keys.events,
            events.hosts_changed(record.zone),
            "1" if record.ranked else "0",
            _packed(record.to_hash()),
            record.attempt,
            f"{time.time():.3f}",
            f"{live_for:.3f}",
        ]
        old_zone, rank, count, stale = await self.writes.call(
            lambda pipe: self._start(keys=keys, args=args, client=pipe)
        )
        started = Started(record, bool(new), int(rank), int(count), bool(stale))
        if not stale and old_zone and old_zone != record.zone:
            await self.writes.call(self._leave_zone(record.id, old_zone))
        return started

    def _leave_zone(self, host_id: int, zone: str) -> Command:
        keys = [self.keys.zone_hosts(zone)]
        args: list[str | int] = [host_id, self.keys.events, events.hosts_changed(zone)]
        return lambda pipe: self._leave(keys=keys, args=args, client=pipe)

    def _update_command(self, record: HostRecord, fields: dict[str, str]) -> Command:
        keys = [self.keys.host(record.id)]
        args: list[str | int] = [record.session, _packed(fields)]
        return lambda pipe: self._update(keys=keys, args=args, client=pipe)

    async def update(self, record: HostRecord, **fields: str) -> Write:
        """Write some fields if the record's session still owns the host."""
        return Write(int(await self.writes.call(self._update_command(record, fields))))

    def _assert_command(self, record: HostRecord) -> Command:
        keys = [
            self.keys.host(record.id),
            self.keys.host_ids_by_guid,
            self.keys.host_id_counter,
            self.keys.zone_hosts(record.zone),
            self.keys.zones,
        ]
        args: list[str | int] = [
            record.session,
            record.id,
            record.guid,
            record.zone,
            self.keys.events,
            events.hosts_changed(record.zone),
            "1" if record.ranked else "0",
            _packed(record.to_hash()),
        ]
        return lambda pipe: self._assert(keys=keys, args=args, client=pipe)

    async def reassert(self, records: Sequence[HostRecord]) -> list[Write]:
        """Re-write the hosts this server serves (recreating what an emptied Redis lost);
        a host now owned by a newer session is left alone and reported SUPERSEDED."""
        replies = await self.writes.call_many(self._assert_command(r) for r in records)
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

    async def release_earlier_run(self, server_id: str) -> int:
        """Mark disconnected the hosts recorded as connected to `server_id` by an earlier run
        of this server that ended without its shutdown (killed, or its machine lost), each
        only if its session is still the one recorded: a host that has started a session
        elsewhere since keeps it. Without this a restarted server, alive again, would show
        them connected to it for ever. Called at start, before this run serves anyone (its
        writer is not running yet: one pipeline of its own). Returns how many."""
        ids = sorted({int(v) for v in await self.redis.hvals(self.keys.host_ids_by_guid)})
        async with self.redis.pipeline(transaction=False) as pipe:
            for host_id in ids:
                pipe.hmget(self.keys.host(host_id), ["state", "server", "session"])
            replies = await pipe.execute()
        left = [
            HostRecord(host_id, "", session=session)
            for host_id, (state, server, session) in zip(ids, replies, strict=True)
            if state == HostState.CONNECTED and server == server_id and session
        ]
        if not left:
            return 0
        fields = {"state": str(HostState.DISCONNECTED), "last_seen": f"{time.time():.3f}"}
        async with self.redis.pipeline(transaction=False) as pipe:
            for record in left:
                await self._update_command(record, fields)(pipe)
            written = await pipe.execute()
        return sum(int(reply) == Write.WRITTEN for reply in written)


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
