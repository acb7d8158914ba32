"""Each zone's ranked host ids, cached, so admitting an agent costs no Redis read.

A zone's ids come from one sorted read of its set (ZRANGE, ids ascending). The registration
script of a startup reports the zone as it saw it: the set's size and the host's rank in it.
If the cached ids agree (once this host's own id is in them), they are exactly what a read would
have given at that moment, and the agent's list is computed from them; otherwise (a host
registered or removed elsewhere, whose event has not arrived yet) the zone is read again, once
for all the sessions that ask at the same time. So a startup sees every registration that
completed before its own, as with a read per startup, without one.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.keys import Keys

logger = logging.getLogger(__name__)


class ZoneRanks:
    def __init__(self, redis: aioredis.Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._ids: dict[str, list[int]] = {}  # ascending, by zone
        self._read_of: dict[str, int] = {}  # by zone: the number of the read the ids came from
        self._reads = itertools.count(1)  # numbers reads in the order they are sent
        self._last_read = 0
        self._reading = asyncio.Lock()  # reads on behalf of admissions

    def get(self, zone: str) -> list[int] | None:
        return self._ids.get(zone)

    async def read(self, zone: str) -> list[int]:
        """One sorted read; kept unless a read sent later has already been kept."""
        number = self._last_read = next(self._reads)
        members = cast(list[str], await self.redis.zrange(self.keys.zone_hosts(zone), 0, -1))
        ids = [int(member) for member in members]
        if number > self._read_of.get(zone, 0):
            self._ids[zone], self._read_of[zone] = ids, number
        return ids

    async def catch_up(
        self, zone: str, host_id: int, *, ranked: bool, rank: int, count: int
    ) -> None:
        """Make the cached ids at least as new as a registration of `host_id` that saw the
        zone hold `count` ranked ids, this host at `rank` (an unranked host ranks last)."""
        ids = self._ids.get(zone)
        if ids is not None:
            if ranked:
                _insert(ids, host_id)
            if _agrees(ids, host_id, ranked, rank, count):
                return
        asked = self._last_read  # a read sent after this point sees the registration
        try:
            async with self._reading:
                if self._read_of.get(zone, 0) <= asked:
                    await self.read(zone)
        except RedisError as exc:
            logger.debug("zone %s: not read (%s); the next recompute will", zone, exc)

    def forget(self, zone: str) -> None:
        self._ids.pop(zone, None)
        self._read_of.pop(zone, None)

    def forget_all_but(self, zones: set[str]) -> None:
        for zone in set(self._ids) - zones:
            self.forget(zone)


def _agrees(ids: list[int], host_id: int, ranked: bool, rank: int, count: int) -> bool:
    if len(ids) != count:
        return False
    return not ranked or bisect.bisect_left(ids, host_id) == rank


def _insert(ids: list[int], host_id: int) -> None:
    """Add an id to an ascending list, once."""
    at = bisect.bisect_left(ids, host_id)
    if at == len(ids) or ids[at] != host_id:
        ids.insert(at, host_id)
