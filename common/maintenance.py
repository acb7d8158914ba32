"""Maintenance mode: taking a management server out of service without losing an agent.

    running --begin--> preparing --finish (it holds no session)--> maintenance
       ^                   |                                            |
       +------cancel-------+--------------------cancel------------------+

- The state is the key `ns:server:<id>:maintenance`: absent (in service), `preparing` or
  `maintenance`. It has no TTL, so it outlives the server's restarts. Every change publishes a
  `server.maintenance` event {id, state} in the same atomic step; events are hints, and every
  server also reads the keys at start and on every poll.
- begin (`msctl servers maintenance ID`): preparing. Every server leaves the addresses of the
  servers out of service out of the lists it pushes (the avoid list, common.assignment), so the
  agents on it move to their next entry; it refuses new startups (a retryable `error`) and keeps
  its sessions until their agents have left. A server in maintenance stays so. A server whose
  process is not running holds no session: it goes to maintenance at once. Refused (exit 2):
  an unknown id, and the last running, in-service server whose address is in `host` (its agents
  would have nowhere to go).
- finish: preparing -> maintenance once the server holds no session (its own housekeeping, or
  msctl for a server that stopped meanwhile): a compare-and-set, so a cancel in between wins.
- cancel (`msctl servers cancel-maintenance ID`): the key goes; every server puts the address
  back in the lists, and the server takes startups again.

Across a Redis failover (common.durability): begin and cancel return once a replica holds the
state (when the master has replicas); a finish that was lost is made again by the server's
housekeeping, which finds itself preparing and idle.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import WatchError

from common import events
from common.assignment import left_out
from common.configstore import ConfigStore
from common.durability import confirm_replicated
from common.errors import ValidationError
from common.keys import Keys
from common.records import OUT_OF_SERVICE, ServerRecord, ServerState, load_servers


class UnknownServerError(ValidationError):
    """No management server has that id."""


class LastServerError(ValidationError):
    """The server is the last running, in-service one of `host`."""


# KEYS: the maintenance key. ARGV: from state, to state, events channel, event.
# Returns 1 when the state was `from` and is now `to`, else 0 (nothing written).
_FINISH = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# KEYS: the maintenance key. ARGV: events channel, event. Returns the state it was in (nil: in
# service, nothing written).
_CANCEL = """
local was = redis.call('GET', KEYS[1])
if not was then return nil end
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2])
return was
"""


def avoided(servers: Iterable[ServerRecord]) -> frozenset[str]:
    """The advertised addresses of the servers out of service: the avoid list."""
    return frozenset(s.address for s in servers if s.state in OUT_OF_SERVICE and s.address)


def _serves_host(server: ServerRecord, host: Sequence[str] | None) -> bool:
    """Whether the server's address is an entry of `host` (as endpoints: 8250 by default)."""
    return bool(left_out(host, [server.address]))


async def _servers(redis: aioredis.Redis, keys: Keys, server_id: str) -> dict[str, ServerRecord]:
    servers = {s.id: s for s in await load_servers(redis, keys)}
    if server_id not in servers:
        known = ", ".join(sorted(servers)) or "none"
        raise UnknownServerError(f"no management server with id {server_id!r} (known: {known})")
    return servers


def _check_not_last(
    target: ServerRecord, servers: Iterable[ServerRecord], host: Sequence[str] | None
) -> None:
    serving = [s for s in servers if s.state == ServerState.RUNNING and _serves_host(s, host)]
    if [s.id for s in serving] == [target.id]:
        raise LastServerError(
            f"server {target.id} is the last running server of `host` that is in service: its "
            "agents would have nowhere to go; start another server of the list first"
        )


async def begin(redis: aioredis.Redis, keys: Keys, server_id: str) -> ServerState:
    """Take the server out of service (preparing; maintenance at once when its process is not
    running; a server in maintenance stays so); its state now, held by a replica when the
    master has replicas. Atomic against another begin or a change of `host` (WATCH, retried on
    conflict)."""
    state = await _begin(redis, keys, server_id)
    await confirm_replicated(redis, keys, f"server {server_id} {state}")
    return state


async def _begin(redis: aioredis.Redis, keys: Keys, server_id: str) -> ServerState:
    key = keys.server_maintenance(server_id)
    async with redis.pipeline(transaction=True) as pipe:
        while True:
            try:
                await pipe.watch(keys.servers, keys.settings)
                ids = cast(set[str], await pipe.smembers(keys.servers))
                await pipe.watch(*(keys.server_maintenance(i) for i in ids))
                servers = await _servers(redis, keys, server_id)
                target = servers[server_id]
                wanted = ServerState.PREPARING if target.alive else ServerState.MAINTENANCE
                if target.state in (wanted, ServerState.MAINTENANCE):
                    await pipe.reset()  # type: ignore[no-untyped-call]
                    return ServerState(target.state)
                if target.state not in OUT_OF_SERVICE:
                    host = (await ConfigStore(redis, keys).snapshot()).effective().host
                    _check_not_last(target, servers.values(), host)
                pipe.multi()  # type: ignore[no-untyped-call]
                pipe.set(key, str(wanted))
                pipe.publish(keys.events, events.server_maintenance(server_id, str(wanted)))
                await pipe.execute()
                return wanted
            except WatchError:
                continue


async def finish(redis: aioredis.Redis, keys: Keys, server_id: str) -> bool:
    """preparing -> maintenance, unless the state changed meanwhile (a cancel wins); whether
    it moved. The caller knows the server holds no session."""
    moved = await redis.eval(
        _FINISH,
        1,
        keys.server_maintenance(server_id),
        str(ServerState.PREPARING),
        str(ServerState.MAINTENANCE),
        keys.events,
        events.server_maintenance(server_id, str(ServerState.MAINTENANCE)),
    )
    return bool(moved)


async def cancel(redis: aioredis.Redis, keys: Keys, server_id: str) -> ServerState | None:
    """Put the server back in service; the state it was in (None: it was in service). Returns
    once a replica holds it, when the master has replicas."""
    await _servers(redis, keys, server_id)
    was = await redis.eval(
        _CANCEL,
        1,
        keys.server_maintenance(server_id),
        keys.events,
        events.server_maintenance(server_id, str(ServerState.RUNNING)),
    )
    await confirm_replicated(redis, keys, f"server {server_id} back in service")
    return ServerState(was) if was in OUT_OF_SERVICE else None
