"""The server's own settings: one frozen value built at the entry point and passed down."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

from common.addresses import parse_address
from common.connection import check_redis_url
from common.errors import ValidationError
from common.keys import DEFAULT_NAMESPACE, DEFAULT_REDIS_URL, check_namespace

WILDCARDS = frozenset({"0.0.0.0", "::"})


@dataclass(frozen=True)
class ServerSettings:
    listen_host: str
    listen_port: int
    advertise: str
    server_id: str
    redis_url: str = DEFAULT_REDIS_URL
    namespace: str = DEFAULT_NAMESPACE
    liveness_ttl: float = 10.0  # seconds the liveness key lives without a refresh
    refresh_interval: float = 2.0  # liveness refresh and settings-version poll
    # re-write the records of the hosts this server serves (last_seen, and whatever a Redis that
    # lost data without the server noticing dropped); one Lua call per host, so not too often
    reassert_interval: float = 30.0
    shutdown_timeout: float = 5.0
    # a connection that completes no startup within this many seconds is closed
    startup_timeout: float = 10.0
    # a connected host's last_seen is written at most this often (while its agent is heard)
    last_seen_interval: float = 10.0
    # a list an agent has not acked (it could not save it) is pushed again this often
    repush_interval: float = 10.0
    send_buffer_limit: int = 1 << 20  # an agent that reads slower than this is dropped
    # more hosts for this server's certificate than its advertised one: the address of a TCP
    # load balancer that passes TLS through to it (agents verify the host they dial)
    tls_san: tuple[str, ...] = ()
    metrics: tuple[str, int] | None = None  # where /metrics is served (None: not served)

    @classmethod
    def build(
        cls,
        listen: str,
        advertise: str | None = None,
        server_id: str | None = None,
        redis_url: str = DEFAULT_REDIS_URL,
        namespace: str = DEFAULT_NAMESPACE,
        tls_san: Sequence[str] = (),
        metrics: str | None = None,
    ) -> ServerSettings:
        """Validate the command line; the advertised address defaults to the listen one."""
        address = parse_address(listen)
        if address.port is None:
            raise ValidationError(f"--listen {listen!r}: give HOST:PORT")
        if advertise is None:
            host = socket.getfqdn() if address.host in WILDCARDS else address.host
            advertise = str(type(address)(host, address.port))
        else:
            advertise = str(parse_address(advertise))
        server_id = server_id or advertise
        if not server_id or any(c.isspace() for c in server_id):
            raise ValidationError(f"--id {server_id!r}: give a name without spaces")
        return cls(
            listen_host=address.host,
            listen_port=address.port,
            advertise=advertise,
            server_id=server_id,
            redis_url=_checked(redis_url),
            namespace=check_namespace(namespace),
            tls_san=tls_hosts(tls_san),
            metrics=metrics_address(metrics) if metrics else None,
        )


def _checked(redis_url: str) -> str:
    """The URL, refused at once (one line, passwords hidden) if no client can be built from
    it, rather than by a traceback once the server starts."""
    check_redis_url(redis_url)
    return redis_url


def metrics_address(value: str) -> tuple[str, int]:
    """`--metrics HOST:PORT` as (host, port)."""
    try:
        address = parse_address(value)
    except ValidationError as exc:
        raise ValidationError(f"--metrics {value!r}: {exc}") from None
    if address.port is None:
        raise ValidationError(f"--metrics {value!r}: give HOST:PORT")
    return address.host, address.port


def tls_hosts(values: Sequence[str]) -> tuple[str, ...]:
    """`--tls-san` values (each may be a comma-separated list): hosts, an IP address or a DNS
    name each, without a port; IPv6 with or without brackets."""
    hosts: list[str] = []
    for value in values:
        for item in value.split(","):
            host = item.strip().removeprefix("[").removesuffix("]")
            if not host:
                continue
            if any(c.isspace() or c in "/@" for c in host) or (":" in host and not _is_ip(host)):
                raise ValidationError(f"--tls-san {item.strip()!r}: give a host, without a port")
            hosts.append(host)
    return tuple(dict.fromkeys(hosts))


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
