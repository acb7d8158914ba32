"""A Redis that requires a password: the lab's embedded one, and `msrv serve` against one, with
the password never in a log line or in a process's arguments (which `ps` shows every user)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from common.connection import redacted
from msctl.children import LoggedProcess, msrv_ready
from msctl.embedded_redis import RedisServer, start_embedded
from tests.support.msrv_process import MsrvProcess
from tests.support.redis_server import free_port, have_redis_server

pytestmark = pytest.mark.skipif(not have_redis_server(), reason="needs the redis-server binary")

# characters a URL must escape and redis.conf must quote, so both encodings are exercised;
# MARK, in it, is what a leaked password (as written, or URL-escaped) would show in a log
MARK = "Zq9x"
PASSWORD = f'{MARK}-"odd" #1 \\ %/@:ü'


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


@pytest.fixture
def protected(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", password=PASSWORD).start()
    try:
        yield server
    finally:
        server.kill()


def test_the_embedded_redis_refuses_a_client_without_its_password(tmp_path: Path) -> None:
    server = start_embedded(tmp_path / "redis")
    try:
        assert isinstance(server, RedisServer) and server.password and server.pid
        assert len(server.password) >= 32
        without = server.url.replace(f":{server.password}@", "")
        assert without == f"redis://127.0.0.1:{server.port}/0"
        with pytest.raises(redis.AuthenticationError, match="authenticated"):
            redis.Redis.from_url(without).ping()  # RESP3: refused at HELLO
        with pytest.raises(redis.AuthenticationError, match="Authentication required"):
            redis.Redis.from_url(without, protocol=2).ping()  # RESP2: NOAUTH at PING
        wrong = server.url.replace(server.password, "not-" + server.password)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis.from_url(wrong).ping()
        assert redis.Redis.from_url(server.url).ping()
        # given in a file only its owner can read, never on the command line
        assert stat.S_IMODE(server.config_file.stat().st_mode) == 0o600
        assert server.password in server.config_file.read_text()
        assert server.password not in cmdline(server.pid)
    finally:
        server.stop()


def test_a_password_that_urls_and_redis_conf_must_escape(protected: RedisServer) -> None:
    assert protected.url.startswith(f"redis://:{MARK}-%22odd%22%20%231%20%5C%20%25%2F%40%3A%C3%BC@")
    assert redis.Redis.from_url(protected.url).ping()
    client = redis.Redis(port=protected.port, password=PASSWORD)
    assert client.ping()
    assert redis.Redis.from_url(protected.url, username="default").ping()  # user:password


@pytest.mark.parametrize("via", ["--redis-url", "MSRV_REDIS_URL"])
def test_msrv_serves_on_a_redis_with_a_password_and_never_logs_it(
    protected: RedisServer, namespace: str, via: str
) -> None:
    """As an operator runs it (`--redis-url`), and as the lab and the tests do (the URL in the
    environment, off the command line); with a user name in the URL too."""
    url = protected.url.replace("redis://:", "redis://default:")

    async def scenario() -> list[str]:
        if via == "--redis-url":
            port = free_port()
            args = ["-m", "msrv", "serve", "--listen", f"127.0.0.1:{port}", "--id", "ms1"]
            args += ["--redis-url", url, "--namespace", namespace, "-v"]
            server: LoggedProcess = LoggedProcess("ms1", args)
            await server.start(ready=msrv_ready("ms1"))
        else:
            server = await MsrvProcess("ms1", url, namespace, verbose=True).start()
            assert "redis" not in cmdline(server.pid)  # nothing of the URL in its arguments
        await server.wait_for("in step with Redis")
        assert await server.stop() == 0
        return server.lines

    lines = asyncio.run(scenario())
    assert lines and not [line for line in lines if MARK in line]


def test_msrv_with_a_wrong_password_logs_neither(protected: RedisServer, namespace: str) -> None:
    wrong = protected.url.replace(MARK, f"wrong-{MARK}")

    async def scenario() -> list[str]:
        server = MsrvProcess("ms1", wrong, namespace, verbose=True)
        await server.start(ready="Redis unreachable")
        assert await server.stop(timeout=5) == 0
        return server.lines

    lines = asyncio.run(scenario())
    assert [line for line in lines if "WRONGPASS" in line or "invalid username" in line], lines
    assert not [line for line in lines if MARK in line]


def test_a_malformed_url_is_refused_naming_it_without_its_password() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSRV_")}
    url = f"redis://admin:s3cret@127.0.0.1:{free_port()}x/0"
    listen = f"127.0.0.1:{free_port()}"
    done = subprocess.run(
        [sys.executable, "-m", "msrv", "serve", "--listen", listen, "--redis-url", url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env=env,
    )
    assert done.returncode != 0
    assert redacted(url) in done.stderr, done.stderr
    assert "s3cret" not in done.stdout + done.stderr
