"""Prometheus metrics of one server (`msrv serve --metrics HOST:PORT`, DESIGN "Visibility").

Counters and the push-to-ack histogram are updated where their events happen, on the event
loop (prometheus-client's values are thread-safe). The gauges that describe the server's state
(sessions by zone, stale hosts, config version, Redis up, in service) are read at scrape time:
the HTTP thread asks the event loop for one `Sample` and waits for it, so no state is read
from another thread and an idle server does no metrics work between scrapes. A scrape that
finds the loop too busy to answer within SAMPLE_TIMEOUT gets the previous sample.

Labels stay bounded: by result (a fixed set of codes) or zone, never by host.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

SAMPLE_TIMEOUT = 5.0  # seconds a scrape waits for the event loop
# push to ack: an agent saves its list (fsync) before it acks, then the server reads the ack
ACK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(frozen=True)
class Sample:
    """The server's state as the gauges show it."""

    sessions: dict[str, int] = field(default_factory=dict)  # started sessions by zone
    connections: int = 0  # open connections, started or not
    stale: int = 0  # served hosts whose held list is not their current one
    config_version: int = 0
    redis_up: bool = False
    in_service: bool = True


class ServerMetrics:
    """One server's metrics, in a registry of their own (several servers can share a
    process in tests)."""

    def __init__(self, server_id: str, advertise: str) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=False)
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            registry.register(collector)
        self.startups = Counter(
            "msrv_startups", "Startups by result: accepted or the error code", ["result"],
            registry=registry,
        )  # fmt: skip
        self.failovers_in = Counter(
            "msrv_failovers_in",
            "Sessions started by agents whose preferred server (first entry) is another one",
            registry=registry,
        )
        self.lists_pushed = Counter(
            "msrv_lists_pushed", "Lists pushed to agents", registry=registry
        )
        self.moves = Counter(
            "msrv_moves",
            "Pushed lists that move their agent off this server (paced by lb.move.rate)",
            registry=registry,
        )
        self.acks = Counter("msrv_acks", "Lists acknowledged by agents", registry=registry)
        self.ack_seconds = Histogram(
            "msrv_list_ack_seconds", "Time from a list's push to its ack",
            buckets=ACK_BUCKETS, registry=registry,
        )  # fmt: skip
        self.enrollments = Counter(
            "msrv_enrollments", "Enrollments by result: enrolled or the error code", ["result"],
            registry=registry,
        )  # fmt: skip
        self.renewals = Counter(
            "msrv_renewals", "Certificate renewals by result", ["result"], registry=registry
        )
        self.handshakes_failed = Counter(
            "msrv_handshakes_failed",
            "Connections refused in the TLS handshake (no TLS, another CA, timeout)",
            registry=registry,
        )
        self.redis_reconnects = Counter(
            "msrv_redis_reconnects",
            "Times the server got Redis back after losing it",
            registry=registry,
        )
        self._state = _StateCollector(server_id, advertise)
        registry.register(self._state)
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def sample_with(self, loop: asyncio.AbstractEventLoop, take: Callable[[], Sample]) -> None:
        """Read the state gauges at each scrape by running `take` on `loop`."""
        self._state.source = (loop, take)

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics on a thread of its own. Raises OSError when the port is taken."""
        self._http, self._thread = start_http_server(port, host, registry=self.registry)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None


class _StateCollector(Collector):
    def __init__(self, server_id: str, advertise: str) -> None:
        self.server_id = server_id
        self.advertise = advertise
        self.source: tuple[asyncio.AbstractEventLoop, Callable[[], Sample]] | None = None
        self.last = Sample()

    def _sample(self) -> Sample:
        if self.source is None:
            return self.last
        loop, take = self.source
        if loop.is_closed():
            return self.last
        future: concurrent.futures.Future[Sample] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(take())
            except Exception as exc:  # reported by the scrape's log line, not raised in the loop
                future.set_exception(exc)

        try:
            loop.call_soon_threadsafe(run)
            self.last = future.result(timeout=SAMPLE_TIMEOUT)
        except concurrent.futures.TimeoutError:
            future.cancel()
            logger.warning(
                "msrv %s: metrics scrape: event loop busy for %.0fs; state gauges not updated",
                self.server_id,
                SAMPLE_TIMEOUT,
            )
        except RuntimeError:  # the loop closed under us: shutting down
            pass
        except Exception:
            logger.exception("msrv %s: metrics scrape could not read the state", self.server_id)
        return self.last

    def collect(self) -> Iterator[Metric]:
        sample = self._sample()
        info = GaugeMetricFamily(
            "msrv_info", "This server's id and advertised address", labels=["server", "advertise"]
        )
        info.add_metric([self.server_id, self.advertise], 1)
        yield info
        sessions = GaugeMetricFamily("msrv_sessions", "Started sessions by zone", labels=["zone"])
        for zone, count in sorted(sample.sessions.items()):
            sessions.add_metric([zone], count)
        yield sessions
        yield GaugeMetricFamily(
            "msrv_connections", "Open agent connections, started or not", value=sample.connections
        )
        yield GaugeMetricFamily(
            "msrv_hosts_stale",
            "Served hosts whose held list is not their current one",
            value=sample.stale,
        )
        yield GaugeMetricFamily(
            "msrv_config_version", "Settings version this server applies",
            value=sample.config_version,
        )  # fmt: skip
        yield GaugeMetricFamily(
            "msrv_redis_up", "1 while this server is in step with Redis", value=int(sample.redis_up)
        )
        yield GaugeMetricFamily(
            "msrv_in_service",
            "1 in service, 0 preparing for or in maintenance",
            value=int(sample.in_service),
        )
