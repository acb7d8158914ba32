"""`rediss://` end to end: a real redis-server serving TLS only (certificates from a CA made
here), `msctl` and a real `msrv serve` reaching it with a password and the CA named in the URL
(`?ssl_ca_certs=`), and a plaintext URL to the same port refused in one line."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from common.ca import CertificateAuthority, key_pem, new_key
from common.properties import atomic_write
from msctl.cli import cli
from tests.support.msrv_process import MsrvProcess
from tests.support.redis_server import free_port, have_redis_server

PASSWORD = "tls-only-s3cret"


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server with TLS on and its plaintext port off; the URL to reach it."""
    if not have_redis_server():
        pytest.skip("needs the redis-server binary")
    ca = CertificateAuthority.create("redis-tls-test")
    key = new_key()
    certificate = ca.issue_server("127.0.0.1", key, 1)
    pem = serialization.Encoding.PEM
    (tmp_path / "ca.crt").write_bytes(ca.certificate_pem)
    (tmp_path / "redis.crt").write_bytes(certificate.public_bytes(pem))
    atomic_write(tmp_path / "redis.key", key_pem(key), mode=0o600)
    atomic_write(tmp_path / "redis.conf", f"requirepass {PASSWORD}\n".encode(), mode=0o600)
    port = free_port()
    args = ["redis-server", str(tmp_path / "redis.conf"), "--port", "0"]
    args += ["--tls-port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    args += ["--dir", str(tmp_path), "--tls-auth-clients", "no"]
    for option, name in (("cert", "redis.crt"), ("key", "redis.key"), ("ca-cert", "ca.crt")):
        args += [f"--tls-{option}-file", str(tmp_path / name)]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.crt'}"
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None:
                    assert process.stderr is not None
                    pytest.skip(f"redis-server without TLS: {process.stderr.read()[:200]!r}")
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        process.kill()
        process.wait()
        assert process.stderr is not None
        process.stderr.close()


def test_msctl_and_msrv_work_over_rediss(tls_redis: str, namespace: str) -> None:
    runner = CliRunner()
    common = ["--redis-url", tls_redis, "--namespace", namespace]
    done = runner.invoke(cli, ["config", "set", "host", "127.0.0.1:8250", *common])
    assert done.exit_code == 0, done.output

    async def scenario() -> None:
        server = MsrvProcess("ms1", tls_redis, namespace)
        await server.start()
        try:
            listed = await asyncio.to_thread(runner.invoke, cli, ["servers", "--json", *common])
            assert listed.exit_code == 0, listed.output
            assert '"state": "running"' in listed.output
            assert not any(PASSWORD in line for line in server.lines)
        finally:
            await server.stop()

    asyncio.run(scenario())


def test_a_plaintext_url_to_a_tls_port_fails_in_one_line(tls_redis: str, namespace: str) -> None:
    plain = tls_redis.replace("rediss://", "redis://").split("?")[0]
    done = CliRunner().invoke(
        cli, ["config", "list", "--redis-url", plain, "--namespace", namespace]
    )
    assert done.exit_code == 1, done.output
    assert "Traceback" not in done.output
    assert PASSWORD not in done.output
