"""`msctl servers [--json]`: the management servers, their state and how many agents each has;
`msctl servers maintenance ID [--wait]` and `cancel-maintenance ID` (common.maintenance)."""

from __future__ import annotations

import asyncio
import json
import time

import click
import redis.asyncio as aioredis

from common import maintenance
from common.errors import Failed
from common.records import OUT_OF_SERVICE, ServerRecord, ServerState, load_servers
from msctl.options import CliConfig, connection_options, run_async
from msctl.progress import Progress
from msctl.tables import format_age, format_table, printable

WAIT_POLL = 0.5  # seconds between two looks at the server while waiting


@click.group("servers", invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
@connection_options
@click.pass_context
def servers_group(ctx: click.Context, cli: CliConfig, as_json: bool) -> None:
    """List the management servers: running, preparing (for maintenance), maintenance, stopped,
    or down (silent past its liveness TTL)."""
    if ctx.invoked_subcommand is not None:
        return

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


@servers_group.command("maintenance")
@click.argument("server_id", metavar="ID")
@click.option("--wait", is_flag=True, help="show the agents left on it until none is")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="seconds --wait waits (then exit 1)",
)
@connection_options
def servers_maintenance(cli: CliConfig, server_id: str, wait: bool, timeout: float) -> None:
    """Take server ID out of service: every server leaves its address out of the lists it
    pushes, so its agents move to their next entry, and it refuses new ones; once it holds no
    agent it is in maintenance, and can be stopped or upgraded. It stays so across restarts,
    until `cancel-maintenance`. The last running server of `host` is refused."""
    shown = printable(server_id)

    async def work(redis: aioredis.Redis) -> ServerState:
        state = await maintenance.begin(redis, cli.keys, server_id)
        click.echo(f"server {shown}: {state}")
        if wait and state != ServerState.MAINTENANCE:
            state = await _wait_empty(redis, cli, server_id, timeout)
        return state

    run_async(cli, work)


async def _wait_empty(
    redis: aioredis.Redis, cli: CliConfig, server_id: str, timeout: float
) -> ServerState:
    """Show the agents left on the server (msctl.progress) until it is in maintenance; Failed
    at the timeout."""
    shown = printable(server_id)
    deadline = time.monotonic() + timeout
    with Progress() as progress:
        while True:
            looked = time.monotonic()
            servers = await load_servers(redis, cli.keys)
            server = next((s for s in servers if s.id == server_id), None)
            if server is None or server.state not in OUT_OF_SERVICE:
                raise Failed(f"server {shown}: maintenance was cancelled")
            if server.state == ServerState.PREPARING and not server.alive:
                # its process stopped: it holds no agent
                await maintenance.finish(redis, cli.keys, server_id)
                continue
            # in maintenance it holds none, whatever count it last wrote (it finishes the moment
            # its last session ends, before its next refresh of the count)
            agents = 0 if server.state == ServerState.MAINTENANCE else server.agents
            progress.update(f"server {shown}: {agents} agents left", agents)
            if server.state == ServerState.MAINTENANCE:
                progress.done(f"server {shown}: maintenance")
                return ServerState.MAINTENANCE
            if time.monotonic() >= deadline:
                raise Failed(
                    f"server {shown}: still preparing after {timeout:g}s, {agents} agents left "
                    "(it stays preparing; wait again, or cancel-maintenance)"
                )
            await asyncio.sleep(max(0.0, WAIT_POLL - (time.monotonic() - looked)))


@servers_group.command("cancel-maintenance")
@click.argument("server_id", metavar="ID")
@connection_options
def servers_cancel_maintenance(cli: CliConfig, server_id: str) -> None:
    """Put server ID back in service: its address returns to every list, it takes agents
    again."""

    async def work(redis: aioredis.Redis) -> ServerState | None:
        return await maintenance.cancel(redis, cli.keys, server_id)

    was = run_async(cli, work)
    shown = printable(server_id)
    if was is None:
        click.echo(f"server {shown} was not in maintenance")
    else:
        click.echo(f"server {shown}: back in service (was {was})")
