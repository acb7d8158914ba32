"""What redis-restart and redis-empty share: a lab whose Redis is a redis-server child with an
AOF fsync'd at every write (`appendonly yes`, `appendfsync always`: msctl.embedded_redis's
`persist`), SIGKILLed under the fleet and started again (with its data, or without), and the
figures of such an outage.

Sessions lost are read two ways: the agents' own word (the swarm's "lost server" lines) and the
registry's session tokens, before the kill and at the end (a token changes only when its agent
starts a new session: a reconnection, or a move).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import ssl
import sys
import time
from dataclasses import dataclass
from typing import Any

from benchtls import BenchLab

from common import protocol
from common.configstore import ConfigStore
from common.protocol import Ready, Startup
from common.tls import server_hostname
from faultkit import fleet
from msctl.children import REDIS_URL_ENV, LoggedProcess
from msctl.embedded_redis import RedisServer, new_password

DOWN_S = 20.0  # Redis stays down longer than the agents' silence limit (ping 5 s x 3)
RESYNC_LIMIT = 60.0  # seconds for every server to say Redis is back
SERVED_LIMIT = 120.0  # seconds for the fleet to be whole again
UNREACHABLE = "Redis unreachable"
BACK = "Redis is back"
NAMESPACE = "faults"
# the preferred-host checker's period: it returns the few agents a lab's start leaves off their
# first entry (bench/maintenance.py), so that the fleet settles before the fault
CHECK_INTERVAL = "10"
PROBE_EVERY = 0.05  # seconds between two startups a probe offers


@dataclass
class PersistentLab(BenchLab):
    """A BenchLab whose Redis keeps an AOF fsync'd at every write, killed and started by the
    scenario (RedisServer keeps its port, password and folder across starts)."""

    def __post_init__(self) -> None:
        self.store = RedisServer(self.directory / "redis", persist=True, password=new_password())

    async def start(self, **settings: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.embedded = self.store.start()  # stopped by Lab.stop
        self.redis_url = self.store.url
        await super().start(**settings)

    def wipe(self) -> None:
        """Remove Redis's data (it is stopped): it comes back empty."""
        for path in self.store.workdir.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            elif path.suffix in (".rdb", ".aof"):
                path.unlink()


async def stored(lab: BenchLab) -> dict[str, str]:
    """Every global setting stored (name -> value as set)."""
    async with lab.connected() as client:
        snapshot = await ConfigStore(client, lab.keys).snapshot()
    return dict(snapshot.global_values)


async def outage(lab: PersistentLab, *, empty: bool) -> dict[str, Any]:
    """Kill Redis, keep it down DOWN_S, start it again (empty: without its data), until every
    server resynchronised. Figures from the kill."""
    servers = [m.child for m in lab.members]
    down = [s.count(UNREACHABLE) + 1 for s in servers]  # a lab may see several outages
    back = [s.count(BACK) + 1 for s in servers]
    killed = time.monotonic()
    lab.store.kill()
    await _each_logged(servers, UNREACHABLE, down)
    seen_down = time.monotonic() - killed
    await asyncio.sleep(max(0.0, DOWN_S - seen_down))
    if empty:
        lab.wipe()
    lab.store.start()
    restarted = time.monotonic()
    await _each_logged(servers, BACK, back)
    return {
        "down_s": round(restarted - killed, 2),
        "every_server_saw_it_down_s": round(seen_down, 2),
        "every_server_resynced_s": round(time.monotonic() - restarted, 2),
        "restarted_at": restarted,
    }


async def _each_logged(servers: list[LoggedProcess], pattern: str, counts: list[int]) -> None:
    """Until each server logged `pattern` its count of times."""
    pairs = zip(servers, counts, strict=True)
    await asyncio.gather(*(s.wait_for(pattern, RESYNC_LIMIT, count=n) for s, n in pairs))


def server_lines(lab: BenchLab, pattern: str) -> list[str]:
    """Each server's log lines matching `pattern` from its first "Redis unreachable" on,
    without the time stamp."""
    regex = re.compile(pattern)
    found = []
    for member in lab.members:
        lines = list(member.child.lines)
        start = next((i for i, line in enumerate(lines) if UNREACHABLE in line), len(lines))
        found += [line.split(" ", 2)[-1] for line in lines[start:] if regex.search(line)]
    return found


async def agreement(lab: BenchLab) -> tuple[int, dict[str, int]]:
    """Redis's settings version and the one each running server applies."""
    async with lab.connected() as client:
        version = await ConfigStore(client, lab.keys).version()
    return version, await fleet.settings_versions(lab)


def agreed(lab: BenchLab, version: int, versions: dict[str, int]) -> bool:
    """Every server of the lab runs and applies Redis's settings `version`."""
    return len(versions) == len(lab.members) and set(versions.values()) == {version}


async def wait_agreed(lab: BenchLab, limit: float) -> tuple[int, dict[str, int]]:
    """Until every server applies Redis's settings version (a server writes the version it
    applies with its liveness, every 2 s), or `limit` seconds: the last agreement read."""
    deadline = time.monotonic() + limit
    while True:
        version, versions = await agreement(lab)
        if agreed(lab, version, versions) or time.monotonic() > deadline:
            return version, versions
        await asyncio.sleep(fleet.POLL)


async def msctl(lab: BenchLab, *args: str, timeout: float = 60.0) -> tuple[int, str]:
    """Run `msctl ARGS` as an operator would (the lab's Redis URL in its environment): its
    exit code and output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "msctl",
        *args,
        "--namespace",
        lab.namespace,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, REDIS_URL_ENV: lab.url},
    )
    try:
        async with asyncio.timeout(timeout):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return process.returncode or 0, output.decode(errors="replace")


async def first_accepted_startup(
    addresses: list[str], tls: ssl.SSLContext, guid: str, limit: float = RESYNC_LIMIT
) -> float:
    """Offer a startup (a probe host `guid`, whose certificate `tls` presents, of a zone of its
    own, so no agent's rank moves) to the servers at `addresses` in turn until one is accepted:
    when it was (monotonic). TimeoutError after `limit` seconds."""
    deadline = time.monotonic() + limit
    attempt = 0
    while time.monotonic() < deadline:
        address = addresses[attempt % len(addresses)]
        attempt += 1
        host, port = address.rsplit(":", 1)
        try:
            async with asyncio.timeout(10):
                reader, writer = await asyncio.open_connection(
                    host, int(port), ssl=tls, server_hostname=server_hostname(host)
                )
                try:
                    startup = Startup(guid, guid, "routing", "probe", "probe", [], None, address)
                    writer.write(protocol.encode(startup))
                    await writer.drain()
                    if isinstance(await protocol.read_message(reader), Ready):
                        return time.monotonic()
                finally:
                    writer.close()
        except (OSError, TimeoutError):
            pass
        await asyncio.sleep(PROBE_EVERY)
    raise TimeoutError(f"no server accepted a startup within {limit:g}s")
