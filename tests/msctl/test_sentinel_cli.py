"""msctl over a redis+sentinel:// URL, against real sentinels that require a password of their
own in front of a master that requires another: it works with both passwords; a service no
sentinel knows, sentinels that refuse the password or that are not there, and a malformed URL
each give one line (no password in it) and exit 1 (2 for the malformed URL)."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from click.testing import CliRunner, Result

from msctl.cli import cli
from tests.support.redis_server import free_port
from tests.support.sentinel import SentinelCluster, sentinel_cluster

MASTER_PASSWORD = "m4ster-pw"
SENTINEL_PASSWORD = "s3ntinel-pw"
VALIDITY = "ca.framework.cert.validity.period"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelCluster]:
    with sentinel_cluster(
        tmp_path_factory.mktemp("sentinel"),
        service="prod",
        password=MASTER_PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
    ) as started:
        yield started


def msctl(url: str, namespace: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--redis-url", url, "--namespace", namespace])


def one_line_error(result: Result, exit_code: int) -> str:
    assert result.exit_code == exit_code, result.output
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1, result.output
    assert MASTER_PASSWORD not in result.output and SENTINEL_PASSWORD not in result.output
    return result.output


@pytest.mark.timeout(30)
def test_msctl_reaches_the_master_through_the_sentinels_with_both_passwords(
    cluster: SentinelCluster, namespace: str
) -> None:
    assert "sentinel_password=" in cluster.url and f":{MASTER_PASSWORD}@" in cluster.url
    assert msctl(cluster.url, namespace, "config", "set", VALIDITY, "90").exit_code == 0
    got = msctl(cluster.url, namespace, "config", "get", VALIDITY)
    assert got.exit_code == 0 and "90" in got.output, got.output
    created = msctl(cluster.url, namespace, "token", "create")
    assert created.exit_code == 0 and created.output.startswith("lb1:"), created.output


@pytest.mark.timeout(30)
def test_a_service_no_sentinel_knows_is_one_line_and_exit_1(
    cluster: SentinelCluster, namespace: str
) -> None:
    url = cluster.url.replace("/prod/0", "/nosuch/0")
    started = time.monotonic()
    output = one_line_error(msctl(url, namespace, "config", "list"), 1)
    assert time.monotonic() - started < 5
    ports = [s.port for s in cluster.sentinels]
    reasons = "; ".join(f"127.0.0.1:{port} does not know it" for port in ports)
    assert output.endswith(f"no Redis master known for service 'nosuch': {reasons}\n"), output
    assert ":***@" in output and "sentinel_password=***" in output


@pytest.mark.timeout(30)
def test_sentinels_that_refuse_the_password_or_are_not_there_are_one_line_and_exit_1(
    cluster: SentinelCluster, namespace: str
) -> None:
    wrong = cluster.url.replace(SENTINEL_PASSWORD, "wrong-pw")
    output = one_line_error(msctl(wrong, namespace, "config", "list"), 1)
    assert "no Redis master known for service 'prod'" in output
    assert output.count("refused the credentials (invalid username-password pair") == 3, output
    nobody = f"redis+sentinel://127.0.0.1:{free_port()}/prod"
    output = one_line_error(msctl(nobody, namespace, "config", "list"), 1)
    assert "unreachable (Error 111 connecting" in output, output


@pytest.mark.timeout(30)
def test_a_malformed_sentinel_url_is_one_line_and_exit_2(namespace: str) -> None:
    url = f"redis+sentinel://:{MASTER_PASSWORD}@127.0.0.1:26379,127.0.0.1:x/prod"
    output = one_line_error(msctl(url, namespace, "config", "list"), 2)
    assert output == (
        "Error: redis url 'redis+sentinel://:***@127.0.0.1:26379,127.0.0.1:x/prod': "
        "sentinel entry 2 '127.0.0.1:x': port 'x' is not a number\n"
    )
