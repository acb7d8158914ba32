"""The files in deploy/ stay usable: the example properties load, Redis keeps its data, a
sentinel runs with the example sentinel.conf."""

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from agentd.config import AgentSettings
from common.sentinel import parse_sentinel_url
from tests.support.redis_server import free_port, have_redis_server

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_example_agent_properties_load(tmp_path):
    path = tmp_path / "agent.properties"
    shutil.copy(DEPLOY / "agent.properties.example", path)
    settings = AgentSettings.from_properties(path)
    assert settings.host_list.entries == ["ms1.example.net", "ms2.example.net", "ms3.example.net"]
    assert (settings.zone, settings.cluster, settings.check_interval) == ("zone1", "cluster7", None)


def test_redis_conf_persists_with_aof():
    lines = {line.strip() for line in (DEPLOY / "redis.conf").read_text().splitlines()}
    assert "appendonly yes" in lines


def test_units_run_the_documented_commands():
    msrv = (DEPLOY / "systemd" / "msrv.service").read_text()
    agentd = (DEPLOY / "systemd" / "agentd.service").read_text()
    assert "msrv serve --listen ${MSRV_LISTEN} --advertise ${MSRV_ADVERTISE}" in msrv
    assert "agentd run --properties /etc/indirect-agent-lb/agent.properties" in agentd
    env = dict(
        line.split("=", 1)
        for line in (DEPLOY / "msrv.env").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert {"MSRV_REDIS_URL", "MSRV_NAMESPACE", "MSRV_LISTEN", "MSRV_ADVERTISE"} <= set(env)


def test_sentinel_conf_watches_the_service_msrv_env_names_and_runs(tmp_path):
    """deploy/sentinel.conf (quorum 2 of 3) is taken by a real sentinel as it is, the port, bind
    address and dir aside; msrv.env's sentinel URL names its service."""
    text = (DEPLOY / "sentinel.conf").read_text()
    monitor = [line.split() for line in text.splitlines() if line.startswith("sentinel monitor ")]
    assert [m[2] for m in monitor] == ["lb"] and monitor[0][5] == "2"
    env = (DEPLOY / "msrv.env").read_text()
    (url,) = [
        line.removeprefix("#MSRV_REDIS_URL=") for line in env.splitlines() if "+sentinel" in line
    ]
    parsed = parse_sentinel_url(url)
    assert parsed.service == "lb" and len(parsed.sentinels) == 3 and parsed.sentinel_password
    if not have_redis_server():
        pytest.skip("needs the redis-server binary")
    port = free_port()
    local = {"port": f"port {port}", "bind": "bind 127.0.0.1", "dir": f"dir {tmp_path}"}
    lines = [local.get(line.split(" ", 1)[0], line) for line in text.splitlines()]
    config = tmp_path / "sentinel.conf"
    config.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(
        ["redis-server", str(config), "--sentinel"], stdout=subprocess.DEVNULL, cwd=tmp_path
    )
    client = redis.Redis(port=port, password="CHANGE-ME-SENTINEL-PASSWORD", decode_responses=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                masters = client.sentinel_masters()
                break
            except redis.ConnectionError:
                assert process.poll() is None, "the sentinel refused deploy/sentinel.conf"
                assert time.monotonic() < deadline, "the sentinel never answered"
                time.sleep(0.05)
        assert masters["lb"]["ip"] == "10.0.0.11" and masters["lb"]["port"] == 6379
        assert masters["lb"]["quorum"] == 2
    finally:
        client.close()
        process.kill()
        process.wait()
