"""`msctl lab demo`: the feature's example on a real lab, narrated and checked step by step.

Three servers, three agents (enrolled with a join token the lab makes): static; roundrobin
(A,B,C / B,C,A / C,A,B); shuffle; a server killed and its agent failing over; the server back
with a check interval and the agent failing back; a move to a new set of servers; a server taken
out for maintenance, its agents moved without a lost session, then back in service; a client
with no certificate refused while the real agent keeps its session; a host enrolled with its
own token, stopped and removed, whose certificate then opens no session. Each step waits
(bounded) for what it shows, by reading the registry in Redis and the agents' agent.properties
files; a step that does not happen raises DemoFailed naming it.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import click

from common import maintenance
from common.ca import load_ca
from common.errors import LbError
from common.properties import AgentProperties, atomic_write
from common.protocol import Ca, Error, Startup, encode, read_message
from common.records import (
    HostRecord,
    HostState,
    ServerState,
    load_hosts,
    load_servers,
    remove_host,
)
from common.tls import enrollment_context
from msctl.children import ChildError, LoggedProcess
from msctl.lab import SHORT_NAMES, Lab
from msctl.tables import format_table

T = TypeVar("T")
POLL = 0.1


class DemoFailedError(LbError):
    def __init__(self, step: str, reason: str) -> None:
        super().__init__(f"step '{step}': {reason}")
        self.step = step


def rotations(items: list[str]) -> list[list[str]]:
    return [items[i:] + items[:i] for i in range(len(items))]


class Demo:
    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.step = "start"
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        click.echo(click.style(f"==> {text}", bold=True))

    def show(self, text: str) -> None:
        click.echo("    " + text.replace("\n", "\n    "))

    def properties(self) -> list[Path]:
        return sorted((self.lab.directory / "agents").glob("agent-*/agent.properties"))

    def host_lines(self) -> dict[str, str]:
        """Agent name -> its host= value, read from its file."""
        lines = {}
        for path in self.properties():
            props = AgentProperties.load(path)
            lines[props.get("name") or path.parent.name] = props.get("host") or ""
        return lines

    async def hosts(self) -> list[HostRecord]:
        async with self.lab.connected() as client:
            return await load_hosts(client, self.lab.keys)

    async def until(self, what: str, probe: Callable[[], Awaitable[T | None]], limit: float) -> T:
        """Poll `probe` until it returns something; fail the step after `limit` seconds."""
        deadline = time.monotonic() + limit
        while True:
            result = await probe()
            if result is not None:
                return result
            if time.monotonic() > deadline:
                raise DemoFailedError(self.step, f"{what} did not happen within {limit:g}s")
            await asyncio.sleep(POLL)

    def server_of(self, address: str) -> str:
        return self.lab.member(address).server_id

    async def settled(self, algorithm: str) -> list[HostRecord] | None:
        """The hosts, once every file holds a list @algorithm and every agent sits connected on
        the first entry of that list (the registry agrees with the files)."""
        hosts = await self.hosts()
        lines = self.host_lines()
        if len(hosts) != len(lines) or not lines:
            return None
        for host in hosts:
            line = lines.get(host.name, "")
            if not line.endswith(f"@{algorithm}") or host.state != HostState.CONNECTED:
                return None
            first = line.split("@")[0].split(",")[0]
            if list(host.ms_list) != line.split("@")[0].split(",") or host.server != (
                self.server_of(first)
            ):
                return None
        return hosts

    def table(self, hosts: list[HostRecord]) -> str:
        lines = self.host_lines()
        rows = [("AGENT", "HOST ID", "ON", "agent.properties")]
        rows += [(h.name, str(h.id), h.server, f"host={lines[h.name]}") for h in hosts]
        return format_table(rows, wide=(3,))

    async def set(self, **values: str) -> None:
        version = await self.lab.configure(**values)
        for name, value in values.items():
            self.show(f"$ msctl config set {SHORT_NAMES.get(name, name)} {value}")
        self.show(f"  (config version {version})")

    # -- the steps ------------------------------------------------------------------------------

    async def run(self) -> None:
        lab = self.lab
        self.say(f"{len(lab.members)} servers and {lab.agents} agents are up")
        self.show(", ".join(f"{m.server_id}={m.listen}" for m in lab.members))
        csv = lab.addresses

        self.step = "static"
        self.say("static: every agent gets the list as given")
        await self.set(algorithm="static")
        hosts = await self.until("static lists", lambda: self.settled("static"), 15)
        if {tuple(h.ms_list) for h in hosts} != {tuple(csv)}:
            raise DemoFailedError(self.step, "agents hold different lists")
        self.show(self.table(hosts))

        self.step = "roundrobin"
        self.say("roundrobin: rotated by each host's rank, A,B,C / B,C,A / C,A,B")
        await self.set(algorithm="roundrobin")
        hosts = await self.until("roundrobin lists", lambda: self.settled("roundrobin"), 15)
        got = [list(h.ms_list) for h in sorted(hosts, key=lambda h: h.id)]
        if got != rotations(csv)[: len(got)]:
            raise DemoFailedError(self.step, f"lists by host id are {got}")
        self.show(self.table(hosts))

        self.step = "shuffle"
        self.say("shuffle: a stable pseudo-random order per host")
        await self.set(algorithm="shuffle")
        hosts = await self.until("shuffled lists", lambda: self.settled("shuffle"), 15)
        if any(sorted(h.ms_list) != sorted(csv) for h in hosts):
            raise DemoFailedError(self.step, "a shuffled list is not a permutation")
        self.show(self.table(hosts))
        await self.set(algorithm="roundrobin")
        hosts = await self.until("roundrobin lists", lambda: self.settled("roundrobin"), 15)

        await self._failover_and_back(hosts)
        await self._migration()
        await self._maintenance()
        await self._no_certificate()
        await self._revocation()

    async def _failover_and_back(self, hosts: list[HostRecord]) -> None:
        lab = self.lab
        self.step = "failover"
        victim = next(h for h in hosts if h.server == "ms1")
        self.say(f"failover: ms1 is killed (SIGKILL); {victim.name} moves to its next entry")
        next_server = self.server_of(victim.ms_list[1])
        killed = time.monotonic()
        await lab.kill_server("ms1", signal.SIGKILL)

        async def moved() -> HostRecord | None:
            for h in await self.hosts():
                if h.id == victim.id and h.state == HostState.CONNECTED and h.server != "ms1":
                    return h
            return None

        landed = await self.until(f"{victim.name} failing over", moved, 10)
        if landed.server != next_server:
            raise DemoFailedError(self.step, f"landed on {landed.server}, not {next_server}")
        self.show(f"{victim.name} on {landed.server} after {time.monotonic() - killed:.2f}s")

        self.step = "failback"
        self.say("failback: check interval 2 s, ms1 starts again, the agent returns to it")
        await self.set(check_interval="2")
        await lab.start_server("ms1")
        back = time.monotonic()

        async def returned() -> HostRecord | None:
            for h in await self.hosts():
                if h.id == victim.id and h.state == HostState.CONNECTED and h.server == "ms1":
                    return h
            return None

        await self.until(f"{victim.name} returning to ms1", returned, 10)
        self.show(f"{victim.name} back on ms1 {time.monotonic() - back:.2f}s after its restart")

    async def _migration(self) -> None:
        lab = self.lab
        self.step = "migration"
        old = list(lab.members)
        self.say("migration: three new servers start, `host` moves to them, the old ones stop")
        new = [await lab.add_server() for _ in range(3)]
        self.show(", ".join(f"{m.server_id}={m.listen}" for m in new))
        await self.set(host=",".join(m.listen for m in new))
        new_ids = {m.server_id for m in new}

        async def on_new() -> list[HostRecord] | None:
            hosts = await self.settled("roundrobin")
            return hosts if hosts and all(h.server in new_ids for h in hosts) else None

        hosts = await self.until("every agent on a new server", on_new, 20)
        self.show(self.table(hosts))
        swarm = lab.swarm
        if swarm is not None:
            # the registry moves when a new session starts, a moment before the agent drops its
            # old one: wait for the agents' own view (the swarm's summary) too
            listed = "|".join(re.escape(m.listen) for m in new)
            try:
                await swarm.wait_for(
                    rf"swarm: {lab.agents}/{lab.agents} agents connected "
                    rf"\((?:(?:{listed})=\d+(?:, )?)+\)$",
                    timeout=20,
                )
            except ChildError as exc:
                raise DemoFailedError(
                    self.step, "the agents did not all leave the old servers"
                ) from exc
        lost_before = swarm.count("lost server") if swarm is not None else 0
        for member in old:
            await lab.kill_server(member.server_id, signal.SIGTERM)
        hosts = await self.until("agents still connected", on_new, 10)
        lost = (swarm.count("lost server") if swarm is not None else 0) - lost_before
        if lost:
            raise DemoFailedError(self.step, f"{lost} agents lost their session")
        self.show(f"ms1-ms{len(old)} stopped; every agent kept its session")

    async def _maintenance(self) -> None:
        lab = self.lab
        self.step = "maintenance"
        hosts = await self.hosts()
        target = hosts[0].server
        moving = [h.name for h in hosts if h.server == target]
        self.say(
            f"maintenance: {target} is taken out of service; its agents move to their next"
            " entry, make-before-break, and none loses its session"
        )
        swarm = lab.swarm
        lost_before = swarm.count("lost server") if swarm is not None else 0
        async with lab.connected() as client:
            await maintenance.begin(client, lab.keys, target)
        self.show(f"$ msctl servers maintenance {target} --wait")
        began = time.monotonic()

        async def emptied() -> list[HostRecord] | None:
            async with lab.connected() as client:
                servers = {s.id: s for s in await load_servers(client, lab.keys)}
            hosts = await self.hosts()
            if servers[target].state != ServerState.MAINTENANCE:
                return None
            if any(h.server == target or h.state != HostState.CONNECTED for h in hosts):
                return None
            return hosts

        hosts = await self.until(f"{target} emptied", emptied, 20)
        lost = (swarm.count("lost server") if swarm is not None else 0) - lost_before
        if lost:
            raise DemoFailedError(self.step, f"{lost} agents lost their session")
        where = ", ".join(f"{h.name} on {h.server}" for h in hosts if h.name in moving)
        self.show(f"{target} in maintenance after {time.monotonic() - began:.2f}s: {where}")
        self.show(self.table(hosts))
        async with lab.connected() as client:
            await maintenance.cancel(client, lab.keys, target)
        self.show(f"$ msctl servers cancel-maintenance {target}")
        address = lab.member(target).listen

        async def listed_again() -> list[HostRecord] | None:
            hosts = await self.settled("roundrobin")
            return hosts if hosts and all(address in h.ms_list for h in hosts) else None

        await self.until(f"{target} back in every list", listed_again, 20)
        self.show(f"{target} back in service: its address is in every list again")

    async def _no_certificate(self) -> None:
        self.step = "trust"
        victim = (await self.hosts())[0]
        self.say(
            f"trust: a client with no certificate sends a startup for {victim.name}'s guid;"
            " it is refused and the real agent keeps its session"
        )
        host, port = self.lab.member(victim.server).listen.rsplit(":", 1)
        async with self.lab.connected() as client:
            ca = await load_ca(client, self.lab.keys)
        assert ca is not None  # the servers made it
        reader, writer = await asyncio.open_connection(
            host, int(port), ssl=enrollment_context(ca.certificate_pem), server_hostname=host
        )
        try:
            offered = await read_message(reader)
            startup = Startup(victim.guid, "intruder", "routing", victim.zone, "", [], None, "")
            writer.write(encode(startup))
            await writer.drain()
            answer = await read_message(reader)
        finally:
            writer.close()
        if not isinstance(offered, Ca) or not isinstance(answer, Error):
            raise DemoFailedError(self.step, f"the server answered {answer!r}")
        self.show(f"refused: {answer.code}: {answer.message}")
        after = {h.id: h for h in await self.hosts()}[victim.id]
        if (after.session, after.state) != (victim.session, HostState.CONNECTED):
            raise DemoFailedError(self.step, f"{victim.name}'s session changed")
        self.show(f"{victim.name} still connected to {after.server}, same session")

    async def _revocation(self) -> None:
        lab = self.lab
        self.step = "revocation"
        self.say(
            "revocation: a new host enrolls with a token of its own, stops, is removed;"
            " its certificate then opens no session"
        )
        token = await lab.join_token(1)
        self.show("$ msctl token create --uses 1   # lb1:<CA sha256>:<id>.<secret>")
        folder = lab.directory / "hv-extra"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "agent.properties"
        text = f"host={','.join(lab.addresses[-3:])}\nname=hv-extra\ntoken={token}\n"
        atomic_write(path, text.encode(), mode=0o600)
        agent = LoggedProcess("hv-extra", ["-m", "agentd", "run", "--properties", str(path)])
        try:
            await agent.start(ready=r"agent hv-extra: connected to", timeout=15)
        except ChildError as exc:
            raise DemoFailedError(self.step, f"hv-extra did not enroll: {exc}") from exc
        if AgentProperties.load(path).get("token") is not None:
            raise DemoFailedError(self.step, "the token line is still in agent.properties")
        kept = ", ".join([*sorted(p.name for p in folder.glob("*.crt")), "agent.key (0600)"])
        self.show(f"hv-extra enrolled ({kept}; token line removed) and connected")
        await agent.stop(signal.SIGTERM)

        async def stopped() -> HostRecord | None:
            for h in await self.hosts():
                if h.name == "hv-extra" and h.state == HostState.DISCONNECTED:
                    return h
            return None

        host = await self.until("hv-extra disconnected", stopped, 10)
        async with lab.connected() as client:
            await remove_host(client, lab.keys, host.id)
        self.show(
            f"$ msctl hosts remove {host.id}   # hv-extra, stopped: its certificate is revoked"
        )
        await agent.start()
        assert agent.process is not None
        try:
            code = await asyncio.wait_for(agent.process.wait(), 15)
        except TimeoutError:
            raise DemoFailedError(self.step, "hv-extra was not refused") from None
        if code != 2 or not agent.matching("revoked"):
            raise DemoFailedError(self.step, f"hv-extra exited {code}: {agent.tail(3)}")
        self.show(f"hv-extra started again: refused (revoked), exit code {code}")
