"""`partition`: the server holding a third of the agents loses its network for 40 s (its
namespace's link goes down: no packet in or out, nothing answers, no reset), then gets it back;
the same again with the agents behind HAProxy (faultkit.silence has the run and its figures).

ms1 runs in a network namespace of its own, joined to the host by a veth pair
(faultkit.netns); Redis, ms2, ms3, the agents and HAProxy stay on the host, and ms1 reaches
Redis over the veth (Redis listens on loopback and on the host's end of the pair). The cut
takes Redis from ms1 too: it rides that out as any Redis outage (sessions kept, startups
refused, resync and re-assert when Redis is back), while its agents notice the silence of
their sessions (ping.interval 5 s x ping.timeout 3) and fail over through their lists. Behind
HAProxy, its health check cannot connect to ms1 during the cut (a 200 ms connect timeout), so
it marks it DOWN and sends the agents that dial again elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import haproxy
from benchtls import BenchLab

from faultkit import netns
from faultkit.netns import Netns
from faultkit.report import FaultReport
from faultkit.silence import HOLD, SILENCE_LIMIT, VICTIM, SideBySide
from msctl.children import LoggedProcess, msrv_args, msrv_env
from msctl.embedded_redis import RedisServer, new_password
from msctl.lab import LabServer

DEFAULT_AGENTS = 1000
WITHIN = SILENCE_LIMIT + 10.0
TARGET = (
    f"ours: every agent served again within {WITHIN:.0f} s of the cut (ping 5 s x 3), "
    f"no duplicate session and the registry right after the heal ({HOLD:.0f} s), 0 crashes"
)
PORT = 8250
METRICS_PORT = 9250


class BridgedRedis(RedisServer):
    """The lab's redis-server, listening on loopback and on `also` (the veth's host end)."""

    def __init__(self, workdir: Path, also: str) -> None:
        super().__init__(workdir, password=new_password())
        self.also = also

    def command(self) -> list[str]:
        args = super().command()
        args.insert(args.index("--bind") + 2, self.also)
        return args

    def url_on(self, host: str) -> str:
        return f"redis://:{quote(self.password or '', safe='')}@{host}:{self.port}/0"


@dataclass
class PartitionLab(BenchLab):
    """A lab whose ms1 runs in `netns`, its Redis URL through the veth."""

    netns: Netns | None = None
    inner_redis_url: str = ""

    async def add_server(self) -> LabServer:
        if self.members or self.netns is None:
            return await super().add_server()
        listen = f"{self.netns.address}:{PORT}"
        metrics = f"{self.netns.address}:{METRICS_PORT}"
        args = [*msrv_args(listen, VICTIM, self.namespace), "--metrics", metrics]
        child = LoggedProcess(VICTIM, self.netns.wrap(args), env=msrv_env(self.inner_redis_url))
        self.members.append(LabServer(VICTIM, listen, child, metrics))
        return await self.start_server(VICTIM)


@dataclass
class Cut:
    """ms1's link down; up again."""

    netns: Netns

    def begin(self) -> None:
        self.netns.cut()

    def end(self) -> None:
        self.netns.heal()


async def run(agents: int, workdir: Path) -> FaultReport:
    if not netns.available():
        raise RuntimeError("partition needs root and iproute2 (ip netns)")
    space = Netns.create("fk")
    redis = BridgedRedis(workdir / "redis", space.host_address)
    lab = PartitionLab(
        workdir / "lab", servers=3, agents=agents, namespace="faults", port=0,
        tls_san=(haproxy.HOST,), netns=space,
    )  # fmt: skip
    try:
        redis.start()
        lab.redis_url = redis.url
        lab.inner_redis_url = redis.url_on(space.host_address)
        scenario = SideBySide("partition", TARGET, lab, agents, workdir, Cut(space), WITHIN)
        return await scenario.run()
    finally:
        await lab.stop()
        redis.stop()
        space.delete()
