"""This server's view of maintenance (common.maintenance): its own state, and the avoid list
every list it pushes leaves out.

Read at start, on a `server.maintenance` event and on every poll (msrv.resync); a change of the
avoid list recomputes every zone (msrv.balancer). While this server is preparing or in
maintenance it refuses new startups (msrv.lifecycle); once preparing and holding no connection
(a startup that came before the refusals began is a connection until it ends) it finishes:
preparing -> maintenance (msrv.housekeeping, and at shutdown).
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import redis.asyncio as aioredis

from common import maintenance
from common.keys import Keys
from common.records import OUT_OF_SERVICE, ServerState, load_servers

logger = logging.getLogger(__name__)


class Sessions(Protocol):
    """The table of live sessions (msrv.table), as far as finishing needs it."""

    def connections(self) -> list[Any]: ...


class ServerMaintenance:
    def __init__(self, redis: aioredis.Redis, keys: Keys, server_id: str) -> None:
        self.redis = redis
        self.keys = keys
        self.server_id = server_id
        self.state: ServerState | None = None  # this server's: None while in service
        self.avoid: frozenset[str] = frozenset()  # addresses of the servers out of service

    @property
    def refuses_startups(self) -> bool:
        return self.state in OUT_OF_SERVICE

    async def read(self) -> bool:
        """Read every server's state; whether the avoid list changed."""
        servers = await load_servers(self.redis, self.keys)
        own = next((s.state for s in servers if s.id == self.server_id), None)
        state = ServerState(own) if own in OUT_OF_SERVICE else None
        if state != self.state:
            logger.info("%s: %s", self.server_id, _describe(state))
        self.state = state
        avoid, self.avoid = self.avoid, maintenance.avoided(servers)
        if avoid != self.avoid:
            shown = ", ".join(sorted(self.avoid)) or "none"
            logger.info("%s: servers out of service (left out of lists): %s", self.server_id, shown)
        return avoid != self.avoid

    async def finish_if_idle(self, sessions: Sessions) -> None:
        """preparing -> maintenance once this server holds no session."""
        if self.state != ServerState.PREPARING or sessions.connections():
            return
        if await maintenance.finish(self.redis, self.keys, self.server_id):
            self.state = ServerState.MAINTENANCE
            logger.info("%s: %s", self.server_id, _describe(self.state))


def _describe(state: ServerState | None) -> str:
    if state == ServerState.PREPARING:
        return "preparing for maintenance: refusing new agents, pushing lists without this server"
    if state == ServerState.MAINTENANCE:
        return "in maintenance: holds no agent, refuses new ones; can be stopped or upgraded"
    return "in service"
