"""`msctl token create|list|revoke`: the join tokens agents enroll with (common.tokens)."""

from __future__ import annotations

import datetime
import json
import re

import click
import redis.asyncio as aioredis

from common.errors import Rejected
from common.tokens import MAX_TTL_SECONDS, TokenInfo, create_token, list_tokens, revoke_token
from msctl.options import CliConfig, connection_options, run_async
from msctl.tables import format_table, printable

_DURATION = re.compile(r"(\d{1,12})([smhd]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """`30m`, `24h`, `7d`, `90s` or a bare number of seconds; 1s to 365d. Raises Rejected."""
    match = _DURATION.fullmatch(text.strip())
    seconds = int(match[1]) * _UNITS[match[2]] if match else 0
    if not 1 <= seconds <= MAX_TTL_SECONDS:
        raise Rejected(
            f"--ttl '{printable(text, 24)}': give a duration of 1s to {MAX_TTL_SECONDS // 86400}d "
            "(e.g. 30m, 24h, 7d, or seconds)"
        )
    return seconds


def parse_uses(text: str) -> int:
    if not re.fullmatch(r"\d{1,9}", text.strip()) or int(text) < 1:
        raise Rejected(f"--uses '{printable(text, 24)}': give a whole number of 1 or more")
    return int(text)


def format_time(timestamp: float) -> str:
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@click.group("token")
def token_group() -> None:
    """Join tokens: what an agent without a certificate enrolls with."""


@token_group.command("create")
@click.option("--ttl", default="24h", show_default=True, help="valid for: 30m, 24h, 7d, seconds")
@click.option("--uses", default="1", show_default=True, help="how many agents may enroll with it")
@click.option("--json", "as_json", is_flag=True, help="print a JSON object")
@connection_options
def token_create(cli: CliConfig, ttl: str, uses: str, as_json: bool) -> None:
    """Create a join token (and the CA, on first need) and print it: shown this once only."""
    ttl_seconds, max_uses = parse_ttl(ttl), parse_uses(uses)

    async def work(redis: aioredis.Redis) -> tuple[str, TokenInfo]:
        return await create_token(redis, cli.keys, ttl_seconds=ttl_seconds, uses=max_uses)

    token, info = run_async(cli, work)
    if as_json:
        body = {"token": token, "id": info.id, "expires": info.expires, "uses": info.uses_left}
        click.echo(json.dumps(body, indent=2))
    else:
        click.echo(token)


@token_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list")
@connection_options
def token_list(cli: CliConfig, as_json: bool) -> None:
    """List the join tokens that have not expired (never their secrets)."""

    async def work(redis: aioredis.Redis) -> list[TokenInfo]:
        return await list_tokens(redis, cli.keys)

    tokens = run_async(cli, work)
    if as_json:
        click.echo(json.dumps([t.as_json() for t in tokens], indent=2))
    elif not tokens:
        click.echo("no join tokens")
    else:
        rows: list[tuple[str, ...]] = [("ID", "EXPIRES", "USES LEFT", "STATE")]
        rows += [(t.id, format_time(t.expires), str(t.uses_left), t.state) for t in tokens]
        click.echo(format_table(rows))


@token_group.command("revoke")
@click.argument("token_id", metavar="ID")
@connection_options
def token_revoke(cli: CliConfig, token_id: str) -> None:
    """Revoke join token ID: no agent enrolls with it from now on."""

    async def work(redis: aioredis.Redis) -> None:
        await revoke_token(redis, cli.keys, token_id)

    run_async(cli, work)
    click.echo(f"join token {token_id} revoked")
