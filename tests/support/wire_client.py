"""A small agent that speaks the wire protocol, for tests and benchmarks.

It records every message it receives, acks each `ms_list` (unless told not to), and can prove
that nothing else is on the way: `sync()` sends a `ping` and collects what arrives before the
matching `pong` (a server answers in order on one connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
from dataclasses import dataclass, field

from common.errors import ProtocolError
from common.protocol import (
    READER_LIMIT,
    Ack,
    Error,
    Message,
    MsList,
    Ping,
    Pong,
    Ready,
    Startup,
    UnknownMessage,
    encode,
    read_message,
)

KEEPALIVE_SEQ = 0  # pongs to keep-alive pings are not recorded
_CLOSED = object()


@dataclass
class Greeting:
    ready: Ready
    ms_list: MsList | None
    others: list[Message] = field(default_factory=list)


class WireClient:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        auto_ack: bool,
        guid: str = "",
    ) -> None:
        self.guid = guid  # the CN of the client certificate presented ("" if none)
        self.reader = reader
        self.writer = writer
        self.auto_ack = auto_ack
        self.received: list[Message | UnknownMessage] = []
        self.closed = asyncio.Event()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self._seq = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = {asyncio.create_task(self._read())}

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        *,
        guid: str = "",
        auto_ack: bool = True,
        timeout: float = 5.0,
    ) -> WireClient:
        """Dial with TLS (`tls`: a context from tests.support.tls), or in plaintext when
        `tls` is None (an intruder: the server refuses it in the handshake)."""
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=tls,
                server_hostname=host if tls is not None else None,
                limit=READER_LIMIT,
            )
        return cls(reader, writer, auto_ack=auto_ack, guid=guid)

    @property
    def ms_lists(self) -> list[MsList]:
        return [m for m in self.received if isinstance(m, MsList)]

    @property
    def current(self) -> MsList | None:
        lists = self.ms_lists
        return lists[-1] if lists else None

    async def _read(self) -> None:
        try:
            while True:
                message = await read_message(self.reader)
                if message is None:
                    break
                if isinstance(message, Pong) and message.seq == KEEPALIVE_SEQ:
                    continue
                self.received.append(message)
                if isinstance(message, MsList) and self.auto_ack:
                    await self.send(Ack(message.version, message.ms_list, message.algorithm))
                self._queue.put_nowait(message)
        except (ConnectionError, OSError, ProtocolError):
            pass
        finally:
            self.closed.set()
            self._queue.put_nowait(_CLOSED)

    async def send(self, message: Message) -> None:
        await self.send_raw(encode(message))

    async def send_raw(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def next(self, timeout: float = 5.0) -> Message | UnknownMessage | None:
        """The next message, or None once the server closed the connection."""
        async with asyncio.timeout(timeout):
            item = await self._queue.get()
        if item is _CLOSED:
            self._queue.put_nowait(_CLOSED)
            return None
        assert isinstance(item, Message | UnknownMessage)
        return item

    async def sync(self, timeout: float = 5.0) -> list[Message | UnknownMessage]:
        """Every message the server sent before answering a fresh ping."""
        seq = next(self._seq)
        await self.send(Ping(seq))
        before: list[Message | UnknownMessage] = []
        while True:
            message = await self.next(timeout)
            if message is None:
                raise ConnectionError("server closed the connection")
            if isinstance(message, Pong) and message.seq == seq:
                return before
            before.append(message)

    async def startup(
        self,
        guid: str | None = None,
        *,
        zone: str = "zone1",
        cluster: str = "cluster1",
        name: str | None = None,
        host_type: str = "routing",
        ms_list: list[str] | None = None,
        algorithm: str | None = None,
        dialled: str = "",
        timeout: float = 5.0,
    ) -> Greeting:
        guid = self.guid if guid is None else guid
        startup = Startup(
            guid=guid,
            name=name or guid,
            host_type=host_type,
            zone=zone,
            cluster=cluster,
            ms_list=list(ms_list or []),
            algorithm=algorithm,
            dialled=dialled,
        )
        await self.send(startup)
        messages = await self.sync(timeout)
        if not messages or not isinstance(messages[0], Ready):
            raise AssertionError(f"expected ready first, got {messages}")
        lists = [m for m in messages[1:] if isinstance(m, MsList)]
        others = [m for m in messages[1:] if not isinstance(m, MsList)]
        return Greeting(messages[0], lists[-1] if lists else None, others)

    async def wait_error_and_close(self, timeout: float = 5.0) -> Error:
        """Read until the server's `error`, then until it closes the connection."""
        while True:
            message = await self.next(timeout)
            if message is None:
                raise AssertionError("closed without an error message")
            if isinstance(message, Error):
                break
        async with asyncio.timeout(timeout):
            await self.closed.wait()
        return message

    def keepalive(self, interval: float) -> None:
        """Ping every `interval` seconds (answers are not recorded) until closed."""
        self._tasks.add(asyncio.create_task(self._ping_every(interval)))

    async def _ping_every(self, interval: float) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while not self.closed.is_set():
                await self.send(Ping(KEEPALIVE_SEQ))
                await asyncio.sleep(interval)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()
