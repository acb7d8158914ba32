"""The one retry policy builder (common.retry): what it retries, how long it waits, what it
never retries. Real waits, kept to hundredths of a second."""

import asyncio
import time

import pytest
from tenacity import RetryCallState

from common.retry import Backoff, retry_policy

SMALL = Backoff(initial=0.01, cap=0.02)


def state_at(attempt: int) -> RetryCallState:
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})
    state.attempt_number = attempt
    return state


def flaky(failures, result="done"):
    """A coroutine function that raises each of `failures` in turn, then returns `result`."""
    calls = []

    async def call():
        calls.append(time.monotonic())
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return result

    return call, calls


def test_listed_errors_are_retried_with_a_log_hook_before_each_wait():
    call, calls = flaky([OSError("down"), ConnectionError("still down")])
    seen = []

    def before_sleep(state):
        seen.append((state.attempt_number, str(state.outcome.exception()), state.next_action.sleep))

    policy = retry_policy(retry_on=(OSError,), backoff=SMALL, before_sleep=before_sleep)
    assert asyncio.run(policy(call)) == "done"
    assert len(calls) == 3
    assert [(n, error) for n, error, _ in seen] == [(1, "down"), (2, "still down")]
    assert all(0.0 <= wait <= 0.02 + 0.01 for _, _, wait in seen), seen


def test_an_error_not_listed_is_raised_at_once_as_itself():
    call, calls = flaky([KeyError("bug")])
    policy = retry_policy(retry_on=(OSError,), backoff=SMALL)
    with pytest.raises(KeyError, match="bug"):
        asyncio.run(policy(call))
    assert len(calls) == 1


def test_cancelled_error_is_never_retried_even_when_listed():
    call, calls = flaky([asyncio.CancelledError(), asyncio.CancelledError()])
    policy = retry_policy(retry_on=(BaseException,), backoff=SMALL)

    async def scenario():
        with pytest.raises(asyncio.CancelledError):
            await policy(call)

    asyncio.run(scenario())
    assert len(calls) == 1


def test_a_task_cancelled_during_a_wait_ends_at_once():
    call, calls = flaky([OSError("down")] * 100)

    async def scenario():
        waiting = asyncio.Event()
        policy = retry_policy(
            retry_on=(OSError,),
            backoff=Backoff(initial=30, cap=30),
            before_sleep=lambda state: waiting.set(),
        )
        task = asyncio.create_task(policy(call))
        await waiting.wait()  # about to wait 30 s or more
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 0.5
    assert len(calls) == 1


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 10, 100])
def test_full_jitter_waits_between_zero_and_the_capped_exponential(attempt):
    backoff = Backoff(initial=0.5, cap=10.0, full_jitter=True)
    ceiling = min(0.5 * 2 ** (attempt - 1), 10.0)
    waits = [backoff.wait()(state_at(attempt)) for _ in range(500)]
    assert all(0.0 <= w <= ceiling for w in waits)
    assert min(waits) < ceiling * 0.2 and max(waits) > ceiling * 0.8  # spread over the range


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 10, 100])
def test_additive_jitter_waits_the_capped_exponential_plus_up_to_initial(attempt):
    backoff = Backoff(initial=0.1, cap=2.0)
    floor = min(0.1 * 2 ** (attempt - 1), 2.0)
    waits = [backoff.wait()(state_at(attempt)) for _ in range(500)]
    assert all(floor <= w <= floor + 0.1 for w in waits)
