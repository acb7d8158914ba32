"""Each served agent's own list: computed on startup, recomputed on settings and zone changes.

A zone's ranks come from one sorted read of its set (ZRANGE by score, the ids ascending); each
agent's list is then one `Algorithm.sort` (a bisect for roundrobin), so a zone of n hosts costs
O(n log n). Only agents whose list, algorithm or check interval changed get an `ms_list`.
Recomputes hold one lock, so they never interleave.

Admission uses the zone's cached ids (msrv.ranks; a session brings them up to date with its
registration first), so it runs without an await, sending `ready` and then the list, and a
storm of startups costs no Redis read here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common import algorithms
from common.configstore import ConfigSnapshot, ConfigStore
from common.keys import Keys
from common.protocol import Message, Ready
from common.settings import EffectiveSettings
from msrv.ranks import ZoneRanks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Offer:
    """What one agent should hold."""

    ms_list: tuple[str, ...]
    algorithm: str
    check_interval: int


@dataclass(frozen=True)
class Held:
    """What the server believes an agent holds (reported at startup, then what it pushed)."""

    ms_list: tuple[str, ...]
    algorithm: str | None
    check_interval: int | None


def offer_for(
    settings: EffectiveSettings,
    ordered_ids: Sequence[int],
    host_id: int,
    shared: dict[Offer, Offer] | None = None,
) -> Offer | None:
    """The agent's list, or None when `host` is unset (servers then push nothing).

    With `shared`, equal offers are one object: a recompute of a zone of 10^5 hosts then keeps
    a few offers alive instead of one per agent, and the garbage collector's full passes,
    which such a burst of long-lived objects sets off, go away (0.79 s -> 0.3 s there)."""
    if settings.host is None:
        return None
    ordered = algorithms.get(settings.algorithm).sort(settings.host, ordered_ids, host_id)
    offer = Offer(tuple(ordered), settings.algorithm, settings.check_interval)
    if shared is None:
        return offer
    return shared.setdefault(offer, offer)


def needs_push(offer: Offer, agent: Agent) -> bool:
    """Whether the agent must be sent `offer`: what it will hold once it acks what is on its
    way (else what it acked, or reported at startup) is not that list."""
    return is_stale(offer, agent.pending if agent.pending is not None else agent.held)


def is_stale(offer: Offer, held: Held | Offer) -> bool:
    if held is offer:
        return False
    if not algorithms.is_current(offer.algorithm, offer.ms_list, held.algorithm, held.ms_list):
        return True
    return offer.check_interval != held.check_interval


class Agent(Protocol):
    """A session as the balancer sees it."""

    held: Held | Offer  # acked, or reported at startup
    pending: Offer | None  # pushed, not acked yet

    @property
    def host_id(self) -> int: ...

    @property
    def zone(self) -> str: ...

    @property
    def cluster(self) -> str: ...

    def send(self, message: Message) -> None: ...

    def deliver(self, offer: Offer, version: int) -> None: ...


class Balancer:
    def __init__(self, redis: aioredis.Redis, keys: Keys, address: str) -> None:
        self.redis = redis
        self.keys = keys
        self.address = address
        self.store = ConfigStore(redis, keys)
        self._snapshot: ConfigSnapshot | None = None
        self.zones: dict[str, dict[int, Agent]] = {}
        self.ranks = ZoneRanks(redis, keys)
        self._effective: dict[str | None, EffectiveSettings] = {}  # of the snapshot, by cluster
        self.lock = asyncio.Lock()
        self.regressed = False  # Redis holds older settings than those applied
        # Requests from events and polls, coalesced: a burst of registrations costs one
        # recompute of the zone, not one per host.
        self._wake = asyncio.Event()
        self._settings_request: bool | None = None  # None: none; else whether trusted
        self._dirty_zones: set[str] = set()

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

    def _apply(self, snapshot: ConfigSnapshot) -> None:
        self._snapshot = snapshot
        self._effective = {}

    async def load(self) -> None:
        self._apply(await self.store.snapshot())
        logger.info("settings at version %d", self.snapshot.version)

    # -- agents -------------------------------------------------------------------------------

    def admit(self, agent: Agent) -> None:
        """Serve a new session: send `ready`, then `ms_list` when its list is stale."""
        zone = agent.zone
        self.zones.setdefault(zone, {})[agent.host_id] = agent
        settings = self.effective(agent.cluster)
        ids = self.ranks.get(zone)
        if ids is None:  # not read (Redis failed): compute now, the recompute corrects it
            ids = []
            self.request_zone(zone)
        agent.send(
            Ready(
                host_id=agent.host_id,
                server=self.address,
                ping_interval=settings.ping_interval,
                ping_timeout=settings.ping_timeout,
                check_interval=settings.check_interval,
            )
        )
        agent.held = Held(agent.held.ms_list, agent.held.algorithm, settings.check_interval)
        offer = offer_for(settings, ids, agent.host_id)
        if offer is not None and needs_push(offer, agent):
            agent.deliver(offer, self.snapshot.version)

    def remove(self, agent: Agent) -> None:
        members = self.zones.get(agent.zone)
        if members is not None and members.get(agent.host_id) is agent:
            del members[agent.host_id]
            if not members:
                del self.zones[agent.zone]

    def agents(self) -> list[Agent]:
        return [agent for members in self.zones.values() for agent in members.values()]

    # -- changes ------------------------------------------------------------------------------

    def request_settings(self, *, trusted: bool) -> None:
        self._settings_request = bool(self._settings_request) or trusted
        self._wake.set()

    def request_zone(self, zone: str) -> None:
        if zone in self.zones:
            self._dirty_zones.add(zone)
            self._wake.set()
        else:  # nobody to recompute: the cache is merely forgotten, read again when needed
            self.ranks.forget(zone)

    async def run(self) -> None:
        """Serve the requests, coalescing whatever arrived while the last one ran."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            trusted, self._settings_request = self._settings_request, None
            zones, self._dirty_zones = self._dirty_zones, set()
            try:
                if trusted is not None and await self.apply_settings(trusted=trusted):
                    continue  # every zone was just recomputed
                for zone in sorted(zones):
                    await self.recompute_zone(zone)
            except RedisError as exc:
                # Keep the work for the next wake-up (an event, a poll or a resync).
                logger.warning("recompute failed, will retry: %s", exc)
                if trusted is not None:
                    self._settings_request = bool(self._settings_request) or trusted
                self._dirty_zones |= zones

    async def apply_settings(self, *, trusted: bool) -> bool:
        """Re-read the settings; on a new version recompute every served zone.

        `trusted` (a config.changed event: someone just changed them) applies any new version;
        otherwise (a poll, a reconnect) a version older than the applied one means Redis lost
        its data, and the last-known settings stay. Returns whether settings were applied.
        """
        async with self.lock:
            snapshot = await self.store.snapshot()
            current = self.snapshot
            if snapshot.version == current.version:
                return False
            if snapshot.version < current.version and not trusted:
                self._report_regression(snapshot, current)
                return False
            self.regressed = False
            self._apply(snapshot)
            logger.info("settings now at version %d", snapshot.version)
            for zone in list(self.zones):
                await self._recompute(zone)
            return True

    def _report_regression(self, snapshot: ConfigSnapshot, current: ConfigSnapshot) -> None:
        if not self.regressed:
            logger.error(
                "Redis holds settings version %d, older than the version %d this server applied: "
                "Redis lost its data. Keeping the last-known settings (agents keep their lists). "
                "Restore Redis's data, or set the settings again with `msctl config set` "
                "(the next change is applied).",
                snapshot.version,
                current.version,
            )
        self.regressed = True

    async def recompute_zone(self, zone: str) -> None:
        async with self.lock:
            if self.regressed:
                # Zones are being rebuilt by each server's re-assert: ranks would churn.
                logger.debug("zone %s: not recomputed while Redis is missing data", zone)
                return
            await self._recompute(zone)

    async def recompute_all(self) -> None:
        for zone in list(self.zones):
            await self.recompute_zone(zone)

    def forget_unserved(self) -> None:
        """Drop the cached ids of zones this server serves no agent in (no recompute keeps them
        current), e.g. after events may have been missed."""
        self.ranks.forget_all_but(set(self.zones))

    async def _recompute(self, zone: str) -> None:
        members = self.zones.get(zone)
        if not members:
            return
        ids = await self.ranks.read(zone)
        snapshot = self.snapshot
        per_cluster: dict[str, EffectiveSettings] = {}
        shared: dict[Offer, Offer] = {}
        pushed = 0
        for agent in list(members.values()):
            settings = per_cluster.get(agent.cluster)
            if settings is None:
                settings = per_cluster[agent.cluster] = snapshot.effective(agent.cluster)
            offer = offer_for(settings, ids, agent.host_id, shared)
            if offer is not None and needs_push(offer, agent):
                agent.deliver(offer, snapshot.version)
                pushed += 1
        logger.debug("zone %s: %d agents, %d new lists", zone, len(members), pushed)
