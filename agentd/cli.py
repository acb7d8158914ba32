"""Entry point of `agentd`: `agentd run` and `agentd swarm`."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click

from agentd.agent import Agent
from agentd.config import AgentSettings
from agentd.failover import EveryServerRefusedError
from agentd.swarm import QUIET_ABOVE, Swarm, SwarmSpec, load_agents, raise_open_file_limit
from common.errors import PropertiesError, Rejected, ValidationError
from common.hostlist import format_host_value, parse_host_value
from common.logs import log_config
from common.tokens import parse_token

logger = logging.getLogger(__name__)


def _serve(main: Coroutine[Any, Any, None]) -> None:
    """Run an agent's (or a swarm's) main; servers that all refused it for good exit 2."""
    try:
        asyncio.run(main)
    except EveryServerRefusedError as exc:
        raise Rejected(str(exc)) from None


def _on_signals(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="more log output")
def cli(verbose: int) -> None:
    """The agent daemon: keeps a session to a management server of its list."""
    log_config(verbose)


@cli.command("run")
@click.option(
    "--properties",
    "path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="the agent.properties file",
)
def run_command(path: Path) -> None:
    """Run one agent until SIGTERM or SIGINT."""
    try:
        settings = AgentSettings.from_properties(path)
        agent = Agent(settings)
        agent.trust.state()  # a broken keystore, or neither a certificate nor a token: exit 2
    except PropertiesError as exc:
        raise Rejected(str(exc)) from None
    logger.info(
        "%s: starting (guid %s, host=%s)",
        agent.label,
        settings.guid,
        format_host_value(settings.host_list),
    )

    async def main() -> None:
        _on_signals(agent.stop)
        await agent.run()

    _serve(main())


@cli.command("swarm")
@click.option("--count", required=True, type=click.IntRange(1, 100_000), help="how many agents")
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="holds agent-NNNN/agent.properties",
)
@click.option("--host", default=None, metavar="LIST[@ALGO]", help="host= of new properties files")
@click.option("--zone", default="default", show_default=True)
@click.option("--cluster", default="", help="cluster of new properties files")
@click.option("--type", "host_type", default="routing", show_default=True)
@click.option("--check-interval", type=click.IntRange(0), default=None, help="agents' own override")
@click.option(
    "--property",
    "extra",
    multiple=True,
    metavar="KEY=VALUE",
    help="another key for new properties files (repeatable), e.g. failover.backoff.max=2",
)
@click.option(
    "--token",
    default=None,
    envvar="AGENTD_TOKEN",
    help="join token for agents not enrolled yet (one token with uses for all) [env AGENTD_TOKEN]",
)
def swarm_command(
    count: int,
    directory: Path,
    host: str | None,
    zone: str,
    cluster: str,
    host_type: str,
    check_interval: int | None,
    extra: tuple[str, ...],
    token: str | None,
) -> None:
    """Run COUNT agents in this process until SIGTERM or SIGINT."""
    pairs = []
    for item in extra:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise Rejected(f"--property {item!r}: expected KEY=VALUE")
        pairs.append((key.strip(), value.strip()))
    if host is not None:
        try:
            parse_host_value(host)
        except ValidationError as exc:
            raise Rejected(f"--host: {exc}") from None
    if token is not None:
        try:
            parse_token(token)
        except ValidationError as exc:
            raise Rejected(f"--token: {exc}") from None
    limit = raise_open_file_limit(count * 3 + 256)
    spec = SwarmSpec(
        count, directory, host, zone, cluster, host_type, check_interval, tuple(pairs), token
    )
    try:
        agents = load_agents(spec)
    except PropertiesError as exc:
        raise Rejected(str(exc)) from None
    logger.info("swarm: %d agents from %s (open-file limit %d)", count, directory, limit)
    if count > QUIET_ABOVE:
        # one line per agent event would drown the swarm's own summary
        logging.getLogger("agentd.agent").setLevel(logging.WARNING)
        logging.getLogger("agentd.failover").setLevel(logging.ERROR)

    async def main() -> None:
        swarm = Swarm(agents)
        _on_signals(swarm.stop)
        await swarm.run()

    _serve(main())


def main() -> None:
    cli(prog_name="agentd")
