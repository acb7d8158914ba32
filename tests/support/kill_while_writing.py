"""Kill a writer of agent.properties with SIGKILL at random moments, many times, and check that
the file always parses and holds the old or the new list.

Run as a script (a single-threaded process, so forking is safe):
    python -m tests.support.kill_while_writing FILE ROUNDS
Prints one JSON line: {"rounds": N, "old": n, "new": n, "bad": [...]}.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from pathlib import Path

from common.properties import AgentProperties, update_properties

LISTS = ("10.0.0.1,10.0.0.2,10.0.0.3@roundrobin", "10.0.0.3,10.0.0.1,10.0.0.2@roundrobin")


def writer(path: Path) -> None:
    """Alternate the host line for ever, as the agent does on each ms_list."""
    turn = 0
    while True:
        update_properties(path, {"host": LISTS[turn % 2]})
        turn += 1


def main(path: Path, rounds: int) -> dict[str, object]:
    rng = random.Random(7)
    seen = {"old": 0, "new": 0}
    bad: list[str] = []
    for _ in range(rounds):
        pid = os.fork()
        if pid == 0:  # child
            try:
                writer(path)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0005, 0.01))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        try:
            value = AgentProperties.load(path).get("host")
        except Exception as exc:
            bad.append(f"unreadable: {exc}")
            continue
        if value == LISTS[0]:
            seen["old"] += 1
        elif value == LISTS[1]:
            seen["new"] += 1
        else:
            bad.append(f"host={value!r}")
    return {"rounds": rounds, **seen, "bad": bad}


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), int(sys.argv[2]))))
