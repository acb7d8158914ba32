"""Which hosts hold the list they should: one home for `msctl status`, `msctl hosts` and
`msctl config set --wait` (and the lab's view).

A host is current when it holds the list, with the settings that travel with it, that its
server should push: the servers' own computation (common.assignment) over the ranked hosts of
its zone, the settings of its cluster and the avoid list of the servers out of service
(common.maintenance.avoided). What it holds is what its record says: the list it last
acknowledged, or the one it reported at its startup. For a disconnected host that is the list
its agent kept and reports at its next startup, so `current` then says whether that startup will
need a push. With `host` unset servers push nothing, and every host is current.

A connected host that is not current lags. `config set --wait` counts as there a connected
host that is current or acknowledged a list of the change's version or later (`acked_version`):
a later change may have moved what it should hold since.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from common.assignment import Assignment, Holding, assignment_for, holds, left_out
from common.configstore import ConfigSnapshot
from common.errors import UnknownAlgorithmError
from common.maintenance import avoided
from common.records import HostRecord, HostState, ServerRecord
from msctl.tables import printable

NAMED = 10  # the most hosts a message names


def holding_of(host: HostRecord, assignment: Assignment) -> Holding:
    """What the registry says the host holds, as `common.assignment` compares it. A record
    written without ping values (0: not known, as older servers left them) is compared on
    what it has: its missing values are taken as the assignment's."""
    return Holding(
        host.ms_list,
        host.algorithm,
        host.check_interval,
        host.ping_interval or assignment.ping_interval,
        host.ping_timeout or assignment.ping_timeout,
    )


def current_hosts(
    snapshot: ConfigSnapshot, hosts: Sequence[HostRecord], servers: Sequence[ServerRecord] = ()
) -> dict[int, bool]:
    """Host id -> whether it holds the list it should, for every host, connected or not.
    `hosts` come sorted by id (load_hosts), so a zone's ranked hosts are in the order of its
    zone set."""
    leave_out = left_out(snapshot.effective().host, avoided(servers))
    ranked: dict[str, list[int]] = defaultdict(list)
    for host in hosts:
        if host.ranked:
            ranked[host.zone].append(host.id)
    current = {}
    for host in hosts:
        settings = snapshot.effective(host.cluster)
        try:
            assignment = assignment_for(settings, ranked[host.zone], host.id, None, leave_out)
        except UnknownAlgorithmError:  # the servers cannot compute one either: nothing is due
            assignment = None
        current[host.id] = assignment is None or holds(assignment, holding_of(host, assignment))
    return current


def stale_hosts(
    snapshot: ConfigSnapshot, hosts: Sequence[HostRecord], servers: Sequence[ServerRecord] = ()
) -> list[HostRecord]:
    """Connected hosts that do not hold the list their server should push."""
    current = current_hosts(snapshot, hosts, servers)
    return [h for h in hosts if h.state == HostState.CONNECTED and not current[h.id]]


@dataclass(frozen=True)
class Convergence:
    """How many hosts are connected, and which of them are behind (by id)."""

    connected: int
    behind: list[HostRecord]

    @classmethod
    def of_fleet(
        cls, snapshot: ConfigSnapshot, hosts: Sequence[HostRecord], servers: Sequence[ServerRecord]
    ) -> Convergence:
        """Behind: the connected hosts that lag (stale_hosts)."""
        connected = sum(h.state == HostState.CONNECTED for h in hosts)
        return cls(connected, stale_hosts(snapshot, hosts, servers))

    @classmethod
    def of_version(
        cls,
        version: int,
        snapshot: ConfigSnapshot,
        hosts: Sequence[HostRecord],
        servers: Sequence[ServerRecord],
    ) -> Convergence:
        """Behind: the connected hosts that lag and acknowledged no list of `version` or later."""
        fleet = cls.of_fleet(snapshot, hosts, servers)
        return cls(fleet.connected, [h for h in fleet.behind if h.acked_version < version])

    @property
    def there(self) -> int:
        return self.connected - len(self.behind)

    def by_server(self) -> str:
        """`ms1 12, ms2 3`: the hosts behind on each server, most first."""
        counts = Counter(h.server for h in self.behind)
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return ", ".join(f"{printable(server or '-')} {n}" for server, n in ordered)

    def summary(self) -> str:
        """`converged: all 40 connected hosts hold their list`, or `3 of 40 connected hosts
        lag: ms1 2, ms2 1`."""
        if not self.behind:
            if not self.connected:
                return "converged: no host is connected"
            return f"converged: all {self.connected} connected hosts hold their list"
        return f"{len(self.behind)} of {self.connected} connected hosts lag: {self.by_server()}"

    def named(self, limit: int = NAMED) -> str:
        """`7 (kvm7) on ms1, 9 (kvm9) on ms2, and 3 more`: the first `limit` hosts behind."""
        shown = [
            f"{h.id} ({printable(h.name)}) on {printable(h.server or '-')}"
            for h in self.behind[:limit]
        ]
        more = len(self.behind) - len(shown)
        return ", ".join(shown) + (f", and {more} more" if more > 0 else "")
