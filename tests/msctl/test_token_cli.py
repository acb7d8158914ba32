"""`msctl token create|list|revoke` and `msctl ca show` against a real Redis."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time

import pytest
from click.testing import CliRunner, Result

from common.connection import redis_from_url
from common.keys import Keys
from common.tokens import TokenCheck, consume_token, parse_token
from msctl.cli import cli
from msctl.token_cmd import parse_ttl


def msctl(redis_url: str, namespace: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--redis-url", redis_url, "--namespace", namespace])


def consume(redis_url: str, namespace: str, token_id: str, secret: str) -> TokenCheck:
    async def main() -> TokenCheck:
        redis = redis_from_url(redis_url)
        try:
            return await consume_token(redis, Keys(namespace), token_id, secret)
        finally:
            await redis.aclose()

    return asyncio.run(main())


def test_ca_show_creates_nothing_before_a_token(redis_url: str, namespace: str) -> None:
    result = msctl(redis_url, namespace, "ca", "show")
    assert result.exit_code == 1
    assert result.output == (
        "Error: no CA yet: it is created by the first `msrv serve` or `msctl token create`\n"
    )
    assert msctl(redis_url, namespace, "ca", "show", "--json").exit_code == 1
    assert msctl(redis_url, namespace, "ca", "show").exit_code == 1  # still none


def test_create_prints_a_token_for_the_ca_that_ca_show_names(
    redis_url: str, namespace: str
) -> None:
    created = msctl(redis_url, namespace, "token", "create")
    assert created.exit_code == 0, created.output
    token = parse_token(created.output)
    assert created.output == token.as_text() + "\n"
    shown = msctl(redis_url, namespace, "ca", "show")
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines()[0].split() == ["fingerprint", token.ca_fingerprint]
    assert shown.output.splitlines()[1].startswith("expires ")
    body = json.loads(msctl(redis_url, namespace, "ca", "show", "--json").output)
    assert body["fingerprint"] == token.ca_fingerprint
    assert body["expires"] > time.time() + 9 * 365 * 86400
    again = parse_token(msctl(redis_url, namespace, "token", "create").output)
    assert again.ca_fingerprint == token.ca_fingerprint and again.id != token.id


def test_create_json_and_list_never_show_the_secret(redis_url: str, namespace: str) -> None:
    created = msctl(redis_url, namespace, "token", "create", "--ttl", "7d", "--uses", "3", "--json")
    assert created.exit_code == 0, created.output
    body = json.loads(created.output)
    assert set(body) == {"token", "id", "expires", "uses"}
    token = parse_token(body["token"])
    assert (body["id"], body["uses"]) == (token.id, 3)
    assert abs(body["expires"] - (time.time() + 7 * 86400)) < 10
    assert consume(redis_url, namespace, token.id, token.secret) == TokenCheck.OK

    table = msctl(redis_url, namespace, "token", "list")
    listed = msctl(redis_url, namespace, "token", "list", "--json")
    assert table.exit_code == 0 and listed.exit_code == 0
    lines = table.output.splitlines()
    assert lines[0].split() == ["ID", "EXPIRES", "USES", "LEFT", "STATE"]
    assert lines[1].split()[0] == token.id and lines[1].split()[-2:] == ["2", "valid"]
    [entry] = json.loads(listed.output)
    assert entry | {"created": 0} == {
        "id": token.id, "expires": body["expires"], "uses_left": 2, "state": "valid", "created": 0,
    }  # fmt: skip
    digest = hashlib.sha256(token.secret.encode()).hexdigest()
    for output in (table.output, listed.output):
        assert token.secret not in output and digest not in output


def test_revoke_makes_consume_say_revoked(redis_url: str, namespace: str) -> None:
    token = parse_token(msctl(redis_url, namespace, "token", "create").output)
    revoked = msctl(redis_url, namespace, "token", "revoke", token.id)
    assert revoked.exit_code == 0, revoked.output
    assert revoked.output == f"join token {token.id} revoked\n"
    assert consume(redis_url, namespace, token.id, token.secret) == TokenCheck.REVOKED
    table = msctl(redis_url, namespace, "token", "list").output.splitlines()
    assert table[1].split()[-2:] == ["1", "revoked"]


def test_a_used_up_token_is_listed_as_such(redis_url: str, namespace: str) -> None:
    token = parse_token(msctl(redis_url, namespace, "token", "create").output)
    assert consume(redis_url, namespace, token.id, token.secret) == TokenCheck.OK
    table = msctl(redis_url, namespace, "token", "list").output.splitlines()
    assert table[1].split()[-3:] == ["0", "used", "up"]


def test_list_and_revoke_with_no_tokens(redis_url: str, namespace: str) -> None:
    assert msctl(redis_url, namespace, "token", "list").output == "no join tokens\n"
    assert msctl(redis_url, namespace, "token", "list", "--json").output == "[]\n"
    result = msctl(redis_url, namespace, "token", "revoke", "0123abcd")
    assert result.exit_code == 2
    assert result.output == "Error: no join token '0123abcd' (never created, or expired)\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--ttl", "0"), "Error: --ttl '0': give a duration of 1s to 365d"),
        (("--ttl", "-1h"), "Error: --ttl '-1h': give a duration"),
        (("--ttl", "1.5h"), "Error: --ttl '1.5h': give a duration"),
        (("--ttl", "24x"), "Error: --ttl '24x': give a duration"),
        (("--ttl", "h"), "Error: --ttl 'h': give a duration"),
        (("--ttl", "366d"), "Error: --ttl '366d': give a duration"),
        (("--ttl", "9" * 40), f"Error: --ttl '{'9' * 21}...': give a duration"),
        (("--ttl", "1\x1b[2J"), "Error: --ttl '1\\x1b[2J': give a duration"),
        (("--uses", "0"), "Error: --uses '0': give a whole number of 1 or more"),
        (("--uses", "-2"), "Error: --uses '-2': give a whole number"),
        (("--uses", "two"), "Error: --uses 'two': give a whole number"),
        (("--uses", "1.0"), "Error: --uses '1.0': give a whole number"),
    ],
)
def test_a_bad_ttl_or_uses_exits_2_with_one_line_and_creates_nothing(
    redis_url: str, namespace: str, args: tuple[str, ...], message: str
) -> None:
    result = msctl(redis_url, namespace, "token", "create", *args)
    assert result.exit_code == 2
    assert result.output.startswith(message) and result.output.count("\n") == 1
    assert msctl(redis_url, namespace, "ca", "show").exit_code == 1  # no CA made either


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30m", 1800),
        ("24h", 86400),
        ("7d", 604800),
        ("90s", 90),
        ("3600", 3600),
        ("365d", 31536000),
    ],
)
def test_ttl_suffixes(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


def test_verbose_logs_name_the_token_never_its_secret(redis_url: str, namespace: str) -> None:
    runner = CliRunner()
    base = ["--redis-url", redis_url, "--namespace", namespace]
    created = runner.invoke(cli, ["-vv", "token", "create", "--json", *base])
    assert created.exit_code == 0, created.output
    token = parse_token(json.loads(created.stdout)["token"])
    revoked = runner.invoke(cli, ["-vv", "token", "revoke", token.id, *base])
    listed = runner.invoke(cli, ["-vv", "token", "list", *base])
    assert f"join token {token.id} created" in created.stderr
    assert f"join token {token.id} revoked" in revoked.stderr
    digest = hashlib.sha256(token.secret.encode()).hexdigest()
    for text in (created.stderr, revoked.output, listed.output):
        assert token.secret not in text and digest not in text
