"""Helpers shared by the benchmarks: open-file limit, percentiles, tables, registry reads,
/proc sampling, and the clean-up every script runs on any exit."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import redis.asyncio as aioredis  # noqa: E402

from common.keys import Keys  # noqa: E402
from msctl.children import kill_leftovers  # noqa: E402

if TYPE_CHECKING:
    from msctl.lab import Lab

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def raise_nofile(needed: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, needed, 65536)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < needed:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is below the {needed} needed")
    return target


@contextlib.contextmanager
def leftovers_killed() -> Iterator[None]:
    """On any exit: SIGKILL every child started through msctl.children that is still running."""
    try:
        yield
    finally:
        killed = kill_leftovers()
        if killed:
            print(f"killed leftover children: {', '.join(killed)}", file=sys.stderr)


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of `values`."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "p50_s": round(pct(values, 50), 3),
        "p99_s": round(pct(values, 99), 3),
        "max_s": round(max(values), 3) if values else float("nan"),
    }


def revision() -> str:
    """HEAD's short hash, with '+dirty(paths)' when tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout

    head = git("rev-parse", "--short", "HEAD").strip()
    dirty = git("status", "--porcelain", "--untracked-files=no", "msrv", "agentd", "common")
    paths = sorted({line[3:] for line in dirty.splitlines()})
    return head + (f"+dirty({','.join(paths)})" if paths else "")


def print_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> None:
    cells = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                        enumerate(zip(row, widths, strict=True))))  # fmt: skip
        if n == 0:
            print("  ".join("-" * w for w in widths))


def print_json(result: dict[str, Any]) -> None:
    print(json.dumps(result), flush=True)


# ---- registry


@dataclass(frozen=True)
class HostView:
    id: int
    guid: str
    server: str
    state: str
    acked_version: int
    last_seen: float
    ms_list: str


async def host_views(redis: aioredis.Redis, keys: Keys) -> list[HostView]:
    """Every registered host's server, state, acked version and last_seen, in one pipeline."""
    ids = sorted({int(v) for v in await redis.hvals(keys.host_ids_by_guid)})
    fields = ("guid", "server", "state", "acked_version", "last_seen", "ms_list")
    async with redis.pipeline(transaction=False) as pipe:
        for host_id in ids:
            pipe.hmget(keys.host(host_id), fields)
        replies = cast(list[list[str | None]], await pipe.execute())
    return [
        HostView(i, *(x or "" for x in r[:3]), int(r[3] or 0), float(r[4] or 0), r[5] or "")
        for i, r in zip(ids, replies, strict=True)
    ]


async def lab_views(lab: Lab) -> list[HostView]:
    """A lab's registry, read once through a client of its own."""
    client = lab.redis()
    try:
        return await host_views(client, lab.keys)
    finally:
        await client.aclose()


def on_first_entry(lab: Lab, views: Sequence[HostView]) -> int:
    """How many hosts are connected to their list's first entry (settled, for roundrobin)."""
    ids = {m.listen: m.server_id for m in lab.members}
    return sum(
        1 for v in views if v.state == "connected" and ids.get(v.ms_list.split(",")[0]) == v.server
    )


# ---- /proc


@dataclass(frozen=True)
class ProcSample:
    at: float  # monotonic
    cpu_ticks: int  # utime + stime
    rss_bytes: int


def proc_sample(pid: int) -> ProcSample:
    at = time.monotonic()
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
            break
    return ProcSample(at, ticks, rss)


def cpu_share(first: ProcSample, last: ProcSample) -> float:
    """Fraction of one core used between two samples."""
    return (last.cpu_ticks - first.cpu_ticks) / CLK_TCK / max(last.at - first.at, 1e-9)
