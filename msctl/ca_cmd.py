"""`msctl ca show [--json]`: the namespace's CA, its fingerprint and expiry (common.ca)."""

from __future__ import annotations

import json

import click
import redis.asyncio as aioredis

from common.ca import CertificateAuthority, load_ca
from common.errors import Failed
from msctl.options import CliConfig, connection_options, run_async
from msctl.token_cmd import format_time

NO_CA = "no CA yet: it is created by the first `msrv serve` or `msctl token create`"


@click.group("ca")
def ca_group() -> None:
    """The certificate authority agents and servers trust."""


@ca_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="print a JSON object")
@connection_options
def ca_show(cli: CliConfig, as_json: bool) -> None:
    """Print the CA's fingerprint (sha256 of its DER certificate) and expiry; creates nothing."""

    async def work(redis: aioredis.Redis) -> CertificateAuthority | None:
        return await load_ca(redis, cli.keys)

    ca = run_async(cli, work)
    if ca is None:
        raise Failed(NO_CA)
    expires = int(ca.expires.timestamp())
    if as_json:
        click.echo(json.dumps({"fingerprint": ca.fingerprint, "expires": expires}, indent=2))
    else:
        click.echo(f"fingerprint  {ca.fingerprint}")
        click.echo(f"expires      {format_time(expires)}")
