"""The `rendezvous` algorithm with real servers (DESIGN, Algorithms; issue 13): one host gets the
same order from every server; a host added to or removed from the zone changes no other host's
list (roundrobin, for contrast, re-ranks); a fourth server added changes the first entry of
about a quarter of the agents, every one of them to the new server (roundrobin and shuffle move
about three quarters).

To prove that a client received *nothing* for a change, a follow-up change reaches every client
(a new check interval travels with the list): a server pushes in order on one connection, so
whatever the first change caused arrived before the follow-up.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast

import pytest

from common import algorithms
from common.protocol import MsList
from common.records import HostRecord
from tests.support.fleet import Fleet, fleet, gather_limited
from tests.support.msrv_process import MsrvProcess
from tests.support.wire_client import WireClient

ALGORITHM = "indirect.agent.lb.algorithm"
CHECK = "indirect.agent.lb.check.interval"


def _sort(algorithm: str, ms: Sequence[str], ids: Sequence[int], host_id: int) -> list[str]:
    return algorithms.get(algorithm).sort(ms, sorted(ids), host_id)


async def _start(f: Fleet, guids: Sequence[str]) -> dict[str, WireClient]:
    """One client per guid, spread over the servers, each started up with no list (so each
    is pushed one) and auto-acking."""

    async def one(i: int, guid: str) -> WireClient:
        client = await f.connect(i % len(f.servers), guid)
        greeting = await client.startup()
        assert greeting.ms_list is not None, guid
        return client

    started = await gather_limited((one(i, g) for i, g in enumerate(guids)), 50)
    return {c.guid: c for c in cast(list[WireClient], started)}


async def _next_list(client: WireClient, check: int | None = None) -> tuple[list[MsList], MsList]:
    """The lists received up to the first one carrying check interval `check` (any list when
    None): (those before it, that one)."""
    before: list[MsList] = []
    while True:
        message = await client.next(timeout=10)
        assert message is not None, f"{client.guid}: closed"
        if not isinstance(message, MsList):
            continue
        if check is None or message.check_interval == check:
            return before, message
        before.append(message)


# -- 1. the same order from every server ---------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_host_gets_the_same_order_from_every_server(redis_url: str, namespace: str) -> None:
    """Each host starts up at ms1, then ms2, then ms3 (one session at a time): the three lists
    are one, and it is common.algorithms' rendezvous order for its host id."""

    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=3) as f:
            ms = f.addresses
            await f.set("host", ",".join(ms))
            await f.set(ALGORITHM, "rendezvous")
            for n in range(8):
                guid = f"h{n}"
                seen: list[tuple[int, list[str]]] = []
                for server in range(3):
                    client = await f.connect(server, guid)
                    greeting = await client.startup()  # reports no list: the server pushes one
                    assert greeting.ready.server == ms[server]
                    assert greeting.ms_list is not None
                    assert greeting.ms_list.algorithm == "rendezvous"
                    seen.append((greeting.ready.host_id, greeting.ms_list.ms_list))
                    await client.close()
                host_id = seen[0][0]
                assert seen == [(host_id, _sort("rendezvous", ms, [], host_id))] * 3, seen

    asyncio.run(scenario())


# -- 2. a host added or removed changes no other host's list -------------------------------------


async def _follow_up(
    f: Fleet, clients: dict[str, WireClient], check: int
) -> dict[str, tuple[list[MsList], MsList]]:
    """Set the check interval to `check`; every client receives it with its list. Returns,
    per client, the lists it received before that one, and that one; then nothing else is on
    the way to anyone, and the registry holds each client's ack of it."""
    await f.set(CHECK, str(check))
    got = dict(
        zip(
            clients,
            await asyncio.gather(*(_next_list(c, check) for c in clients.values())),
            strict=True,
        )
    )
    assert all(s == [] for s in await asyncio.gather(*(c.sync() for c in clients.values())))
    guids = set(clients)
    await f.wait_hosts(
        lambda hs: {h.guid for h in hs if h.check_interval == check} >= guids, timeout=10
    )
    return got


async def _remove(f: Fleet, client: WireClient) -> None:
    """Stop the host's session, then `msctl hosts remove` it."""
    (host,) = [h for h in await f.hosts() if h.guid == client.guid]
    await client.close()
    await f.wait_hosts(lambda hs: any(h.guid == client.guid and h.state != "connected" for h in hs))
    result = await f.msctl("hosts", "remove", str(host.id))
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"host {host.id} ("), result.output


def _held(hosts: list[HostRecord], guids: set[str]) -> dict[str, tuple[str, ...]]:
    return {h.guid: h.ms_list for h in hosts if h.guid in guids}


def _moved(
    got: dict[str, tuple[list[MsList], MsList]], before: dict[str, tuple[str, ...]]
) -> list[str]:
    """The clients whose follow-up list is not the one they held before."""
    return sorted(g for g, (_, follow) in got.items() if tuple(follow.ms_list) != before[g])


async def _rendezvous_add_and_remove(f: Fleet, clients: dict[str, WireClient]) -> None:
    ms = f.addresses
    hosts = await f.hosts()
    before = _held(hosts, set(clients))
    assert before == {h.guid: tuple(_sort("rendezvous", ms, [], h.id)) for h in hosts}

    newcomer = await f.connect(1, "g-new")  # one host more
    greeting = await newcomer.startup()
    assert greeting.ms_list is not None
    assert greeting.ms_list.ms_list == _sort("rendezvous", ms, [], greeting.ready.host_id)
    got = await _follow_up(f, clients, 2)
    assert all(pushed == [] for pushed, _ in got.values()), got
    assert _moved(got, before) == []
    assert _held(await f.hosts(), set(clients)) == before
    await _next_list(newcomer, 2)  # it is one of the others from now on

    gone = clients.pop("g10")  # one host fewer: stopped and removed
    del before["g10"]
    await _remove(f, gone)
    clients["g-new"] = newcomer
    before["g-new"] = tuple(greeting.ms_list.ms_list)
    got = await _follow_up(f, clients, 3)
    assert all(pushed == [] for pushed, _ in got.values()), got
    assert _moved(got, before) == []
    hosts = await f.hosts()
    assert "g10" not in {h.guid for h in hosts}
    assert _held(hosts, set(clients)) == before


async def _roundrobin_add_and_remove(
    f: Fleet, clients: dict[str, WireClient]
) -> tuple[list[str], list[str]]:
    """The same under roundrobin: the hosts moved by the addition, then by the removal."""
    ms = f.addresses
    await f.set(ALGORITHM, "roundrobin")
    await asyncio.gather(*(_next_list(c) for c in clients.values()))
    await _follow_up(f, clients, 4)
    hosts = await f.hosts()
    ranked = sorted(h.id for h in hosts)
    ids = {h.guid: h.id for h in hosts}
    before = _held(hosts, set(clients))
    assert before == {g: tuple(_sort("roundrobin", ms, ranked, ids[g])) for g in clients}

    added = await f.connect(2, "g-rr-new")  # the newest id ranks last: nobody else moves
    added_id = (await added.startup()).ready.host_id
    moved_by_add = _moved(await _follow_up(f, clients, 5), before)
    assert moved_by_add == []

    # the host ranked 11th stops and is removed: each of the 19 ranked after it moves one place
    gone = sorted(clients, key=lambda g: ids[g])[10]
    await _remove(f, clients.pop(gone))
    got = await _follow_up(f, clients, 6)
    ranked = [*(i for i in ranked if i != ids[gone]), added_id]
    for guid, (_, follow) in got.items():
        assert follow.ms_list == _sort("roundrobin", ms, ranked, ids[guid]), guid
    moved_by_removal = _moved(got, before)
    assert moved_by_removal == sorted(g for g in clients if ids[g] > ids[gone])
    assert len(moved_by_removal) == len(clients) - 10
    return moved_by_add, moved_by_removal


@pytest.mark.timeout(60)
def test_a_host_added_or_removed_changes_no_other_hosts_list(
    redis_url: str, namespace: str
) -> None:
    """30 hosts on 3 servers. Under rendezvous, one host more and then one fewer (stopped and
    `msctl hosts remove`d): no other host is sent a list, and the registry's lists of the
    others stay as they were. Under roundrobin the removal moves every host ranked after it."""
    count = 30

    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=3) as f:
            await f.set("host", ",".join(f.addresses))
            await f.set(ALGORITHM, "rendezvous")
            clients = await _start(f, [f"g{i:02d}" for i in range(count)])
            await _follow_up(f, clients, 1)  # every startup push acked, nothing left in flight
            await _rendezvous_add_and_remove(f, clients)
            by_add, by_removal = await _roundrobin_add_and_remove(f, clients)
            print(
                f"\none host added, then one removed, among {count}: other hosts moved: "
                f"rendezvous 0 and 0; roundrobin {len(by_add)} and {len(by_removal)}"
            )

    asyncio.run(scenario())


# -- 3. a fourth server added --------------------------------------------------------------------


async def _lists(f: Fleet, count: int, algorithm: str, servers: int) -> dict[int, tuple[str, ...]]:
    """Once every host acked a list of `servers` entries under `algorithm`: each host's list."""

    def settled(hosts: list[HostRecord]) -> bool:
        return len(hosts) == count and all(
            h.algorithm == algorithm and len(h.ms_list) == servers for h in hosts
        )

    hosts = await f.wait_hosts(settled, timeout=20)
    return {h.id: h.ms_list for h in hosts}


async def _add_a_server(
    f: Fleet, count: int, algorithm: str, fourth: str
) -> tuple[dict[int, tuple[str, ...]], dict[int, tuple[str, ...]]]:
    """`host` = the three first servers under `algorithm`, then the four: each host's list
    before and after, checked against common.algorithms."""
    three = f.addresses[:3]
    before = await _lists(f, count, algorithm, 3)
    ranked = sorted(before)
    assert before == {i: tuple(_sort(algorithm, three, ranked, i)) for i in ranked}
    await f.set("host", ",".join([*three, fourth]))
    after = await _lists(f, count, algorithm, 4)
    assert after == {i: tuple(_sort(algorithm, [*three, fourth], ranked, i)) for i in ranked}
    return before, after


def _first_moved(
    before: dict[int, tuple[str, ...]], after: dict[int, tuple[str, ...]]
) -> list[int]:
    return [i for i in before if before[i][0] != after[i][0]]


@pytest.mark.timeout(90)
def test_a_fourth_server_changes_the_first_entry_of_about_a_quarter(
    redis_url: str, namespace: str
) -> None:
    """300 hosts, `host` = 3 servers, rendezvous; a fourth msrv starts and `host` becomes the
    four: at most 35% of the hosts get a new first entry (1/4 expected), each of them the new
    server, and every host keeps the order of the three it had. Roundrobin and shuffle, run the
    same way for the record, move about three quarters."""
    count = 300

    async def scenario() -> None:
        async with fleet(redis_url, namespace, servers=3) as f:
            three = f.addresses
            await f.set("host", ",".join(three))
            await f.set(ALGORITHM, "rendezvous")
            await _start(f, [f"a{i:03d}" for i in range(count)])
            await _lists(f, count, "rendezvous", 3)
            ms4 = MsrvProcess("ms4", f.redis_url, f.namespace)
            f.servers.append(ms4)  # f.set waits for it too; the fleet kills it at the end
            await ms4.start()
            fourth = ms4.address

            before, after = await _add_a_server(f, count, "rendezvous", fourth)
            moved = _first_moved(before, after)
            figures: dict[str, float] = {"rendezvous": len(moved) / count}
            assert {after[i][0] for i in moved} == {fourth}
            assert all(tuple(e for e in after[i] if e != fourth) == before[i] for i in before)

            for algorithm in ("roundrobin", "shuffle"):
                await f.set("host", ",".join(three))
                await f.set(ALGORITHM, algorithm)
                before, after = await _add_a_server(f, count, algorithm, fourth)
                figures[algorithm] = len(_first_moved(before, after)) / count

            print(
                f"\na fourth server added, {count} hosts with a new first entry: "
                + ", ".join(f"{name} {share:.1%}" for name, share in figures.items())
            )
            assert 0 < figures["rendezvous"] <= 0.35, figures
            assert figures["roundrobin"] > figures["rendezvous"], figures

    asyncio.run(scenario())
