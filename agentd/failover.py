"""Connecting with failover, as a function of (addresses, dial, backoff).

One pass walks the list in order (the server just lost last), with no wait between entries.
The pass ends at the first entry that completes a startup, or:
- every entry refused the agent with an error that retrying cannot cure (an unsupported
  protocol, say): `EveryServerRefusedError`, and the agent stops;
- otherwise (at least one entry was unreachable, timed out or refused retryably): the pass is
  retried with capped exponential backoff and full jitter (tenacity), for as long as the agent
  runs. The first pass runs without the retry machinery, which is only built when it fails.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from tenacity import RetryCallState

from agentd.link import ConnectFailedError
from common.addresses import DEFAULT_PORT, Address
from common.errors import LbError
from common.retry import Backoff, retry_policy

logger = logging.getLogger(__name__)

LinkT = TypeVar("LinkT")
Endpoint = Callable[[Address], tuple[str, int]]


class NoServerReachableError(LbError):
    """One pass over the list reached no server; a later pass may."""


class EveryServerRefusedError(LbError):
    """Every server of one pass refused the agent with a non-retryable error."""


def default_endpoint(address: Address) -> tuple[str, int]:
    return address.endpoint(DEFAULT_PORT)


def pass_order(
    addresses: Sequence[Address], lost: Address | None, endpoint: Endpoint = default_endpoint
) -> list[Address]:
    """The list in order, with the server just lost (compared by endpoint) moved to the end."""
    if lost is None:
        return list(addresses)
    gone = endpoint(lost)
    return [a for a in addresses if endpoint(a) != gone] + [
        a for a in addresses if endpoint(a) == gone
    ]


async def one_pass(
    addresses: Sequence[Address], dial: Callable[[Address], Awaitable[LinkT]], label: str
) -> LinkT:
    failures: list[ConnectFailedError] = []
    for address in addresses:
        try:
            return await dial(address)
        except ConnectFailedError as exc:
            failures.append(exc)
    reasons = "; ".join(str(f) for f in failures)
    if failures and not any(f.retryable for f in failures):
        raise EveryServerRefusedError(f"{label}: every server refused it: {reasons}")
    raise NoServerReachableError(reasons)


def pass_logger(label: str) -> Callable[[RetryCallState], None]:
    def log_pass(state: RetryCallState) -> None:
        outcome = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        logger.warning(
            "%s: no server reachable (pass %d: %s); next pass in %.1fs",
            label,
            state.attempt_number,
            outcome,
            wait,
        )

    return log_pass


async def connect_with_failover(
    addresses: Sequence[Address],
    dial: Callable[[Address], Awaitable[LinkT]],
    backoff: Backoff,
    lost: Address | None = None,
    *,
    endpoint: Endpoint = default_endpoint,
    label: str = "agent",
) -> LinkT:
    """The first session a pass over `addresses` opens; raises EveryServerRefusedError when
    every server of a pass refuses for good."""
    order = pass_order(addresses, lost, endpoint)
    try:
        return await one_pass(order, dial, label)  # the usual case: no retry machinery
    except NoServerReachableError as exc:
        failures = [exc]

    async def next_pass() -> LinkT:
        if failures:  # tenacity's pass 1 is the one above: report it, wait, go on
            raise failures.pop()
        return await one_pass(order, dial, label)

    retrying = retry_policy(
        retry_on=(NoServerReachableError,), backoff=backoff, before_sleep=pass_logger(label)
    )
    return await retrying(next_pass)
