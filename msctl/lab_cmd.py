"""`msctl lab up|demo|kill|start`: the system on this machine, on an embedded Redis unless
given one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

import click

from common.connection import redacted, redis_from_url
from common.errors import Failed, Rejected
from common.keys import Keys
from msctl.children import ChildError
from msctl.embedded_redis import EmbeddedRedisError
from msctl.lab import STATE_FILE, Lab, read_state
from msctl.lab_demo import Demo, DemoFailedError
from msctl.lab_view import read_view
from msctl.options import DEFAULT_LAB_DIR, LAB_DIR_ENV
from msctl.tables import printable

CONTROL_TIMEOUT = 20.0


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
@click.option("--namespace", envvar="MSRV_NAMESPACE", default="lab", show_default=True)
@_dir_option
def lab_up(
    servers: int, agents: int, redis_url: str | None, namespace: str, directory: Path
) -> None:
    """Start Redis, SERVERS servers and AGENTS agents; show them live until Ctrl-C."""
    lab = Lab(directory.resolve(), servers, agents, redis_url, namespace)
    try:
        Keys(namespace)
    except ValueError as exc:
        raise Rejected(str(exc)) from None
    try:
        asyncio.run(_up(lab))
    except (ChildError, EmbeddedRedisError) as exc:
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
        click.echo("Ctrl-C stops everything.")
        async with asyncio.TaskGroup() as tasks:
            control = tasks.create_task(_serve_control(lab))
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
            with contextlib.suppress(OSError, ConnectionError):
                text = (await read_view(client, lab.keys)).render()
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


async def _serve_control(lab: Lab) -> None:
    """Carry out `msctl lab kill|start SERVER` sent from another terminal."""
    client = lab.redis()
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(lab.keys.lab_control)
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            try:
                request = json.loads(message["data"])
                action, server = request["action"], request["server"]
                if action == "kill":
                    await lab.kill_server(server, signal.SIGKILL)
                elif action == "start":
                    await lab.start_server(server)
                click.echo(f"lab: {action} {server}: done")
            except (ValueError, KeyError, TypeError, ChildError) as exc:
                click.echo(f"lab: bad control request {message['data']!r}: {exc}", err=True)
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await client.aclose()


# ---- lab kill / start ---------------------------------------------------------------------------


def _control(directory: Path, action: str, server: str) -> None:
    try:
        state = read_state(directory)
    except FileNotFoundError as exc:
        raise Failed(str(exc)) from None
    ids = {s["id"]: s for s in state["servers"]} | {s["listen"]: s for s in state["servers"]}
    if server not in ids:
        names = ", ".join(s["id"] for s in state["servers"])
        raise Rejected(f"no server {server!r} in the lab (servers: {names})")
    server_id = ids[server]["id"]
    keys = Keys(state["namespace"])

    async def ask() -> None:
        client = redis_from_url(state["redis_url"])
        try:
            request = json.dumps({"action": action, "server": server_id})
            if not await client.publish(keys.lab_control, request):
                raise Failed("no `msctl lab up` is listening for this lab")
        finally:
            await client.aclose()
        deadline = time.monotonic() + CONTROL_TIMEOUT
        while time.monotonic() < deadline:
            entry = {s["id"]: s for s in read_state(directory)["servers"]}[server_id]
            if (entry["pid"] is None) == (action == "kill"):
                return
            await asyncio.sleep(0.1)
        raise Failed(f"{action} {server_id}: the lab did not do it within {CONTROL_TIMEOUT:g}s")

    asyncio.run(ask())
    click.echo(f"{server_id} {'killed' if action == 'kill' else 'started'}")


@lab_group.command("kill")
@click.argument("server")
@_dir_option
def lab_kill(server: str, directory: Path) -> None:
    """Kill SERVER (id like ms1, or its address) with SIGKILL, as a crash would."""
    _control(directory, "kill", server)


@lab_group.command("start")
@click.argument("server")
@_dir_option
def lab_start(server: str, directory: Path) -> None:
    """Start SERVER again."""
    _control(directory, "start", server)


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
