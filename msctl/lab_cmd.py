"""`msctl lab up|demo|kill|start`: the system on this machine, on an embedded Redis unless
given one (with `--redis-ha`, a master, two replicas and three sentinels: msctl.redis_ha).
`msctl lab kill|start` talk to a running lab through msctl.lab_control."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from pathlib import Path

import click
from redis.exceptions import RedisError

from common.connection import redacted
from common.errors import Failed, Rejected
from common.keys import Keys
from msctl import lab_control
from msctl.children import ChildError
from msctl.embedded_redis import EmbeddedRedisError, have_redis_server
from msctl.lab import STATE_FILE, Lab
from msctl.lab_demo import Demo, DemoFailedError
from msctl.lab_view import read_view
from msctl.options import DEFAULT_LAB_DIR, LAB_DIR_ENV
from msctl.redis_ha import RedisHaError
from msctl.tables import printable


@click.group("lab")
def lab_group() -> None:
    """Run the whole system on this machine."""


def _redis_option(func: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--redis-url",
        envvar="MSRV_REDIS_URL",
        default=None,
        help="use this Redis (default: start an embedded one)",
    )(func)


_dir_option = click.option(
    "--dir",
    "directory",
    envvar=LAB_DIR_ENV,
    default=DEFAULT_LAB_DIR,
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help=f"the lab's folder (holds lab.json) [env {LAB_DIR_ENV}]",
)


# ---- lab up -------------------------------------------------------------------------------------


@lab_group.command("up")
@click.option("--servers", default=3, show_default=True, type=click.IntRange(1, 9))
@click.option("--agents", default=3, show_default=True, type=click.IntRange(0, 20_000))
@_redis_option
@click.option(
    "--redis-ha",
    is_flag=True,
    help="embed a master, 2 replicas and 3 sentinels (redis-server); `lab kill redis` kills the"
    " master",
)
@click.option("--namespace", envvar="MSRV_NAMESPACE", default="lab", show_default=True)
@_dir_option
@click.pass_context
def lab_up(
    ctx: click.Context,
    servers: int,
    agents: int,
    redis_url: str | None,
    redis_ha: bool,
    namespace: str,
    directory: Path,
) -> None:
    """Start Redis, SERVERS servers and AGENTS agents; show them live until Ctrl-C."""
    if redis_ha:
        if ctx.get_parameter_source("redis_url") == click.core.ParameterSource.COMMANDLINE:
            raise Rejected("--redis-ha starts the lab's own Redis: give it or --redis-url")
        if not have_redis_server():
            raise Rejected("--redis-ha needs redis-server (it also runs the sentinels): install it")
        redis_url = None  # an MSRV_REDIS_URL in the environment gives way to the flag
    lab = Lab(directory.resolve(), servers, agents, redis_url, namespace, redis_ha=redis_ha)
    try:
        Keys(namespace)
    except ValueError as exc:
        raise Rejected(str(exc)) from None
    try:
        asyncio.run(_up(lab))
    except (ChildError, EmbeddedRedisError, RedisHaError) as exc:
        raise Failed(str(exc)) from None


async def _up(lab: Lab) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await lab.start()
        where = lab.embedded.kind if lab.embedded is not None else "given"
        click.echo(f"lab up: Redis ({where}) at {redacted(lab.url)}, namespace {lab.namespace}")
        click.echo(f"servers: {', '.join(f'{m.server_id}={m.listen}' for m in lab.members)}")
        click.echo(f"metrics: {' '.join(m.metrics_url for m in lab.members)}")
        here = lab.directory == Path.cwd() / DEFAULT_LAB_DIR
        click.echo(
            f"state (and the Redis password) in {lab.directory / STATE_FILE}, mode 0600;"
            " in another terminal, from here:"
        )
        if not here:
            click.echo(f"  export {LAB_DIR_ENV}={lab.directory}")
        click.echo("  msctl hosts · msctl servers · msctl lab kill ms1 · msctl lab start ms1")
        if lab.ha is not None:
            click.echo("  msctl lab kill redis (its master) · msctl lab start redis")
        click.echo("Ctrl-C stops everything.")
        async with asyncio.TaskGroup() as tasks:
            control = tasks.create_task(lab_control.serve(lab))
            view = tasks.create_task(_show(lab, stop))
            await stop.wait()
            control.cancel()
            view.cancel()
    finally:
        click.echo("lab: stopping agents, servers and Redis")
        await lab.stop()
        click.echo("lab: stopped")


async def _show(lab: Lab, stop: asyncio.Event) -> None:
    """Redraw every second on a terminal; elsewhere print the view when it changes."""
    tty = sys.stdout.isatty()
    last = ""
    client = lab.redis()
    try:
        while not stop.is_set():
            with contextlib.suppress(OSError, RedisError):  # Redis away: the next frame will do
                text = (await read_view(client, lab.keys, lab.ha)).render()
                if tty:
                    click.clear()
                    click.echo(f"{time.strftime('%H:%M:%S')}  (Ctrl-C stops the lab)\n{text}")
                elif text != last:
                    click.echo(text)
                last = text
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await stop.wait()
    finally:
        await client.aclose()


# ---- lab kill / start ---------------------------------------------------------------------------


@lab_group.command("kill")
@click.argument("server")
@_dir_option
def lab_kill(server: str, directory: Path) -> None:
    """Kill SERVER (id like ms1, or its address) with SIGKILL, as a crash would; `redis`: the
    master of a lab started with --redis-ha (the sentinels promote a replica)."""
    lab_control.request(directory, "kill", server)


@lab_group.command("start")
@click.argument("server")
@_dir_option
def lab_start(server: str, directory: Path) -> None:
    """Start SERVER again; `redis`: the killed Redis, as a replica of the new master."""
    lab_control.request(directory, "start", server)


# ---- lab demo -----------------------------------------------------------------------------------


@lab_group.command("demo")
@_redis_option
@click.option("--namespace", envvar="MSRV_NAMESPACE", default="labdemo", show_default=True)
def lab_demo(redis_url: str | None, namespace: str) -> None:
    """The feature's example, step by step, checked; exits non-zero naming a failed step."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="msctl-demo-") as workdir:
        lab = Lab(Path(workdir), servers=3, agents=3, redis_url=redis_url,
                  namespace=namespace, port=0)  # fmt: skip
        try:
            asyncio.run(_demo(lab))
        except DemoFailedError as exc:
            raise Failed(f"demo failed at {exc}") from None
        except (ChildError, EmbeddedRedisError) as exc:
            raise Failed(f"demo failed: {exc}") from None
    click.echo(f"demo finished in {time.monotonic() - started:.1f}s: every step checked")


async def _demo(lab: Lab) -> None:
    demo = Demo(lab)
    try:
        await lab.start()
        if lab.embedded is not None:
            click.echo(f"embedded Redis ({lab.embedded.kind}) at {redacted(lab.url)}")
        else:
            click.echo(f"Redis at {redacted(lab.url)}, namespace {lab.namespace}")
        await demo.run()
    except TimeoutError:
        _show_logs(lab)
        raise DemoFailedError(demo.step, "a child did not stop in time") from None
    except (DemoFailedError, ChildError):
        _show_logs(lab)
        raise
    finally:
        await lab.stop()


def _show_logs(lab: Lab, lines: int = 15) -> None:
    """The last log lines of every child, on stderr, so that a failed demo says why."""
    children = [(m.server_id, m.child) for m in lab.members]
    if lab.swarm is not None:
        children.append(("agents", lab.swarm))
    for name, child in children:
        if child.lines:
            click.echo(f"--- last lines of {name} ---", err=True)
            for line in child.lines[-lines:]:
                click.echo(printable(line, limit=None), err=True)
