"""`msctl config set ... --wait` against real servers and agents (DESIGN, Visibility): it returns
0 once 100 agents and one more hold the new list; with that one agent stopped (SIGSTOP) it exits
1 at the timeout and names it; without a terminal it prints plain lines, on one a live line."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.records import HostRecord
from msctl.children import swarm_ready
from tests.support.agents import AgentProcess, SwarmProcess, provision_swarm, start_agent
from tests.support.fleet import Fleet, fleet

COUNT = 100
# an entry no agent dials (it is never first): a new order of the entries after the first gives
# every host a new list and moves none of them, so the wait is the lists' and not the moves'
UNREACHED = "127.0.0.1:9"


@dataclass
class Run:
    code: int
    out: str
    err: str
    seconds: float


async def msctl(f: Fleet, *args: str, terminal: bool = False) -> Run:
    """`python -m msctl ARGS` with its stdout a pipe, or a terminal (a pty) when `terminal`."""
    argv = [sys.executable, "-m", "msctl", *args]
    argv += ["--redis-url", f.redis_url, "--namespace", f.namespace]
    started = time.monotonic()
    if not terminal:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await process.communicate()
        assert process.returncode is not None
        return Run(process.returncode, out.decode(), err.decode(), time.monotonic() - started)
    leader, follower = pty.openpty()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=follower, stderr=asyncio.subprocess.PIPE
        )
        os.close(follower)
        output = asyncio.create_task(asyncio.to_thread(_read_all, leader))
        _, err = await process.communicate()
        out = await output
    finally:
        os.close(leader)
    assert process.returncode is not None
    return Run(process.returncode, out.decode(), err.decode(), time.monotonic() - started)


def _read_all(fd: int) -> bytes:
    """What a terminal received, until its last writer closed it (EIO on Linux)."""
    chunks = []
    with contextlib.suppress(OSError):
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
    return b"".join(chunks)


def _settled(count: int) -> Callable[[list[HostRecord]], bool]:
    def check(hosts: list[HostRecord]) -> bool:
        return len(hosts) == count and all(h.state == "connected" for h in hosts)

    return check


@pytest.mark.timeout(120)
def test_wait_for_100_agents_and_one_stopped(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=2) as f:
            ms1, ms2 = f.addresses
            before, after = f"{ms1},{ms2},{UNREACHED}", f"{ms1},{UNREACHED},{ms2}"
            await f.set("host", before)
            ca = await f.ca()
            provision_swarm(tmp_path / "swarm", COUNT, before, ca)
            swarm = SwarmProcess(tmp_path / "swarm", COUNT, before)
            solo: AgentProcess | None = None
            try:
                solo = await start_agent(tmp_path / "solo", "solo", before, ca=ca)
                await swarm.start(ready=swarm_ready(COUNT), timeout=60)
                hosts = await f.wait_hosts(_settled(COUNT + 1), timeout=30)
                (solo_id,) = [h.id for h in hosts if h.name == "solo"]
                await _all_arrive(f, after)
                await _one_stopped(f, solo, solo_id, before)
                await _on_a_terminal(f, solo, after)
            finally:
                if solo is not None:
                    await solo.stop(signal.SIGKILL)
                await swarm.stop(signal.SIGKILL)

    asyncio.run(scenario())


async def _all_arrive(f: Fleet, host: str) -> None:
    """Exit 0 once the 101 hold it; without a terminal, plain lines and no `\\r`."""
    run = await msctl(f, "config", "set", "host", host, "--wait", "--timeout", "30")
    assert run.code == 0, run.out + run.err
    lines = run.out.splitlines()
    assert "\r" not in run.out
    said = re.fullmatch(r"host = .* \(config version (\d+)\)", lines[0])
    assert said is not None, run.out
    version = int(said.group(1))
    progress = re.compile(
        rf"config version {version}: (\d+)/{COUNT + 1} connected hosts hold it, \d+/s, [\d.]+ s"
    )
    counts = [int(m.group(1)) for m in map(progress.fullmatch, lines[1:-1]) if m]
    assert len(counts) == len(lines) - 2 and counts[-1] == COUNT + 1, run.out
    done = f"config version {version}: "
    done += rf"every connected host holds it \({COUNT + 1} hosts, [\d.]+ s\)"
    assert re.fullmatch(done, lines[-1]), run.out
    hosts = await f.hosts()
    assert all(h.acked_version >= version for h in hosts), hosts
    print(f"\n--wait with {COUNT + 1} agents: {run.seconds:.2f} s; output:\n{run.out}")


async def _one_stopped(f: Fleet, solo: AgentProcess, solo_id: int, host: str) -> None:
    """Exit 1 at --timeout 3, naming the stopped agent with its server."""
    assert solo.process is not None
    solo.process.send_signal(signal.SIGSTOP)
    try:
        run = await msctl(f, "config", "set", "host", host, "--wait", "--timeout", "3")
        # the same value again changes nothing, and still waits for the host that lags
        again = await msctl(f, "config", "set", "host", host, "--wait", "--timeout", "0.5")
    finally:
        solo.process.send_signal(signal.SIGCONT)
    assert again.code == 1, again.out + again.err
    assert again.out.startswith("host unchanged (config version ")
    assert (
        f"1 of {COUNT + 1} connected hosts do not hold it after 0.5s: {solo_id} (solo)" in again.err
    )
    assert run.code == 1, run.out + run.err
    assert 3 <= run.seconds < 10, run.seconds
    assert re.search(
        rf"connected hosts do not hold it after 3s: .*\b{solo_id} \(solo\) on ms1\b", run.err
    ), run.err
    assert "\r" not in run.out
    print(f"--timeout 3 with the solo agent stopped: {run.seconds:.2f} s; {run.err}")


async def _on_a_terminal(f: Fleet, solo: AgentProcess, host: str) -> None:
    """On a terminal, a live line rewritten in place; `status` then says the fleet converged."""
    run = await msctl(f, "config", "set", "host", host, "--wait", "--timeout", "30", terminal=True)
    assert run.code == 0, run.out + run.err
    lines = run.out.replace("\r\n", "\n").split("\n")
    assert lines[0].startswith("host = ")
    assert lines[1].startswith("\rconfig version ") and lines[1].count("\r") >= 1
    assert f"/{COUNT + 1} connected hosts hold it" in lines[1].split("\r")[-1]
    assert re.search(r": every connected host holds it \(\d+ hosts, [\d.]+ s\)$", lines[2])
    status = await msctl(f, "status")
    assert f"converged: all {COUNT + 1} connected hosts hold their list" in status.out
