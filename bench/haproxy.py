"""HAProxy in front of the failover bench's servers, and the failover measured through it.

`host` becomes HAProxy's one address (TCP mode, leastconn, health checks every 200 ms, fall 1
rise 1, redispatch, retries 3, connect timeout 200 ms) in front of the same servers; check
interval 0. TCP mode passes the agents' TLS through untouched (HAProxy holds no certificate and
sees no client's); the servers' certificates must name HAProxy's host, which the agents dial:
the lab starts them with `--tls-san HOST` (HOST below). Its health checks are plain TCP
connects, which msrv logs as handshakes that did not complete. The agents persist that
one-entry list and move behind HAProxy, which spreads them. The server holding the most is
SIGKILLed; the phase times until all of its agents are registered on another server.
"""

from __future__ import annotations

import asyncio
import collections
import shutil
import subprocess
import time
from pathlib import Path

from benchlib import lab_views
from failover_timing import Condition, failover_of, poll_until, quiescent

from msctl.embedded_redis import free_port
from msctl.lab import Lab

HOST = "127.0.0.10"  # HAProxy's frontend host (the servers' --tls-san)


def executable() -> str:
    """haproxy on PATH, else Debian's path for it (which may not exist)."""
    return shutil.which("haproxy") or "/usr/sbin/haproxy"


def installed() -> bool:
    return Path(executable()).exists()


def config(listen: str, servers: list[str], maxconn: int) -> str:
    backends = "\n".join(f"    server {f'ms{i + 1}'} {a}" for i, a in enumerate(servers))
    return f"""global
    maxconn {maxconn}
    log stderr format raw local0 notice

defaults
    mode tcp
    log global
    timeout connect 200ms
    timeout client 10m
    timeout server 10m
    retries 3
    option redispatch 1
    default-server check inter 200ms fall 1 rise 1

frontend agents
    bind {listen}
    maxconn {maxconn}
    default_backend servers

backend servers
    balance leastconn
{backends}
"""


class HAProxy:
    """One haproxy process (foreground, its log in the directory) on a free port of HOST."""

    def __init__(self, directory: Path, servers: list[str], agents: int) -> None:
        self.listen = f"{HOST}:{free_port(HOST)}"
        self.config = directory / "haproxy.cfg"
        self.config.write_text(config(self.listen, servers, 2 * agents + 1000))
        self.process = subprocess.Popen(
            [executable(), "-f", str(self.config), "-db"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=(directory / "haproxy.log").open("wb"),
        )

    async def wait_listening(self, timeout: float = 10.0) -> None:
        host, port = self.listen.rsplit(":", 1)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited {self.process.returncode}")
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def behind_proxy(listen: str, count: int) -> Condition:
    """Every host connected, holding the one-entry list `listen`."""
    return lambda views: (
        sum(1 for v in views if v.state == "connected" and v.ms_list == listen) == count
    )


async def run_phase(lab: Lab, workdir: Path, agents: int) -> dict[str, object]:
    """The lab's agents behind HAProxy; SIGKILL the server holding the most; time it."""
    proxy = HAProxy(workdir, lab.addresses, agents)
    try:
        await proxy.wait_listening()
        await lab.configure(check_interval="0", host=proxy.listen)
        behind = behind_proxy(proxy.listen, agents)
        await poll_until(lab, behind, 60 + agents / 50, "move behind haproxy")
        await quiescent(lab)  # the make-before-break moves close their old sessions
        views = await lab_views(lab)
        spread = collections.Counter(v.server for v in views if v.state == "connected")
        target = spread.most_common(1)[0][0]
        figures, _ = await failover_of(lab, target)
        return {"spread": dict(sorted(spread.items())), **figures}
    finally:
        proxy.stop()
