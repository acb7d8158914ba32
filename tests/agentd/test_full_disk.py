"""An agent whose properties live on a full disk: it says why once, keeps its old file intact,
does not acknowledge, and saves and acknowledges once space returns."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.agents import host_value, start_agent, write_properties
from tests.support.fleet import fleet
from tests.support.tmpfs import fill, small_tmpfs


def test_a_list_that_cannot_be_saved_is_not_acked_and_is_saved_when_space_returns(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    async def scenario(disk: Path) -> None:
        async with fleet(
            redis_url, namespace, servers=1, server_options=("--repush-interval", "0.3")
        ) as f:
            (server,) = f.servers
            await f.set("host", server.address)
            agent = await start_agent(disk / "a1", "a1", server.address, ca=await f.ca())
            try:
                await agent.wait_for(r"persisted host=")
                old = agent.path.read_bytes()
                filler = fill(disk)
                new = f"{server.address},127.0.0.1:9"
                await f.set("host", new)
                await server.wait_for("pushed again", count=3)
                errors = agent.matching(r"ERROR .*cannot save host=")
                assert len(errors) == 1 and "No space left on device" in errors[0], agent.tail()
                assert agent.path.read_bytes() == old
                # no temporary file left: a look can meet the one of a save under way (a repush
                # every 0.3 s), so look until one finds none; a file left over never goes
                await _without_temporary_files(agent.path.parent)
                (host,) = await f.hosts()
                assert host.ms_list == (server.address,)  # what the agent holds, not what was sent
                filler.unlink()
                await agent.wait_for("writable again")
                await f.wait_hosts(lambda hosts: ",".join(hosts[0].ms_list) == new)
                assert host_value(agent.path) == f"{new}@static"
                assert not agent.matching("lost server")
                assert await agent.stop() == 0
            finally:
                await agent.stop(signal.SIGKILL)  # a failed check leaves no agent running

    with small_tmpfs(tmp_path / "disk") as disk:
        asyncio.run(scenario(disk))


async def _without_temporary_files(folder: Path, limit: float = 5.0) -> None:
    expected = ["agent.crt", "agent.key", "agent.properties", "ca.crt"]
    deadline = asyncio.get_running_loop().time() + limit
    while True:
        names = _names(folder)
        if names == expected:
            return
        assert asyncio.get_running_loop().time() < deadline, names
        await asyncio.sleep(0.01)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_agentd_run_with_no_guid_on_a_full_disk_says_so_in_one_line(tmp_path: Path) -> None:
    with small_tmpfs(tmp_path / "disk") as disk:
        path = write_properties(disk / "a1", "a1", "127.0.0.1:9")
        before = path.read_bytes()
        fill(disk)
        done = subprocess.run(
            [sys.executable, "-m", "agentd", "run", "--properties", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert done.returncode == 2
        assert done.stderr == (
            f"Error: {path}: cannot write the generated guid: No space left on device\n"
        )
        assert path.read_bytes() == before
        assert [p.name for p in path.parent.iterdir()] == ["agent.properties"]
