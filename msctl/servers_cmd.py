"""`msctl servers [--json]`: the management servers, their state and how many agents each has."""

from __future__ import annotations

import json
import time

import click
import redis.asyncio as aioredis

from common.records import ServerRecord, load_servers
from msctl.options import CliConfig, connection_options, run_async
from msctl.tables import format_age, format_table


@click.command("servers")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
@connection_options
def servers_command(cli: CliConfig, as_json: bool) -> None:
    """List the management servers: running, stopped, or down (silent past its liveness TTL)."""

    async def work(redis: aioredis.Redis) -> list[ServerRecord]:
        return await load_servers(redis, cli.keys)

    servers = run_async(cli, work)
    if as_json:
        click.echo(json.dumps([s.as_json() for s in servers], indent=2))
        return
    if not servers:
        click.echo("no management servers registered")
        return
    now = time.time()
    rows: list[tuple[str, ...]] = [("ID", "ADDRESS", "STATE", "AGENTS", "STARTED", "SEEN")]
    for s in servers:
        rows.append(
            (
                s.id,
                s.address,
                str(s.state),
                str(s.agents),
                format_age(s.started, now),
                format_age(s.last_seen, now),
            )
        )
    click.echo(format_table(rows))
