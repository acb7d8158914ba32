"""The per-second summary that replaces a log line per startup and per session end."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

import pytest

from msrv.session_log import SessionLog, describe


def test_describe_counts_what_happened() -> None:
    assert describe(Counter(started=950, new=12, ended=3)) == (
        "950 hosts started (12 new), 3 sessions ended"
    )
    assert describe(Counter(started=1, refused=1)) == "1 host started, 1 startup refused"
    assert describe(Counter()) == ""


def test_first_event_reported_at_once_then_at_most_one_line_a_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> list[str]:
        activity = SessionLog("ms9", lambda: 7, period=0.3)
        task = asyncio.create_task(activity.run())
        try:
            activity.note("started")
            await asyncio.sleep(0.05)
            for _ in range(500):
                activity.note("started")
                activity.note("new")
            activity.note("ended")
            await asyncio.sleep(0.1)  # still inside the period: nothing more yet
            early = [r.getMessage() for r in caplog.records]
            await asyncio.sleep(0.3)
            assert len(early) == 1
            return [r.getMessage() for r in caplog.records]
        finally:
            task.cancel()

    with caplog.at_level(logging.INFO, logger="msrv.session_log"):
        lines = asyncio.run(scenario())
    assert lines == [
        "ms9: 1 host started in the last second; 7 sessions",
        "ms9: 500 hosts started (500 new), 1 session ended in the last second; 7 sessions",
    ]
