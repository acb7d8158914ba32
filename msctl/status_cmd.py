"""`msctl status`: the settings in force, the servers, the hosts, and what needs attention."""

from __future__ import annotations

import datetime
import functools
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import click
import redis.asyncio as aioredis

from common.ca import load_ca
from common.configstore import ConfigSnapshot, ConfigStore
from common.records import (
    OUT_OF_SERVICE,
    HostRecord,
    ServerRecord,
    ServerState,
    load_hosts,
    load_servers,
)
from common.tokens import TokenInfo, list_tokens
from msctl.convergence import Convergence
from msctl.options import CliConfig, connection_options, run_async
from msctl.tables import format_table, printable


@dataclass(frozen=True)
class Fleet:
    snapshot: ConfigSnapshot
    servers: list[ServerRecord]
    hosts: list[HostRecord]
    tokens: list[TokenInfo] = field(default_factory=list)
    ca_expires: datetime.datetime | None = None

    @functools.cached_property
    def convergence(self) -> Convergence:
        return Convergence.of_fleet(self.snapshot, self.hosts, self.servers)


CA_WARN_DAYS = 30
CERT_WARN_DAYS = 30
CERT_WARN_SHOWN = 5


def _by_version(servers: list[ServerRecord]) -> str:
    """`version 5: ms1, ms2; version 3: ms3`, newest first."""
    groups: dict[int, list[str]] = defaultdict(list)
    for server in servers:
        groups[server.settings_version].append(printable(server.id))
    return "; ".join(f"version {v}: {', '.join(groups[v])}" for v in sorted(groups, reverse=True))


def _lost_settings(fleet: Fleet) -> str | None:
    """Running servers that apply a newer settings version than Redis holds: Redis lost its
    data (or was replaced), and those servers keep their last-known settings (msrv.balancer)."""
    ahead = [s for s in fleet.servers if s.alive and s.settings_version > fleet.snapshot.version]
    if not ahead:
        return None
    return (
        f"Redis lost its settings: Redis is at config version {fleet.snapshot.version}, "
        f"running servers apply {_by_version(ahead)}. They keep pushing their last-known lists "
        "(agents keep theirs). Set the settings again with `msctl config set`: the servers "
        "apply the next change, so set every one that is not the default, `host` last (until "
        "it is set they send no list; set first, it has agents move to lists made with the "
        "defaults of the others, then back)"
    )


def _warnings(fleet: Fleet) -> list[str]:
    settings = fleet.snapshot.effective()
    warnings = []
    lost = _lost_settings(fleet)
    if lost is not None:
        warnings.append(lost)
    elif settings.host is None:
        warnings.append(
            "`host` is not set: servers push no list and agents keep theirs; "
            "set it with `msctl config set host A,B,C`"
        )
    if not any(s.alive for s in fleet.servers):
        warnings.append("no management server is running")
    elif not any(s.state == ServerState.RUNNING for s in fleet.servers):
        warnings.append("no management server is in service: every running one is out of service")
    down = [printable(s.id) for s in fleet.servers if s.state == ServerState.DOWN]
    if down:
        warnings.append(f"servers down (no liveness refresh): {', '.join(down)}")
    for server in fleet.servers:
        if server.state == ServerState.PREPARING:
            shown = printable(server.id)
            warnings.append(
                f"server {shown} is preparing for maintenance: {server.agents} agents left on it "
                f"(`msctl servers maintenance {shown} --wait` shows them leave)"
            )
    lists = fleet.convergence
    if lists.behind:
        stale = lists.behind
        ids = ", ".join(str(h.id) for h in stale[:10]) + (", ..." if len(stale) > 10 else "")
        warnings.append(f"{lists.summary()}; they have not acknowledged their list: {ids}")
    return warnings + _trust_warnings(fleet)


def _trust_warnings(fleet: Fleet) -> list[str]:
    """Join tokens still valid (anyone holding one can enroll a host) and a CA that expires
    within CA_WARN_DAYS."""
    warnings = []
    valid = [t for t in fleet.tokens if t.state == "valid"]
    if valid:
        ids = ", ".join(printable(t.id) for t in valid[:10]) + (", ..." if len(valid) > 10 else "")
        warnings.append(
            f"{len(valid)} join tokens still valid ({ids}); "
            "revoke those no longer needed with `msctl token revoke ID`"
        )
    if fleet.ca_expires is not None:
        left = fleet.ca_expires - datetime.datetime.now(datetime.UTC)
        if left < datetime.timedelta(days=CA_WARN_DAYS):
            warnings.append(
                f"the CA certificate expires in {max(left.days, 0)} days "
                f"({fleet.ca_expires:%Y-%m-%d})"
            )
    expiring = _certificates_expiring(fleet, time.time())
    if expiring is not None:
        warnings.append(expiring)
    return warnings


def _certificates_expiring(fleet: Fleet, now: float) -> str | None:
    """Hosts whose certificate expires within CERT_WARN_DAYS (or has expired): an agent renews
    its own over its session once less than a third of its validity remains, so these did not.
    With a validity short enough that a healthy agent's certificate is that close to expiry
    before it renews, the window shrinks to a quarter of the validity (still past the renewal
    point): `msctl status` warns only about certificates that missed their renewal."""
    validity = fleet.snapshot.effective().cert_validity_days
    window = min(CERT_WARN_DAYS, validity / 4) * 86400
    expiring = sorted(
        (h for h in fleet.hosts if h.cert_expires and h.cert_expires < now + window),
        key=lambda h: h.cert_expires,
    )
    if not expiring:
        return None
    shown = ", ".join(
        f"{h.id} ({printable(h.name)}, {_utc(h.cert_expires)})" for h in expiring[:CERT_WARN_SHOWN]
    ) + (", ..." if len(expiring) > CERT_WARN_SHOWN else "")
    return (
        f"{len(expiring)} hosts have a certificate that expires within {_days(window)} or has "
        f"expired: {shown}; a connected agent renews its own once less than a third of its "
        "validity remains, but a disconnected host cannot: start its agent before the expiry, "
        "or retire the host (`msctl hosts remove ID`); once expired, the host must enroll again "
        "(remove agent.key and agent.crt beside its agent.properties and give it a join token "
        "from `msctl token create`)"
    )


def _utc(timestamp: float) -> str:
    return f"{datetime.datetime.fromtimestamp(timestamp, datetime.UTC):%Y-%m-%d %H:%M} UTC"


def _days(seconds: float) -> str:
    days = seconds / 86400
    return f"{days:.3g} days" if days >= 1 else f"{days * 24:.3g} hours"


def _summary(fleet: Fleet) -> list[tuple[str, str]]:
    settings = fleet.snapshot.effective()
    overrides = sorted(
        f"{cluster}={values[name]}s"
        for cluster, values in fleet.snapshot.cluster_values.items()
        for name in values
        if name == "indirect.agent.lb.check.interval"
    )
    check = f"{settings.check_interval}s"
    if overrides:
        check += f" (overrides: {', '.join(overrides)})"
    servers = Counter(str(s.state) for s in fleet.servers)
    hosts = Counter(str(h.state) for h in fleet.hosts)
    rows = [
        ("config version", str(fleet.snapshot.version)),
        ("host", ",".join(settings.host) if settings.host else "(not set)"),
        ("algorithm", settings.algorithm),
        ("check interval", check),
        ("ping", f"every {settings.ping_interval}s, timeout {settings.ping_timeout} intervals"),
        ("servers", _counts(servers, len(fleet.servers))),
        ("hosts", _counts(hosts, len(fleet.hosts))),
        ("zones", str(len({h.zone for h in fleet.hosts}))),
        ("lists", fleet.convergence.summary()),
    ]
    out = [s for s in fleet.servers if s.state in OUT_OF_SERVICE]
    if out:
        after_servers = [name for name, _ in rows].index("servers") + 1
        rows.insert(after_servers, ("out of service", ", ".join(_out_of_service(s) for s in out)))
    running = [s for s in fleet.servers if s.alive]
    if any(s.settings_version != fleet.snapshot.version for s in running):
        rows.insert(1, ("servers apply", _by_version(running)))
    return rows


def _out_of_service(server: ServerRecord) -> str:
    """`ms1 (maintenance)`, `ms2 (preparing, 12 agents left)`, `ms3 (maintenance, stopped)`."""
    notes = [str(server.state)]
    if server.state == ServerState.PREPARING:
        notes.append(f"{server.agents} agents left")
    if not server.alive:
        notes.append("not running")
    return f"{printable(server.id)} ({', '.join(notes)})"


def _counts(counter: Counter[str], total: int) -> str:
    parts = [f"{n} {state}" for state, n in sorted(counter.items())]
    return f"{total} ({', '.join(parts)})" if parts else "0"


@click.command("status")
@connection_options
def status_command(cli: CliConfig) -> None:
    """Summarise settings, servers and hosts; warn about what needs attention."""

    async def work(redis: aioredis.Redis) -> Fleet:
        snapshot = await ConfigStore(redis, cli.keys).snapshot()
        servers = await load_servers(redis, cli.keys)
        hosts = await load_hosts(redis, cli.keys)
        ca = await load_ca(redis, cli.keys)
        tokens = await list_tokens(redis, cli.keys)
        return Fleet(snapshot, servers, hosts, tokens, ca.expires if ca else None)

    fleet = run_async(cli, work)
    click.echo(format_table([("WHAT", "VALUE"), *_summary(fleet)], wide=(1,)))
    for warning in _warnings(fleet):
        click.echo(f"warning: {warning}")
