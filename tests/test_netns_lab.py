"""deploy/netns-lab.sh: servers and agents on hosts of their own (network namespaces)."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "deploy" / "netns-lab.sh"


def namespaces_work() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"probe{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False)
    if made.returncode != 0:
        return False
    subprocess.run(["ip", "netns", "del", probe], check=False)
    return True


pytestmark = pytest.mark.skipif(not namespaces_work(), reason="cannot create network namespaces")


@pytest.mark.timeout(120)
def test_servers_and_agents_on_separate_hosts(tmp_path):
    prefix = f"t{uuid.uuid4().hex[:5]}"
    subnet = f"10.77.{random.randint(1, 250)}"
    folder = tmp_path / "lab"
    env = {**os.environ, "LAB_BIN": str(Path(sys.executable).parent)}
    common = ["--prefix", prefix, "--dir", str(folder)]

    def msctl(*args):
        done = subprocess.run(
            ["ip", "netns", "exec", f"{prefix}-redis", sys.executable, "-m", "msctl", *args,
             "--redis-url", f"redis://{subnet}.2:6379/0"],
            capture_output=True, text=True, check=False, env=env,
        )  # fmt: skip
        return done

    def hosts_when(condition, limit=30.0):
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            done = msctl("hosts", "--json")
            hosts = json.loads(done.stdout) if done.returncode == 0 else []
            if len(hosts) == 3 and condition(hosts):
                return hosts
            time.sleep(0.2)
        raise AssertionError(f"hosts never matched: {done.stdout} {done.stderr}")

    try:
        up = subprocess.run(
            [str(SCRIPT), "up", "--servers", "3", "--agents", "3", "--subnet", subnet, *common],
            capture_output=True, text=True, timeout=60, check=False, env=env,
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        servers = [f"{subnet}.11", f"{subnet}.12", f"{subnet}.13"]
        assert msctl("config", "set", "indirect.agent.lb.algorithm", "roundrobin").returncode == 0
        hosts = hosts_when(
            lambda hs: all(h["state"] == "connected" and h["algorithm"] == "roundrobin" for h in hs)
        )
        assert sorted(h["ms_list"][0] for h in hosts) == servers  # one agent per server
        for i in (1, 2, 3):
            text = (folder / f"ag{i}" / "agent.properties").read_text()
            assert "@roundrobin" in text and f"{subnet}.11" in text
        # a crash of ms1's host: its agent moves to its next entry, across the bridge
        victim = next(h for h in hosts if h["server"] == "ms1")
        pids = subprocess.run(
            ["ip", "netns", "pids", f"{prefix}-ms1"], capture_output=True, text=True, check=True
        ).stdout.split()
        for pid in pids:
            os.kill(int(pid), signal.SIGKILL)
        second = f"ms{servers.index(victim['ms_list'][1]) + 1}"
        hosts_when(
            lambda hs: any(
                h["id"] == victim["id"] and h["state"] == "connected" and h["server"] == second
                for h in hs
            )
        )
    finally:
        down = subprocess.run(
            [str(SCRIPT), "down", *common], capture_output=True, text=True, timeout=60, check=False
        )
    assert down.returncode == 0, down.stderr
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert prefix not in left.stdout
