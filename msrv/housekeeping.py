"""What a server does at a fixed rate (every refresh interval, the work's own time subtracted):
refresh its liveness key, poll the settings and maintenance states for a change whose event was
lost, finish preparing for maintenance once it holds no session, push again the lists agents
have not acknowledged, write the last_seen of the hosts it hears from, and re-assert the CA and
the hosts it serves every reassert interval."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisError

from msrv.context import ServerContext
from msrv.registry import ServerRegistry, Write

logger = logging.getLogger(__name__)


class Housekeeping:
    def __init__(self, ctx: ServerContext, servers: ServerRegistry) -> None:
        self.ctx = ctx
        self.servers = servers
        self.name = ctx.settings.server_id

    async def run(self) -> None:
        settings = self.ctx.settings
        last_reassert = time.monotonic()
        while True:
            started = time.monotonic()
            try:
                await self.refresh_liveness()
                await self.ctx.resync.poll()
                await self.ctx.resync.maintenance.finish_if_idle(self.ctx.table)
                self.repush_unacked()
                await self.write_last_seen()
                if started - last_reassert >= settings.reassert_interval:
                    last_reassert = started
                    await self.ctx.trust.reassert_ca()
                    await self.ctx.resync.reassert()
            except RedisError as exc:
                logger.debug("%s: housekeeping skipped: %s", self.name, exc)
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, settings.refresh_interval - elapsed))

    async def refresh_liveness(self) -> None:
        await self.servers.refresh(len(self.ctx.table), self.ctx.balancer.snapshot.version)

    def repush_unacked(self) -> None:
        after = self.ctx.settings.repush_interval
        again = sum(s.repush_if_unacked(after) for s in self.ctx.table.started())
        if again:
            logger.info(
                "%s: %d lists not acknowledged in %.0fs; pushed again", self.name, again, after
            )

    async def write_last_seen(self) -> None:
        """The last_seen of the hosts heard from since it was last written, at most once per
        last_seen_interval each (spread over the ticks, as sessions started at different
        times). A write that finds a newer session of the host changes nothing and hangs up on
        nobody: its agent is most likely moving there (make-before-break) and closes this
        session itself once the new one is ready; hanging up first would cut it off
        mid-move. A session left behind is ended by the periodic re-assert."""
        interval = self.ctx.settings.last_seen_interval
        due = [s for s in self.ctx.table.started() if s.last_seen_due(interval)]
        if not due:
            return
        results = await self.ctx.registry.touch([s.mark_seen() for s in due])
        moved = sum(result == Write.SUPERSEDED for result in results)
        if moved:
            logger.debug("%s: %d hosts have a newer session elsewhere", self.name, moved)
