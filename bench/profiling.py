"""py-spy around a benchmark phase: record a process's stacks (raw, collapsed) and summarise the
functions that were on the CPU most (self time) and in most stacks (total time).

    .venv/bin/python bench/profiling.py FILE.txt [--top 25]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
from pathlib import Path

PY_SPY = Path(sys.executable).parent / "py-spy"


class Recorder:
    """`py-spy record` of one pid for at most `seconds`, stopped (SIGINT) by `stop()`."""

    def __init__(self, pid: int, output: Path, seconds: float, rate: int = 200) -> None:
        exe = str(PY_SPY) if PY_SPY.exists() else shutil.which("py-spy") or "py-spy"
        self.output = output
        self.process = subprocess.Popen(
            [exe, "record", "-p", str(pid), "-o", str(output), "-f", "raw", "-r", str(rate),
             "-d", str(max(1, round(seconds))), "--nonblocking", "--threads"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


Ranked = list[tuple[str, int]]


def summarise(path: Path, top: int = 20) -> tuple[int, Ranked, Ranked]:
    """(samples, [(function, self samples)], [(function, total samples)]) from a raw file."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        samples += n
        own[frames[-1]] += n
        for frame in set(frames):
            total[frame] += n
    return samples, own.most_common(top), total.most_common(top)


def print_self_time(path: Path, what: str, top: int = 12) -> None:
    """The functions most on the CPU (self time) in a raw file, after a bench's run."""
    samples, own, _ = summarise(path, top)
    print(f"py-spy of {what}: {samples} samples; top self time:")
    for frame, n in own:
        print(f"  {100 * n / max(samples, 1):5.1f}%  {frame}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    samples, own, total = summarise(args.file, args.top)
    print(f"{samples} samples")
    for title, rows in (("self", own), ("total", total)):
        print(f"\n{title}:")
        for frame, n in rows:
            print(f"{100 * n / max(samples, 1):6.1f}%  {frame}")


if __name__ == "__main__":
    main()
