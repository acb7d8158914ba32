"""`msctl config set|get|list|unset`: the global settings, live, with no restart anywhere."""

from __future__ import annotations

import asyncio
import json
import time

import click
import redis.asyncio as aioredis

from common.configstore import ConfigChange, ConfigEntry, ConfigStore
from common.errors import Failed
from common.records import load_hosts, load_servers
from msctl.convergence import Convergence
from msctl.options import CliConfig, connection_options, run_async
from msctl.progress import Progress
from msctl.tables import format_table, printable

WAIT_POLL = 0.5  # seconds between two looks at the hosts while waiting

cluster_option = click.option(
    "--cluster", default=None, metavar="ID", help="a cluster's override instead of the global value"
)


@click.group("config")
def config_group() -> None:
    """Read and change the settings every management server follows."""


def _describe(change: ConfigChange, verb: str) -> str:
    where = f" for cluster {change.cluster}" if change.cluster is not None else ""
    if not change.changed:
        return f"{change.name}{where} unchanged (config version {change.version})"
    return f"{change.name}{where} {verb} (config version {change.version})"


# ignore_unknown_options lets a value such as "-1" reach validation instead of being taken
# for an option, so the operator gets the setting's own one-line reason.
@config_group.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@cluster_option
@click.option(
    "--wait",
    is_flag=True,
    help="show the connected hosts that hold a list of this version or later until all do",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="seconds --wait waits (then exit 1, naming hosts not there yet)",
)
@connection_options
def config_set(
    cli: CliConfig, key: str, value: str, cluster: str | None, wait: bool, timeout: float
) -> None:
    """Set KEY to VALUE; every server applies it at once.

    With --wait, until every connected host holds a list of this config version or later (or
    one that is current): exit 0, or 1 at --timeout. An unchanged value waits too: hosts may
    lag from an earlier change."""

    async def work(redis: aioredis.Redis) -> None:
        change = await ConfigStore(redis, cli.keys).set(key, value, cluster)
        click.echo(_describe(change, f"= {change.value}"))
        if wait:
            await _wait_held(redis, cli, change.version, timeout)

    run_async(cli, work)


def progress_line(version: int, there: int, connected: int, rate: float, elapsed: float) -> str:
    """`config version 7: 812/1000 connected hosts hold it, 140/s, 3.2 s`."""
    return (
        f"config version {version}: {there}/{connected} connected hosts hold it, "
        f"{rate:.0f}/s, {elapsed:.1f} s"
    )


async def _wait_held(redis: aioredis.Redis, cli: CliConfig, version: int, timeout: float) -> None:
    """Look every WAIT_POLL seconds (msctl.convergence) until every connected host holds a list
    of `version` or later; Failed at the timeout, naming hosts not there yet."""
    started = time.monotonic()
    first: int | None = None  # hosts there at the first look: the rate counts from it
    with Progress() as progress:
        while True:
            looked = time.monotonic()
            snapshot = await ConfigStore(redis, cli.keys).snapshot()
            servers = await load_servers(redis, cli.keys)
            hosts = await load_hosts(redis, cli.keys)
            state = Convergence.of_version(version, snapshot, hosts, servers)
            elapsed = time.monotonic() - started
            first = state.there if first is None else first
            rate = max(0, state.there - first) / elapsed if elapsed > 0 else 0.0
            line = progress_line(version, state.there, state.connected, rate, elapsed)
            progress.update(line, state.there)
            if not state.behind:
                progress.done(
                    f"config version {version}: every connected host holds it "
                    f"({state.connected} hosts, {elapsed:.1f} s)"
                )
                return
            left = timeout - (time.monotonic() - started)
            if left <= 0:
                raise Failed(
                    f"config version {version}: {len(state.behind)} of {state.connected} "
                    f"connected hosts do not hold it after {timeout:g}s: {state.named()}"
                )
            await asyncio.sleep(min(left, max(0.0, WAIT_POLL - (time.monotonic() - looked))))


@config_group.command("unset")
@click.argument("key")
@cluster_option
@connection_options
def config_unset(cli: CliConfig, key: str, cluster: str | None) -> None:
    """Remove KEY's value (a cluster's override with --cluster), falling back to the default."""

    async def work(redis: aioredis.Redis) -> ConfigChange:
        return await ConfigStore(redis, cli.keys).unset(key, cluster)

    click.echo(_describe(run_async(cli, work), "unset"))


@config_group.command("get")
@click.argument("key")
@cluster_option
@click.option("--json", "as_json", is_flag=True, help="print a JSON object")
@connection_options
def config_get(cli: CliConfig, key: str, cluster: str | None, as_json: bool) -> None:
    """Print KEY's effective value (nothing when unset with no default)."""

    async def work(redis: aioredis.Redis) -> ConfigEntry:
        return await ConfigStore(redis, cli.keys).get(key, cluster)

    entry = run_async(cli, work)
    if as_json:
        click.echo(json.dumps(entry.as_json()))
    elif entry.value is not None:
        click.echo(printable(entry.value, limit=None))
    else:
        click.echo(f"{key} is not set", err=True)


@config_group.command("list")
@cluster_option
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
@connection_options
def config_list(cli: CliConfig, cluster: str | None, as_json: bool) -> None:
    """Every setting with its value, default and where the value comes from."""

    async def work(redis: aioredis.Redis) -> list[ConfigEntry]:
        return await ConfigStore(redis, cli.keys).entries(cluster)

    entries = run_async(cli, work)
    if as_json:
        click.echo(json.dumps([e.as_json() for e in entries], indent=2))
        return
    rows: list[tuple[str, ...]] = [("NAME", "VALUE", "DEFAULT", "SOURCE", "SCOPE")]
    for e in entries:
        rows.append((e.name, _show(e.value), _show(e.default), str(e.source), ",".join(e.scopes)))
    click.echo(format_table(rows, wide=(1, 2)))


def _show(value: str | None) -> str:
    return "-" if value is None else value
