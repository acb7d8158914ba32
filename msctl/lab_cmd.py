"""`msctl lab`: the system on this machine, on an embedded Redis unless given one."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click
import redis.asyncio as aioredis

from common import algorithms
from common.configstore import ConfigStore
from common.errors import ValidationError
from common.keys import Keys
from msctl.embedded_redis import start_embedded
from msctl.options import CliConfig, Failed, run_async
from msctl.tables import format_table


@click.group("lab")
def lab_group() -> None:
    """Run the feature on this machine."""


def _step(text: str) -> None:
    click.echo(click.style(f"==> {text}", bold=True))


async def _walkthrough(redis: aioredis.Redis, keys: Keys) -> None:
    store = ConfigStore(redis, keys)
    _step("msctl config set host 'ms-a, ms-b:8251, [2001:db8::1]'")
    change = await store.set("host", "ms-a, ms-b:8251, [2001:db8::1]")
    click.echo(f"    stored {change.value!r} as config version {change.version}")
    _step("msctl config set host 'ms-a,,ms-b'  (refused, nothing changes)")
    try:
        await store.set("host", "ms-a,,ms-b")
        raise Failed("an empty entry was accepted")
    except ValidationError as exc:
        click.echo(f"    refused: {exc}")
    if await store.version() != change.version:
        raise Failed("a refused value changed the config version")
    for name in ("static", "roundrobin", "shuffle"):
        _step(f"msctl config set indirect.agent.lb.algorithm {name}")
        await store.set("indirect.agent.lb.algorithm", name)
        snapshot = await store.snapshot()
        ms_list = list(snapshot.effective().host or ())
        host_ids = [1, 2, 3]
        rows = [("HOST ID", "ITS LIST")]
        for host_id in host_ids:
            order = algorithms.get(name).sort(ms_list, host_ids, host_id)
            rows.append((str(host_id), f"{','.join(order)}@{name}"))
        click.echo("    " + format_table(rows).replace("\n", "\n    "))
    _step("msctl config list")
    table = [("NAME", "VALUE", "SOURCE")]
    table += [(e.name, e.value or "-", str(e.source)) for e in await store.entries()]
    click.echo("    " + format_table(table).replace("\n", "\n    "))


@lab_group.command("demo")
@click.option("--redis-url", envvar="MSRV_REDIS_URL", default=None, help="use this Redis")
@click.option("--namespace", envvar="MSRV_NAMESPACE", default="labdemo", show_default=True)
def lab_demo(redis_url: str | None, namespace: str) -> None:
    """The feature's example, step by step, on an embedded Redis unless --redis-url is given."""
    with tempfile.TemporaryDirectory(prefix="msctl-lab-") as workdir:
        server = None
        if redis_url is None:
            server = start_embedded(Path(workdir))
            redis_url = server.url
            click.echo(f"embedded Redis ({server.kind}) at {redis_url}")
        try:
            cli = CliConfig(redis_url, Keys(namespace).namespace)
            run_async(cli, lambda redis: _walkthrough(redis, cli.keys))
        finally:
            if server is not None:
                server.stop()
    click.echo("demo finished: every step checked")
