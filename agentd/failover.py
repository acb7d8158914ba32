"""Connecting with failover: one pass walks the list in order (the lost server last), with no
wait between entries; passes that reach nobody are retried with capped exponential backoff and
full jitter (tenacity), for as long as the agent runs."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_random_exponential

from agentd.link import ConnectFailedError, Link
from common.addresses import Address
from common.errors import LbError

if TYPE_CHECKING:
    from agentd.agent import Agent

logger = logging.getLogger(__name__)


class NoServerReachableError(LbError):
    """One pass over the list reached no server."""


def pass_order(agent: Agent, lost: Address | None) -> list[Address]:
    """The list in order, with the server just lost moved to the end."""
    addresses = list(agent.host_list.addresses)
    if lost is None:
        return addresses
    gone = agent.endpoint(lost)
    return [a for a in addresses if agent.endpoint(a) != gone] + [
        a for a in addresses if agent.endpoint(a) == gone
    ]


async def one_pass(agent: Agent, lost: Address | None) -> Link:
    reasons = []
    for address in pass_order(agent, lost):
        try:
            return await agent.open_link(address)
        except ConnectFailedError as exc:
            reasons.append(str(exc))
    raise NoServerReachableError("; ".join(reasons))


def _log_retry(state: RetryCallState) -> None:
    agent = state.args[0] if state.args else None
    label = getattr(agent, "label", "agent")
    outcome = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning(
        "%s: no server reachable (pass %d: %s); next pass in %.1fs",
        label,
        state.attempt_number,
        outcome,
        wait,
    )


async def connect_with_failover(agent: Agent, lost: Address | None) -> Link:
    try:
        return await one_pass(agent, lost)  # the usual case: no retry machinery (18 us a call)
    except NoServerReachableError as exc:
        failures = [exc]

    async def next_pass(agent: Agent) -> Link:  # the agent argument names it in the log
        if failures:  # tenacity's pass 1 is the one above: report it, wait, go on
            raise failures.pop()
        return await one_pass(agent, lost)

    settings = agent.settings
    retrying = AsyncRetrying(
        retry=retry_if_exception_type(NoServerReachableError),
        wait=wait_random_exponential(multiplier=settings.backoff_initial, max=settings.backoff_max),
        before_sleep=_log_retry,
        reraise=True,
    )
    link: Link = await retrying(next_pass, agent)
    return link
