"""The README's main job, run as a user would: `msctl lab demo` as a process."""

import os
import subprocess
import sys

import pytest

STEPS = [
    "static",
    "roundrobin",
    "shuffle",
    "failover",
    "failback",
    "migration",
    "maintenance",
    "trust",
    "revocation",
]


def run_demo(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "msctl", "lab", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )


def check_output(out: str) -> None:
    for step in STEPS:
        assert f"==> {step}:" in out, out
    assert "ms1-ms3 stopped; every agent kept its session" in out
    assert "back in service: its address is in every list again" in out
    assert "refused: no_certificate:" in out
    assert "hv-extra started again: refused (revoked), exit code 2" in out
    assert out.rstrip().splitlines()[-1].startswith("demo finished in")
    assert out.rstrip().endswith("every step checked")


@pytest.mark.timeout(120)
def test_demo_on_an_embedded_redis_succeeds():
    done = run_demo()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "embedded Redis (redis-server)" in done.stdout
    check_output(done.stdout)
    # the roundrobin step shows the rotations, in host id order
    table = done.stdout.split("==> roundrobin:")[1].split("==>")[0]
    rows = [line.split() for line in table.splitlines() if "@roundrobin" in line]
    lists = [row[3].removeprefix("host=").removesuffix("@roundrobin").split(",") for row in rows]
    assert lists[1] == lists[0][1:] + lists[0][:1]
    assert lists[2] == lists[0][2:] + lists[0][:2]


@pytest.mark.timeout(120)
def test_demo_against_a_given_redis(redis_url, namespace):
    done = run_demo("--redis-url", redis_url, "--namespace", namespace)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "embedded" not in done.stdout
    check_output(done.stdout)


@pytest.mark.timeout(120)
def test_demo_without_a_redis_server_binary_uses_fakeredis(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MSRV_")}
    env["PATH"] = str(tmp_path)  # no redis-server to be found
    done = run_demo(env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "embedded Redis (fakeredis TcpFakeServer)" in done.stdout
    check_output(done.stdout)


def test_demo_reports_the_failed_step_and_exits_1():
    done = run_demo("--redis-url", "redis://127.0.0.1:1/0")
    assert done.returncode == 1
    assert done.stderr.startswith("Error: demo failed")


def test_a_failed_demo_shows_the_last_log_lines_of_each_child(capsys):
    """A failed demo says why: each child's last lines go to stderr, escaped."""
    from types import SimpleNamespace

    from msctl.lab_cmd import _show_logs

    server = SimpleNamespace(server_id="ms1", child=SimpleNamespace(lines=["a", "b\x1b[2J", "c"]))
    quiet = SimpleNamespace(server_id="ms2", child=SimpleNamespace(lines=[]))
    swarm = SimpleNamespace(lines=[f"swarm {i}" for i in range(40)])
    _show_logs(SimpleNamespace(members=[server, quiet], swarm=swarm), lines=2)
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "--- last lines of ms1 ---", "b\\x1b[2J", "c",
        "--- last lines of agents ---", "swarm 38", "swarm 39",
    ]  # fmt: skip
