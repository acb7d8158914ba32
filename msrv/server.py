"""The daemon's lifecycle: `run()` -> `asyncio.run(serve())` = startup, main loop, shutdown.

Signal handlers only set a flag. Shutdown: stop accepting, mark this server's hosts
disconnected, close the sessions (agents fail over), deregister, exit 0. Every task is owned:
the shared ones by `_run`, each connection's by the set of connection tasks, which is
cancelled after a timeout. A host's session is msrv.lifecycle; keeping in step with Redis is
msrv.resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Coroutine
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.assignment import holds
from common.configstore import ConfigStore
from common.connection import redis_from_url
from common.events import EventType
from common.gc_pacer import GcPacer
from common.keys import Keys
from common.protocol import READER_LIMIT, Error, ErrorCode
from common.revocation import is_revoked
from msrv.balancer import Balancer
from msrv.config import ServerSettings
from msrv.connection import Connection
from msrv.context import ServerContext
from msrv.housekeeping import Housekeeping
from msrv.lifecycle import HostSession
from msrv.metrics import Sample, ServerMetrics
from msrv.registry import HostRegistry, ServerRegistry
from msrv.resync import Resync
from msrv.session_log import SessionLog
from msrv.subscriber import Subscriber, retry_policy
from msrv.table import SessionTable
from msrv.trust import REVOKED_TEXT, HandshakeFailedError, ServerTrust

logger = logging.getLogger(__name__)

# A fleet reconnecting at once (a failover) must not overflow the accept queue: a dropped SYN
# costs its agent a 1 s retransmit. The kernel caps this at net.core.somaxconn.
LISTEN_BACKLOG = 4096
REDIS_CONNECTIONS = 16
SHUTDOWN_GRACE = 3.0  # seconds past shutdown_timeout before a stuck shutdown is cut short


class Server:
    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.keys = Keys(settings.namespace)
        # One immediate reconnect per command: a stale pooled socket after a Redis restart is
        # replaced at once; a Redis that is down fails fast instead of hiding behind sleeps.
        # Sessions' writes are pipelined by one writer, so a few connections serve any number
        # of agents; a caller waits for a free one rather than failing.
        self.redis: aioredis.Redis = redis_from_url(
            settings.redis_url, retries=1, max_connections=REDIS_CONNECTIONS
        )
        self.events_redis: aioredis.Redis = redis_from_url(settings.redis_url, retries=0)
        table: SessionTable[HostSession] = SessionTable()
        balancer = Balancer(self.redis, self.keys, table)
        registry = HostRegistry(self.redis, self.keys)
        store = ConfigStore(self.redis, self.keys)
        self.ctx = ServerContext(
            settings,
            table,
            registry,
            balancer,
            Resync(settings.server_id, store, balancer, registry, table),
            SessionLog(settings.server_id, lambda: len(table)),
            ServerTrust(self.redis, self.keys, settings.server_id),
            ServerMetrics(settings.server_id, settings.advertise),
        )
        self.servers = ServerRegistry(
            self.redis, self.keys, settings.server_id, settings.advertise, settings.liveness_ttl
        )
        self.housekeeping = Housekeeping(self.ctx, self.servers)
        self.should_exit = asyncio.Event()
        self.stage = "starting"  # what the server is doing, for a shutdown that overruns
        self.tasks: set[asyncio.Task[Any]] = set()  # one per connection

    @property
    def name(self) -> str:
        return self.settings.server_id

    async def serve(self) -> int:
        """Run until SIGTERM or SIGINT (exit code 0), or until a task every session relies on
        fails (exit code 1, so that a supervisor restarts the process): a server never stays
        half-alive. A signal during startup (Redis unreachable) stops it at once; a second
        signal forces the exit."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._on_signal)
        if not self._serve_metrics(loop):
            return 1
        try:
            if not await self._unless_stopped(self._startup()):
                logger.info("msrv %s stopped before it started", self.name)
                return 0
            listener = await asyncio.start_server(
                self._handle,
                self.settings.listen_host,
                self.settings.listen_port,
                limit=READER_LIMIT,
                backlog=LISTEN_BACKLOG,
            )
            logger.info(
                "msrv %s listening on %s:%d (advertised as %s)",
                self.name,
                self.settings.listen_host,
                self.settings.listen_port,
                self.settings.advertise,
            )
            self.stage = "serving"
            code = await self._run(listener)
        finally:
            self.stage = "closing the Redis connections"
            await self.redis.aclose()
            await self.events_redis.aclose()
            self.ctx.metrics.close()
        logger.info("msrv %s stopped", self.name)
        return code

    def _serve_metrics(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Serve /metrics when asked to (before Redis is reached: msrv_redis_up shows the wait);
        False when its port cannot be had."""
        metrics = self.ctx.metrics
        metrics.sample_with(loop, self._sample)
        if self.settings.metrics is None:
            return True
        host, port = self.settings.metrics
        try:
            metrics.serve(host, port)
        except OSError as exc:
            logger.error("msrv %s: cannot serve metrics on %s:%d: %s", self.name, host, port, exc)
            return False
        logger.info("msrv %s: metrics at http://%s:%d/metrics", self.name, host, port)
        return True

    def _sample(self) -> Sample:
        """The state the metrics' gauges show, read on the event loop at each scrape."""
        ctx = self.ctx
        balancer = ctx.balancer
        if not balancer.loaded:
            return Sample(connections=len(ctx.table.connections()))
        sessions: dict[str, int] = {}
        stale = 0
        for session in ctx.table.started():
            sessions[session.zone] = sessions.get(session.zone, 0) + 1
            assignment = balancer.assignment(session)
            if assignment is not None and not holds(assignment, session.holding):
                stale += 1
        return Sample(
            sessions=sessions,
            connections=len(ctx.table.connections()),
            stale=stale,
            config_version=balancer.snapshot.version,
            redis_up=self.stage == "serving" and ctx.resync.available,
            in_service=not ctx.resync.maintenance.refuses_startups,
        )

    def _on_signal(self) -> None:
        if self.should_exit.is_set():
            logger.warning("msrv %s: second signal; exiting now", self.name)
            os._exit(1)
        self.should_exit.set()
        # A shutdown is bounded: whatever it waits for, the process ends.
        limit = self.settings.shutdown_timeout + SHUTDOWN_GRACE
        asyncio.get_running_loop().call_later(limit, self._shutdown_overdue, limit)

    def _shutdown_overdue(self, limit: float) -> None:
        logger.error(
            "msrv %s: shutdown not done after %.0fs (at: %s); exiting now",
            self.name,
            limit,
            self.stage,
        )
        os._exit(1)

    async def _unless_stopped(self, work: Coroutine[Any, Any, None]) -> bool:
        """Run `work` unless a signal comes first (then cancel it); whether it completed."""
        task = asyncio.create_task(work)
        stop = asyncio.create_task(self.should_exit.wait())
        await asyncio.wait((task, stop), return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            return False
        task.result()  # a startup failure other than Redis being down is raised here
        return True

    async def _run(self, listener: asyncio.Server) -> int:
        """The shared tasks, until a signal or until one of them ends (a bug: they run for
        ever); then shutdown."""
        shared = {
            asyncio.create_task(coro, name=name)
            for name, coro in (
                ("registry writer", self.ctx.registry.run()),
                ("session log", self.ctx.summary.run()),
                ("resync", self.ctx.resync.run()),
                ("events", self._subscriber().run()),
                ("housekeeping", self.housekeeping.run()),
                ("gc pacer", GcPacer(self.name).run(self.should_exit)),
            )
        }
        stop = asyncio.create_task(self.should_exit.wait())
        await asyncio.wait({stop, *shared}, return_when=asyncio.FIRST_COMPLETED)
        # Any shared task that ends before a signal is a bug; the gc pacer ends with the signal.
        failed = [t for t in shared if t.done() and not (self.should_exit.is_set() and _clean(t))]
        for task in failed:
            error = None if task.cancelled() else task.exception()
            logger.critical(
                "msrv %s: shared task %r ended (%r); stopping so that the process restarts",
                self.name,
                task.get_name(),
                error,
                exc_info=error,
            )
        stop.cancel()
        await self._shutdown(listener)
        for task in shared:
            task.cancel()
        await asyncio.gather(*shared, return_exceptions=True)
        return 1 if failed else 0

    async def _startup(self) -> None:
        """Wait for Redis (backing off), load the settings, register this server, release the
        hosts an earlier run left recorded on it."""
        async for attempt in retry_policy(f"{self.name} startup", cap=5.0):
            with attempt:
                await self.ctx.resync.load()
                await self.ctx.trust.load(
                    self.settings.advertise, self.ctx.validity_days(), self.settings.tls_san
                )
                await self.servers.register(self.ctx.balancer.snapshot.version)
                released = await self.ctx.registry.release_earlier_run(self.name)
                if released:
                    logger.warning(
                        "msrv %s: %d hosts of an earlier run of this server (which ended "
                        "without its shutdown) marked disconnected",
                        self.name,
                        released,
                    )

    def _subscriber(self) -> Subscriber:
        resync = self.ctx.resync
        return Subscriber(
            self.events_redis,
            self.keys,
            self.name,
            on_event=self._on_event,
            on_connected=self._on_connected,
            on_lost=resync.on_lost,
        )

    def _on_event(self, event: dict[str, Any]) -> None:
        if event["type"] == EventType.HOSTS_REVOKED and isinstance(event.get("guid"), str):
            task = asyncio.create_task(self._close_revoked(event["guid"]))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        else:
            self.ctx.resync.on_event(event)

    async def _close_revoked(self, guid: str) -> None:
        """`msctl hosts remove` revoked the certificates of `guid`: end its sessions here."""
        for session in list(self.ctx.table.connections()):
            certificate = session.conn.certificate
            if certificate is None or certificate.guid != guid:
                continue
            with contextlib.suppress(RedisError):
                if await is_revoked(self.redis, self.keys, certificate.serial):
                    logger.warning(
                        "%s: certificate %s revoked; closing", session, certificate.serial
                    )
                    session.conn.hang_up(Error(ErrorCode.REVOKED, REVOKED_TEXT))

    async def _on_connected(self) -> None:
        if not self.ctx.resync.available:
            self.ctx.metrics.redis_reconnects.inc()
        await self.ctx.trust.reassert_ca()  # before anything that needs it: a Redis emptied
        await self.ctx.resync.on_connected()
        await self.housekeeping.refresh_liveness()

    # -- connections ------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or self.should_exit.is_set():
            writer.close()
            return
        self.tasks.add(task)
        try:
            settings = self.settings
            try:
                certificate = await self.ctx.trust.handshake(writer, settings.startup_timeout)
            except HandshakeFailedError as exc:
                host, port = writer.get_extra_info("peername", ("?", "?"))[:2]
                logger.info("%s: agent from %s:%s refused: %s", self.name, host, port, exc)
                self.ctx.summary.note("refused")
                self.ctx.metrics.handshakes_failed.inc()
                writer.transport.abort()
                return
            conn = Connection(
                reader,
                writer,
                send_buffer_limit=settings.send_buffer_limit,
                startup_timeout=settings.startup_timeout,
                certificate=certificate,
            )
            await HostSession(self.ctx, conn).run()
        finally:
            self.tasks.discard(task)

    # -- shutdown ---------------------------------------------------------------------------------

    async def _shutdown(self, listener: asyncio.Server) -> None:
        table = self.ctx.table
        logger.info("%s: shutting down (%d sessions)", self.name, len(table))
        listener.close()
        table.closed = True
        records = [s.record for s in table.started() if s.record is not None and not s.superseded]
        self.stage = f"marking {len(records)} hosts disconnected"
        with contextlib.suppress(RedisError):
            await self.ctx.registry.disconnect(records)
        for session in table.connections():
            session.conn.hang_up(
                Error(ErrorCode.SHUTTING_DOWN, "server is stopping", retryable=True)
            )
        self.stage = f"closing {len(self.tasks)} connections"
        await self._drain_connections()
        self.stage = "deregistering"
        with contextlib.suppress(RedisError):
            await self.ctx.resync.maintenance.finish_if_idle(table)  # it holds none now
            await self.servers.deregister()
        self.stage = "stopping the shared tasks"

    async def _drain_connections(self) -> None:
        pending = set(self.tasks)
        if not pending:
            return
        _, pending = await asyncio.wait(pending, timeout=self.settings.shutdown_timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)


def _clean(task: asyncio.Task[Any]) -> bool:
    return not task.cancelled() and task.exception() is None


def run(settings: ServerSettings) -> int:
    """Serve until stopped; the process's exit code."""
    return asyncio.run(Server(settings).serve())
