"""`msctl hosts [--json]` and `msctl hosts remove ID`: the registered agents."""

from __future__ import annotations

import json
import time

import click
import redis.asyncio as aioredis

from common.configstore import ConfigStore
from common.errors import ValidationError
from common.records import HostBusyError, HostRecord, load_hosts, load_servers, remove_host
from msctl.convergence import current_hosts
from msctl.options import CliConfig, connection_options, run_async
from msctl.tables import format_age, format_table, printable

HEADER = (
    "ID", "NAME", "TYPE", "ZONE", "CLUSTER", "STATE", "SERVER", "LIST", "CHECK", "ACKED",
    "CURRENT", "SEEN",
)  # fmt: skip
LIST_COLUMN = HEADER.index("LIST")  # the list each host holds: as wide as a `host` value


@click.group("hosts", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
@connection_options
@click.pass_context
def hosts_group(ctx: click.Context, cli: CliConfig, as_json: bool) -> None:
    """List the registered hosts (agents), their server, the list each one holds, the config
    version of the last list it acknowledged, and whether it holds the list it should (for a
    disconnected host: the list its record says it holds, which it reports when it is back)."""
    if ctx.invoked_subcommand is not None:
        return

    async def work(redis: aioredis.Redis) -> tuple[list[HostRecord], dict[int, bool]]:
        snapshot = await ConfigStore(redis, cli.keys).snapshot()
        servers = await load_servers(redis, cli.keys)
        hosts = await load_hosts(redis, cli.keys)
        return hosts, current_hosts(snapshot, hosts, servers)

    hosts, current = run_async(cli, work)
    if as_json:
        click.echo(json.dumps([{**h.as_json(), "current": current[h.id]} for h in hosts], indent=2))
    elif not hosts:
        click.echo("no hosts registered")
    else:
        click.echo(format_table(_rows(hosts, current, time.time()), wide=(LIST_COLUMN,)))


def _rows(hosts: list[HostRecord], current: dict[int, bool], now: float) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = [HEADER]
    for h in hosts:
        held = ",".join(h.ms_list) or "-"
        if h.algorithm:
            held = f"{held}@{h.algorithm}"
        rows.append(
            (
                str(h.id),
                h.name,
                h.type,
                h.zone,
                h.cluster or "-",
                str(h.state),
                h.server or "-",
                held,
                f"{h.check_interval}s",
                str(h.acked_version) if h.acked_version else "-",
                "yes" if current[h.id] else "no",
                format_age(h.last_seen, now),
            )
        )
    return rows


@hosts_group.command("remove")
@click.argument("host_id", metavar="ID", type=click.IntRange(min=1))
@connection_options
def hosts_remove(cli: CliConfig, host_id: int) -> None:
    """Retire host ID: its record, guid and zone membership go; its zone is recomputed.

    Every certificate issued to it is revoked: servers refuse it and close a session of it. A
    connected host is refused: stop its agent first. Its id is never reused; to bring the host
    back, delete agent.key and agent.crt beside its agent.properties and add a new join token
    (token=): it enrolls again and registers as a new host.
    """

    async def work(redis: aioredis.Redis) -> HostRecord:
        try:
            return await remove_host(redis, cli.keys, host_id)
        except HostBusyError as exc:
            raise ValidationError(printable(str(exc), limit=None)) from None

    removed = run_async(cli, work)
    name, zone = printable(removed.name), printable(removed.zone)
    click.echo(f"host {removed.id} ({name}, zone {zone}) removed")
