"""Retry policies: one builder for every retry loop of the project (the agent's failover passes,
the server's Redis reconnects).

A policy is a value (tenacity `AsyncRetrying`): an explicit tuple of errors to retry, capped
exponential backoff with jitter, an optional `before_sleep` hook for the log line, and no stop:
it retries for as long as its caller runs. `CancelledError` is never retried, whatever the
tuple says, so a task that is cancelled mid-retry ends at once. Any other error is raised as is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    wait_exponential,
    wait_random,
    wait_random_exponential,
)
from tenacity.wait import wait_base

BeforeSleep = Callable[[RetryCallState], None]


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff: the wait before retry n is `initial` x 2^(n-1), at most `cap`,
    with jitter.

    Full jitter (a uniform draw between 0 and that) spreads a fleet that failed at the same
    moment; otherwise the wait is that plus a uniform draw between 0 and `initial`, so a lone
    client comes back close to its schedule."""

    initial: float
    cap: float
    full_jitter: bool = False

    def wait(self) -> wait_base:
        if self.full_jitter:
            return wait_random_exponential(multiplier=self.initial, max=self.cap)
        # wait_exponential_jitter's `initial` is deprecated in newer tenacity; the same sum:
        exponential = wait_exponential(multiplier=self.initial, max=self.cap)
        return exponential + wait_random(0, self.initial)


def retry_policy(
    *,
    retry_on: tuple[type[BaseException], ...],
    backoff: Backoff,
    before_sleep: BeforeSleep | None = None,
) -> AsyncRetrying:
    """Retry the errors of `retry_on` for ever, waiting as `backoff` says; `before_sleep` sees
    each failed attempt (its number, error and the coming wait) before the wait."""
    return AsyncRetrying(
        retry=retry_if_exception_type(retry_on)
        & retry_if_not_exception_type(asyncio.CancelledError),
        wait=backoff.wait(),
        before_sleep=before_sleep,
        reraise=True,
    )
