"""The files in deploy/ stay usable: the example properties load, Redis keeps its data."""

import shutil
from pathlib import Path

from agentd.config import AgentSettings

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
