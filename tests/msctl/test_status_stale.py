"""Which hosts lag (msctl.convergence, for `msctl status`, `hosts` and `config set --wait`): the
servers' own computation (common.assignment) applied to what the registry says each host holds."""

from __future__ import annotations

from dataclasses import replace

from common.configstore import ConfigSnapshot
from common.records import HostRecord, HostState
from msctl.convergence import Convergence, current_hosts, stale_hosts

SETTINGS = {"host": "a,b,c", "indirect.agent.lb.algorithm": "roundrobin"}


def host(host_id: int, ms_list: str, **fields: object) -> HostRecord:
    """A connected routing host of zone z1 that acked `ms_list` under SETTINGS' intervals."""
    record = HostRecord(
        host_id,
        f"guid-{host_id}",
        type="routing",
        zone="z1",
        state=HostState.CONNECTED,
        server="ms1",
        ms_list=tuple(ms_list.split(",")),
        algorithm="roundrobin",
        check_interval=0,
        ping_interval=5,
        ping_timeout=3,
    )
    return replace(record, **fields)  # type: ignore[arg-type]


def stale_ids(values: dict[str, str], hosts: list[HostRecord]) -> list[int]:
    return [h.id for h in stale_hosts(ConfigSnapshot(1, values), hosts)]


def test_hosts_holding_their_rotation_are_current_and_the_others_stale() -> None:
    hosts = [host(1, "a,b,c"), host(5, "b,c,a"), host(9, "c,a,b")]
    assert stale_ids(SETTINGS, hosts) == []
    swapped = [host(1, "a,b,c"), host(5, "c,a,b"), host(9, "b,c,a")]
    assert stale_ids(SETTINGS, swapped) == [5, 9]
    assert stale_ids(SETTINGS, [replace(hosts[0], algorithm="static"), *hosts[1:]]) == [1]
    # a host that is not ranked ranks last: 9 then gets the second rotation
    assert stale_ids(SETTINGS, [hosts[0], replace(hosts[1], type="kvm"), hosts[2]]) == [5, 9]


def test_a_changed_setting_that_travels_with_the_list_makes_hosts_stale() -> None:
    hosts = [host(1, "a,b,c"), host(5, "b,c,a")]
    assert stale_ids({**SETTINGS, "ping.interval": "7"}, hosts) == [1, 5]
    assert stale_ids({**SETTINGS, "ping.timeout": "4"}, hosts) == [1, 5]
    assert stale_ids({**SETTINGS, "indirect.agent.lb.check.interval": "30"}, hosts) == [1, 5]


def test_a_record_without_ping_values_is_compared_on_what_it_has() -> None:
    unknown = host(1, "a,b,c", ping_interval=0, ping_timeout=0)
    assert stale_ids({**SETTINGS, "ping.interval": "7"}, [unknown]) == []
    assert stale_ids(SETTINGS, [replace(unknown, ms_list=("b", "c", "a"))]) == [1]


def test_disconnected_hosts_and_an_unset_host_list_are_never_stale() -> None:
    wrong = host(1, "c,b,a")
    assert stale_ids(SETTINGS, [replace(wrong, state=HostState.DISCONNECTED)]) == []
    assert stale_ids({"indirect.agent.lb.algorithm": "roundrobin"}, [wrong]) == []


def test_current_judges_a_disconnected_host_on_its_record() -> None:
    hosts = [host(1, "a,b,c"), host(5, "c,a,b", state=HostState.DISCONNECTED)]
    assert current_hosts(ConfigSnapshot(1, SETTINGS), hosts) == {1: True, 5: False}
    assert current_hosts(ConfigSnapshot(1, {}), hosts) == {1: True, 5: True}  # `host` unset


def test_convergence_counts_the_lagging_hosts_by_server() -> None:
    hosts = [
        host(1, "c,a,b", server="ms2", name="kvm1"),
        host(5, "b,c,a", server="ms1"),
        host(9, "a,b,c", server="ms1", name="kvm9"),
        host(12, "c,b,a", server="ms1", name="kvm12"),
        host(13, "a,b,c", state=HostState.DISCONNECTED),
    ]
    fleet = Convergence.of_fleet(ConfigSnapshot(1, SETTINGS), hosts, [])
    assert (fleet.connected, [h.id for h in fleet.behind], fleet.there) == (4, [1, 9, 12], 1)
    assert fleet.by_server() == "ms1 2, ms2 1"
    assert fleet.summary() == "3 of 4 connected hosts lag: ms1 2, ms2 1"
    assert fleet.named() == "1 (kvm1) on ms2, 9 (kvm9) on ms1, 12 (kvm12) on ms1"
    assert fleet.named(limit=1) == "1 (kvm1) on ms2, and 2 more"
    assert Convergence(4, []).summary() == "converged: all 4 connected hosts hold their list"
    assert Convergence(0, []).summary() == "converged: no host is connected"


def test_a_host_that_acked_the_version_or_later_is_there() -> None:
    """`config set --wait`: a later change may have moved its list since it acked."""
    hosts = [host(1, "c,a,b", acked_version=7), host(5, "c,a,b", acked_version=6)]
    snapshot = ConfigSnapshot(8, SETTINGS)
    assert [h.id for h in Convergence.of_version(7, snapshot, hosts, []).behind] == [5]
    assert [h.id for h in Convergence.of_version(6, snapshot, hosts, []).behind] == []
    assert [h.id for h in Convergence.of_version(8, snapshot, hosts, []).behind] == [1, 5]
