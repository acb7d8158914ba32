"""What `msctl lab up` shows while it runs: each server's state and agent count, the config
version and how many agents hold it, and with --redis-ha which Redis is master (as the sentinels
say: msctl.redis_ha).

A server's state (running, preparing, maintenance, stopped, down) and agent count are `msctl
servers`'s (common.records.ServerRecord: a server whose process is not running counts 0), so the
two views never disagree."""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from common.configstore import ConfigStore
from common.keys import Keys
from common.records import HostState, load_hosts, load_servers
from msctl.convergence import stale_hosts
from msctl.redis_ha import RedisHA
from msctl.tables import format_table


@dataclass(frozen=True)
class LabView:
    version: int
    servers: list[tuple[str, str, str, int]]  # id, address, state, agents (live sessions)
    agents: int
    connected: int
    holding: int  # connected agents whose acknowledged list is the one in force
    redis: str | None = None  # "redis: master HOST:PORT, replicas 2, sentinels 3" (--redis-ha)

    def render(self) -> str:
        rows = [("SERVER", "ADDRESS", "STATE", "AGENTS")]
        rows += [(i, a, s, str(n)) for i, a, s, n in self.servers]
        return (
            format_table(rows)
            + f"\nconfig version {self.version}: {self.holding}/{self.agents} agents hold it,"
            + f" {self.connected}/{self.agents} connected"
            + (f"\n{self.redis}" if self.redis else "")
        )


async def read_view(redis: aioredis.Redis, keys: Keys, ha: RedisHA | None = None) -> LabView:
    snapshot = await ConfigStore(redis, keys).snapshot()
    servers = await load_servers(redis, keys)
    hosts = await load_hosts(redis, keys)
    connected = [h for h in hosts if h.state == HostState.CONNECTED]
    return LabView(
        version=snapshot.version,
        servers=[(s.id, s.address, str(s.state), s.agents) for s in servers],
        agents=len(hosts),
        connected=len(connected),
        holding=len(connected) - len(stale_hosts(snapshot, hosts, servers)),
        redis=await ha.summary() if ha is not None else None,
    )
