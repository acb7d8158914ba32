"""What list each served host should hold, and pushing it when that changes.

The answer is one computation, common.assignment: the settings in force for the host's cluster
and its zone's ranked ids give its `Assignment`; a push is due when what the host holds (or will
hold once it acks what is on its way) is not that. A zone's ranks come from one sorted read of
its set (msrv.ranks, cached); each host's list is then one `Algorithm.sort`, so a zone of n hosts
costs O(n log n). Recomputes hold one lock, so they never interleave.

Admission (a new session) uses the zone's cached ids, which the session brought up to date with
its registration, so it runs without an await and a storm of startups costs no Redis read here.

Every list leaves out the servers out of service (the avoid list, common.maintenance): the
entries of `host` they are, found once per settings and avoid list.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

import redis.asyncio as aioredis

from common.assignment import Assignment, Holding, assignment_for, holds, left_out
from common.configstore import ConfigSnapshot
from common.keys import Keys
from common.settings import EffectiveSettings
from msrv.ranks import ZoneRanks

logger = logging.getLogger(__name__)


class ServedHost(Protocol):
    """A started session as the balancer sees it."""

    holding: Holding | Assignment  # acked, or reported at startup

    @property
    def pending(self) -> Assignment | None: ...  # pushed, not acked yet

    @property
    def host_id(self) -> int: ...

    @property
    def zone(self) -> str: ...

    @property
    def cluster(self) -> str: ...

    @property
    def started(self) -> bool: ...

    def deliver(self, assignment: Assignment, version: int) -> None: ...


class Zones(Protocol):
    """The served hosts by zone (msrv.table)."""

    @property
    def zones(self) -> list[str]: ...

    def in_zone(self, zone: str) -> Sequence[ServedHost]: ...


def push_due(assignment: Assignment, host: ServedHost) -> bool:
    """Whether `host` must be sent `assignment`: what it will hold once it acks what is on its
    way (else what it acked, or reported at startup) is not that list."""
    return not holds(assignment, host.pending if host.pending is not None else host.holding)


class Balancer:
    def __init__(self, redis: aioredis.Redis, keys: Keys, table: Zones) -> None:
        self.table = table
        self.ranks = ZoneRanks(redis, keys)
        self._snapshot: ConfigSnapshot | None = None
        self._effective: dict[str | None, EffectiveSettings] = {}  # of the snapshot, by cluster
        self.lock = asyncio.Lock()
        self.wanted_zones: set[str] = set()  # zones whose ranks could not be read at admission
        self._avoid: frozenset[str] = frozenset()  # addresses of the servers out of service
        self._leave_out: frozenset[str] | None = None  # their entries in `host`, once found

    @property
    def loaded(self) -> bool:
        """Whether settings have been applied (the server has reached Redis once)."""
        return self._snapshot is not None

    @property
    def snapshot(self) -> ConfigSnapshot:
        if self._snapshot is None:
            raise RuntimeError("settings not loaded yet")
        return self._snapshot

    def effective(self, cluster: str | None) -> EffectiveSettings:
        """The settings of a cluster (None: the global ones), parsed once per snapshot."""
        settings = self._effective.get(cluster)
        if settings is None:
            settings = self._effective[cluster] = self.snapshot.effective(cluster)
        return settings

    def silence_limit(self) -> float:
        settings = self.effective(None)
        return float(settings.ping_interval * settings.ping_timeout)

    def apply(self, snapshot: ConfigSnapshot) -> None:
        """Settings in force from now on (the caller recomputes)."""
        self._snapshot = snapshot
        self._effective = {}
        self._leave_out = None

    def avoid(self, addresses: frozenset[str]) -> None:
        """The advertised addresses of the servers out of service (the caller recomputes)."""
        self._avoid = addresses
        self._leave_out = None

    def leave_out(self) -> frozenset[str]:
        """The entries of `host` every list leaves out (`host` is global)."""
        if self._leave_out is None:
            host = self.effective(None).host
            self._leave_out = left_out(host, self._avoid)
            if host and self._leave_out and len(self._leave_out) == len(host):
                logger.warning(
                    "every server of `host` is out of service (%s): lists keep them all, "
                    "agents would have nowhere else to go",
                    ", ".join(sorted(self._leave_out)),
                )
        return self._leave_out

    # -- one host ----------------------------------------------------------------------------------

    def assignment(self, host: ServedHost) -> Assignment | None:
        """What list `host` should hold now (None: `host` is unset, push nothing), from the
        zone's cached ids, with no await."""
        ids = self.ranks.get(host.zone)
        if ids is None:  # not read (Redis failed): compute now, the recompute corrects it
            ids = []
            self.wanted_zones.add(host.zone)
        return assignment_for(
            self.effective(host.cluster), ids, host.host_id, leave_out=self.leave_out()
        )

    # -- zones -------------------------------------------------------------------------------------

    async def recompute_zone(self, zone: str) -> None:
        async with self.lock:
            await self._recompute(zone)

    async def recompute_all(self) -> None:
        async with self.lock:
            for zone in self.table.zones:
                await self._recompute(zone)

    def forget_unserved(self) -> None:
        """Drop the cached ids of zones this server serves no host in (no recompute keeps them
        current), e.g. after events may have been missed."""
        self.ranks.forget_all_but(set(self.table.zones))

    async def _recompute(self, zone: str) -> None:
        members = self.table.in_zone(zone)
        if not members:
            self.ranks.forget(zone)
            return
        ids = await self.ranks.read(zone)
        snapshot = self.snapshot
        per_cluster: dict[str, EffectiveSettings] = {}
        shared: dict[Assignment, Assignment] = {}
        leave_out = self.leave_out()
        pushed = 0
        for host in members:
            settings = per_cluster.get(host.cluster)
            if settings is None:
                settings = per_cluster[host.cluster] = snapshot.effective(host.cluster)
            assignment = assignment_for(settings, ids, host.host_id, shared, leave_out)
            if assignment is not None and push_due(assignment, host):
                host.deliver(assignment, snapshot.version)
                pushed += 1
        logger.debug("zone %s: %d hosts, %d new lists", zone, len(members), pushed)
