"""`msrv serve` command line: bad usage exits 2 before anything starts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from msrv.cli import cli
from msrv.config import ServerSettings


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["--listen", "127.0.0.1"], "give HOST:PORT"),
        (["--listen", "127.0.0.1:99999"], "out of range"),
        (["--listen", "127.0.0.1:8250", "--namespace", "bad ns"], "namespace"),
        (["--listen", "127.0.0.1:8250", "--id", "two words"], "without spaces"),
    ],
)
def test_bad_usage_exits_2(args: list[str], reason: str) -> None:
    result = CliRunner().invoke(cli, ["serve", *args])
    assert result.exit_code == 2
    assert reason in result.output


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://:s3cret@h:26379,h:x/lab", "sentinel entry 2 'h:x': port 'x' is not"),
        ("redis+sentinel://:s3cret@h:26379", "no service name"),
        ("redis://:s3cret@h:x/0", "Port could not be cast to integer value as 'x'"),
        ("http://:s3cret@h/0", "(redis://, rediss://, unix://, redis+sentinel://)"),
    ],
)
def test_a_bad_redis_url_exits_2_in_one_line_without_its_password(url: str, reason: str) -> None:
    """Refused before the server starts, rather than by a traceback once it builds its client."""
    result = CliRunner().invoke(cli, ["serve", "--listen", "127.0.0.1:8250", "--redis-url", url])
    assert result.exit_code == 2
    assert result.output.splitlines()[-1].startswith("Error: redis url '")
    assert reason in result.output and "s3cret" not in result.output


def test_settings_defaults() -> None:
    settings = ServerSettings.build("127.0.0.1:8250")
    assert (settings.advertise, settings.server_id) == ("127.0.0.1:8250", "127.0.0.1:8250")
    named = ServerSettings.build("[::1]:9000", advertise="ms.example:9000", server_id="ms1")
    assert (named.listen_host, named.listen_port) == ("::1", 9000)
    assert (named.advertise, named.server_id) == ("ms.example:9000", "ms1")


def test_tls_san_takes_hosts_without_ports() -> None:
    settings = ServerSettings.build(
        "127.0.0.1:8250", tls_san=["127.0.0.10, lb.example", "[::1]", "lb.example"]
    )
    assert settings.tls_san == ("127.0.0.10", "lb.example", "::1")
    assert ServerSettings.build("127.0.0.1:8250").tls_san == ()
    result = CliRunner().invoke(
        cli, ["serve", "--listen", "127.0.0.1:8250", "--tls-san", "lb.example:8250"]
    )
    assert result.exit_code == 2
    assert "without a port" in result.output
