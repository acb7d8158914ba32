"""Scripted faults with figures (issue 16): each scenario runs real processes on loopback (and
in network namespaces it makes itself), stops every child on any exit, and prints a table row
and one JSON line per scenario (the last line: every scenario's figures).

    .venv/bin/python bench/faults.py SCENARIO... [--agents N]
    .venv/bin/python bench/faults.py --list

Figures for each scenario (faultkit.report): agents that ended disconnected, agents holding a
wrong list, settings lost, server or agent crashes, tracebacks in any log, time to recover, and
the scenario's own figures; `met` against the scenario's target.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import pkgutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib
import faultkit
from benchlib import print_json, print_table
from faultkit.report import HEADER, FaultReport

DEADLINE = 1800.0  # seconds for one scenario, whatever it does
NOT_SCENARIOS = frozenset({"report", "fleet"})


def scenarios() -> dict[str, ModuleType]:
    """Scenario name (with '-') -> its module."""
    found = {}
    for info in pkgutil.iter_modules(faultkit.__path__):
        if info.name in NOT_SCENARIOS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"faultkit.{info.name}")
        if hasattr(module, "run") and hasattr(module, "TARGET"):  # else a helper module
            found[info.name.replace("_", "-")] = module
    return found


async def run_one(module: ModuleType, name: str, agents: int | None) -> FaultReport:
    count = agents if agents is not None else module.DEFAULT_AGENTS
    with tempfile.TemporaryDirectory(prefix=f"fault-{name}-") as tmp:
        report: FaultReport = await asyncio.wait_for(module.run(count, Path(tmp)), DEADLINE)
    return report


def main() -> None:
    known = scenarios()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="*", metavar="SCENARIO", help=", ".join(sorted(known)))
    parser.add_argument("--agents", type=int, default=None, help="instead of each one's default")
    parser.add_argument("--list", action="store_true", help="the scenarios and their targets")
    args = parser.parse_args()
    if args.list or not args.scenario:
        for name, module in sorted(known.items()):
            print(f"{name:20} {module.DEFAULT_AGENTS:>5} agents  target: {module.TARGET}")
        return
    unknown = [s for s in args.scenario if s not in known]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    benchlib.raise_nofile(4 * (args.agents or 3000) + 4096)
    reports = []
    with benchlib.leftovers_killed():
        for name in args.scenario:
            started = time.monotonic()
            print(f"--- {name}", file=sys.stderr, flush=True)
            report = asyncio.run(run_one(known[name], name, args.agents))
            report.extra.setdefault("wall_s", round(time.monotonic() - started, 1))
            reports.append(report)
            print_table([report.row()], HEADER)
            print(f"target: {report.target}")
            print_json(report.as_json())
    if len(reports) > 1:
        print_table([r.row() for r in reports], HEADER)
    print_json({"bench": "faults", "revision": benchlib.revision(),
                "scenarios": [r.as_json() for r in reports]})  # fmt: skip


if __name__ == "__main__":
    main()
