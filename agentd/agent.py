"""The agent: holds one session to a management server, fails over through its list, persists
the lists the servers push, and switches servers make-before-break."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Coroutine
from typing import Any

from agentd.checker import PreferredChecker
from agentd.config import AgentSettings
from agentd.failover import EveryServerRefusedError, connect_with_failover
from agentd.host_file import HostFile
from agentd.keystore import KeystoreState
from agentd.link import ConnectFailedError, Link
from agentd.trust import RENEW_CHECK_EVERY, AgentTrust
from common.addresses import Address, parse_address_list
from common.errors import ValidationError
from common.hostlist import HostList, format_host_value
from common.protocol import MsList, Startup

logger = logging.getLogger(__name__)

# seconds; spreads a fleet's moves to the first entry of a new list when its server paced none
# (an `ms_list` with delay 0: an older server)
MOVE_MAX_DELAY = 2.0


class Agent:
    def __init__(self, settings: AgentSettings, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.host_list = settings.host_list
        self.label = f"agent {settings.name}"
        self.rng = rng or random.Random()
        self.link: Link | None = None
        self.host_id: int | None = None
        self.server_check_interval = 0
        self.interval_changed = asyncio.Event()
        self._stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failure: BaseException | None = None
        self.host_file = HostFile(settings.path, self.label)
        self._switch_lock = asyncio.Lock()
        self._migration: asyncio.Task[None] | None = None
        # When set (a large swarm), lost servers are counted here for one summary line instead
        # of a line per agent.
        self.losses: collections.Counter[str] | None = None
        self._last_attempt = 0  # stamp of the last connection attempt (ms, strictly increasing)
        self.trust = AgentTrust(settings.path, settings.guid, settings.token, self.label)
        # A swarm's agents share one gate: their TLS handshakes take turns on the process's one
        # core, so that each completes within the connect timeout (all at once, 3,000 agents
        # made none in time: each timed out, retried, and collided again). The connect
        # timeout counts from the turn, not from the wait for it.
        self.dial_gate: asyncio.Semaphore | None = None

    # ---- state seen by the checker, the swarm and tests
    @property
    def check_interval(self) -> int:
        own = self.settings.check_interval
        return own if own is not None else self.server_check_interval

    @property
    def server(self) -> Address | None:
        """The server of the live session, if any."""
        return self.link.address if self.link is not None and not self.link.closed else None

    @property
    def preferred(self) -> Address:
        return self.host_list.preferred

    def endpoint(self, address: Address) -> tuple[str, int]:
        return address.endpoint(self.settings.port)

    # ---- lifecycle
    async def run(self) -> None:
        """Run until `stop()`. A bug in any task stops the agent and is raised here, and so is
        EveryServerRefusedError when every server of a pass refused the agent for good."""
        self._spawn(self._session_loop(), "session")
        self._spawn(PreferredChecker(self).run(), "checker")
        self._spawn(self._renewal_loop(), "renewal")
        await self._stopping.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.link is not None:
            self.link.close()
        logger.info("%s: stopped", self.label)
        if self._failure is not None:
            raise self._failure

    def stop(self) -> None:
        self._stopping.set()

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"{self.label} {name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and self._failure is None:
            self._failure = task.exception()
            logger.error("%s: task %s failed", self.label, task.get_name(), exc_info=self._failure)
            self.stop()

    # ---- sessions
    def _attempt_stamp(self) -> int:
        """Milliseconds of this agent's clock, strictly increasing from one attempt to the next,
        so that a server that reads a startup late can tell it from a newer one."""
        self._last_attempt = max(time.time_ns() // 1_000_000, self._last_attempt + 1)
        return self._last_attempt

    def startup_message(self, address: Address) -> Startup:
        s = self.settings
        return Startup(
            guid=s.guid,
            name=s.name,
            host_type=s.host_type,
            zone=s.zone,
            cluster=s.cluster,
            ms_list=self.host_list.entries,
            algorithm=self.host_list.algorithm,
            dialled=str(address),
            attempt=self._attempt_stamp(),
        )

    async def open_link(self, address: Address) -> Link:
        return await Link.open(
            address,
            self.settings.port,
            self.startup_message(address),
            self.settings.connect_timeout,
            self.label,
            self.trust.context,
            self.dial_gate,
        )

    def _adopt(self, link: Link, replacing: Link | None) -> bool:
        """Make `link` the session unless the session changed meanwhile (then close it)."""
        if self.link is not replacing:
            link.close()
            return False
        self.link = link
        self.host_id = link.ready.host_id
        self._set_server_interval(link.ready.check_interval)
        self._spawn(self._serve(link), f"link {link.address}")
        return True

    async def _serve(self, link: Link) -> None:
        await self._renew_if_due(link)
        reason = await link.run(self._on_ms_list, self.trust.renewed)
        self.trust.renewing = False
        await self._switch_done()
        if self.link is link and not self._stopping.is_set():
            if self.losses is not None:
                self.losses[f"{link.address}: {reason}"] += 1
            else:
                logger.warning("%s: lost server %s: %s", self.label, link.address, reason)

    async def _session_loop(self) -> None:
        if self.trust.keystore.state() is KeystoreState.NONE:
            try:
                await self._enroll()
            except EveryServerRefusedError as exc:
                self._give_up(exc)
                return
        lost: Address | None = None
        while True:
            if self.link is None or self.link.closed:
                dead = self.link
                try:
                    link = await self._connect(lost)
                except EveryServerRefusedError as exc:
                    self._give_up(exc)
                    return
                if self._adopt(link, replacing=dead):
                    note = f" (failover from {lost})" if lost is not None else ""
                    logger.info("%s: connected to %s%s", self.label, link.address, note)
            current = self.link
            assert current is not None
            await current.wait_closed()
            await self._switch_done()
            if self.link is current:
                lost = current.address

    async def _switch_done(self) -> None:
        """Until a switch under way (make-before-break) is over. The session it replaces can
        end first: a server hangs up on a host's old session when its new one starts there (the
        same server under another address, as behind a TCP load balancer). Dialling then, beside
        the switch, made a second new session, registered last: the registry followed it, and
        its close marked the host disconnected while the agent stayed on the switch's."""
        async with self._switch_lock:
            pass

    async def _connect(self, lost: Address | None) -> Link:
        return await connect_with_failover(
            self.host_list.addresses,
            self.open_link,
            self.settings.backoff,
            lost,
            endpoint=self.endpoint,
            label=self.label,
        )

    async def _enroll(self) -> None:
        """Get a certificate with the join token, through the list as a connection would."""
        settings = self.settings

        async def enroll_at(address: Address) -> None:
            async with self.dial_gate or contextlib.nullcontext():
                await self.trust.enroll_at(address, settings.port, settings.connect_timeout)

        await connect_with_failover(
            self.host_list.addresses,
            enroll_at,
            settings.backoff,
            endpoint=self.endpoint,
            label=self.label,
        )

    async def _renew_if_due(self, link: Link) -> None:
        """Renew the certificate over `link` when less than a third of its validity is left."""
        if self.trust.renewal_due():
            logger.info(
                "%s: certificate expires %s; renewing", self.label, self.trust.keystore.expires()
            )
            await link.send(self.trust.renewal_request())

    async def _renewal_loop(self) -> None:
        while True:
            await asyncio.sleep(RENEW_CHECK_EVERY)
            link = self.link
            if link is not None and not link.closed:
                await self._renew_if_due(link)

    def _give_up(self, cause: EveryServerRefusedError) -> None:
        """Stop, and have `run` raise `cause`: an expected end, so no traceback is logged."""
        if self._failure is None:
            self._failure = cause
        self.stop()

    async def switch_to(self, address: Address, why: str) -> bool:
        """Make-before-break: open a session to `address`, then close the current one."""
        async with self._switch_lock:
            old = self.link
            if old is None or old.closed or self.endpoint(old.address) == self.endpoint(address):
                return False
            try:
                new = await self.open_link(address)
            except ConnectFailedError as exc:
                logger.debug("%s: %s not taken: %s", self.label, why, exc)
                return False
            if not self._adopt(new, replacing=old):
                return False
            old.close()
            logger.info("%s: switched %s -> %s (%s)", self.label, old.address, address, why)
            return True

    # ---- lists pushed by servers
    def _set_server_interval(self, seconds: int) -> None:
        before = self.check_interval
        self.server_check_interval = seconds
        if self.check_interval != before:
            self.interval_changed.set()

    async def _on_ms_list(self, link: Link, message: MsList) -> None:
        # No check against older versions: the server is the authority, and a Redis that was
        # emptied and set again restarts its version counter.
        received = time.monotonic()  # the server's delay counts from here, not from the save
        try:
            new_list = HostList(parse_address_list(",".join(message.ms_list)), message.algorithm)
        except ValidationError as exc:
            logger.error("%s: refusing list from %s: %s", self.label, link.address, exc)
            return
        if not await self.host_file.save(new_list):
            return
        before = self.host_list
        self.host_list = new_list
        self._set_server_interval(message.check_interval)
        # Taken with the list, as the ack says: the server counts on the new ping settings once
        # the list is acknowledged, not before (a list that cannot be saved changes nothing).
        link.set_ping(message.ping_interval, message.ping_timeout)
        await link.ack(message)
        logger.info(
            "%s: persisted host=%s (version %d)",
            self.label,
            format_host_value(new_list),
            message.version,
        )
        if self._should_move(before, new_list):
            if self._migration is not None:
                self._migration.cancel()
            move_at = received + message.delay if message.delay > 0 else None
            self._migration = self._spawn(self._move_to_preferred(move_at), "move")

    def _should_move(self, before: HostList, after: HostList) -> bool:
        """Move when the current server left the list, or the list's first entry changed and is
        not where we are. The same first entry pushed again moves nobody: returning to it is the
        preferred-host checker's job, at each agent's own phase, so a fleet does not stampede."""
        current = self.server
        if current is None or self.endpoint(current) == self.endpoint(after.preferred):
            return False
        listed = {self.endpoint(a) for a in after.addresses}
        if self.endpoint(current) not in listed:
            return True
        return self.endpoint(before.preferred) != self.endpoint(after.preferred)

    @property
    def moving(self) -> bool:
        """Whether a move to a new list's first entry is waiting out its delay or under way."""
        return self._migration is not None and not self._migration.done()

    async def _move_to_preferred(self, move_at: float | None) -> None:
        """After a new list: go to its first entry, make-before-break, at `move_at` (monotonic:
        the list's arrival plus the delay the server gave, its pacing: at most move.rate agents
        a second leave it), or, when it gave none (None: an older server), after a random delay
        of up to MOVE_MAX_DELAY that spreads a fleet's moves. A server that is no longer listed
        is left for the first entry that answers; one that is still listed is kept when the
        first entry does not answer."""
        if move_at is None:
            await asyncio.sleep(self.rng.uniform(0, MOVE_MAX_DELAY))
        else:
            await asyncio.sleep(max(0.0, move_at - time.monotonic()))
        current = self.server
        if current is None:
            return  # the session loop is already connecting, in the new list's order
        listed = {self.endpoint(a) for a in self.host_list.addresses}
        candidates = self.host_list.addresses
        if self.endpoint(current) in listed:
            candidates = candidates[:1]
        for address in candidates:
            if self.endpoint(address) == self.endpoint(current):
                return
            if await self.switch_to(address, "new list"):
                return
        if self.endpoint(current) not in listed:
            logger.warning("%s: no server of the new list answered; staying", self.label)
