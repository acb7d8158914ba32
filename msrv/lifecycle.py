"""A host's life on this server, from its agent's `startup` to the end of its session.

    connected --startup--> registered --> served --ack--> (holds what it acked)
        |                      |            |
        |                      |            +--> superseded (a newer session of the host took
        |                      |            |    over: leave the registry alone, hang up)
        +--(no startup in time, refused, silent, closed, bad line)--> ended
                                                       (a served host is marked disconnected)

- connected: the connection is open (msrv.connection reads it); nothing is registered. A
  startup is refused (retryable) while Redis is unavailable, the server is stopping, or it is
  preparing for or in maintenance (msrv.maintenance).
- registered: the registry gave the guid its id and recorded the session (a startup older than
  the host's live session elsewhere is refused as stale, msrv.registry); the zone's ranks are
  brought up to date with that registration (msrv.ranks).
- served: the session is in the table (an older session of the host on this server is
  superseded), `ready` is sent with the settings in force, then `ms_list` when the list the host
  reported is not the one the balancer says it should hold. Later pushes come from the balancer
  (settings or zone changes) and from `repush_if_unacked`. A push that moves the agent off this
  server carries the delay of its slot in this server's schedule (msrv.pacing).
- ack: the agent names the list it saved; that is what the registry records as held. A list
  not acked is pushed again (an agent that could not save it does not ack).
- The silence limit of a session never drops below what its agent was last told (ready, or an
  acked list), so lowering ping settings never closes sessions for silence.
- Removal of a host is an operator's act (`msctl hosts remove`, common.records.remove_host);
  servers see it as a zone change and recompute.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import NoReturn

from redis.exceptions import RedisError

from common.assignment import Assignment, Holding
from common.errors import LbError, ProtocolError
from common.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Enroll,
    Error,
    ErrorCode,
    MessageType,
    MsList,
    Ping,
    Pong,
    Ready,
    Renew,
    Startup,
    encode,
)
from common.records import HostRecord, HostState
from common.tls import PeerCertificate
from msrv.balancer import push_due
from msrv.connection import Connection, Handler, Refused
from msrv.context import ServerContext
from msrv.pacing import moves
from msrv.registry import Started, Write
from msrv.trust import REVOKED_TEXT
from msrv.writes import BadWriteError

logger = logging.getLogger(__name__)

IN_FLIGHT = 8  # pushed lists remembered until acked (an ack names one of them)


@dataclass(frozen=True)
class Push:
    version: int
    assignment: Assignment
    sent: float  # loop time


class HostSession:
    def __init__(self, ctx: ServerContext, conn: Connection) -> None:
        self.ctx = ctx
        self.conn = conn
        self.record: HostRecord | None = None
        self.holding: Holding | Assignment = Holding((), None)  # acked, or reported
        self.in_flight: list[Push] = []  # pushed, not acked, oldest first
        self.pending_since = 0.0  # loop time of the last push
        self.superseded = False
        self.dialled = ""  # this server's address as the agent dialled it (its startup says)
        self.move_at: float | None = None  # the pacing slot of the last push that moved it
        self.enrolled = False
        self.seen_written = conn.heard  # when last_seen was last written
        self._told_limit: float | None = None  # silence limit from what the agent was told
        self._handlers: dict[MessageType, Handler] = {
            MessageType.STARTUP: self.on_startup,
            MessageType.ACK: self.on_ack,
            MessageType.PING: self.on_ping,
            MessageType.PONG: self.on_pong,
            MessageType.ERROR: self.on_error,
            MessageType.RENEW: self.on_renew,
        }
        if conn.certificate is None:  # no client certificate: enrollment only
            self._handlers = {kind: self._no_certificate for kind in self._handlers}
            self._handlers[MessageType.ENROLL] = self.on_enroll

    # -- what the table and the balancer see ---------------------------------------------------

    @property
    def started(self) -> bool:
        return self.record is not None

    @property
    def host_id(self) -> int:
        return self._record.id

    @property
    def zone(self) -> str:
        return self._record.zone

    @property
    def cluster(self) -> str:
        return self._record.cluster

    @property
    def pending(self) -> Assignment | None:
        return self.in_flight[-1].assignment if self.in_flight else None

    @property
    def _record(self) -> HostRecord:
        if self.record is None:
            raise RuntimeError("session has not started")
        return self.record

    def __str__(self) -> str:
        who = f"host {self.record.id} ({self.record.name})" if self.record else "agent"
        return f"{self.ctx.settings.server_id}: {who} from {self.conn.peer}"

    # -- the whole life -------------------------------------------------------------------------

    async def run(self) -> None:
        self.ctx.table.open(self)
        if self.conn.certificate is None:
            self.conn.send(self.ctx.trust.ca_message)
        try:
            await self.conn.serve(self._handlers, self.silence_limit, self.__str__)
        finally:
            await self._end()

    def silence_limit(self) -> float:
        limits = [self.ctx.balancer.silence_limit()]
        if self._told_limit is not None:
            limits = [self._told_limit]  # what the agent lives by, until it acks new values
        pending = self.pending
        if pending is not None:
            limits.append(float(pending.ping_interval * pending.ping_timeout))
        return max(limits)

    # -- startup: register, then serve ---------------------------------------------------------

    async def on_startup(self, message: Startup) -> None:
        if self.record is not None:
            logger.warning("%s sent a second startup; ignored", self)
            return
        if message.protocol != PROTOCOL_VERSION:
            raise ProtocolError(
                ErrorCode.UNSUPPORTED_PROTOCOL,
                f"protocol {message.protocol} not supported; this server speaks {PROTOCOL_VERSION}",
            )
        certificate = self.conn.certificate
        assert certificate is not None  # a connection without one only enrolls
        if message.guid != certificate.guid:
            logger.warning(
                "%s: startup for guid %s refused: its certificate is for guid %s",
                self,
                message.guid,
                certificate.guid,
            )
            self._refuse(ErrorCode.WRONG_HOST, "the startup's guid is not the certificate's", False)
        if not self.ctx.resync.available or self.ctx.table.closed:
            self._refuse(ErrorCode.UNAVAILABLE, "server cannot register hosts now; retry", True)
        if self.ctx.resync.maintenance.refuses_startups:
            self._refuse(ErrorCode.UNAVAILABLE, self._in_maintenance(), True, result="maintenance")
        started = await self._register(message, certificate)
        record = started.record
        await self.ctx.balancer.ranks.catch_up(
            record.zone, record.id, ranked=record.ranked, rank=started.rank, count=started.count
        )
        self.conn.started()
        self.record = record
        self.dialled = message.dialled
        older = self.ctx.table.start(self)
        if older is not None:
            older.supersede()
        logger.debug("%s started (zone %s, cluster %s)", self, record.zone, record.cluster)
        self.ctx.summary.note("started")
        if started.new:
            self.ctx.summary.note("new")
        metrics = self.ctx.metrics
        metrics.startups.labels("accepted").inc()
        if message.ms_list and message.dialled != message.ms_list[0]:
            metrics.failovers_in.inc()  # the agent's preferred server is another one
        self._serve(record)

    async def _register(self, message: Startup, certificate: PeerCertificate) -> Started:
        settings = self.ctx.balancer.effective(message.cluster)
        record = HostRecord(
            id=0,  # the registry finds or takes the guid's id
            guid=message.guid,
            name=message.name,
            type=message.host_type,
            zone=message.zone,
            cluster=message.cluster,
            state=HostState.CONNECTED,
            server=self.ctx.settings.server_id,
            session=uuid.uuid4().hex,
            ms_list=tuple(message.ms_list),
            algorithm=message.algorithm,
            check_interval=settings.check_interval,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            last_seen=time.time(),
            attempt=message.attempt,
            cert_serial=certificate.serial,
            cert_expires=certificate.expires,
        )
        self.conn.starting(True)
        try:
            started = await self.ctx.registry.start(record, live_for=self.ctx.live_window())
        except RedisError as exc:
            self._refuse(ErrorCode.UNAVAILABLE, f"registry unavailable: {exc}", True)
        except BadWriteError as exc:
            self._refuse(ErrorCode.BAD_MESSAGE, str(exc), False)
        finally:
            self.conn.starting(False)
        if started.revoked:
            logger.warning(
                "%s: startup of guid %s refused: certificate %s is revoked",
                self,
                message.guid,
                certificate.serial,
            )
            self._refuse(ErrorCode.REVOKED, REVOKED_TEXT, False)
        if started.stale:
            logger.info(
                "%s: startup of guid %s refused: the host has a newer live session "
                "(this attempt is older; the agent gave it up)",
                self,
                message.guid,
            )
            self._refuse(ErrorCode.SUPERSEDED, "a newer session of this host is live", True)
        return started

    def _in_maintenance(self) -> str:
        state = self.ctx.resync.maintenance.state
        server = self.ctx.settings.server_id
        return f"server {server} is in maintenance ({state}): try the next server of the list"

    def _refuse(
        self, code: str, message: str, retryable: bool, *, result: str | None = None
    ) -> NoReturn:
        """End the connection with an error; counted as a startup of `result` (the code)."""
        self.ctx.summary.note("refused")
        self.ctx.metrics.startups.labels(result or code).inc()
        raise Refused(code, message, retryable=retryable)

    def _serve(self, record: HostRecord) -> None:
        """`ready` with the settings in force, then the list when the reported one is stale."""
        settings = self.ctx.balancer.effective(record.cluster)
        self.conn.send(
            Ready(
                host_id=record.id,
                server=self.ctx.settings.advertise,
                ping_interval=settings.ping_interval,
                ping_timeout=settings.ping_timeout,
                check_interval=settings.check_interval,
            )
        )
        self._told_limit = float(settings.ping_interval * settings.ping_timeout)
        self.holding = Holding(
            record.ms_list,
            record.algorithm,
            settings.check_interval,
            settings.ping_interval,
            settings.ping_timeout,
        )
        balancer = self.ctx.balancer
        assignment = balancer.assignment(self)
        if assignment is not None and push_due(assignment, self):
            self.deliver(assignment, balancer.snapshot.version)

    # -- lists: push, ack, push again -----------------------------------------------------------

    def deliver(self, assignment: Assignment, version: int) -> None:
        """Push a list, with a delay when it moves the agent off this server (msrv.pacing). It
        counts as held only once the agent acks it."""
        held = self.pending if self.pending is not None else self.holding  # when it arrives
        encoded = _encoded_list(assignment, version)
        if moves(held.ms_list, assignment.ms_list, self.dialled):
            pacer = self.ctx.pacer
            self.move_at = pacer.book(self.ctx.balancer.effective(None).move_rate, self.move_at)
            encoded = _with_delay(encoded, pacer.delay(self.move_at))
            self.ctx.metrics.moves.inc()
        self.conn.write(encoded)
        self.ctx.metrics.lists_pushed.inc()
        now = self.conn.loop_time()
        self.in_flight = [*self.in_flight[-(IN_FLIGHT - 1) :], Push(version, assignment, now)]
        self.pending_since = now

    def repush_if_unacked(self, after: float) -> bool:
        """Push the last list again when the agent has not acked it for `after` seconds (it
        could not save it, or the push was lost)."""
        if not self.in_flight or self.conn.loop_time() - self.pending_since < after:
            return False
        last = self.in_flight.pop()
        self.deliver(last.assignment, last.version)
        return True

    async def on_ack(self, message: Ack) -> None:
        record = self.record
        if record is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "ack before startup")
        acked = tuple(message.ms_list)
        matches = [
            i
            for i, push in enumerate(self.in_flight)
            if (push.assignment.ms_list, push.assignment.algorithm) == (acked, message.algorithm)
        ]
        if matches:
            push = self.in_flight[matches[-1]]
            self.in_flight = self.in_flight[matches[-1] + 1 :]
            self.ctx.metrics.ack_seconds.observe(self.conn.loop_time() - push.sent)
            self.holding = assignment = push.assignment
            told = float(assignment.ping_interval * assignment.ping_timeout)
            if told != self._told_limit:
                self._told_limit = told
                self.conn.rewatch()
            record = replace(
                record,
                ms_list=acked,
                algorithm=message.algorithm,
                check_interval=assignment.check_interval,
                ping_interval=assignment.ping_interval,
                ping_timeout=assignment.ping_timeout,
            )
        else:
            logger.info("%s acked a list this server did not push; recorded as is", self)
            record = replace(record, ms_list=acked, algorithm=message.algorithm)
        self.record = record = replace(record, acked_version=message.version, last_seen=time.time())
        self.ctx.metrics.acks.inc()
        try:
            written = await self.ctx.registry.update(record, **_ack_fields(record))
        except (RedisError, LbError) as exc:
            logger.debug("%s: ack not recorded (%s); re-asserted later", self, exc)
            return
        if written == Write.SUPERSEDED:
            self.supersede()

    # -- certificates ----------------------------------------------------------------------------

    async def _no_certificate(self, message: object) -> None:
        logger.info("%s: no client certificate, and not an enrollment; refused", self)
        self._refuse(
            ErrorCode.NO_CERTIFICATE,
            "a client certificate from this deployment's CA is needed; enroll with a join token",
            False,
        )

    async def on_enroll(self, message: Enroll) -> None:
        if self.enrolled:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "one enrollment per connection")
        results = self.ctx.metrics.enrollments
        self.conn.starting(True)  # the startup deadline does not cut off a signing under way
        try:
            if not self.ctx.resync.available:
                text = "server cannot enroll hosts now; retry"
                raise Refused(ErrorCode.UNAVAILABLE, text, retryable=True)
            enrolled = await self.ctx.trust.enroll(
                message, self.ctx.validity_days(), self.conn.peer
            )
        except Refused as exc:
            self.ctx.summary.note("refused")
            results.labels(exc.error.code).inc()
            raise
        finally:
            self.conn.starting(False)
        results.labels("enrolled").inc()
        self.enrolled = True
        self.conn.send(enrolled)

    async def on_renew(self, message: Renew) -> None:
        certificate = self.conn.certificate
        if self.record is None or certificate is None:
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "renew before startup")
        renewed = await self.ctx.trust.renew(
            certificate, message.csr, self.ctx.validity_days(), str(self)
        )
        self.ctx.metrics.renewals.labels("failed" if renewed is None else "renewed").inc()
        if renewed is not None:
            self.conn.send(renewed)

    # -- heartbeats ------------------------------------------------------------------------------

    async def on_ping(self, message: Ping) -> None:
        self.conn.send(Pong(message.seq))

    async def on_pong(self, message: Pong) -> None:
        """Any message proves the agent alive; nothing else to do."""

    async def on_error(self, message: Error) -> None:
        logger.warning("%s reports error %r: %r", self, message.code, message.message[:200])

    def last_seen_due(self, interval: float) -> bool:
        """Whether the host's last_seen needs writing: heard from since it was last written,
        and that is `interval` seconds ago."""
        return (
            self.record is not None
            and self.conn.heard > self.seen_written
            and self.conn.loop_time() - self.seen_written >= interval
        )

    def mark_seen(self) -> HostRecord:
        """The record with last_seen = when the agent was last heard (wall clock)."""
        now = self.conn.loop_time()
        self.seen_written = now
        self.record = replace(self._record, last_seen=time.time() - (now - self.conn.heard))
        return self.record

    # -- the end ---------------------------------------------------------------------------------

    def supersede(self) -> None:
        """A newer session of this host exists: leave its state alone and hang up."""
        self.superseded = True
        self.conn.hang_up(Error(ErrorCode.SUPERSEDED, "a newer session of this host took over"))

    async def _end(self) -> None:
        self.ctx.table.close(self)
        record = self.record
        if record is not None:
            if not self.superseded and not self.ctx.table.closed:
                try:
                    await self.ctx.registry.disconnect([record])
                except (RedisError, LbError) as exc:
                    logger.debug("%s: disconnect not recorded (%s)", self, exc)
            self.ctx.summary.note("ended")
        await self.conn.close()
        self._handlers = {}  # bound methods of this session: a cycle the collector would free
        # the last session of a server preparing for maintenance: it is in maintenance now,
        # not at the next housekeeping tick (which remains for a cancel or a lost write)
        try:
            await self.ctx.resync.maintenance.finish_if_idle(self.ctx.table)
        except RedisError as exc:
            logger.debug("%s: maintenance not finished here (%s); housekeeping will", self, exc)


@lru_cache(maxsize=256)
def _encoded_list(assignment: Assignment, version: int) -> bytes:
    """A zone recompute sends few distinct lists (roundrobin: one per rotation) to many agents:
    encode each once, with delay 0 (`_with_delay` gives a moving agent its own)."""
    return encode(
        MsList(
            list(assignment.ms_list),
            assignment.algorithm,
            assignment.check_interval,
            version,
            assignment.ping_interval,
            assignment.ping_timeout,
        )
    )


_NO_DELAY = b'"delay":0.0}\n'  # how an encoded MsList ends (delay is its last field)


def _with_delay(encoded: bytes, delay: float) -> bytes:
    """An encoded list with `delay` in place of 0, without encoding the list again."""
    if not encoded.endswith(_NO_DELAY):
        raise AssertionError("an encoded ms_list does not end with its delay")
    return encoded[: -len(_NO_DELAY)] + b'"delay":%.3f}\n' % delay


def _ack_fields(record: HostRecord) -> dict[str, str]:
    fields = record.to_hash()
    names = ("ms_list", "algorithm", "check_interval", "ping_interval", "ping_timeout")
    return {name: fields[name] for name in (*names, "acked_version", "last_seen")}
