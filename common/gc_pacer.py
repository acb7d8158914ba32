"""Short garbage-collector passes for processes that hold thousands of long-lived sessions.

CPython's full (generation 2) pass scans every tracked object, and it runs when the objects that
survived since the last one reach a quarter of the rest. In an `agentd swarm` of 3,000 agents
that pass took 320-375 ms, and a failover (1,000 new sessions at once) set it off, doubling the
failover time; `msrv` with 1,000 sessions paused 60-170 ms the same way.

So, every `period` seconds, `GcPacer` collects what is not frozen (only what was made since
the last tick: cheap) and freezes the survivors (`gc.freeze`), which the automatic passes then
skip. Frozen objects that later become cyclic garbage would never be freed, so every
`full_every` ticks it unfreezes everything first: one full pass, at a moment of its own
choosing, bounds that leak. Objects freed by reference counting (nearly all, asyncio breaks its
transport/protocol cycles on close) are freed at once, frozen or not.

Freed is not returned: glibc keeps the memory of a burst of connections (2,000 TLS handshakes
left a server ~100 MB larger for good) in its heap. After each pass, `malloc_trim(0)` gives the
free pages back to the system (glibc only; elsewhere nothing is done).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

logger = logging.getLogger(__name__)

PERIOD = 2.0  # seconds between passes over the unfrozen objects
FULL_EVERY = 300  # passes between full ones (10 minutes)
SLOW_PASS = 0.1  # seconds: a pass this long is logged


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim: Callable[[int], int] | None = getattr(ctypes.CDLL(name), "malloc_trim", None)
    return trim


MALLOC_TRIM = _malloc_trim()


class GcPacer:
    def __init__(self, label: str, *, period: float = PERIOD, full_every: int = FULL_EVERY) -> None:
        self.label = label
        self.period = period
        self.full_every = max(full_every, 1)
        self.passes = 0

    def collect(self) -> float:
        """One pass (full on every `full_every`-th); returns its duration in seconds."""
        started = time.perf_counter()
        self.passes += 1
        if self.passes % self.full_every == 0:
            gc.unfreeze()
        freed = gc.collect()
        gc.freeze()
        if MALLOC_TRIM is not None:
            MALLOC_TRIM(0)
        took = time.perf_counter() - started
        if took >= SLOW_PASS:
            # not gc.get_freeze_count(): it walks every frozen object (600,000 in a swarm of
            # 3,000 agents), and made a slow pass slower (py-spy: 4.6% of such a swarm's event
            # loop when `host` changed)
            logger.info(
                "%s: garbage collection took %.0f ms (%d unreachable)",
                self.label,
                took * 1000,
                freed,
            )
        return took

    async def run(self, until: asyncio.Event) -> None:
        """Collect every `period` seconds until `until` is set."""
        while True:
            try:
                async with asyncio.timeout(self.period):
                    await until.wait()
                    return
            except TimeoutError:
                self.collect()
