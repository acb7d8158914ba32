"""What every session of one server shares: its settings, the table of live sessions, the
registry, the balancer, the resync state, the summary log and the metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from msrv.balancer import Balancer
from msrv.config import ServerSettings
from msrv.metrics import ServerMetrics
from msrv.pacing import MovePacer
from msrv.registry import HostRegistry
from msrv.resync import Resync
from msrv.session_log import SessionLog
from msrv.table import SessionTable
from msrv.trust import ServerTrust

if TYPE_CHECKING:
    from msrv.lifecycle import HostSession


@dataclass
class ServerContext:
    settings: ServerSettings
    table: SessionTable[HostSession]
    registry: HostRegistry
    balancer: Balancer
    resync: Resync
    summary: SessionLog
    trust: ServerTrust
    metrics: ServerMetrics
    pacer: MovePacer = field(default_factory=MovePacer)  # the moves this server's pushes order

    def validity_days(self) -> float:
        """ca.framework.cert.validity.period: the lifetime of the certificates issued now."""
        return self.balancer.effective(None).cert_validity_days

    def live_window(self) -> float:
        """How recent a connected host's last_seen must be for its session to count as live:
        its server writes it every last_seen_interval while it hears from the agent."""
        return 2 * (self.balancer.silence_limit() + self.settings.last_seen_interval)
