"""`msctl lab up` as a user runs it: a process, Ctrl-C, and a second terminal."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import redis

AGENTS = 6


def msctl(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "msctl", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purpose
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


def wait_for(what, probe, limit=60.0):
    deadline = time.monotonic() + limit
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {limit}s")
        time.sleep(0.1)


@pytest.fixture
def lab(tmp_path):
    folder = tmp_path / "lab"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MSRV_", "MSCTL_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "msctl", "lab", "up", "--agents", str(AGENTS), "--dir", str(folder)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    second_terminal = {**env, "MSCTL_LAB_DIR": str(folder)}

    def hosts():
        done = msctl("hosts", "--json", env=second_terminal)
        return json.loads(done.stdout) if done.returncode == 0 else []

    def connected():
        found = hosts()
        ok = len(found) == AGENTS and all(h["state"] == "connected" for h in found)
        return found if ok else None

    def started():
        if process.poll() is not None:  # say why at once, rather than wait for lab.json
            output = process.communicate(timeout=10)[0]
            raise AssertionError(f"lab up exited with {process.returncode}:\n{output}")
        return _state(folder)

    try:
        state = wait_for("lab.json", started)
        wait_for("all agents connected", connected)
        yield process, folder, state, second_terminal, hosts, connected
    finally:
        if process.poll() is None:
            process.kill()  # its children die with it (PR_SET_PDEATHSIG)
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def _state(folder):
    try:
        state = json.loads((folder / "lab.json").read_text())
    except (OSError, ValueError):
        return None
    return state if state["swarm"]["pid"] else None


@pytest.mark.timeout(120)
def test_ctrl_c_leaves_no_process_behind(lab):
    process, folder, state, *_ = lab
    pids = [s["pid"] for s in state["servers"]] + [state["swarm"]["pid"]]
    pids.append(state["embedded_redis_pid"])
    assert all(pids) and all(alive(p) for p in pids)
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "lab: stopped" in output
    assert [p for p in pids if alive(p)] == []
    assert not (folder / "lab.json").exists()


@pytest.mark.timeout(120)
def test_sigkill_of_the_lab_still_leaves_no_process_behind(lab):
    process, _, state, *_ = lab
    pids = [s["pid"] for s in state["servers"]] + [state["swarm"]["pid"]]
    pids.append(state["embedded_redis_pid"])
    process.kill()
    process.wait()
    wait_for("children gone", lambda: not [p for p in pids if alive(p)], 10)


@pytest.mark.timeout(120)
def test_lab_kill_from_a_second_terminal_moves_agents(lab):
    process, folder, state, env, hosts, connected = lab
    before = {h["name"]: h for h in connected()}
    on_ms1 = [h for h in before.values() if h["server"] == "ms1"]
    assert on_ms1, before
    done = msctl("lab", "kill", "ms1", env=env)
    assert (done.returncode, done.stdout) == (0, "ms1 killed\n"), done.stderr
    assert not alive(state["servers"][0]["pid"])
    addresses = {s["listen"]: s["id"] for s in _state(folder)["servers"]}

    def moved():
        now = {h["name"]: h for h in hosts()}
        ok = all(
            now[h["name"]]["state"] == "connected"
            and now[h["name"]]["server"] == addresses[h["ms_list"][1]]
            for h in on_ms1
        )
        return now if ok else None

    wait_for("ms1's agents on their next servers", moved, 15)
    assert _state(folder)["servers"][0]["pid"] is None
    done = msctl("lab", "start", "ms1", env=env)
    assert (done.returncode, done.stdout) == (0, "ms1 started\n"), done.stderr
    assert msctl("lab", "kill", "ms9", env=env).returncode == 2
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode == 0


@pytest.mark.timeout(120)
def test_the_embedded_redis_requires_the_password_that_only_lab_json_holds(lab):
    process, folder, state, *_ = lab
    path = folder / "lab.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    url = state["redis_url"]
    password = redis.Redis.from_url(url).connection_pool.connection_kwargs["password"]
    assert len(password) >= 32
    assert redis.Redis.from_url(url).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(url.replace(f":{password}@", "@"), protocol=2).ping()
    # in no child's arguments (`ps` shows those to every user)
    pids = [s["pid"] for s in state["servers"]]
    pids += [state["swarm"]["pid"], state["embedded_redis_pid"]]
    for pid in pids:
        assert password not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"), pid
    # nor in what the lab prints: the URL is shown as redis://:***@...
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    assert "at redis://:***@127.0.0.1:" in output, output
    assert password not in output


@pytest.mark.timeout(120)
def test_every_server_of_the_lab_serves_its_metrics(lab):
    from prometheus_client.parser import text_string_to_metric_families

    _, _, state, *_ = lab

    def sessions(url):
        with urllib.request.urlopen(url, timeout=10) as response:
            families = text_string_to_metric_families(response.read().decode())
            return sum(s.value for f in families if f.name == "msrv_sessions" for s in f.samples)

    urls = [s["metrics"] for s in state["servers"]]
    assert len(set(urls)) == len(urls) == 3
    wait_for("the servers' sessions add up", lambda: sum(map(sessions, urls)) == AGENTS)
