"""HAProxy as production runs it in front of the servers, with its stats socket read.

TCP mode (TLS passed through: the servers' certificates name HAProxy's host, `--tls-san`),
leastconn, a TCP health check every 200 ms (fall 1 rise 1), redispatch, 3 retries, connect
timeout 200 ms, and client and server timeouts of an hour, as in production, where idle agent
sessions must not be cut. bench/haproxy.py has the same settings but 10-minute timeouts and no
stats socket. `show stat` gives each server's status (UP/DOWN, as its health check sees it) and
`stot`, the sessions HAProxy has sent to it: their difference over a fault is how many
connections it routed to a server that could not serve them.
"""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from haproxy import HOST, executable

from msctl.embedded_redis import free_port

BACKEND = "servers"
TIMEOUT = "1h"  # client and server: production values for long-lived agent sessions


def config(listen: str, servers: dict[str, str], maxconn: int, socket: Path) -> str:
    backends = "\n".join(f"    server {name} {address}" for name, address in servers.items())
    return f"""global
    maxconn {maxconn}
    log stderr format raw local0 notice
    stats socket {socket} mode 600 level admin

defaults
    mode tcp
    log global
    timeout connect 200ms
    timeout client {TIMEOUT}
    timeout server {TIMEOUT}
    retries 3
    option redispatch 1
    default-server check inter 200ms fall 1 rise 1

frontend agents
    bind {listen}
    maxconn {maxconn}
    default_backend {BACKEND}

backend {BACKEND}
    balance leastconn
{backends}
"""


@dataclass(frozen=True)
class ServerStat:
    status: str  # UP, DOWN, ... as the health checks see it
    sessions: int  # scur: current
    total: int  # stot: sent to it since HAProxy started


class ProductionHAProxy:
    """One haproxy (foreground) on a free port of HOST, in front of `servers` (name -> address)."""

    def __init__(self, directory: Path, servers: dict[str, str], agents: int) -> None:
        self.listen = f"{HOST}:{free_port(HOST)}"
        self.socket = directory / "haproxy.sock"
        self.config = directory / "haproxy.cfg"
        self.config.write_text(config(self.listen, servers, 2 * agents + 1000, self.socket))
        self.log = directory / "haproxy.log"
        self.process = subprocess.Popen(
            [executable(), "-f", str(self.config), "-db"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("wb"),
        )

    async def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited {self.process.returncode}: {self.log_tail()}")
            try:
                await self.stats()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    async def stats(self) -> dict[str, ServerStat]:
        """The backend's servers by name, from `show stat`."""
        reader, writer = await asyncio.open_unix_connection(str(self.socket))
        try:
            writer.write(b"show stat\n")
            await writer.drain()
            text = (await reader.read()).decode()
        finally:
            writer.close()
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {
            row["svname"]: ServerStat(row["status"], int(row["scur"] or 0), int(row["stot"] or 0))
            for row in rows
            if row.get("pxname") == BACKEND and row.get("svname") not in ("BACKEND", None)
        }

    def log_tail(self, n: int = 20) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])

    def status_changes(self) -> list[str]:
        """Its log's lines saying a server went DOWN or UP."""
        if not self.log.exists():
            return []
        lines = self.log.read_text(errors="replace").splitlines()
        return [line for line in lines if " is DOWN" in line or " is UP" in line]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
