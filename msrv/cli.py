"""Entry point of `msrv`: parse, set up logging, run the server."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from common.errors import ValidationError
from common.keys import DEFAULT_NAMESPACE, DEFAULT_REDIS_URL
from common.logs import log_config
from msrv import server
from msrv.config import ServerSettings

F = TypeVar("F", bound=Callable[..., Any])


def seconds(name: str, help: str) -> Callable[[F], F]:
    """A tuning option in seconds (default 10)."""
    return click.option(
        name,
        type=click.FloatRange(0.1, 3600),
        default=10.0,
        show_default=True,
        metavar="SECONDS",
        help=help,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """The management server of indirect agent load balancing."""


@cli.command("serve")
@click.option(
    "--listen",
    default="0.0.0.0:8250",
    show_default=True,
    metavar="HOST:PORT",
    help="address and port agents connect to",
)
@click.option(
    "--advertise",
    default=None,
    metavar="ADDR",
    help="address of this server as listed in `host` (default: the listen address)",
)
@click.option(
    "--id",
    "server_id",
    envvar="MSRV_ID",
    default=None,
    metavar="NAME",
    help="this server's id in Redis and logs (default: the advertised address) [env MSRV_ID]",
)
@click.option(
    "--redis-url",
    envvar="MSRV_REDIS_URL",
    default=DEFAULT_REDIS_URL,
    show_default=True,
    help="Redis holding settings and registry [env MSRV_REDIS_URL]",
)
@click.option(
    "--namespace",
    envvar="MSRV_NAMESPACE",
    default=DEFAULT_NAMESPACE,
    show_default=True,
    help="prefix of every key and channel [env MSRV_NAMESPACE]",
)
@click.option(
    "--tls-san",
    "tls_san",
    envvar="MSRV_TLS_SAN",
    multiple=True,
    metavar="HOST[,HOST]",
    help="more hosts for this server's certificate than the advertised one, such as a TCP "
    "load balancer's address that passes TLS through to it (repeatable) [env MSRV_TLS_SAN]",
)
@click.option(
    "--metrics",
    envvar="MSRV_METRICS",
    default=None,
    metavar="HOST:PORT",
    help="serve Prometheus metrics at http://HOST:PORT/metrics (off when unset) [env MSRV_METRICS]",
)
@seconds("--startup-timeout", "close a connection that completes no startup within this time")
@seconds("--repush-interval", "push a list again when its agent has not acked it for this long")
@seconds("--last-seen-interval", "how often a connected host's last_seen is written")
@click.option("-v", "--verbose", count=True, help="more log output")
def serve(
    listen: str,
    advertise: str | None,
    server_id: str | None,
    redis_url: str,
    namespace: str,
    tls_san: tuple[str, ...],
    metrics: str | None,
    startup_timeout: float,
    repush_interval: float,
    last_seen_interval: float,
    verbose: int,
) -> None:
    """Serve agents: registry, per-agent lists, live propagation of settings."""
    try:
        settings = ServerSettings.build(
            listen, advertise, server_id, redis_url, namespace, tls_san=tls_san, metrics=metrics
        )
        settings = dataclasses.replace(
            settings,
            startup_timeout=startup_timeout,
            repush_interval=repush_interval,
            last_seen_interval=last_seen_interval,
        )
    except ValidationError as exc:
        raise click.UsageError(str(exc)) from None
    log_config(verbose)
    sys.exit(server.run(settings))


def main() -> None:
    cli(prog_name="msrv")
