"""The events channel: hints that settings or a zone changed, and the resync after an outage.

Pub/sub loses what is published while the subscriber is away, so every (re)connection first
subscribes and then calls `on_connected`, which re-reads the keys (the truth). A lost
connection calls `on_lost` and reconnects with capped exponential backoff and jitter.

Through a redis+sentinel:// URL the subscriber also asks the sentinels every MASTER_CHECK
seconds which master they name: a master demoted while alive (a manual failover, or one cut off
from the sentinels) keeps its subscribers until Sentinel reconfigures it, about 10 s later,
and events published on the new master meanwhile would never come. Another master named is
handled as a lost connection: reconnect (to it), resync.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.sentinel import MasterNotFoundError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ReadOnlyError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, RetryCallState

from common.errors import ProtocolError
from common.events import EventType, decode_event
from common.keys import Keys
from common.retry import Backoff
from common.retry import retry_policy as build_retry_policy
from common.sentinel import moved_master

logger = logging.getLogger(__name__)

MASTER_CHECK = 2.0  # seconds between two questions to the sentinels (redis+sentinel:// only)

# Errors that mean "Redis is not there (yet)": retried. Anything else is a bug and crashes.
# A master failover (DESIGN, Redis high availability) shows as these too: no master known to
# the sentinels (MasterNotFoundError, a ConnectionError); a demoted master refusing a write
# (ReadOnlyError: through a sentinel URL redis-py makes it a ConnectionError and asks the
# sentinels again; through a `redis://` address that now names a replica it is not); a script
# loaded on the old master and run on the new one (NoScriptError; the next pipeline loads it).
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    NoScriptError,
    ConnectionError,
    OSError,
)


def retry_policy(what: str, *, initial: float = 0.1, cap: float = 2.0) -> AsyncRetrying:
    """Retry Redis connection errors forever, backing off exponentially (capped, jittered).
    The first failure, the tenth and any of another kind than the one before are warnings."""
    last_kind: type[BaseException | None] | None = None

    def before_sleep(state: RetryCallState) -> None:
        nonlocal last_kind
        outcome = state.outcome
        error = outcome.exception() if outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        changed = type(error) is not last_kind
        last_kind = type(error)
        log = logger.warning if state.attempt_number in (1, 10) or changed else logger.debug
        if isinstance(error, MasterNotFoundError):  # the sentinels answer, but name none
            problem = "%s"  # says so, and what each sentinel said
        elif isinstance(error, ReadOnlyError):  # a replica, at a redis:// address
            problem = "Redis refuses writes (%s)"
        else:
            problem = "Redis unreachable (%s)"
        log(
            f"%s: {problem}; attempt %d, retrying in %.2fs",
            what,
            error,
            state.attempt_number,
            delay,
        )

    return build_retry_policy(
        retry_on=CONNECTION_ERRORS, backoff=Backoff(initial, cap), before_sleep=before_sleep
    )


class Subscriber:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        name: str,
        *,
        on_event: Callable[[dict[str, Any]], None],
        on_connected: Callable[[], Awaitable[None]],
        on_lost: Callable[[], None],
    ) -> None:
        self.redis = redis  # a client of its own, with redis-py's hidden retries off
        self.keys = keys
        self.name = name
        self.on_event = on_event
        self.on_connected = on_connected
        self.on_lost = on_lost

    async def run(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                async for attempt in retry_policy(f"{self.name} events"):
                    with attempt:
                        await self._connect(pubsub)
                await self._listen(pubsub)
            except CONNECTION_ERRORS as exc:
                logger.warning("%s: lost Redis (%s); reconnecting", self.name, exc)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]

    async def _connect(self, pubsub: PubSub) -> None:
        """Subscribe first, then resync: nothing published meanwhile can be missed."""
        try:
            await pubsub.subscribe(self.keys.events)
            await self.on_connected()
        except CONNECTION_ERRORS:
            self.on_lost()
            await pubsub.reset()
            raise

    async def _listen(self, pubsub: PubSub) -> None:
        check_at = time.monotonic() + MASTER_CHECK
        try:
            while True:
                message = await pubsub.get_message(timeout=MASTER_CHECK)
                if message is not None and message.get("type") == "message":
                    self._dispatch(message["data"])
                if time.monotonic() >= check_at:
                    check_at = time.monotonic() + MASTER_CHECK
                    moved = await moved_master(self.redis)
                    if moved is not None:
                        raise RedisConnectionError(moved)
        except CONNECTION_ERRORS:
            self.on_lost()
            raise

    def _dispatch(self, data: str) -> None:
        try:
            event = decode_event(data)
        except ProtocolError as exc:
            logger.warning("%s: ignored a bad event: %s", self.name, exc.message)
            return
        if event["type"] not in {str(t) for t in EventType}:
            logger.warning("%s: ignored an event of unknown type %r", self.name, event["type"])
            return
        self.on_event(event)
