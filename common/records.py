"""Host and management-server records in Redis: the field layout msrv writes and msctl reads.

Host `ns:host:<id>` (hash): guid, name, type, zone, cluster, state, server, session, ms_list
(CSV), algorithm, acked_version, check_interval, last_seen (Unix seconds), cert_serial and
cert_expires (the client certificate of the host's current or last session: serial in lowercase
hex, expiry in Unix seconds, 0 when unknown). `ns:hosts:by_guid`
maps guid -> id, `ns:hosts:next_id` counts ids (never reused), `ns:zone:<zone>:hosts` is the
sorted set (score = id) of the zone's ranked hosts, `ns:zones` the set of zones.

Server `ns:server:<id>` (hash): id, address, state, started, last_seen, agents, settings_version
(the settings version the server applies, which stays ahead of Redis's own after Redis lost its
data); `ns:servers`
the set of ids; `ns:server:<id>:alive` a key whose TTL the running server keeps refreshing;
`ns:server:<id>:maintenance` `preparing` or `maintenance` while the server is out of service
(common.maintenance), kept across its restarts.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, cast

import redis.asyncio as aioredis

from common import events, host_scripts
from common.durability import confirm_replicated
from common.errors import LbError, ValidationError
from common.keys import Keys

# Host types that take part in a zone's roundrobin ranking.
RANKED_TYPES = frozenset({"routing", "ssvm", "cpvm"})


class HostState(enum.StrEnum):
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


class ServerState(enum.StrEnum):
    RUNNING = "running"
    STOPPED = "stopped"
    DOWN = "down"  # never stored: a running server whose liveness key expired
    # out of service (common.maintenance): stored in the server's maintenance key, not its hash
    PREPARING = "preparing"  # its agents are moving off it
    MAINTENANCE = "maintenance"  # it holds no agent and refuses startups


OUT_OF_SERVICE = frozenset({ServerState.PREPARING, ServerState.MAINTENANCE})


def _csv(items: tuple[str, ...]) -> str:
    return ",".join(items)


def _split(text: str) -> tuple[str, ...]:
    return tuple(text.split(",")) if text else ()


def _number(text: str | None, default: float = 0.0) -> float:
    try:
        value = float(text) if text else default
    except ValueError:
        return default
    return value if math.isfinite(value) else default


# HostRecord fields `msctl hosts --json` leaves out
_PRIVATE_HOST_FIELDS = (
    "session", "attempt", "ping_interval", "ping_timeout", "cert_serial",
)  # fmt: skip


@dataclass(frozen=True)
class HostRecord:
    id: int
    guid: str
    name: str = ""
    type: str = ""
    zone: str = ""
    cluster: str = ""
    state: str = HostState.DISCONNECTED
    server: str = ""
    session: str = ""
    ms_list: tuple[str, ...] = ()
    algorithm: str | None = None
    acked_version: int = 0  # the settings version of the last list it acknowledged
    check_interval: int = 0
    ping_interval: int = 0  # as last acknowledged (0: not known)
    ping_timeout: int = 0
    last_seen: float = 0.0
    attempt: int = 0  # the startup's attempt stamp (common.protocol.Startup)
    cert_serial: str = ""  # lowercase hex serial of the session's client certificate
    cert_expires: float = 0.0  # its expiry, Unix seconds (0: not known)

    @property
    def ranked(self) -> bool:
        return self.type in RANKED_TYPES

    def to_hash(self) -> dict[str, str]:
        return {
            "guid": self.guid,
            "name": self.name,
            "type": self.type,
            "zone": self.zone,
            "cluster": self.cluster,
            "state": str(self.state),
            "server": self.server,
            "session": self.session,
            "ms_list": _csv(self.ms_list),
            "algorithm": self.algorithm or "",
            "acked_version": str(self.acked_version),
            "check_interval": str(self.check_interval),
            "ping_interval": str(self.ping_interval),
            "ping_timeout": str(self.ping_timeout),
            "last_seen": f"{self.last_seen:.3f}",
            "attempt": str(self.attempt),
            "cert_serial": self.cert_serial,
            "cert_expires": f"{self.cert_expires:.3f}",
        }

    @classmethod
    def from_hash(cls, host_id: int, fields: Mapping[str, str]) -> HostRecord:
        return cls(
            id=host_id,
            guid=fields.get("guid", ""),
            name=fields.get("name", ""),
            type=fields.get("type", ""),
            zone=fields.get("zone", ""),
            cluster=fields.get("cluster", ""),
            state=fields.get("state", HostState.DISCONNECTED),
            server=fields.get("server", ""),
            session=fields.get("session", ""),
            ms_list=_split(fields.get("ms_list", "")),
            algorithm=fields.get("algorithm") or None,
            acked_version=int(_number(fields.get("acked_version"))),
            check_interval=int(_number(fields.get("check_interval"))),
            ping_interval=int(_number(fields.get("ping_interval"))),
            ping_timeout=int(_number(fields.get("ping_timeout"))),
            last_seen=_number(fields.get("last_seen")),
            attempt=int(_number(fields.get("attempt"))),
            cert_serial=fields.get("cert_serial", ""),
            cert_expires=_number(fields.get("cert_expires")),
        )

    def as_json(self) -> dict[str, Any]:
        """The `msctl hosts --json` shape (msctl.hosts_cmd adds `current`): cert_expires is
        null when not known."""
        body = asdict(self)
        for private in _PRIVATE_HOST_FIELDS:
            body.pop(private)
        body["ms_list"] = list(self.ms_list)
        body["cert_expires"] = self.cert_expires or None
        return body


@dataclass(frozen=True)
class ServerRecord:
    id: str
    address: str = ""
    state: str = ServerState.DOWN
    agents: int = 0
    started: float = 0.0
    last_seen: float = 0.0
    settings_version: int = 0
    alive: bool = False  # the process runs (its liveness key is fresh), whatever the state

    def to_hash(self) -> dict[str, str]:
        return {
            "id": self.id,
            "address": self.address,
            "state": str(self.state),
            "agents": str(self.agents),
            "started": f"{self.started:.3f}",
            "last_seen": f"{self.last_seen:.3f}",
            "settings_version": str(self.settings_version),
        }

    @classmethod
    def from_hash(
        cls,
        server_id: str,
        fields: Mapping[str, str],
        alive: bool,
        maintenance: str | None = None,
    ) -> ServerRecord:
        """The state shown is derived here: the maintenance state when the server is out of
        service (whether its process runs or not: it stays so across restarts), else `down`
        for a running server whose liveness key expired, else the stored one. So is the agent
        count: the stored one is the last the server wrote, and a server whose process is not
        running holds no live session, so it counts 0 (as its hosts show disconnected)."""
        stored = fields.get("state", ServerState.DOWN)
        running = stored == ServerState.RUNNING and alive
        state = stored if running or stored != ServerState.RUNNING else ServerState.DOWN
        if maintenance in OUT_OF_SERVICE:
            state = ServerState(maintenance)
        return cls(
            id=server_id,
            address=fields.get("address", ""),
            state=state,
            agents=int(_number(fields.get("agents"))) if running else 0,
            started=_number(fields.get("started")),
            last_seen=_number(fields.get("last_seen")),
            settings_version=int(_number(fields.get("settings_version"))),
            alive=running,
        )

    def as_json(self) -> dict[str, Any]:
        """The `msctl servers --json` shape (the design's fields; settings_version and alive
        are for `msctl status`)."""
        body = asdict(self)
        body.pop("settings_version")
        body.pop("alive")
        return body


async def load_servers(redis: aioredis.Redis, keys: Keys) -> list[ServerRecord]:
    ids = sorted(cast(set[str], await redis.smembers(keys.servers)))
    async with redis.pipeline(transaction=False) as pipe:
        for server_id in ids:
            pipe.hgetall(keys.server(server_id))
            pipe.exists(keys.server_alive(server_id))
            pipe.get(keys.server_maintenance(server_id))
        replies = await pipe.execute()
    return [
        ServerRecord.from_hash(server_id, fields, bool(alive), maintenance)
        for server_id, fields, alive, maintenance in zip(
            ids, replies[0::3], replies[1::3], replies[2::3], strict=True
        )
        if fields
    ]


async def load_hosts(redis: aioredis.Redis, keys: Keys) -> list[HostRecord]:
    """Every registered host by id. A host whose server is no longer alive shows disconnected."""
    ids = sorted({int(v) for v in await redis.hvals(keys.host_ids_by_guid)})
    async with redis.pipeline(transaction=False) as pipe:
        for host_id in ids:
            pipe.hgetall(keys.host(host_id))
        replies = await pipe.execute()
    hosts = [HostRecord.from_hash(i, r) for i, r in zip(ids, replies, strict=True) if r]
    running = {s.id for s in await load_servers(redis, keys) if s.alive}
    return [
        h
        if h.state != HostState.CONNECTED or h.server in running
        # the server died without saying so: its agents are looking for another one
        else replace(h, state=HostState.DISCONNECTED)
        for h in hosts
    ]


class HostNotFoundError(ValidationError):
    """No host has that id."""


class HostBusyError(LbError):
    """The host is connected; retire it once its agent is stopped."""


async def remove_host(redis: aioredis.Redis, keys: Keys, host_id: int) -> HostRecord:
    """Retire a host: its hash, its guid mapping and its zone membership go; the zone's
    servers recompute (roundrobin ranks move). Its id is never handed out again. In the same
    atomic script its certificates are revoked (common.revocation): a server holding a session
    of it closes it, and it can start no session with them again."""
    script = redis.register_script(host_scripts.REMOVE_HOST)
    while True:
        fields = cast(dict[str, str], await redis.hgetall(keys.host(host_id)))
        if not fields:
            raise HostNotFoundError(f"no host with id {host_id}")
        record = HostRecord.from_hash(host_id, fields)
        status, detail = await script(
            keys=[
                keys.host(host_id),
                keys.host_ids_by_guid,
                keys.server_alive(record.server or "-"),
                keys.zone_hosts(record.zone),
                keys.host_certificates(record.guid),
                keys.revoked,
            ],
            args=[
                host_id,
                record.zone,
                record.server,
                keys.events,
                events.hosts_changed(record.zone),
                record.guid,
                events.hosts_revoked(record.guid),
                f"{time.time():.3f}",
            ],
        )
        if status == "missing":
            raise HostNotFoundError(f"no host with id {host_id}")
        if status == "busy":
            raise HostBusyError(
                f"host {host_id} ({record.name}) is connected to server {detail}; "
                "stop its agent first, then remove it"
            )
        if status == "removed":
            # a removal a failover lost would give the host its certificates back
            await confirm_replicated(redis, keys, f"removal of host {host_id}")
            return record
