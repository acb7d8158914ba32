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

from common.errors import LbError, ProtocolError
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
from msrv.writes import BadWriteError

logger = logging.getLogger(__name__)

LINGER = 2.0  # seconds to wait for the agent to read an error before closing
READ_CHUNK = 64 * 1024


class SilentError(TimeoutError):
    """The agent sent nothing for ping.interval x ping.timeout."""


class StartupOverdueError(TimeoutError):
    """The connection completed no startup within the server's startup timeout."""


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

    def live_window(self) -> float:
        """How recent a connected host's last_seen must be for its session to count as live:
        its server refreshes it every last_seen_interval while it hears from the agent."""
        return 2 * (self.silence_limit() + self.settings.last_seen_interval)


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
        self.held: Held | Offer = Held((), None, None)  # what the agent acked (or reported)
        self.pending: Offer | None = None  # pushed, not acked yet
        self.pending_version = 0
        self.pending_since = 0.0  # loop time of the last push of `pending`
        self.pushed: dict[int, Offer] = {}
        self.superseded = False
        self._loop_time = asyncio.get_running_loop().time
        self._heard = self._loop_time()  # when the agent last sent anything
        self.seen_written = self._heard  # when last_seen was last written for this session
        self._watchdog: asyncio.TimerHandle | None = None
        self._starting = False
        self._overdue = asyncio.get_running_loop().call_later(
            hub.settings.startup_timeout, self._startup_overdue
        )
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
        """Push a list. It counts as held only once the agent acks it (an agent that could not
        save it does not), and is pushed again after repush_interval until then."""
        self._write(_encoded_list(offer, version))
        self.pending = offer  # shared by the agents given the same list
        self.pending_version = version
        self.pending_since = self._loop_time()
        self.pushed[version] = offer

    def repush_if_unacked(self, after: float) -> bool:
        """Push the list again when the agent has not acked it for `after` seconds (it could
        not save it, or the push was lost)."""
        if self.pending is None or self._loop_time() - self.pending_since < after:
            return False
        self.deliver(self.pending, self.pending_version)
        return True

    def last_seen_due(self, interval: float) -> bool:
        """Whether the host's last_seen needs writing: heard from since it was last written,
        and that is `interval` seconds ago."""
        return (
            self.record is not None
            and self._heard > self.seen_written
            and self._loop_time() - self.seen_written >= interval
        )

    def mark_seen(self) -> HostRecord:
        """The record with last_seen = when the agent was last heard (wall clock)."""
        record = self._started
        now = self._loop_time()
        self.seen_written = now
        self.record = replace(record, last_seen=time.time() - (now - self._heard))
        return self.record

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
        except StartupOverdueError:
            logger.info(
                "%s sent no startup within %.0fs; closing", self, self.hub.settings.startup_timeout
            )
            await self._last_word(Error(ErrorCode.STARTUP_TIMEOUT, "no startup in time"))
        except (ConnectionError, OSError) as exc:
            logger.debug("%s connection lost: %s", self, exc)
        except Exception:
            # A bug in one session's work ends that session, loudly, and nothing else.
            logger.exception("%s: internal error; closing this session", self)
            with contextlib.suppress(Exception):
                await self._last_word(Error(ErrorCode.INTERNAL, "internal error", retryable=True))
        finally:
            await self._close()

    def _startup_overdue(self) -> None:
        if self.record is None and not self._starting:
            self.reader.set_exception(StartupOverdueError())

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
                logger.warning("%s sent unknown message type %r; ignored", self, message.type[:60])
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
        self._overdue.cancel()
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
        _check_protocol(message)
        if not self.hub.available or self.hub.stopping:
            raise Refused(
                ErrorCode.UNAVAILABLE, "server cannot register hosts now; retry", retryable=True
            )
        self._starting = True
        try:
            started = await self._register(message)
        except RedisError as exc:
            raise Refused(
                ErrorCode.UNAVAILABLE, f"registry unavailable: {exc}", retryable=True
            ) from None
        except BadWriteError as exc:
            raise Refused(ErrorCode.BAD_MESSAGE, str(exc)) from None
        finally:
            self._starting = False
        if started.stale:
            logger.info(
                "%s: startup of guid %s refused: the host has a newer live session "
                "(this attempt is older; the agent gave it up)",
                self,
                message.guid,
            )
            raise Refused(
                ErrorCode.SUPERSEDED,
                "a newer session of this host is live; this startup is stale",
                retryable=True,
            )
        self._overdue.cancel()
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
            attempt=message.attempt,
        )
        return await self.hub.registry.start(record, live_for=self.hub.live_window())

    async def on_ack(self, message: Ack) -> None:
        if self.record is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "ack before startup")
        offer = self.pushed.get(message.version)
        self.pushed = {v: o for v, o in self.pushed.items() if v > message.version}
        if offer is not None:
            self.held = offer
            if not self.pushed:
                self.pending = None
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
        except (RedisError, LbError) as exc:
            logger.debug("%s: ack not recorded (%s); re-asserted later", self, exc)
            return
        if written == Write.SUPERSEDED:
            self.supersede()

    async def on_ping(self, message: Ping) -> None:
        self.send(Pong(message.seq))

    async def on_pong(self, message: Pong) -> None:
        """Any message proves the agent alive; nothing else to do."""

    async def on_error(self, message: Error) -> None:
        logger.warning("%s reports error %r: %r", self, message.code, message.message[:200])


@functools.lru_cache(maxsize=256)
def _encoded_list(offer: Offer, version: int) -> bytes:
    """A zone recompute sends few distinct lists (roundrobin: one per rotation) to many agents:
    encode each once."""
    return encode(MsList(list(offer.ms_list), offer.algorithm, offer.check_interval, version))


def _check_protocol(message: Startup) -> None:
    """The startup's fields were checked when it was decoded (common.protocol)."""
    if message.protocol != PROTOCOL_VERSION:
        raise ProtocolError(
            ErrorCode.UNSUPPORTED_PROTOCOL,
            f"protocol {message.protocol} not supported; this server speaks {PROTOCOL_VERSION}",
        )


def _ack_fields(record: HostRecord) -> dict[str, str]:
    fields = record.to_hash()
    return {
        name: fields[name]
        for name in ("ms_list", "algorithm", "check_interval", "acked_version", "last_seen")
    }
