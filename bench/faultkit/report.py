"""What every fault scenario reports (bench/faults.py prints it as a table row and a JSON line)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class FaultReport:
    scenario: str
    agents: int
    target: str  # what "met" means, in one line
    met: bool = False
    disconnected: int = 0  # agents that ended without a session
    wrong_list: int = 0  # connected agents whose file or registry record is not their list
    settings_lost: int = 0  # settings set before the fault and gone or changed after it
    crashes: int = 0  # server or agent processes that ended without being told to
    tracebacks: int = 0  # "Traceback" lines in every child's log
    recover_s: float | None = None  # fault over -> every agent served and current again
    extra: dict[str, Any] = field(default_factory=dict)  # the scenario's own figures

    def as_json(self) -> dict[str, Any]:
        return {"bench": "faults", **asdict(self)}

    def row(self) -> list[object]:
        recover = "-" if self.recover_s is None else f"{self.recover_s:.2f}"
        return [
            self.scenario, self.agents, self.disconnected, self.wrong_list, self.settings_lost,
            self.crashes, self.tracebacks, recover, "yes" if self.met else "NO",
        ]  # fmt: skip


HEADER = [
    "scenario", "agents", "disconnected", "wrong list", "settings lost", "crashes",
    "tracebacks", "recover s", "met",
]  # fmt: skip
