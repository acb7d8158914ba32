"""One agent connection on the wire: JSON lines in, typed messages dispatched by type, writes
corked while a message is handled, and how a connection ends.

A malformed or oversized line gets an `error` and a close of this connection only; unknown
message types are logged and ignored. The connection ends when the agent closes it, when it is
silent past its silence limit (ping.interval x ping.timeout), when it completes no startup in
time, when a handler refuses it (`Refused`: an `error`, then a close), or when a handler fails
(a bug: logged with its traceback; this connection only).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from common.errors import LbError, ProtocolError
from common.protocol import (
    Error,
    ErrorCode,
    Message,
    MessageType,
    UnknownMessage,
    encode,
    read_message,
)
from common.tls import PeerCertificate

logger = logging.getLogger(__name__)

LINGER = 2.0  # seconds to wait for the agent to read an error before closing
READ_CHUNK = 64 * 1024
STALL_GRACE = 1.0  # seconds a late silence check waits for what the agent sent meanwhile

Handler = Callable[[Any], Awaitable[None]]


class SilentError(LbError, TimeoutError):
    """The agent sent nothing for its silence limit."""


class StartupOverdueError(LbError, TimeoutError):
    """The connection completed no startup within the server's startup timeout."""


ERROR_TEXT_MAX = 200  # an error's message never quotes a hostile value back at length


class Refused(LbError):
    """End the connection with an `error` message."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        message = message[:ERROR_TEXT_MAX]
        super().__init__(message)
        self.error = Error(code, message, retryable)


class Connection:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        send_buffer_limit: int,
        startup_timeout: float,
        certificate: PeerCertificate | None = None,
    ) -> None:
        self.reader = reader
        self.certificate = certificate  # the client's verified certificate (None: enroll only)
        self.writer = writer
        self.send_buffer_limit = send_buffer_limit
        host, port = writer.get_extra_info("peername", ("?", "?"))[:2]
        self.peer = f"{host}:{port}"
        self.startup_timeout = startup_timeout
        loop = asyncio.get_running_loop()
        self.loop_time = loop.time
        self.heard = self.loop_time()  # when the agent last sent anything
        self._watchdog: asyncio.TimerHandle | None = None
        self._silence_limit: Callable[[], float] = lambda: 0.0
        self._overdue: asyncio.TimerHandle | None = loop.call_later(
            startup_timeout, self._startup_overdue
        )
        self._starting = False
        self._corked: list[bytes] | None = None  # while a message is handled: what it sends

    # -- sending --------------------------------------------------------------------------------

    def send(self, message: Message) -> None:
        self.write(encode(message))

    def write(self, data: bytes) -> None:
        if self._corked is not None:
            self._corked.append(data)
            return
        if self.writer.is_closing():
            return
        self.writer.write(data)
        transport = self.writer.transport
        if transport.get_write_buffer_size() > self.send_buffer_limit:
            logger.warning("agent from %s reads too slowly; dropping the connection", self.peer)
            transport.abort()

    def uncork(self) -> None:
        """Send what the handler of a message sent (`ready` and `ms_list`: one segment)."""
        corked, self._corked = self._corked, None
        if corked:
            self.write(b"".join(corked))

    def hang_up(self, error: Error) -> None:
        """Send `error` now and close (a session that another one replaced)."""
        self.uncork()
        self.send(error)
        self.writer.close()

    # -- the startup deadline -------------------------------------------------------------------

    def starting(self, yes: bool) -> None:
        """While a startup is being registered, the deadline does not cut it off."""
        self._starting = yes

    def started(self) -> None:
        if self._overdue is not None:
            self._overdue.cancel()
            self._overdue = None

    def _startup_overdue(self) -> None:
        if not self._starting:
            self.reader.set_exception(StartupOverdueError())

    # -- serving --------------------------------------------------------------------------------

    async def serve(
        self,
        handlers: dict[MessageType, Handler],
        silence_limit: Callable[[], float],
        label: Callable[[], str],
    ) -> None:
        """Read and dispatch until the connection ends (never raises for the agent's doing)."""
        self._silence_limit = silence_limit
        self._watch(silence_limit)
        try:
            await self._loop(handlers, label)
        except ProtocolError as exc:
            message = exc.message[:ERROR_TEXT_MAX]
            logger.warning("%s: %s; closing", label(), message)
            await self._last_word(Error(exc.code, message))
        except Refused as exc:
            logger.debug("%s refused: %s", label(), exc)
            await self._last_word(exc.error)
        except SilentError:
            logger.warning("%s silent for %.0fs; disconnected", label(), silence_limit())
        except StartupOverdueError:
            logger.info("%s sent no startup within %.0fs; closing", label(), self.startup_timeout)
            await self._last_word(Error(ErrorCode.STARTUP_TIMEOUT, "no startup in time"))
        except (ConnectionError, OSError) as exc:
            logger.debug("%s connection lost: %s", label(), exc)
        except Exception:
            # A bug in one session's work ends that session, loudly, and nothing else.
            logger.exception("%s: internal error; closing this session", label())
            with contextlib.suppress(Exception):
                await self._last_word(Error(ErrorCode.INTERNAL, "internal error", retryable=True))

    def rewatch(self) -> None:
        """The silence limit changed: measure from the last message by the new one now, not
        when the current timer fires."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watch(self._silence_limit)

    def _watch(self, silence_limit: Callable[[], float], due: float | None = None) -> None:
        """One timer per silence period, not one per message: when it fires, an agent heard
        from since gets a new one; a silent one gets SilentError in its next read.

        A timer that fires more than STALL_GRACE late (`due`: when it was set for) says this
        process is the one that stalled (stopped, a frozen VM, a blocked loop): what the agent
        sent meanwhile waits unread in the socket, since the loop runs due timers before the
        reads that take it in reach the session. The verdict waits STALL_GRACE more. Without
        it a stall a little longer than the silence limit closed every session, although
        their agents had pinged all along and were still connected."""
        limit = silence_limit()
        deadline = self.heard + limit
        now = self.loop_time()
        loop = asyncio.get_running_loop()
        if now < deadline:
            self._watchdog = loop.call_at(deadline, self._watch, silence_limit, deadline)
        elif due is not None and now - due > STALL_GRACE:
            self._watchdog = loop.call_at(now + STALL_GRACE, self._watch, silence_limit)
        else:
            self._watchdog = None
            self.reader.set_exception(SilentError(f"silent for {limit:.0f}s"))

    async def _loop(self, handlers: dict[MessageType, Handler], label: Callable[[], str]) -> None:
        while True:
            message = await read_message(self.reader)
            self.heard = self.loop_time()
            if message is None:
                logger.debug("%s closed the connection", label())
                return
            if isinstance(message, UnknownMessage):
                logger.warning(
                    "%s sent unknown message type %r; ignored", label(), message.type[:60]
                )
                continue
            handler = handlers.get(message.TYPE)
            if handler is None:
                logger.warning(
                    "%s sent %s, which agents do not send; ignored", label(), message.TYPE
                )
                continue
            self._corked = []
            try:
                await handler(message)
            finally:
                self.uncork()
            await self.writer.drain()

    async def _last_word(self, error: Error) -> None:
        """Send `error`, half-close, and discard what the agent still sends for a moment: a
        close with unread input would reset the connection and could lose the error.

        Over TLS (every session) the transport cannot half-close: its close_notify, sent by
        `close`, is what tells the agent the error was the last word. Lingering first would
        only keep the agent (and the connection) waiting LINGER for it: close at once."""
        self.send(error)
        with contextlib.suppress(ConnectionError, OSError, TimeoutError):
            await self.writer.drain()
            if not self.writer.can_write_eof():
                return
            self.writer.write_eof()
            async with asyncio.timeout(LINGER):
                while await self.reader.read(READ_CHUNK):
                    pass

    async def close(self) -> None:
        """Close, and let go of what would keep this connection alive as cyclic garbage: the
        session's silence limit (the session holds this connection), and the traceback of an
        exception the reader or the close kept (its frames hold both). The server's gc pacer
        freezes whatever is alive at its passes, and frozen cyclic garbage waits for its full
        pass, minutes away: every connection alive at a pass kept its TLS state and buffers
        that long (60 s of bench/faults.py wire-fuzz left the server 35 % larger)."""
        self.started()  # no deadline left
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self.writer.close()
        try:
            async with asyncio.timeout(1.0):
                await self.writer.wait_closed()
        except (ConnectionError, OSError, TimeoutError) as exc:
            forget_traceback(exc)
        self._silence_limit = _no_limit
        forget_traceback(self.reader.exception())


def _no_limit() -> float:
    return 0.0


def forget_traceback(exc: BaseException | None) -> None:
    """Drop the tracebacks of `exc` and of the exceptions it was raised in: their frames hold
    the objects of a connection that ended, in a cycle when something of it holds `exc`."""
    while exc is not None:
        exc.__traceback__ = None
        exc = exc.__context__
