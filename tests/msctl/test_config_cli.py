"""`msctl config` against a real redis-server."""

import json
import subprocess
import sys

import pytest
import redis
from click.testing import CliRunner

from msctl.cli import cli

CHECK = "indirect.agent.lb.check.interval"


@pytest.fixture
def msctl(redis_url, namespace):
    runner = CliRunner()
    env = {"MSRV_REDIS_URL": redis_url, "MSRV_NAMESPACE": namespace}

    def invoke(*args):
        return runner.invoke(cli, list(args), env=env, catch_exceptions=False)

    return invoke


@pytest.fixture
def client(redis_url):
    with redis.Redis.from_url(redis_url, decode_responses=True) as conn:
        yield conn


def namespace_state(client, namespace):
    return {key: client.dump(key) for key in sorted(client.keys(f"{namespace}:*"))}


def test_set_stores_the_normalised_list_and_get_prints_it(msctl, client, namespace):
    result = msctl("config", "set", "host", "10.0.0.1, 10.0.0.2:8251,[2001:db8::1]:8250")
    assert result.exit_code == 0, result.output
    assert "config version 1" in result.output
    assert client.hget(f"{namespace}:settings:global", "host") == (
        "10.0.0.1,10.0.0.2:8251,[2001:db8::1]:8250"
    )
    got = msctl("config", "get", "host")
    assert (got.exit_code, got.output) == (0, "10.0.0.1,10.0.0.2:8251,[2001:db8::1]:8250\n")


def test_every_change_publishes_one_event_with_increasing_versions(msctl, client, namespace):
    pubsub = client.pubsub()
    pubsub.subscribe(f"{namespace}:events")
    assert pubsub.get_message(timeout=2)["type"] == "subscribe"
    commands = [
        ("config", "set", "host", "a,b,c"),
        ("config", "set", "indirect.agent.lb.algorithm", "roundrobin"),
        ("config", "set", "indirect.agent.lb.algorithm", "roundrobin"),  # no change: no event
        ("config", "set", CHECK, "30", "--cluster", "7"),
        ("config", "unset", CHECK, "--cluster", "7"),
        ("config", "set", "host", "a,b,,c"),  # rejected: no event
    ]
    for command in commands:
        msctl(*command)
    events = []
    while (message := pubsub.get_message(timeout=1)) is not None:
        if message["type"] == "message":
            events.append(json.loads(message["data"]))
    pubsub.close()
    assert [(e["key"], e["scope"], e["cluster"]) for e in events] == [
        ("host", "global", None),
        ("indirect.agent.lb.algorithm", "global", None),
        (CHECK, "cluster", "7"),
        (CHECK, "cluster", "7"),
    ]
    assert [e["version"] for e in events] == [1, 2, 3, 4]


REJECTED = [
    (("host", ""), "host: the list is empty"),
    (("host", "a,,b"), "host: entry 2 is empty"),
    (("host", "a,a"), "host: entry 2 'a' repeats entry 1"),
    (("host", "a:0"), "host: entry 1 'a:0': port 0 is out of range 1-65535"),
    (("host", "a:70000"), "host: entry 1 'a:70000': port 70000 is out of range 1-65535"),
    (("host", "bad host"), "host: entry 1 'bad host': not a valid hostname"),
    (("host", "[::1"), "host: entry 1 '[::1': missing closing bracket"),
    (("indirect.agent.lb.algorithm", "fastest"), "unknown algorithm 'fastest'"),
    ((CHECK, "-1"), f"{CHECK}: -1 is below the minimum"),
    ((CHECK, "1.5"), f"{CHECK}: '1.5' is not a whole number"),
    ((CHECK, "abc"), f"{CHECK}: 'abc' is not a whole number"),
    (("hots", "a"), "unknown setting 'hots'; did you mean 'host'?"),
    (("host", "a", "--cluster", "7"), "host: is global only"),
]


@pytest.mark.parametrize(("args", "message"), REJECTED, ids=[" ".join(a) for a, _ in REJECTED])
def test_rejected_values_exit_2_with_one_line_and_change_nothing(
    msctl, client, namespace, args, message
):
    assert msctl("config", "set", "host", "x,y").exit_code == 0
    before = namespace_state(client, namespace)
    result = msctl("config", "set", *args)
    assert result.exit_code == 2
    assert result.output.count("\n") == 1
    assert message in result.output
    assert namespace_state(client, namespace) == before
    assert client.get(f"{namespace}:settings:version") == "1"


def test_list_shows_value_default_and_source(msctl):
    msctl("config", "set", CHECK, "10")
    msctl("config", "set", CHECK, "3", "--cluster", "c1")
    rows = {r["name"]: r for r in json.loads(msctl("config", "list", "--json").output)}
    assert (rows[CHECK]["value"], rows[CHECK]["source"]) == ("10", "global")
    assert (rows["host"]["value"], rows["host"]["source"]) == (None, "default")
    assert rows["ping.interval"] == {
        "name": "ping.interval",
        "value": "5",
        "default": "5",
        "source": "default",
        "scopes": ["global"],
        "help": rows["ping.interval"]["help"],
    }
    in_cluster = json.loads(msctl("config", "list", "--cluster", "c1", "--json").output)
    assert {r["name"]: r["source"] for r in in_cluster}[CHECK] == "cluster"
    table = msctl("config", "list").output.splitlines()
    assert table[0].split() == ["NAME", "VALUE", "DEFAULT", "SOURCE", "SCOPE"]
    assert table[3].split() == [CHECK, "10", "0", "global", "global,cluster"]


def test_get_json_and_unset_fall_back_to_the_default(msctl):
    msctl("config", "set", "ping.interval", "2")
    assert json.loads(msctl("config", "get", "ping.interval", "--json").output)["value"] == "2"
    assert msctl("config", "unset", "ping.interval").exit_code == 0
    got = json.loads(msctl("config", "get", "ping.interval", "--json").output)
    assert (got["value"], got["source"]) == ("5", "default")


def test_unreachable_redis_exits_1_with_one_line(namespace):
    result = CliRunner().invoke(
        cli, ["config", "list", "--redis-url", "redis://127.0.0.1:1/0", "--namespace", namespace]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: redis at redis://127.0.0.1:1/0")
    assert result.output.count("\n") == 1


def test_bad_namespace_or_url_is_usage_error(redis_url):
    bad_ns = CliRunner().invoke(
        cli, ["config", "list", "--namespace", "a b", "--redis-url", redis_url]
    )
    assert bad_ns.exit_code == 2 and "namespace 'a b'" in bad_ns.output
    bad_url = CliRunner().invoke(cli, ["config", "list", "--redis-url", "http://x"])
    assert bad_url.exit_code == 2 and "redis url" in bad_url.output


def test_the_installed_command_runs_as_a_process(redis_url, namespace):
    env = {"MSRV_REDIS_URL": redis_url, "MSRV_NAMESPACE": namespace, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "msctl", "config", "set", "host", "ms1:8250, ms2"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    got = subprocess.run(
        [sys.executable, "-m", "msctl", "config", "get", "host"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert got.stdout == "ms1:8250,ms2\n"
    refused = subprocess.run(
        [sys.executable, "-m", "msctl", "config", "set", "hots", "a"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert refused.stderr == "Error: unknown setting 'hots'; did you mean 'host'?\n"
