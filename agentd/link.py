"""One TLS session from an agent to one management server.

`Link.open` dials with a bounded timeout and completes a real startup (`startup` -> `ready`);
`Link.run` then reads messages, answers pings, sends its own, and ends when the server goes
away, is silent past ping.interval x ping.timeout, or the agent closes the link. The ping
settings come with `ready` and change with each `ms_list` the agent takes (`set_ping`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

from common import protocol
from common.addresses import Address
from common.errors import LbError, ProtocolError
from common.protocol import Ack, Error, Message, MsList, Ping, Pong, Ready, Renewed, Startup
from common.tls import server_hostname

logger = logging.getLogger(__name__)


class ConnectFailedError(LbError):
    """A server could not be reached or refused the startup. `retryable` is False when the
    server said that trying again cannot help (an unsupported protocol, say)."""

    def __init__(self, address: Address, reason: str, retryable: bool = True) -> None:
        super().__init__(f"{address}: {reason}")
        self.address = address
        self.retryable = retryable


MsListHandler = Callable[["Link", MsList], Awaitable[None]]
RenewedHandler = Callable[[Renewed], None]


class Link:
    def __init__(
        self,
        address: Address,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ready: Ready,
        label: str,
    ) -> None:
        self.address = address
        self.ready = ready
        self.label = label
        self.ping_interval = ready.ping_interval
        self.ping_timeout = ready.ping_timeout
        self._reader = reader
        self._writer = writer
        self._closed = asyncio.Event()
        self._last_heard = time.monotonic()
        self._ping_seq = 0
        self._pinger: asyncio.TimerHandle | None = None
        self._pinged_at = 0.0  # loop time of the last ping (or of the start of `run`)
        self._ended = ""  # why the session ended, once it has

    @classmethod
    async def open(
        cls,
        address: Address,
        default_port: int,
        startup: Startup,
        connect_timeout: float,
        label: str,
        tls: ssl.SSLContext,
        gate: asyncio.Semaphore | None = None,
    ) -> Link:
        """Dial, verify the server (its CA, and its certificate against the dialled host), and
        complete the startup within `connect_timeout` seconds.

        `gate` (a swarm's, shared by its agents) bounds the TLS handshakes in flight: the
        connect and handshake wait for a turn, and the timeout counts from the turn; the
        startup's round trip happens after the turn is given back."""
        host, port = address.endpoint(default_port)
        loop = asyncio.get_running_loop()
        try:
            async with gate or contextlib.nullcontext():
                deadline = loop.time() + connect_timeout
                async with asyncio.timeout_at(deadline):
                    reader, writer = await asyncio.open_connection(
                        host,
                        port,
                        ssl=tls,
                        server_hostname=server_hostname(host),
                        limit=protocol.READER_LIMIT,
                    )
            async with asyncio.timeout_at(deadline):
                try:
                    writer.write(protocol.encode(startup))
                    await writer.drain()
                    reply = await protocol.read_message(reader)
                except BaseException:
                    writer.close()
                    raise
        except TimeoutError:
            raise ConnectFailedError(address, f"no answer within {connect_timeout:g}s") from None
        except ssl.SSLCertVerificationError as exc:
            raise ConnectFailedError(address, f"server not trusted: {exc.verify_message}") from None
        except ssl.SSLError as exc:
            raise ConnectFailedError(address, f"TLS: {exc.reason or exc}") from None
        except OSError as exc:
            raise ConnectFailedError(address, exc.strerror or str(exc)) from None
        except ProtocolError as exc:
            raise ConnectFailedError(address, f"bad reply: {exc.message}") from None
        if isinstance(reply, Ready):
            return cls(address, reader, writer, reply, label)
        writer.close()
        if isinstance(reply, Error):
            raise ConnectFailedError(address, f"refused: {reply.message}", reply.retryable)
        raise ConnectFailedError(address, f"unexpected reply {reply!r}")

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def send(self, message: Message) -> None:
        if self.closed:
            return
        try:
            self._writer.write(protocol.encode(message))
            await self._writer.drain()
        except OSError as exc:
            logger.info("%s: write to %s failed: %s", self.label, self.address, exc)
            self.close()

    async def ack(self, taken: MsList) -> None:
        """Tell the server the agent holds the list of `taken`, named as it was pushed."""
        await self.send(Ack(taken.version, list(taken.ms_list), taken.algorithm))

    def set_ping(self, interval: int, timeout: int) -> None:
        """Adopt new ping settings: the next ping is due one new interval after the last one (at
        once if that is past), and the silence limit is the new interval x timeout."""
        if (interval, timeout) == (self.ping_interval, self.ping_timeout):
            return
        self.ping_interval, self.ping_timeout = interval, timeout
        if self._pinger is not None and not self.closed:
            self._pinger.cancel()
            self._schedule_ping()

    def close(self, reason: str = "closed by the agent", *, abort: bool = False) -> None:
        """End the session; `run` returns `reason` (the first one given). A close is a TLS
        close_notify, answered by a live server within a round trip; `abort` drops the
        connection at once instead, for a server that answers nothing (whose TLS shutdown would
        hold the read loop, and the socket, for the transport's 30 s shutdown timeout)."""
        if not self._closed.is_set():
            self._closed.set()
            self._ended = reason
            if self._pinger is not None:
                self._pinger.cancel()
            if abort:
                self._writer.transport.abort()
            else:
                self._writer.close()

    async def run(self, on_ms_list: MsListHandler, on_renewed: RenewedHandler) -> str:
        """Serve the session until it ends; returns why it ended.

        The read loop is the only task; pings and the silence check are timer callbacks, so a
        swarm's thousands of links cost one task each and nothing to cancel when one ends."""
        self._pinged_at = asyncio.get_running_loop().time()
        self._schedule_ping()
        try:
            reason = await self._read_loop(on_ms_list, on_renewed)
            if self.closed:  # closed first (by the agent, or silence): the loop saw its own EOF
                reason = self._ended
        finally:
            self.close()
        with contextlib.suppress(OSError):
            await self._writer.wait_closed()
        return reason

    async def _read_loop(self, on_ms_list: MsListHandler, on_renewed: RenewedHandler) -> str:
        while True:
            try:
                message = await protocol.read_message(self._reader)
            except ProtocolError as exc:
                return f"bad message from server: {exc.message}"
            except OSError as exc:
                return f"connection lost: {exc.strerror or exc}"
            if message is None:
                return "server closed the connection"
            self._last_heard = time.monotonic()
            if isinstance(message, MsList):
                await on_ms_list(self, message)
            elif isinstance(message, Ping):
                await self.send(Pong(message.seq))
            elif isinstance(message, Renewed):
                on_renewed(message)
            elif isinstance(message, Error):
                return f"server error {message.code}: {message.message}"
            elif not isinstance(message, Pong):
                logger.info("%s: ignoring %s from %s", self.label, message, self.address)

    def _schedule_ping(self) -> None:
        due = self._pinged_at + max(self.ping_interval, 1)
        self._pinger = asyncio.get_running_loop().call_at(due, self._ping)

    def _ping(self) -> None:
        """Every ping interval: end a session silent past interval x timeout, else ping."""
        self._pinged_at = asyncio.get_running_loop().time()
        deadline = max(self.ping_interval, 1) * max(self.ping_timeout, 1)
        silent = time.monotonic() - self._last_heard
        if silent > deadline:
            self.close(f"server silent for {silent:.1f}s", abort=True)
            return
        if self._writer.is_closing():  # lost: the read loop is ending the session
            return
        self._ping_seq += 1
        self._writer.write(protocol.encode(Ping(self._ping_seq)))  # errors reach the read loop
        self._schedule_ping()
