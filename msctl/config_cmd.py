"""`msctl config set|get|list|unset`: the global settings, live, with no restart anywhere."""

from __future__ import annotations

import json

import click
import redis.asyncio as aioredis

from common.configstore import ConfigChange, ConfigEntry, ConfigStore
from msctl.options import CliConfig, connection_options, run_async
from msctl.tables import format_table, printable

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
@connection_options
def config_set(cli: CliConfig, key: str, value: str, cluster: str | None) -> None:
    """Set KEY to VALUE; every server applies it at once."""

    async def work(redis: aioredis.Redis) -> ConfigChange:
        return await ConfigStore(redis, cli.keys).set(key, value, cluster)

    change = run_async(cli, work)
    click.echo(_describe(change, f"= {change.value}"))


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
