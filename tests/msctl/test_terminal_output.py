"""What msctl prints for a human from Redis data is safe for a terminal: no control bytes, no
megabytes, whatever junk agents left in Redis; `--json` stays lossless."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner, Result

from common.keys import Keys
from common.records import HostRecord, HostState, ServerRecord, ServerState
from msctl.cli import cli
from msctl.lab import Lab
from msctl.lab_view import read_view

HOSTS = 20
ROW_BYTES = 2000  # the most a host's row (or a line of `status`) may take
JUNK_NAME = "evil\x1b[2J\x1b]0;owned\x07\x00name\x7f\x9b"
JUNK_ZONE = "zone\x1b[31m\x00\x07"
HUGE_GUID = "g" * 10_000
BAD_UTF8 = b"bad\xff\xfe\x1bname"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as conn:  # bytes in, bytes out
        yield conn


@pytest.fixture
def junk(client: redis.Redis, namespace: str) -> list[HostRecord]:
    """HOSTS hosts whose agents sent control characters and a 10 KB guid; a running server
    and a down one whose id has an ESC."""
    keys = Keys(namespace)
    now = time.time()
    servers = [
        ServerRecord("ms1", "10.0.0.1:8250\x1b[5m", ServerState.RUNNING, HOSTS, now, now),
        ServerRecord("ms\x1b[2J\x072", "x" * 5000, ServerState.RUNNING, 0, now, now),
    ]
    for server in servers:
        client.sadd(keys.servers, server.id)
        client.hset(keys.server(server.id), mapping=server.to_hash())  # type: ignore[arg-type]
    client.set(keys.server_alive("ms1"), "1", ex=60)
    hosts = []
    for host_id in range(1, HOSTS + 1):
        host = HostRecord(
            host_id,
            f"{HUGE_GUID}{host_id}",
            f"{JUNK_NAME}{host_id}" * (1 if host_id % 2 else 200),
            "routing",
            JUNK_ZONE,
            "c\x1b1",
            HostState.CONNECTED,
            "ms1",
            "tok",
            ("10.0.0.1:8250", "\x1b[8m"),
            "static\x07",
            1,
            0,
            now,
        )
        hosts.append(host)
        client.hset(keys.host(host_id), mapping=host.to_hash())  # type: ignore[arg-type]
        client.hset(keys.host_ids_by_guid, host.guid, host_id)
    return hosts


@pytest.fixture
def not_utf8(junk: list[HostRecord], client: redis.Redis, namespace: str) -> None:
    """The last host's name is bytes that are not UTF-8."""
    client.hset(Keys(namespace).host(HOSTS), "name", BAD_UTF8)


def msctl(redis_url: str, namespace: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--redis-url", redis_url, "--namespace", namespace])


def assert_terminal_safe(text: str, lines: int) -> None:
    controls = {c for c in text if c != "\n" and not c.isprintable()}
    assert not controls
    data = text.encode()  # would raise on a lone surrogate
    assert not [b for b in data if (b < 0x20 and b != 0x0A) or b == 0x7F]
    assert len(data) < ROW_BYTES * lines


def test_hosts_table_escapes_and_cuts_junk(
    junk: list[HostRecord], redis_url: str, namespace: str
) -> None:
    result = msctl(redis_url, namespace, "hosts")
    assert result.exit_code == 0, result.output
    assert_terminal_safe(result.output, HOSTS + 1)
    lines = result.output.splitlines()
    assert len(lines) == HOSTS + 1
    assert "evil\\x1b[2J\\x1b]0;owned\\x07\\x00name\\x7f\\x9b1" in lines[1]
    assert "zone\\x1b[31m\\x00\\x07" in lines[1]
    assert "10.0.0.1:8250,\\x1b[8m@static\\x07" in lines[1]
    assert "..." in lines[2]  # the 200-fold name is cut


def test_hosts_json_stays_lossless(junk: list[HostRecord], redis_url: str, namespace: str) -> None:
    result = msctl(redis_url, namespace, "hosts", "--json")
    assert result.exit_code == 0, result.output
    assert result.output.isascii()
    hosts = json.loads(result.output)
    assert [h["guid"] for h in hosts] == [h.guid for h in junk]
    assert [h["name"] for h in hosts] == [h.name for h in junk]
    assert hosts[0]["zone"] == JUNK_ZONE


def test_bytes_that_are_not_utf8_are_shown_escaped(
    not_utf8: None, redis_url: str, namespace: str
) -> None:
    table = msctl(redis_url, namespace, "hosts")
    assert table.exit_code == 0, table.output
    assert_terminal_safe(table.output, HOSTS + 1)
    assert "bad\\udcff\\udcfe\\x1bname" in table.output.splitlines()[HOSTS]
    listed = msctl(redis_url, namespace, "hosts", "--json")
    assert listed.exit_code == 0, listed.output
    assert listed.output.isascii()
    name = json.loads(listed.output)[-1]["name"]
    assert name.encode("utf-8", "surrogateescape") == BAD_UTF8  # lossless
    assert msctl(redis_url, namespace, "status").exit_code == 0


def test_status_servers_and_lab_view_escape_junk(
    not_utf8: None, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    for args in (("status",), ("servers",)):
        result = msctl(redis_url, namespace, *args)
        assert result.exit_code == 0, result.output
        assert_terminal_safe(result.output, 12)
        assert "ms\\x1b[2J\\x072" in result.output
    assert "10.0.0.1:8250\\x1b[5m" in msctl(redis_url, namespace, "servers").output

    async def view() -> str:
        client = Lab(tmp_path, redis_url=redis_url, namespace=namespace).redis()
        try:
            return (await read_view(client, Keys(namespace))).render()
        finally:
            await client.aclose()

    text = asyncio.run(view())
    assert_terminal_safe(text, 4)
    assert "ms\\x1b[2J\\x072" in text


def test_hosts_remove_escapes_the_name(
    junk: list[HostRecord], redis_url: str, namespace: str
) -> None:
    busy = msctl(redis_url, namespace, "hosts", "remove", "1")
    assert busy.exit_code == 2
    assert_terminal_safe(busy.output, 1)
    keys = Keys(namespace)
    with redis.Redis.from_url(redis_url) as conn:
        conn.hset(keys.host(1), "state", "disconnected")
    removed = msctl(redis_url, namespace, "hosts", "remove", "1")
    assert removed.exit_code == 0, removed.output
    assert_terminal_safe(removed.output, 1)
    assert "evil\\x1b[2J" in removed.output
