"""Failover as a function of (addresses, dial, backoff): unit level, a scripted dial, no
network. Backoff waits are real and kept to hundredths of a second."""

import asyncio
import logging
import time

import pytest

from agentd.failover import EveryServerRefusedError, connect_with_failover, pass_order
from agentd.link import ConnectFailedError
from common.addresses import parse_address
from common.retry import Backoff

A, B, C = (parse_address(f"10.0.0.{i}") for i in (1, 2, 3))
FAST = Backoff(initial=0.01, cap=0.02, full_jitter=True)


def endpoint(address):
    return address.endpoint(8250)


class ScriptedDial:
    """dial(address) answers from `script[str(address)]`, one item per call (the last repeats):
    "ok" connects (returns the address), "down" is unreachable, "refused" a retryable
    refusal, "never" a refusal that retrying cannot cure."""

    def __init__(self, script):
        self.script = script
        self.calls = []

    async def __call__(self, address):
        self.calls.append((str(address), time.monotonic()))
        answers = self.script[str(address)]
        seen = sum(1 for a, _ in self.calls if a == str(address))
        answer = answers[min(seen, len(answers)) - 1]
        if answer == "ok":
            return str(address)
        if answer == "down":
            raise ConnectFailedError(address, "Connection refused")
        retryable = answer == "refused"
        raise ConnectFailedError(address, f"refused: {answer}", retryable)

    def order(self):
        return [a for a, _ in self.calls]


def connect(dial, lost=None, addresses=(A, B, C)):
    return asyncio.run(
        connect_with_failover(addresses, dial, FAST, lost, endpoint=endpoint, label="agent hv0")
    )


def test_the_lost_server_goes_last_compared_by_endpoint():
    lost = parse_address("10.0.0.1:8250")  # A with its port spelt out
    assert pass_order([A, B, C], lost, endpoint) == [B, C, A]
    assert pass_order([A, B, C], None, endpoint) == [A, B, C]


def test_one_pass_walks_the_list_in_order_without_waiting():
    dial = ScriptedDial({"10.0.0.1": ["down"], "10.0.0.2": ["refused"], "10.0.0.3": ["ok"]})
    assert connect(dial) == "10.0.0.3"
    assert dial.order() == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    times = [t for _, t in dial.calls]
    assert times[-1] - times[0] < 0.01


def test_after_a_loss_the_lost_server_is_tried_last():
    dial = ScriptedDial({"10.0.0.1": ["ok"], "10.0.0.2": ["down"], "10.0.0.3": ["down"]})
    assert connect(dial, lost=A) == "10.0.0.1"
    assert dial.order() == ["10.0.0.2", "10.0.0.3", "10.0.0.1"]


def test_every_server_refusing_for_good_ends_after_one_pass():
    dial = ScriptedDial({"10.0.0.1": ["never"], "10.0.0.2": ["never"], "10.0.0.3": ["never"]})
    with pytest.raises(EveryServerRefusedError) as caught:
        connect(dial)
    assert dial.order() == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert str(caught.value) == (
        "agent hv0: every server refused it: 10.0.0.1: refused: never; "
        "10.0.0.2: refused: never; 10.0.0.3: refused: never"
    )


@pytest.mark.parametrize("other", ["down", "refused"])
def test_one_server_that_may_answer_later_keeps_the_passes_going(other, caplog):
    dial = ScriptedDial(
        {"10.0.0.1": ["never"], "10.0.0.2": [other, other, "ok"], "10.0.0.3": ["never"]}
    )
    with caplog.at_level(logging.WARNING, logger="agentd.failover"):
        assert connect(dial) == "10.0.0.2"
    assert dial.order() == ["10.0.0.1", "10.0.0.2", "10.0.0.3"] * 2 + ["10.0.0.1", "10.0.0.2"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    for number, line in enumerate(lines, start=1):
        assert line.startswith(f"agent hv0: no server reachable (pass {number}: 10.0.0.1: ")
        assert "10.0.0.2: " in line and "; next pass in 0.0s" in line


def test_a_later_pass_where_every_server_refuses_for_good_ends_the_retries():
    dial = ScriptedDial({"10.0.0.1": ["down", "never"], "10.0.0.2": ["down", "never"]})
    with pytest.raises(EveryServerRefusedError, match="every server refused it"):
        connect(dial, addresses=(A, B))
    assert dial.order() == ["10.0.0.1", "10.0.0.2"] * 2


def test_passes_wait_with_backoff_capped():
    dial = ScriptedDial({"10.0.0.1": ["down"] * 6 + ["ok"]})
    started = time.monotonic()
    connect(dial, addresses=(A,))
    # six waits of at most 0.02 s each (full jitter: between 0 and the capped exponential)
    assert time.monotonic() - started < 6 * 0.02 + 0.5
    assert len(dial.calls) == 7
