from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common import algorithms
from common.errors import UnknownAlgorithmError

MS = [".1", ".2", ".3"]
HOST_IDS = [1, 5, 10, 20, 50, 60, 70, 80]
ALL = ["static", "roundrobin", "shuffle", "rendezvous"]


@pytest.mark.parametrize(
    ("host_id", "expected"),
    [
        (1, [".1", ".2", ".3"]),
        (5, [".2", ".3", ".1"]),
        (10, [".3", ".1", ".2"]),
        (20, [".1", ".2", ".3"]),
        (80, [".2", ".3", ".1"]),
        (81, [".3", ".1", ".2"]),  # not registered yet: ranks last (8 % 3 == 2)
    ],
)
def test_roundrobin_reference_vectors(host_id, expected):
    assert algorithms.get("roundrobin").sort(MS, HOST_IDS, host_id) == expected


def test_three_servers_three_agents_example():
    rr = algorithms.get("roundrobin")
    hosts = [1, 2, 3]
    got = [rr.sort(["A", "B", "C"], hosts, h) for h in hosts]
    assert got == [["A", "B", "C"], ["B", "C", "A"], ["C", "A", "B"]]


def test_static_keeps_the_given_order():
    assert algorithms.get("static").sort(MS, HOST_IDS, 10) == MS


@pytest.mark.parametrize("name", ALL)
def test_one_entry_sorts_to_itself(name):
    assert algorithms.get(name).sort(["only"], HOST_IDS, 5) == ["only"]


def test_compare_order_matters_for_static_and_roundrobin():
    for name in ("static", "roundrobin"):
        algo = algorithms.get(name)
        assert algo.compare(MS, list(MS))
        assert not algo.compare(MS, [".2", ".1", ".3"])
        assert not algo.compare(MS, MS[:2])


def test_compare_ignores_order_for_shuffle_but_not_membership():
    algo = algorithms.get("shuffle")
    assert algo.compare(MS, [".3", ".1", ".2"])
    assert not algo.compare(MS, [".3", ".1"])
    assert not algo.compare(MS, [".3", ".1", ".4"])


def test_a_different_algorithm_name_is_never_current():
    assert algorithms.is_current("static", MS, "static", MS)
    assert not algorithms.is_current("static", MS, "roundrobin", MS)
    assert not algorithms.is_current("shuffle", MS, None, MS)


def test_unknown_algorithm_lists_the_known_ones():
    with pytest.raises(UnknownAlgorithmError, match="rendezvous, roundrobin, shuffle, static"):
        algorithms.get("fastest")


def test_new_algorithms_plug_in_by_name():
    class Reverse:
        name = "reverse-test"

        def sort(self, ms_list, ordered_host_ids, host_id):
            return list(reversed(ms_list))

        def compare(self, expected, got):
            return list(expected) == list(got)

    algorithms.register(Reverse())
    try:
        assert algorithms.get("reverse-test").sort(MS, [], 1) == [".3", ".2", ".1"]
        assert algorithms.is_current(
            "reverse-test", [".3", ".2", ".1"], "reverse-test", [".3", ".2", ".1"]
        )
    finally:
        algorithms._REGISTRY.pop("reverse-test")


ms_lists = st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=7, unique=True)
id_lists = st.lists(st.integers(1, 10**6), max_size=50, unique=True).map(sorted)


@given(name=st.sampled_from(ALL), ms_list=ms_lists, ids=id_lists, host_id=st.integers(1, 10**6))
def test_every_sort_returns_a_permutation(name, ms_list, ids, host_id):
    result = algorithms.get(name).sort(ms_list, ids, host_id)
    assert sorted(result) == sorted(ms_list)
    assert algorithms.get(name).compare(result, list(result))


@given(ms_list=ms_lists, first=st.integers(1, 1000), count=st.integers(1, 200))
def test_roundrobin_spreads_first_entries_evenly(ms_list, first, count):
    ids = list(range(first, first + count))
    rr = algorithms.get("roundrobin")
    firsts = Counter(rr.sort(ms_list, ids, h)[0] for h in ids)
    counts = [firsts.get(m, 0) for m in ms_list]
    assert max(counts) - min(counts) <= 1


@given(ms_list=ms_lists, ids=id_lists, host_id=st.integers(1, 10**6))
def test_shuffle_gives_one_host_the_same_order_every_time(ms_list, ids, host_id):
    shuffle = algorithms.get("shuffle")
    first = shuffle.sort(ms_list, ids, host_id)
    # the zone's other hosts do not matter, only the host id and the list
    assert shuffle.sort(list(ms_list), ids[:1], host_id) == first
    assert shuffle.sort(ms_list, [], host_id) == first


def test_shuffle_is_the_same_in_another_process():
    import subprocess
    import sys

    code = (
        "from common import algorithms; "
        "print(algorithms.get('shuffle').sort(list('ABCDEFG'), [], 42))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
        ).stdout
        for seed in (1, 2)
    }
    assert outputs == {str(algorithms.get("shuffle").sort(list("ABCDEFG"), [], 42)) + "\n"}


def test_rendezvous_reference_vectors():
    """sha256("<host id>|<server>"), highest first: fixed, so every server and version agree."""
    rv = algorithms.get("rendezvous")
    assert rv.sort(["a:8250", "b:8250", "c:8250"], [], 1) == rv.sort(
        ["c:8250", "a:8250", "b:8250"], [], 1
    )
    import hashlib

    expected = sorted(
        ["a:8250", "b:8250", "c:8250"],
        key=lambda s: hashlib.sha256(f"7|{s}".encode()).digest(),
        reverse=True,
    )
    assert rv.sort(["a:8250", "b:8250", "c:8250"], [1, 2, 3], 7) == expected


@given(ms_list=ms_lists, ids=id_lists, host_id=st.integers(1, 10**6))
def test_rendezvous_ignores_the_zones_other_hosts(ms_list, ids, host_id):
    rv = algorithms.get("rendezvous")
    assert rv.sort(ms_list, ids, host_id) == rv.sort(ms_list, [], host_id)


def test_rendezvous_a_fourth_server_takes_about_a_quarter_of_first_entries():
    rv = algorithms.get("rendezvous")
    three = ["ms1:8250", "ms2:8250", "ms3:8250"]
    four = [*three, "ms4:8250"]
    hosts = range(1, 3001)
    moved = sum(rv.sort(three, [], h)[0] != rv.sort(four, [], h)[0] for h in hosts)
    assert 0.20 < moved / len(hosts) < 0.30
    # whoever did not move to the new server kept its first entry
    for h in hosts:
        if rv.sort(four, [], h)[0] != "ms4:8250":
            assert rv.sort(four, [], h)[0] == rv.sort(three, [], h)[0]
    firsts = Counter(rv.sort(three, [], h)[0] for h in hosts)
    assert min(firsts.values()) > 900  # spread: about 1,000 each
