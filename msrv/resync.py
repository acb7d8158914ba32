"""Keeping a server in step with Redis: change events, the version poll, outages and resync.

States:

    available --(Redis lost: subscriber or housekeeping fails)--> unavailable
    unavailable --(resubscribed: read settings, recompute, re-assert)--> available

- available: startups are registered; events (hints) and the poll (every refresh interval,
  for events pub/sub lost) request work, which `run` does, coalesced: a burst of registrations
  costs one recompute of their zone. The servers' maintenance states (msrv.maintenance) are
  read at start, on their event and on every poll; a change of the avoid list recomputes
  every served zone.
- unavailable: sessions are kept on the last-known settings; startups are refused with a
  retryable `error` (the agent tries its next server). The subscriber reconnects with backoff;
  once subscribed (nothing published from then on can be missed) it resyncs: settings, every
  served zone, then the hosts this server serves are re-asserted (recreating what an emptied
  Redis lost), and the server is available again. Through Sentinel, a failover is such an
  outage: the resync first moves the server's other client to the master the sentinels name,
  so that nothing is re-asserted on a demoted one.

Settings: the stored settings carry an epoch (a random id created with the first write) and a
version. A server applies what it reads when the epoch is the one it applied and the version is
newer, or when the epoch is another one (Redis was reset and the operator set the settings
again, whatever the version counter says), or after a `config.changed` event of any version
(someone just changed them). With no epoch (Redis lost its data) or an older version of the same
epoch seen by a poll, it keeps the last-known settings and is `regressed`: agents' lists are
never wiped, zones are not recomputed while the servers re-assert their hosts, and the error
says what to do; the next change the operator makes is applied.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from typing import Any

from redis.exceptions import RedisError

from common.configstore import ConfigSnapshot, ConfigStore
from common.events import EventType
from common.sentinel import moved_master
from msrv.balancer import Balancer
from msrv.maintenance import ServerMaintenance
from msrv.registry import HostRegistry, Write
from msrv.table import SessionTable

logger = logging.getLogger(__name__)


class Verdict(enum.Enum):
    SAME = "same"
    APPLY = "apply"
    LOST = "lost"  # Redis holds less than was applied: keep the last-known settings


def judge(applied: ConfigSnapshot, found: ConfigSnapshot, *, after_event: bool) -> Verdict:
    """What to do with the settings found in Redis, given those applied."""
    if (found.epoch, found.version) == (applied.epoch, applied.version):
        return Verdict.SAME
    if found.epoch is None and applied.epoch is not None:
        return Verdict.LOST  # an event cannot come from an empty Redis: nothing was set
    if after_event or found.epoch != applied.epoch or found.version > applied.version:
        return Verdict.APPLY
    return Verdict.LOST


class Resync:
    def __init__(
        self,
        name: str,
        store: ConfigStore,
        balancer: Balancer,
        registry: HostRegistry,
        table: SessionTable[Any],
    ) -> None:
        self.name = name
        self.store = store
        self.balancer = balancer
        self.registry = registry
        self.table = table
        self.maintenance = ServerMaintenance(store.redis, store.keys, name)
        self.available = True  # Redis answers (the subscriber is connected)
        self.regressed = False  # Redis holds less than the settings applied
        self._subscribed_once = False
        self._wake = asyncio.Event()
        self._settings_request: bool | None = None  # None: none; else whether after an event
        self._maintenance_request = False
        self._dirty_zones: set[str] = set()

    async def load(self) -> None:
        """At start: the settings in force, whatever Redis holds, and the avoid list."""
        self.balancer.apply(await self.store.snapshot())
        await self.read_maintenance()
        logger.info("%s: settings at version %d", self.name, self.balancer.snapshot.version)

    # -- hints: events and the poll --------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == EventType.CONFIG_CHANGED:
            self._request_settings(after_event=True)
        elif kind == EventType.HOSTS_CHANGED and isinstance(event.get("zone"), str):
            self._request_zone(event["zone"])
        elif kind == EventType.SERVER_MAINTENANCE:
            self._request_maintenance()
        else:
            logger.debug("%s: event %s not for servers", self.name, kind)

    async def poll(self) -> None:
        """Every refresh interval: a change whose event was lost is found here."""
        applied = self.balancer.snapshot
        if await self.store.stamp() != (applied.epoch, applied.version):
            self._request_settings(after_event=False)
        self._request_maintenance()
        if self.balancer.wanted_zones:
            for zone in self.balancer.wanted_zones:
                self._request_zone(zone)
            self.balancer.wanted_zones.clear()

    def _request_settings(self, *, after_event: bool) -> None:
        self._settings_request = bool(self._settings_request) or after_event
        self._wake.set()

    def _request_maintenance(self) -> None:
        self._maintenance_request = True
        self._wake.set()

    def _request_zone(self, zone: str) -> None:
        if self.table.in_zone(zone):
            self._dirty_zones.add(zone)
            self._wake.set()
        else:  # nobody to recompute: the cache is merely forgotten, read again when needed
            self.balancer.ranks.forget(zone)

    async def run(self) -> None:
        """Serve the requests, coalescing whatever arrived while the last one ran."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            after_event, self._settings_request = self._settings_request, None
            maintenance, self._maintenance_request = self._maintenance_request, False
            zones, self._dirty_zones = self._dirty_zones, set()
            try:
                await self._serve(after_event, maintenance, zones)
            except RedisError as exc:
                # Keep the work for the next wake-up (an event, a poll or a resync).
                logger.warning("%s: recompute failed, will retry: %s", self.name, exc)
                if after_event is not None:
                    self._request_settings(after_event=after_event)
                self._maintenance_request |= maintenance
                self._dirty_zones |= zones

    async def _serve(self, after_event: bool | None, maintenance: bool, zones: set[str]) -> None:
        recomputed = after_event is not None and await self.check_settings(after_event=after_event)
        if self.regressed:  # zones are being rebuilt by every server's re-assert
            return
        if maintenance and await self.read_maintenance() and not recomputed:
            await self.balancer.recompute_all()
            recomputed = True
        if not recomputed:
            for zone in sorted(zones):
                await self.balancer.recompute_zone(zone)

    async def read_maintenance(self) -> bool:
        """Read the servers' maintenance states; whether the avoid list changed (it is then in
        force: the caller recomputes)."""
        changed = await self.maintenance.read()
        if changed:
            self.balancer.avoid(self.maintenance.avoid)
        return changed

    async def check_settings(self, *, after_event: bool) -> bool:
        """Read the settings; apply them (and recompute every served zone) if `judge` says so.
        Returns whether settings were applied."""
        found = await self.store.snapshot()
        applied = self.balancer.snapshot
        verdict = judge(applied, found, after_event=after_event)
        if verdict == Verdict.SAME:
            return False
        if verdict == Verdict.LOST:
            self._report_lost(found, applied)
            return False
        self.regressed = False
        self.balancer.apply(found)
        logger.info("%s: settings now at version %d", self.name, found.version)
        await self.balancer.recompute_all()
        return True

    def _report_lost(self, found: ConfigSnapshot, applied: ConfigSnapshot) -> None:
        if not self.regressed:
            logger.error(
                "%s: Redis holds settings version %d, not the version %d this server applied: "
                "Redis lost its data. Keeping the last-known settings (agents keep their lists). "
                "Restore Redis's data, or set the settings again with `msctl config set`, "
                "`host` last (the next change is applied).",
                self.name,
                found.version,
                applied.version,
            )
        self.regressed = True

    # -- outages -----------------------------------------------------------------------------------

    def on_lost(self) -> None:
        if self.available:
            logger.error(
                "%s: Redis unreachable; keeping %d sessions on the last-known settings, "
                "refusing new agents until it is back",
                self.name,
                len(self.table),
            )
        self.available = False

    async def on_connected(self) -> None:
        """After (re)subscribing: settings, lists, then the hosts this server serves."""
        moved = await moved_master(self.store.redis)
        if moved is not None:
            logger.info("%s: %s; writing there from now on", self.name, moved)
        self.balancer.forget_unserved()
        await self.read_maintenance()  # its events may have been missed too
        if not await self.check_settings(after_event=False) and not self.regressed:
            await self.balancer.recompute_all()  # zone events may have been missed
        await self.reassert()
        if not self.available:
            logger.info("%s: Redis is back; resynchronised", self.name)
        elif not self._subscribed_once:
            logger.info("%s: subscribed to events; in step with Redis", self.name)
        self._subscribed_once = True
        self.available = True

    async def reassert(self) -> None:
        """Re-write the records of the hosts this server serves; hang up on those a newer
        session owns."""
        sessions = [s for s in self.table.started() if s.record is not None]
        results = await self.registry.reassert([s.record for s in sessions])
        for session, result in zip(sessions, results, strict=True):
            if result == Write.SUPERSEDED:
                logger.info("%s superseded by a newer session elsewhere", session)
                session.supersede()
