"""What list one host should hold: the one computation, used by the servers to decide what to
push and by `msctl status` to tell which hosts lag.

An `Assignment` is the list (with its algorithm and the settings that travel with it) a host
should hold under the settings in force; a `Holding` is what a server knows the host holds (what
it reported at startup, or the last list it acknowledged). A push is due when they differ in the
sense of the algorithm's `compare`, or in a setting that travels with the list.

The avoid list (DESIGN, Maintenance): the entries of `host` that name a server out of service
are left out of every host's list, after the algorithm ordered it, so a host keeps its order
and only the hosts whose first entry it was get a new first entry. A list that would be left
empty is kept whole: agents are never told to go nowhere.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from common import algorithms
from common.addresses import parse_address
from common.errors import ValidationError
from common.settings import EffectiveSettings


@dataclass(frozen=True)
class Assignment:
    """What one host should hold."""

    ms_list: tuple[str, ...]
    algorithm: str
    check_interval: int
    ping_interval: int
    ping_timeout: int


@dataclass(frozen=True)
class Holding:
    """What a server knows a host holds; None where it does not know (a startup reports its
    list and algorithm, not the intervals it was told)."""

    ms_list: tuple[str, ...]
    algorithm: str | None
    check_interval: int | None = None
    ping_interval: int | None = None
    ping_timeout: int | None = None


def left_out(host: Sequence[str] | None, avoid: Collection[str]) -> frozenset[str]:
    """The entries of `host` to leave out of every list: those that dial the same endpoint
    (a missing port is the default, 8250) as an address in `avoid` (the advertised addresses
    of the servers out of service)."""
    if not host or not avoid:
        return frozenset()
    avoided = {_endpoint(address) for address in avoid} - {None}
    return frozenset(e for e in host if _endpoint(e) in avoided)


def _endpoint(address: str) -> tuple[str, int] | None:
    try:
        return parse_address(address).endpoint()
    except ValidationError:  # not an address: it names no entry
        return None


def assignment_for(
    settings: EffectiveSettings,
    ordered_ids: Sequence[int],
    host_id: int,
    shared: dict[Assignment, Assignment] | None = None,
    leave_out: frozenset[str] = frozenset(),
) -> Assignment | None:
    """The host's list, or None when `host` is unset (servers then push nothing); the entries
    in `leave_out` (from `left_out`) are dropped from it once ordered, unless that leaves none.

    With `shared`, equal assignments are one object: a recompute of a zone of 10^5 hosts then
    keeps a few alive instead of one per host, and the garbage collector's full passes, which
    such a burst of long-lived objects sets off, go away (0.79 s -> 0.3 s there)."""
    if settings.host is None:
        return None
    ordered = algorithms.get(settings.algorithm).sort(settings.host, ordered_ids, host_id)
    if leave_out:
        ordered = [entry for entry in ordered if entry not in leave_out] or ordered
    assignment = Assignment(
        tuple(ordered),
        settings.algorithm,
        settings.check_interval,
        settings.ping_interval,
        settings.ping_timeout,
    )
    if shared is None:
        return assignment
    return shared.setdefault(assignment, assignment)


def holds(assignment: Assignment, holding: Holding | Assignment) -> bool:
    """Whether a host holding `holding` already holds `assignment`."""
    if holding is assignment:
        return True
    if not algorithms.is_current(
        assignment.algorithm, assignment.ms_list, holding.algorithm, holding.ms_list
    ):
        return False
    return (assignment.check_interval, assignment.ping_interval, assignment.ping_timeout) == (
        holding.check_interval,
        holding.ping_interval,
        holding.ping_timeout,
    )
