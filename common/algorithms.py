"""Sorting algorithms for the management server list, registered by name.

Each algorithm computes one host's own order of the list (`sort`) and says whether the list a
host holds is still current (`compare`). New algorithms plug in with `register`.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence
from typing import Protocol

from common.errors import UnknownAlgorithmError


class Algorithm(Protocol):
    name: str

    def sort(
        self, ms_list: Sequence[str], ordered_host_ids: Sequence[int], host_id: int
    ) -> list[str]:
        """This host's order. `ordered_host_ids` holds the zone's ranked host ids, ascending."""
        ...

    def compare(self, expected: Sequence[str], got: Sequence[str]) -> bool:
        """True when `got` is as good as `expected` for this algorithm."""
        ...


class _OrderMatters:
    def compare(self, expected: Sequence[str], got: Sequence[str]) -> bool:
        return list(expected) == list(got)


class Static(_OrderMatters):
    """The list as the operator gave it."""

    name = "static"

    def sort(
        self, ms_list: Sequence[str], ordered_host_ids: Sequence[int], host_id: int
    ) -> list[str]:
        return list(ms_list)


def rank(ordered_host_ids: Sequence[int], host_id: int) -> int:
    """Position of `host_id` among the ascending ids; a host not in them ranks last."""
    index = bisect.bisect_left(ordered_host_ids, host_id)
    if index < len(ordered_host_ids) and ordered_host_ids[index] == host_id:
        return index
    return len(ordered_host_ids)


class RoundRobin(_OrderMatters):
    """Left-rotate the list by the host's rank in its zone, so first entries spread evenly."""

    name = "roundrobin"

    def sort(
        self, ms_list: Sequence[str], ordered_host_ids: Sequence[int], host_id: int
    ) -> list[str]:
        items = list(ms_list)
        if len(items) <= 1:
            return items
        shift = rank(ordered_host_ids, host_id) % len(items)
        return items[shift:] + items[:shift]


class Shuffle:
    """A pseudo-random order seeded from the host id and the list: stable for one host."""

    name = "shuffle"

    def sort(
        self, ms_list: Sequence[str], ordered_host_ids: Sequence[int], host_id: int
    ) -> list[str]:
        items = list(ms_list)
        # A str seed is hashed with SHA-512, so every process and server gets the same order.
        random.Random(f"{host_id}|{','.join(items)}").shuffle(items)
        return items

    def compare(self, expected: Sequence[str], got: Sequence[str]) -> bool:
        return len(expected) == len(got) and set(expected) == set(got)


class Rendezvous(_OrderMatters):
    """Highest-random-weight order: each server scores `sha256(host id | server)` for this host,
    highest first. Every server computes the same order; a host added to or removed from the zone
    changes no other host's list; a server added becomes the first entry of about 1 / (servers)
    of the hosts and leaves the others' first entries where they were (roundrobin re-ranks the
    whole zone on either change)."""

    name = "rendezvous"

    def sort(
        self, ms_list: Sequence[str], ordered_host_ids: Sequence[int], host_id: int
    ) -> list[str]:
        def weight(server: str) -> bytes:
            return hashlib.sha256(f"{host_id}|{server}".encode()).digest()

        return sorted(ms_list, key=weight, reverse=True)


_REGISTRY: dict[str, Algorithm] = {}


def register(algorithm: Algorithm) -> Algorithm:
    """Make an algorithm selectable by its name."""
    _REGISTRY[algorithm.name] = algorithm
    return algorithm


def get(name: str) -> Algorithm:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownAlgorithmError(
            f"unknown algorithm {name!r}; choose one of {', '.join(names())}"
        ) from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def is_current(
    expected_algorithm: str,
    expected: Sequence[str],
    got_algorithm: str | None,
    got: Sequence[str],
) -> bool:
    """Whether a host holding (`got_algorithm`, `got`) needs no new list.

    A different algorithm name (or none, for a bare list) always compares unequal.
    """
    if got_algorithm != expected_algorithm:
        return False
    return get(expected_algorithm).compare(expected, got)


for _algorithm in (Static(), RoundRobin(), Shuffle(), Rendezvous()):
    register(_algorithm)
