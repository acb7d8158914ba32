"""Writes that must outlive a Redis master failover, and how each one does.

Redis replicates asynchronously: a write the master acknowledged is lost if the master dies
before a replica has it, and Sentinel then promotes a replica without it. Each write that must
not be lost is one of two kinds.

- Confirmed (`confirm_replicated`): the command that made it returns only once a replica holds
  it, when the master has replicas connected; otherwise it fails (exit 1) saying so. These are
  an operator's changes, which nothing would write again: `msctl config set|unset`
  (common.configstore), `msctl token create|revoke` (common.tokens), `msctl servers
  maintenance|cancel-maintenance` (common.maintenance begin and cancel), the CA's creation
  (common.ca: a lost CA would be created anew and every certificate of the old one refused), and
  `msctl hosts remove` (common.records.remove_host, which revokes the host's certificates).
- Re-asserted: state a live process holds and writes again by itself. The hosts' records and
  zones (every server re-writes those of the hosts it serves on each resync, and every reassert
  interval: msrv.registry), the servers' records and liveness keys (refreshed every refresh
  interval), the end of a server's maintenance preparation (its housekeeping moves it from
  preparing to maintenance again).

Not covered: a join token's use (an enrollment a failover lost leaves the token one more use),
and the record of a certificate issued at enrollment or renewal (common.revocation: a host
removed after such a loss keeps that one certificate valid until it expires).

A master with no replica connected has nothing to wait for: the write is as safe as that
Redis. Servers with `min-replicas-to-write` set refuse writes instead in that case.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from common.errors import Failed
from common.keys import Keys

# Seconds a confirmed write waits for a replica: far more than a replica on a LAN needs, and
# below the clients' socket timeout (5 s, common.connection), which the WAIT's reply must beat.
REPLICA_WAIT = 3.0


class NotReplicatedError(Failed):
    """A change is on the master, but no replica confirmed it in time: exit 1."""


async def confirm_replicated(
    redis: aioredis.Redis, keys: Keys, what: str, *, timeout: float = REPLICA_WAIT
) -> None:
    """Return once a replica holds every write this process made before the call, or at once
    when the master has no replica connected; raise NotReplicatedError naming `what` when no
    replica confirmed within `timeout`.

    WAIT counts the replicas that hold the last write of its own connection, and a pooled
    client may have written on another one; so a PUBLISH on a channel nobody reads goes first,
    on the WAIT's connection. A replica that holds it holds everything the master wrote before
    it (the replication stream is in order). A failover between the write and this call would
    make the PUBLISH land on the new master: that window is a few milliseconds long.
    """
    try:
        info = await redis.info("replication")
    except ResponseError:  # no INFO (fakeredis, some proxies): no replica known to wait for
        return
    if int(info.get("connected_slaves", 0)) == 0:
        return
    async with redis.pipeline(transaction=False) as pipe:
        pipe.publish(keys.replication_probe, what)
        pipe.execute_command("WAIT", 1, int(timeout * 1000))
        _, confirmed = await pipe.execute()
    if int(confirmed) < 1:
        raise NotReplicatedError(
            f"{what}: the change is on the Redis master, but no replica confirmed it within "
            f"{timeout:g}s; a failover now would lose it (see INFO replication on the master)"
        )
