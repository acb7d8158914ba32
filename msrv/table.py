"""The live sessions of this server: the one index of them.

Every open connection is in the table from accept to close; once its startup completes it is
also found by host id and by zone. A closed table (the server is stopping) takes no new
startups.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Indexed(Protocol):
    @property
    def started(self) -> bool: ...

    @property
    def host_id(self) -> int: ...  # once started

    @property
    def zone(self) -> str: ...


S = TypeVar("S", bound=Indexed)


class SessionTable(Generic[S]):
    def __init__(self) -> None:
        self._open: set[S] = set()
        self._by_host: dict[int, S] = {}
        self._by_zone: dict[str, dict[int, S]] = {}
        self.closed = False

    def open(self, session: S) -> None:
        self._open.add(session)

    def start(self, session: S) -> S | None:
        """Index a session whose startup completed; returns the session of the same host it
        replaces, if any (the caller supersedes it)."""
        older = self._by_host.get(session.host_id)
        if older is not None:
            self._unindex(older)
        self._by_host[session.host_id] = session
        self._by_zone.setdefault(session.zone, {})[session.host_id] = session
        return older

    def close(self, session: S) -> None:
        self._open.discard(session)
        if session.started and self._by_host.get(session.host_id) is session:
            self._unindex(session)

    def _unindex(self, session: S) -> None:
        del self._by_host[session.host_id]
        members = self._by_zone[session.zone]
        del members[session.host_id]
        if not members:
            del self._by_zone[session.zone]

    def by_host(self, host_id: int) -> S | None:
        return self._by_host.get(host_id)

    def in_zone(self, zone: str) -> list[S]:
        return list(self._by_zone.get(zone, {}).values())

    @property
    def zones(self) -> list[str]:
        return list(self._by_zone)

    def started(self) -> Iterator[S]:
        """The sessions whose startup completed (one per host)."""
        return iter(list(self._by_host.values()))

    def connections(self) -> list[S]:
        """Every open connection, started or not."""
        return list(self._open)

    def __len__(self) -> int:
        """Started sessions: the server's agents."""
        return len(self._by_host)
