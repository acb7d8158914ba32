"""What the sessions of a server did, logged as one summary line at most once a second.

A fleet failing over starts a thousand sessions in a second: one line each would cost more
than the startups. Each event is logged at DEBUG; this line says what happened, e.g.
"ms2: 950 hosts started (12 new), 3 sessions ended in the last second; 2950 sessions". The
first event after a quiet second is reported at once, the ones that follow within the second
together, so every line covers at most a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable

logger = logging.getLogger(__name__)

PERIOD = 1.0  # seconds between summary lines

# event -> how the summary names it (one, many)
_PHRASES = {
    "started": ("host started", "hosts started"),
    "refused": ("startup refused", "startups refused"),
    "ended": ("session ended", "sessions ended"),
}


class SessionLog:
    def __init__(self, server_id: str, sessions: Callable[[], int], period: float = PERIOD) -> None:
        self.server_id = server_id
        self.sessions = sessions  # how many sessions are open now
        self.period = period
        self.counts: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._last = -period

    def note(self, event: str) -> None:
        self.counts[event] += 1
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(max(0.0, self._last + self.period - time.monotonic()))
            self._wake.clear()
            self._last = time.monotonic()
            self.report()

    def report(self) -> None:
        counts, self.counts = self.counts, Counter()
        if counts:
            logger.info(
                "%s: %s in the last second; %d sessions",
                self.server_id,
                describe(counts),
                self.sessions(),
            )


def describe(counts: Counter[str]) -> str:
    parts = []
    for event, (one, many) in _PHRASES.items():
        if counts[event]:
            text = f"{counts[event]} {one if counts[event] == 1 else many}"
            if event == "started" and counts["new"]:
                text += f" ({counts['new']} new)"
            parts.append(text)
    return ", ".join(parts)
