"""`msctl lab up --redis-ha` as a user runs it: a master, two replicas and three sentinels under
the lab, `msctl lab kill redis` from a second terminal (no agent session lost, a change made
after the failover reaches the agents), `lab start redis`, and no Redis left behind by Ctrl-C
or SIGKILL of the lab."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from click.testing import CliRunner

from common.connection import redis_from_url
from common.keys import Keys
from common.records import load_hosts
from common.sentinel import SentinelUrl, parse_sentinel_url
from msctl import lab_cmd
from msctl.cli import cli
from tests.support.redis_server import have_redis_server

T = TypeVar("T")
AGENTS = 6
needs_redis_server = pytest.mark.skipif(
    not have_redis_server(), reason="needs the redis-server binary"
)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as status:  # a zombie is gone for our purpose
        return status.read().split(") ")[1][0] != "Z"


def wait_for(what: str, probe: Callable[[], T | None], limit: float = 30.0) -> T:
    deadline = time.monotonic() + limit
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {limit}s")
        time.sleep(0.05)


class LabUp:
    """`msctl lab up --redis-ha` in a subprocess, its output read line by line as it comes."""

    def __init__(self, folder: Path, *args: str) -> None:
        self.folder = folder
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MSRV_", "MSCTL_"))}
        self.env = {**env, "MSCTL_LAB_DIR": str(folder)}  # a second terminal's
        self.process = subprocess.Popen(
            [sys.executable, "-m", "msctl", "lab", "up", "--redis-ha", "--dir", str(folder), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.state: dict[str, Any] = wait_for("lab.json", self._started, 60)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def _started(self) -> dict[str, Any] | None:
        if self.process.poll() is not None:
            self._reader.join(5)
            raise AssertionError(f"lab up exited with {self.process.returncode}:\n{self.output}")
        try:
            state: dict[str, Any] = json.loads((self.folder / "lab.json").read_text())
        except (OSError, ValueError):
            return None
        agents = state["swarm"]["agents"]
        return state if not agents or state["swarm"]["pid"] else None

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_output(self, pattern: str, limit: float = 20.0) -> re.Match[str]:
        regex = re.compile(pattern)
        return wait_for(
            f"a line matching {pattern!r} in:\n{self.output}\n",
            lambda: next(filter(None, map(regex.search, list(self.lines))), None),
            limit,
        )

    def close(self) -> None:
        self._reader.join(5)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def msctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "msctl", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env=self.env,
        )

    def redis_pids(self) -> list[int]:
        ha = json.loads((self.folder / "lab.json").read_text())["redis_ha"]
        return [e["pid"] for e in ha["redis"] + ha["sentinels"] if e["pid"]]


@pytest.fixture
def lab_up(tmp_path: Path) -> Iterator[Callable[..., LabUp]]:
    started: list[LabUp] = []

    def start(*args: str) -> LabUp:
        started.append(LabUp(tmp_path / "lab", *args))
        return started[-1]

    yield start
    for lab in started:
        if lab.process.poll() is None:
            lab.process.kill()  # its children die with it (PR_SET_PDEATHSIG)
            lab.process.wait()
        lab.close()


def master_port(url: SentinelUrl) -> int | None:
    """The master's port as the first sentinel that answers names it."""
    for host, port in url.sentinels:
        client = redis.Redis(host, port, password=url.sentinel_password, socket_timeout=1)
        try:
            return int(client.sentinel_get_master_addr_by_name(url.service)[1])  # type: ignore[index]
        except redis.ConnectionError:
            continue
        finally:
            client.close()
    return None


def sessions(url: str, namespace: str) -> dict[str, tuple[str, str, str]] | None:
    """name -> (state, server, session token) of every host, read through the sentinel URL."""

    async def read() -> dict[str, tuple[str, str, str]]:
        client = redis_from_url(url)
        try:
            hosts = await load_hosts(client, Keys(namespace))
        finally:
            await client.aclose()
        return {h.name: (str(h.state), h.server, h.session) for h in hosts}

    try:
        return asyncio.run(read())
    except redis.RedisError:
        return None


def assert_private(lab: LabUp, password: str) -> None:
    """The password is on no command line (`ps` shows those to every user), not in the lab's
    output, and in files only their owner reads (a failover makes Redis rewrite them)."""
    for pid in lab.redis_pids():
        assert password not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    assert password not in lab.output
    folder = lab.folder / "redis-ha"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    configs = sorted(folder.glob("*/*.conf"))
    assert len(configs) == 6 and all(password in c.read_text() for c in configs)
    assert {stat.S_IMODE(c.stat().st_mode) for c in configs} == {0o600}


def assert_a_change_reaches_every_agent(lab: LabUp) -> None:
    done = lab.msctl("config", "set", "ping.interval", "4")
    assert done.returncode == 0, done
    version = int(re.search(r"config version (\d+)", done.stdout).group(1))  # type: ignore[union-attr]

    def reached() -> bool:
        hosts = json.loads(lab.msctl("hosts", "--json").stdout)
        return len(hosts) == AGENTS and all(
            h["state"] == "connected" and h["acked_version"] >= version and h["current"]
            for h in hosts
        )

    wait_for("the change at every agent", reached, 20)


def assert_replica_of(url: SentinelUrl, port: int, master: int, namespace: str) -> None:
    """The node on `port` is a replica of `master`, with the settings copied from it."""
    node = redis.Redis(port=port, password=url.password, decode_responses=True)
    try:
        assert node.execute_command("ROLE")[:3] == ["slave", "127.0.0.1", master]
        settings = Keys(namespace).settings
        wait_for("the restarted replica in sync", lambda: node.hget(settings, "ping.interval"))
    finally:
        node.close()


@needs_redis_server
@pytest.mark.timeout(120)
def test_lab_kill_redis_fails_the_master_over_and_no_agent_notices(
    lab_up: Callable[..., LabUp],
) -> None:
    lab = lab_up("--agents", str(AGENTS))
    url, namespace = lab.state["redis_url"], lab.state["namespace"]
    parsed = parse_sentinel_url(url)
    assert len(parsed.sentinels) == 3 and parsed.password and len(parsed.password) >= 32
    assert parsed.sentinel_password == parsed.password
    assert len(lab.redis_pids()) == 6 and all(map(alive, lab.redis_pids()))
    with pytest.raises(redis.AuthenticationError):  # a sentinel wants the password too
        redis.Redis(*parsed.sentinels[0], protocol=2).ping()

    def all_connected() -> dict[str, tuple[str, str, str]] | None:
        found = sessions(url, namespace)
        ok = found and len(found) == AGENTS and all(s == "connected" for s, _, _ in found.values())
        return found if ok else None

    before = wait_for("all agents connected", all_connected)
    old = master_port(parsed)
    lab.wait_output(rf"^redis: master 127\.0\.0\.1:{old}, replicas 2, sentinels 3$")
    (old_pid,) = [
        e["pid"] for e in lab.state["redis_ha"]["redis"] if e["address"].endswith(f":{old}")
    ]

    killed_at = time.monotonic()
    done = lab.msctl("lab", "kill", "redis")
    assert (done.returncode, done.stdout) == (0, f"redis master 127.0.0.1:{old} killed\n"), done
    assert not alive(old_pid)
    new = wait_for("a new master", lambda: (p := master_port(parsed)) != old and p, 20)
    print(f"new master {time.monotonic() - killed_at:.2f}s after lab kill redis began")
    # zero sessions lost: each host still on its server, with the session it had
    assert wait_for("the hosts readable", lambda: sessions(url, namespace), 20) == before
    assert_a_change_reaches_every_agent(lab)
    lab.wait_output(rf"^redis: master 127\.0\.0\.1:{new}, replicas 1, sentinels 3$")
    assert_private(lab, parsed.password)

    done = lab.msctl("lab", "start", "redis")
    expected = f"redis 127.0.0.1:{old} started, replica of the master 127.0.0.1:{new}\n"
    assert (done.returncode, done.stdout) == (0, expected), done
    lab.wait_output(rf"^redis: master 127\.0\.0\.1:{new}, replicas 2, sentinels 3$")
    assert_replica_of(parsed, old, new, namespace)

    pids = lab.redis_pids()
    assert len(pids) == 6 and all(map(alive, pids))
    lab.process.send_signal(signal.SIGINT)
    assert lab.process.wait(timeout=60) == 0, lab.output
    assert [p for p in pids if alive(p)] == []
    assert not (lab.folder / "lab.json").exists()


@needs_redis_server
@pytest.mark.timeout(60)
def test_sigkill_of_the_lab_leaves_no_redis_or_sentinel(lab_up: Callable[..., LabUp]) -> None:
    lab = lab_up("--servers", "1", "--agents", "0")
    pids = lab.redis_pids()
    assert len(pids) == 6 and all(map(alive, pids))
    lab.process.kill()
    lab.process.wait()
    wait_for("every redis-server gone", lambda: not [p for p in pids if alive(p)], 10)


def test_redis_ha_without_redis_server_exits_2_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(lab_cmd, "have_redis_server", lambda: False)
    result = CliRunner().invoke(cli, ["lab", "up", "--redis-ha", "--dir", str(tmp_path / "lab")])
    assert result.exit_code == 2, result.output
    assert result.output == (
        "Error: --redis-ha needs redis-server (it also runs the sentinels): install it\n"
    )
    assert not (tmp_path / "lab").exists()


def test_redis_ha_with_a_redis_url_exits_2(tmp_path: Path) -> None:
    args = ["lab", "up", "--redis-ha", "--redis-url", "redis://127.0.0.1:1/0"]
    result = CliRunner().invoke(cli, [*args, "--dir", str(tmp_path / "lab")])
    assert result.exit_code == 2, result.output
    assert "--redis-ha starts the lab's own Redis" in result.output


def test_lab_kill_redis_needs_a_lab_with_redis_ha(tmp_path: Path) -> None:
    state = {
        "redis_url": "redis://127.0.0.1:1/0",
        "namespace": "lab",
        "control_pid": os.getpid(),
        "servers": [{"id": "ms1", "listen": "127.0.0.1:8250", "pid": 1}],
        "redis_ha": None,
    }
    (tmp_path / "lab.json").write_text(json.dumps(state))
    for action in ("kill", "start"):
        result = CliRunner().invoke(cli, ["lab", action, "redis", "--dir", str(tmp_path)])
        assert result.exit_code == 2, result.output
        assert "not highly available: start it with --redis-ha" in result.output
