"""Every Redis key and channel name, built in this one module.

All names live under a namespace so that several labs can share one Redis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.errors import ValidationError

DEFAULT_NAMESPACE = "msrv"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"

_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_namespace(namespace: str) -> str:
    if not _NAMESPACE_RE.match(namespace):
        raise ValidationError(f"namespace {namespace!r}: use 1-64 letters, digits, '_', '.' or '-'")
    return namespace


@dataclass(frozen=True)
class Keys:
    """Names of the keys and channels of one namespace."""

    namespace: str = DEFAULT_NAMESPACE

    def __post_init__(self) -> None:
        check_namespace(self.namespace)

    def _k(self, *parts: object) -> str:
        return ":".join([self.namespace, *(str(p) for p in parts)])

    # settings
    @property
    def settings(self) -> str:
        """Hash: global setting name -> normalised value."""
        return self._k("settings", "global")

    def cluster_settings(self, cluster: str) -> str:
        """Hash: overrides of one cluster."""
        return self._k("settings", "cluster", cluster)

    @property
    def clusters_with_overrides(self) -> str:
        """Set: ids of the clusters that have a settings hash."""
        return self._k("settings", "clusters")

    @property
    def ca(self) -> str:
        """The namespace's certificate authority (certificate and key, JSON)."""
        return self._k("ca")

    # join tokens
    @property
    def tokens(self) -> str:
        """Set: ids of the join tokens (an id whose hash expired is dropped when listing)."""
        return self._k("tokens")

    def token(self, token_id: str) -> str:
        """Hash: one join token (hash of its secret, expiry, uses left, created, revoked); it
        expires with the token (EXPIREAT)."""
        return self._k("token", token_id)

    # certificates issued and revoked (common.revocation)
    def host_certificates(self, guid: str) -> str:
        """Hash: serial (lowercase hex) -> expiry (Unix seconds) of every certificate issued
        to one guid; moved into `revoked` when the host is removed."""
        return self._k("certs", guid)

    @property
    def revoked(self) -> str:
        """Hash: serial (lowercase hex) -> expiry (Unix seconds) of the revoked certificates."""
        return self._k("revoked")

    @property
    def settings_epoch(self) -> str:
        """A random id created with the first settings write: a Redis that lost its data and
        was set again has another one, whatever its version counter says."""
        return self._k("settings", "epoch")

    @property
    def settings_version(self) -> str:
        """Counter bumped by every accepted settings change."""
        return self._k("settings", "version")

    # events
    @property
    def events(self) -> str:
        """Pub/sub channel of JSON events."""
        return self._k("events")

    @property
    def replication_probe(self) -> str:
        """Pub/sub channel nobody listens on: common.durability publishes on it so that its WAIT
        has a write of its own connection to wait for (PUBLISH is replicated)."""
        return self._k("replication", "probe")

    @property
    def lab_control(self) -> str:
        """Pub/sub channel on which `msctl lab kill|start` ask a running `msctl lab up`."""
        return self._k("lab", "control")

    # hosts (agents)
    @property
    def host_id_counter(self) -> str:
        return self._k("hosts", "next_id")

    @property
    def host_ids_by_guid(self) -> str:
        """Hash: guid -> host id."""
        return self._k("hosts", "by_guid")

    @property
    def host_prefix(self) -> str:
        """What `host(id)` puts before the id (for scripts that learn the id as they run)."""
        return self._k("host", "")

    def host(self, host_id: int) -> str:
        """Hash: one host's record."""
        return f"{self.host_prefix}{host_id}"

    def zone_hosts(self, zone: str) -> str:
        """Sorted set: ids of the hosts of a zone that take part in ranking, scored by id."""
        return self._k("zone", zone, "hosts")

    @property
    def zones(self) -> str:
        """Set: every zone that has hosts."""
        return self._k("zones")

    # management servers
    @property
    def servers(self) -> str:
        """Set: ids of registered management servers."""
        return self._k("servers")

    def server(self, server_id: str) -> str:
        """Hash: one management server's record."""
        return self._k("server", server_id)

    def server_alive(self, server_id: str) -> str:
        """String with a TTL, refreshed while the server lives."""
        return self._k("server", server_id, "alive")

    def server_maintenance(self, server_id: str) -> str:
        """String `preparing` or `maintenance` while the server is out of service (absent: in
        service); no TTL, so it outlives the server's restarts (common.maintenance)."""
        return self._k("server", server_id, "maintenance")
