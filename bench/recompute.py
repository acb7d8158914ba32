"""Time to recompute every list of one zone, as a server serving all of its hosts does.

Runs msrv's Balancer against its own redis-server (a free loopback port): the zone's sorted
set holds N host ids and the balancer serves N real sessions whose writers only count bytes
(no sockets). Measured: the sorted read alone, a recompute that pushes nothing (a
hosts.changed that moves no rank), a settings change that pushes to every agent (static ->
roundrobin), and one admission (ranked from the cached ids).

    .venv/bin/python bench/recompute.py [--hosts 100000] [--sizes 1000,10000]

Prints a table, then one JSON line (the last line) with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

from common.assignment import Holding
from common.configstore import ConfigStore
from common.connection import redis_from_url
from common.keys import Keys
from common.records import HostRecord
from msctl.embedded_redis import RedisServer
from msrv.balancer import Balancer
from msrv.config import ServerSettings
from msrv.connection import Connection
from msrv.context import ServerContext
from msrv.lifecycle import HostSession
from msrv.metrics import ServerMetrics
from msrv.registry import HostRegistry
from msrv.resync import Resync
from msrv.session_log import SessionLog
from msrv.table import SessionTable
from msrv.trust import ServerTrust

ZONE = "bench"
SERVERS = "10.0.0.1,10.0.0.2,10.0.0.3"


class NullTransport:
    def get_write_buffer_size(self) -> int:
        return 0


class CountingWriter:
    """Stands in for a StreamWriter: counts the bytes a session writes."""

    transport = NullTransport()

    def __init__(self) -> None:
        self.bytes_out = 0
        self.writes = 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("bench", 0) if name == "peername" else default

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.writes += 1


def session(ctx: ServerContext, host_id: int) -> tuple[HostSession, CountingWriter]:
    """A real msrv session, as after its startup, holding the static list."""
    writer = CountingWriter()
    conn = Connection(None, writer, send_buffer_limit=1 << 20, startup_timeout=60)  # type: ignore[arg-type]
    conn.started()
    host = HostSession(ctx, conn)
    host.record = HostRecord(host_id, f"g{host_id}", zone=ZONE, cluster="c1", type="routing")
    host.holding = Holding(tuple(SERVERS.split(",")), "static", 0, 5, 3)
    return host, writer


def context(redis: object, keys: Keys) -> ServerContext:
    table: SessionTable[HostSession] = SessionTable()
    balancer = Balancer(redis, keys, table)  # type: ignore[arg-type]
    registry = HostRegistry(redis, keys)  # type: ignore[arg-type]
    resync = Resync("bench", ConfigStore(redis, keys), balancer, registry, table)  # type: ignore[arg-type]
    settings = ServerSettings.build("10.0.0.1:8250")
    trust = ServerTrust(redis, keys, "bench")  # type: ignore[arg-type]  # never loaded: no TLS here
    metrics = ServerMetrics("bench", settings.advertise)
    log = SessionLog("bench", lambda: 0)
    return ServerContext(settings, table, registry, balancer, resync, log, trust, metrics)


async def measure(redis_url: str, hosts: int) -> dict[str, float | int]:
    redis = redis_from_url(redis_url)
    keys = Keys(f"bench{hosts}")
    store = ConfigStore(redis, keys)
    try:
        await store.set("host", SERVERS)
        for start in range(1, hosts + 1, 10_000):
            chunk = range(start, min(start + 10_000, hosts + 1))
            await redis.zadd(keys.zone_hosts(ZONE), {str(i): i for i in chunk})
        ctx = context(redis, keys)
        balancer = ctx.balancer
        await ctx.resync.load()
        served = [session(ctx, i) for i in range(1, hosts + 1)]
        writers = [w for _, w in served]
        for host, _ in served:  # as after admission
            ctx.table.start(host)

        started = time.perf_counter()
        await balancer.ranks.read(ZONE)
        read = time.perf_counter() - started

        started = time.perf_counter()
        await balancer.recompute_zone(ZONE)
        unchanged = time.perf_counter() - started
        assert sum(w.writes for w in writers) == 0

        await store.set("indirect.agent.lb.algorithm", "roundrobin")
        started = time.perf_counter()
        assert await ctx.resync.check_settings(after_event=True)
        switched = time.perf_counter() - started
        pushed = sum(w.writes for w in writers)
        assert pushed == hosts, pushed
        # a host admitted now is ranked from the cached ids, not from a new full read
        late, late_writer = session(ctx, hosts + 1)
        await redis.zadd(keys.zone_hosts(ZONE), {str(late.host_id): late.host_id})
        started = time.perf_counter()
        await balancer.ranks.catch_up(ZONE, late.host_id, ranked=True, rank=hosts, count=hosts + 1)
        ctx.table.start(late)
        late._serve(late.record)  # what a startup does once registered: ready, then the list
        admit = time.perf_counter() - started
        assert late_writer.writes == 2  # ready, ms_list
        await redis.delete(*(await redis.keys(f"{keys.namespace}:*")))
        return {
            "hosts": hosts,
            "zrange_s": round(read, 4),
            "recompute_unchanged_s": round(unchanged, 4),
            "recompute_all_pushed_s": round(switched, 4),
            "pushed": pushed,
            "admit_one_s": round(admit, 5),
        }
    finally:
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--sizes", default="1000,10000", help="smaller zones, for the trend")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s] + [args.hosts]
    with tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp)).start()
        try:
            results = [asyncio.run(measure(redis.url, n)) for n in sizes]
        finally:
            redis.stop()
    columns = list(results[0])
    print("  ".join(f"{c:>22}" for c in columns))
    for row in results:
        print("  ".join(f"{row[c]!s:>22}" for c in columns))
    print(json.dumps({"bench": "recompute", "results": results}))


if __name__ == "__main__":
    main()
