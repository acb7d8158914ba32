"""One agent session per TCP connection: JSON lines in, typed messages dispatched by type.

A malformed or oversized line gets an `error` and a close of this connection only; unknown
message types are logged and ignored; silence past ping.interval x ping.timeout closes the
session and marks the host disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from redis.exceptions import RedisError

from common.errors import ProtocolError
from common.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Error,
    ErrorCode,
    Message,
    MessageType,
    MsList,
    Ping,
    Pong,
    Startup,
    UnknownMessage,
    encode,
    read_message,
)
from common.records import HostRecord, HostState
from msrv.activity import Activity
from msrv.balancer import Balancer, Held, Offer
from msrv.config import ServerSettings
from msrv.registry import HostRegistry, Started, Write

logger = logging.getLogger(__name__)

LINGER = 2.0  # seconds to wait for the agent to read an error before closing
READ_CHUNK = 64 * 1024


class SilentError(TimeoutError):
    """The agent sent nothing for ping.interval x ping.timeout."""


class Refused(Exception):
    """End the session with an `error` message."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.error = Error(code, message, retryable)


@dataclass
class Hub:
    """What every session of one server shares."""

    settings: ServerSettings
    registry: HostRegistry
    balancer: Balancer
    available: bool = True  # Redis answers (the subscriber is connected)
    stopping: bool = False
    sessions: dict[int, Session] = field(default_factory=dict)  # by host id, once started
    activity: Activity = field(init=False)

    def __post_init__(self) -> None:
        self.activity = Activity(self.settings.server_id, lambda: len(self.sessions))

    def silence_limit(self) -> float:
        settings = self.balancer.effective(None)
        return float(settings.ping_interval * settings.ping_timeout)


class Session:
    def __init__(
        self, hub: Hub, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.hub = hub
        self.reader = reader
        self.writer = writer
        host, port = writer.get_extra_info("peername", ("?", "?"))[:2]
        self.peer = f"{host}:{port}"
        self.record: HostRecord | None = None
        self.held: Held | Offer = Held((), None, None)
        self.pushed: dict[int, Offer] = {}
        self.superseded = False
        self._loop_time = asyncio.get_running_loop().time
        self._heard = self._loop_time()  # when the agent last sent anything
        self._watchdog: asyncio.TimerHandle | None = None
        self._corked: list[bytes] | None = None  # while a message is handled: what it sends
        self._handlers: dict[MessageType, Callable[[Any], Awaitable[None]]] = {
            MessageType.STARTUP: self.on_startup,
            MessageType.ACK: self.on_ack,
            MessageType.PING: self.on_ping,
            MessageType.PONG: self.on_pong,
            MessageType.ERROR: self.on_error,
        }

    # -- the balancer's view (Agent) -------------------------------------------------------------

    @property
    def host_id(self) -> int:
        return self._started.id

    @property
    def zone(self) -> str:
        return self._started.zone

    @property
    def cluster(self) -> str:
        return self._started.cluster

    @property
    def _started(self) -> HostRecord:
        if self.record is None:
            raise RuntimeError("session has not started")
        return self.record

    def __str__(self) -> str:
        who = f"host {self.record.id} ({self.record.name})" if self.record else "agent"
        return f"{self.hub.settings.server_id}: {who} from {self.peer}"

    def send(self, message: Message) -> None:
        self._write(encode(message))

    def _write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
            return
        if self.writer.is_closing():
            return
        self.writer.write(data)
        transport = self.writer.transport
        if transport.get_write_buffer_size() > self.hub.settings.send_buffer_limit:
            logger.warning("%s reads too slowly; dropping the session", self)
            transport.abort()

    def deliver(self, offer: Offer, version: int) -> None:
        self._write(_encoded_list(offer, version))
        self.held = offer  # shared by the agents given the same list
        self.pushed[version] = offer

    def _uncork(self) -> None:
        """Send what the handler of a message sent (`ready` and `ms_list`: one segment)."""
        corked, self._corked = self._corked, None
        if corked:
            self._write(b"".join(corked))

    def supersede(self) -> None:
        """A newer session of this host exists: leave its state alone and hang up."""
        self.superseded = True
        self._uncork()
        self.send(Error(ErrorCode.SUPERSEDED, "a newer session of this host took over"))
        self.writer.close()

    # -- the connection ---------------------------------------------------------------------------

    async def run(self) -> None:
        self._watch()
        try:
            await self._loop()
        except ProtocolError as exc:
            logger.warning("%s: %s; closing", self, exc.message)
            await self._last_word(Error(exc.code, exc.message))
        except Refused as exc:
            logger.debug("%s refused: %s", self, exc)
            self.hub.activity.note("refused")
            await self._last_word(exc.error)
        except SilentError:
            logger.warning("%s silent for %.0fs; disconnected", self, self.hub.silence_limit())
        except (ConnectionError, OSError) as exc:
            logger.debug("%s connection lost: %s", self, exc)
        finally:
            await self._close()

    def _watch(self) -> None:
        """One timer per silence period, not one per message: when it fires, an agent heard
        from since gets a new one; a silent one gets SilentError in its next read."""
        limit = self.hub.silence_limit()
        deadline = self._heard + limit
        if self._loop_time() < deadline:
            self._watchdog = asyncio.get_running_loop().call_at(deadline, self._watch)
        else:
            self._watchdog = None
            self.reader.set_exception(SilentError(f"silent for {limit:.0f}s"))

    async def _loop(self) -> None:
        while True:
            message = await read_message(self.reader)
            self._heard = self._loop_time()
            if message is None:
                logger.debug("%s closed the connection", self)
                return
            if isinstance(message, UnknownMessage):
                logger.warning("%s sent unknown message type %r; ignored", self, message.type)
                continue
            handler = self._handlers.get(message.TYPE)
            if handler is None:
                logger.warning("%s sent %s, which agents do not send; ignored", self, message.TYPE)
                continue
            self._corked = []
            try:
                await handler(message)
            finally:
                self._uncork()
            await self.writer.drain()

    async def _last_word(self, error: Error) -> None:
        """Send `error`, half-close, and discard what the agent still sends for a moment: a
        close with unread input would reset the connection and could lose the error."""
        self.send(error)
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await self.writer.drain()
            if self.writer.can_write_eof():
                self.writer.write_eof()
            async with asyncio.timeout(LINGER):
                while await self.reader.read(READ_CHUNK):
                    pass

    async def _close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        record = self.record
        if record is not None:
            self.hub.balancer.remove(self)
            if self.hub.sessions.get(record.id) is self:
                del self.hub.sessions[record.id]
            if not self.superseded and not self.hub.stopping:
                with contextlib.suppress(RedisError):
                    await self.hub.registry.disconnect([record])
            self.hub.activity.note("ended")
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()

    # -- messages ---------------------------------------------------------------------------------

    async def on_startup(self, message: Startup) -> None:
        if self.record is not None:
            logger.warning("%s sent a second startup; ignored", self)
            return
        _check_startup(message)
        if not self.hub.available or self.hub.stopping:
            raise Refused(
                ErrorCode.UNAVAILABLE, "server cannot register hosts now; retry", retryable=True
            )
        try:
            started = await self._register(message)
        except RedisError as exc:
            raise Refused(
                ErrorCode.UNAVAILABLE, f"registry unavailable: {exc}", retryable=True
            ) from None
        record = started.record
        await self.hub.balancer.ranks.catch_up(
            record.zone, record.id, ranked=record.ranked, rank=started.rank, count=started.count
        )
        older = self.hub.sessions.get(record.id)
        if older is not None:
            older.supersede()
        self.record = record
        self.held = Held(record.ms_list, record.algorithm, None)
        self.hub.sessions[record.id] = self
        logger.debug("%s started (zone %s, cluster %s)", self, record.zone, record.cluster)
        self.hub.activity.note("started")
        if started.new:
            self.hub.activity.note("new")
        self.hub.balancer.admit(self)

    async def _register(self, message: Startup) -> Started:
        record = HostRecord(
            id=0,  # the registry finds or takes the guid's id
            guid=message.guid,
            name=message.name,
            type=message.host_type,
            zone=message.zone,
            cluster=message.cluster,
            state=HostState.CONNECTED,
            server=self.hub.settings.server_id,
            session=uuid.uuid4().hex,
            ms_list=tuple(message.ms_list),
            algorithm=message.algorithm,
            check_interval=self.hub.balancer.effective(message.cluster).check_interval,
            last_seen=time.time(),
        )
        return await self.hub.registry.start(record)

    async def on_ack(self, message: Ack) -> None:
        if self.record is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "ack before startup")
        offer = self.pushed.get(message.version)
        self.pushed = {v: o for v, o in self.pushed.items() if v > message.version}
        if offer is None:
            self.record = replace(self.record, acked_version=message.version)
        else:
            self.record = replace(
                self.record,
                ms_list=offer.ms_list,
                algorithm=offer.algorithm,
                check_interval=offer.check_interval,
                acked_version=message.version,
                last_seen=time.time(),
            )
        try:
            written = await self.hub.registry.update(self.record, **_ack_fields(self.record))
        except RedisError as exc:
            logger.debug("%s: ack not recorded (%s); re-asserted later", self, exc)
            return
        if written == Write.SUPERSEDED:
            self.supersede()

    async def on_ping(self, message: Ping) -> None:
        self.send(Pong(message.seq))

    async def on_pong(self, message: Pong) -> None:
        """Any message proves the agent alive; nothing else to do."""

    async def on_error(self, message: Error) -> None:
        logger.warning("%s reports error %s: %s", self, message.code, message.message)


@functools.lru_cache(maxsize=256)
def _encoded_list(offer: Offer, version: int) -> bytes:
    """A zone recompute sends few distinct lists (roundrobin: one per rotation) to many agents:
    encode each once."""
    return encode(MsList(list(offer.ms_list), offer.algorithm, offer.check_interval, version))


def _check_startup(message: Startup) -> None:
    if message.protocol != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_PROTOCOL,
            f"protocol {message.protocol} not supported; this server speaks {PROTOCOL_VERSION}",
        )
    for name in ("guid", "zone"):
        if not getattr(message, name).strip():
            raise ProtocolError(ErrorCode.BAD_MESSAGE, f"startup: empty {name!r}")


def _ack_fields(record: HostRecord) -> dict[str, str]:
    fields = record.to_hash()
    return {
        name: fields[name]
        for name in ("ms_list", "algorithm", "check_interval", "acked_version", "last_seen")
    }
