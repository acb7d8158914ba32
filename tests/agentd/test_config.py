import pytest

from agentd.config import AgentSettings
from common.errors import PropertiesError
from common.properties import AgentProperties


def write(tmp_path, text):
    path = tmp_path / "agent.properties"
    path.write_text(text)
    return path


def test_a_missing_guid_is_generated_and_persisted_keeping_the_rest(tmp_path):
    path = write(tmp_path, "# my agent\nhost=a,b@roundrobin\nzone=z1\nworkers=5\n")
    first = AgentSettings.from_properties(path)
    assert len(first.guid) == 36
    text = path.read_text()
    assert text.startswith("# my agent\nhost=a,b@roundrobin\nzone=z1\nworkers=5\n")
    assert f"guid={first.guid}" in text
    assert AgentSettings.from_properties(path).guid == first.guid


def test_defaults_and_values(tmp_path):
    path = write(
        tmp_path,
        "guid=g1\nhost=ms1:9000, ms2\nport=8251\nname=hv1\ntype=ssvm\ncluster=c7\n"
        "host.lb.check.interval=15\nconnect.timeout=1.5\n",
    )
    s = AgentSettings.from_properties(path)
    assert s.host_list.entries == ["ms1:9000", "ms2"]
    assert s.host_list.algorithm is None
    assert (s.port, s.name, s.host_type, s.zone, s.cluster) == (
        8251,
        "hv1",
        "ssvm",
        "default",
        "c7",
    )
    assert (s.check_interval, s.connect_timeout) == (15, 1.5)
    plain = AgentSettings.from_properties(write(tmp_path, "guid=g\nhost=a\n"))
    assert (plain.port, plain.check_interval, plain.host_type) == (8250, None, "routing")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("guid=g\n", "line"),
        ("guid=g\n# x\nhost=a,,b\n", "line 3: host: host value: entry 2 is empty"),
        ("guid=g\nhost=a\nport=http\n", "line 3: port: 'http' is not a whole number"),
        ("guid=g\nhost=a\nport=70000\n", "line 3: port: 70000 is out of range"),
        ("guid=g\nhost=a\nhost.lb.check.interval=-2\n", "line 3: host.lb.check.interval: -2"),
        ("guid=g\nhost=a\nzone=my zone\n", "line 3: zone: 'my zone' has characters"),
        ("guid=g\nhost=@\n", "line 2: host: host value '@' holds no addresses"),
    ],
)
def test_bad_values_name_the_line(tmp_path, text, message):
    with pytest.raises(PropertiesError) as info:
        AgentSettings.from_properties(write(tmp_path, text))
    if message == "line":
        assert "host: missing" in str(info.value)
    else:
        assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_bad_file_is_not_rewritten(tmp_path):
    path = write(tmp_path, "host=a,a\n")
    with pytest.raises(PropertiesError):
        AgentSettings.from_properties(path)
    assert path.read_text() == "host=a,a\n"
    assert AgentProperties.load(path).get("guid") is None


def test_agentd_run_refuses_a_bad_file_with_one_line_and_exit_2(tmp_path):
    import subprocess
    import sys

    path = write(tmp_path, "guid=g\nhost=a\nport=http\n")
    done = subprocess.run(
        [sys.executable, "-m", "agentd", "run", "--properties", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == f"Error: {path} line 3: port: 'http' is not a whole number\n"
