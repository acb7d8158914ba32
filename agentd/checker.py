"""Preferred-host checker: every check interval, with a random phase per agent, an agent that is
not on the first entry of its list tries it; if it completes a real startup, the agent switches
make-before-break (unless a move its server paced is on its way: that one goes at its time). The
interval follows live changes; 0 stops the checks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Protocol

from common.addresses import Address

logger = logging.getLogger(__name__)


class CheckedAgent(Protocol):
    """What the checker needs of an agent (agentd.agent.Agent is one)."""

    @property
    def label(self) -> str: ...
    @property
    def rng(self) -> random.Random: ...
    @property
    def check_interval(self) -> int: ...
    @property
    def interval_changed(self) -> asyncio.Event: ...
    @property
    def server(self) -> Address | None:
        """The server of the live session, if any."""

    @property
    def preferred(self) -> Address:
        """The first entry of the agent's list."""

    @property
    def moving(self) -> bool:
        """Whether a move its server ordered (and paced) is on its way."""

    def endpoint(self, address: Address) -> tuple[str, int]: ...
    async def switch_to(self, address: Address, why: str) -> bool:
        """Make-before-break: open a session to `address`, then close the current one."""


class PreferredChecker:
    def __init__(self, agent: CheckedAgent) -> None:
        self.agent = agent

    async def _wait_change(self, seconds: float | None) -> bool:
        """Wait up to `seconds` (None: forever) for an interval change; True if one came."""
        event = self.agent.interval_changed
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await event.wait()
                event.clear()
                return True
        return False

    async def run(self) -> None:
        agent = self.agent
        logged = 0
        while True:
            interval = agent.check_interval
            if interval != logged:
                logger.info("%s: check interval now %ds", agent.label, interval)
                logged = interval
            if interval <= 0:
                await self._wait_change(None)
                continue
            # A random phase, so that a fleet does not check in step, then ticks on a fixed grid
            # from it: a tick that runs late (the process was busy, say with a failover) does
            # not move the later ones, or a stall would line a whole swarm's checks up.
            next_at = time.monotonic() + agent.rng.uniform(0, interval)
            while not await self._wait_change(max(next_at - time.monotonic(), 0)):
                await self.check_once()
                now = time.monotonic()
                while next_at <= now:
                    next_at += interval

    async def check_once(self) -> bool:
        agent = self.agent
        current = agent.server
        preferred = agent.preferred
        if current is None or agent.endpoint(current) == agent.endpoint(preferred):
            return False
        if agent.moving:  # its server gave it a time to go: the checker does not go earlier
            return False
        return await agent.switch_to(preferred, "preferred server answers again")
