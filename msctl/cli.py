"""Entry point of `msctl`."""

from __future__ import annotations

import click

from common.logs import log_config
from msctl.ca_cmd import ca_group
from msctl.config_cmd import config_group
from msctl.hosts_cmd import hosts_group
from msctl.lab_cmd import lab_group
from msctl.servers_cmd import servers_group
from msctl.status_cmd import status_command
from msctl.token_cmd import token_group


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="more log output")
def cli(verbose: int) -> None:
    """Administer indirect agent load balancing: settings, hosts, servers, join tokens, the CA,
    a local lab."""
    log_config(verbose, quiet=verbose == 0)


cli.add_command(config_group)
cli.add_command(lab_group)
cli.add_command(hosts_group)
cli.add_command(servers_group)
cli.add_command(status_command)
cli.add_command(token_group)
cli.add_command(ca_group)


def main() -> None:
    cli(prog_name="msctl")
