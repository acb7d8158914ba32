"""`msctl lab kill|start SERVER|redis`: a second terminal asks a running `msctl lab up`.

The request is a JSON message (action, target, a request id) on the lab's control channel
(Redis pub/sub); the lab carries it out and answers in lab.json (`control`: id, ok, result),
where the asking `msctl` waits for it. Both ends outlast a Redis failover (`--redis-ha`): the
lab subscribes again when its connection goes, and the request is published again until a lab
hears it (or the lab's process is gone), so `lab start redis` right after `lab kill redis`
works.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import click
from redis.exceptions import RedisError

from common.connection import redis_from_url
from common.errors import Failed, LbError, Rejected
from common.keys import Keys
from msctl.lab import Lab, read_state

TIMEOUT = 30.0  # `start redis` may wait for the failover (a few seconds) first
RETRY_DELAY = 0.2
REDIS = "redis"  # `lab kill|start redis`: the lab's Redis master (--redis-ha)


# ---- the lab's end ------------------------------------------------------------------------------


async def serve(lab: Lab) -> None:
    """Carry out `msctl lab kill|start SERVER|redis` sent from another terminal; subscribe
    again when the lab's Redis goes away (a killed master: the sentinel URL finds the next)."""
    while True:
        client = lab.redis()
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(lab.keys.lab_control)
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    await _carry_out(lab, message["data"])
        except (RedisError, OSError):
            await asyncio.sleep(RETRY_DELAY)
        finally:
            with contextlib.suppress(RedisError, OSError):
                await pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()


async def _carry_out(lab: Lab, data: str) -> None:
    asked: Any = None
    try:
        asked = json.loads(data)
        action, target = asked["action"], asked["server"]
        if (action, target) == ("kill", REDIS):
            result = await lab.kill_redis()
        elif (action, target) == ("start", REDIS):
            result = await lab.start_redis()
        elif action == "kill":
            await lab.kill_server(target, signal.SIGKILL)
            result = f"{target} killed"
        elif action == "start":
            await lab.start_server(target)
            result = f"{target} started"
        else:
            raise ValueError(f"no action {action!r}")
        ok = True
    except (ValueError, KeyError, TypeError, LbError) as exc:
        click.echo(f"lab: bad control request {data!r}: {exc}", err=True)
        result, ok = str(exc), False
    else:
        click.echo(f"lab: {result}")
    if isinstance(asked, dict) and isinstance(asked.get("id"), str):
        lab.answer(asked["id"], result, ok=ok)


# ---- the second terminal's end ------------------------------------------------------------------


def request(directory: Path, action: str, target: str) -> None:
    try:
        state = read_state(directory)
    except FileNotFoundError as exc:
        raise Failed(str(exc)) from None
    target = _target(state, target)
    message = json.dumps({"action": action, "server": target, "id": secrets.token_hex(8)})
    reply = asyncio.run(_ask(directory, state, message))
    if not reply["ok"]:
        raise Failed(f"{action} {target}: {reply['result']}")
    click.echo(reply["result"])


def _target(state: dict[str, Any], target: str) -> str:
    """The server id (given as an id or address), or `redis` for a lab with --redis-ha."""
    if target == REDIS:
        if not state.get("redis_ha"):
            raise Rejected("this lab's Redis is not highly available: start it with --redis-ha")
        return target
    ids = {s["id"]: s for s in state["servers"]} | {s["listen"]: s for s in state["servers"]}
    if target not in ids:
        names = ", ".join(s["id"] for s in state["servers"])
        raise Rejected(f"no server {target!r} in the lab (servers: {names}, or redis)")
    return str(ids[target]["id"])


async def _ask(directory: Path, state: dict[str, Any], message: str) -> dict[str, Any]:
    """Publish `message` until the lab hears it (its Redis may be failing over), then wait for
    its answer in lab.json."""
    keys = Keys(state["namespace"])
    request_id = json.loads(message)["id"]
    deadline = time.monotonic() + TIMEOUT
    heard = False
    while time.monotonic() < deadline:
        if not heard:
            client = redis_from_url(state["redis_url"])
            with contextlib.suppress(RedisError, OSError):
                heard = bool(await client.publish(keys.lab_control, message))
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()
            if not heard and not _alive(state["control_pid"]):
                raise Failed("no `msctl lab up` is listening for this lab")
        else:
            try:
                reply = read_state(directory).get("control")
            except FileNotFoundError:
                raise Failed("the lab stopped before answering") from None
            if reply and reply.get("id") == request_id:
                return dict(reply)
        await asyncio.sleep(RETRY_DELAY if not heard else 0.05)
    raise Failed(f"the lab did not answer within {TIMEOUT:g}s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True
