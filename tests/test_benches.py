"""Each bench script, run small, still runs and prints its figures (a JSON last line).

The figures themselves are not judged here (bench/README.md holds them); this catches a bench
that no longer follows the code it drives, which a full run would only show much later.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="the benches start a redis-server"
)


def run_bench(script: str, *args: str, timeout: float = 100) -> dict:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(120)
def test_recompute_bench():
    result = run_bench("recompute.py", "--hosts", "2000", "--sizes", "")
    (row,) = result["results"]
    assert row["hosts"] == 2000 and row["pushed"] == 2000


@pytest.mark.timeout(120)
def test_failover_bench():
    result = run_bench("failover.py", "--agents", "30", "--check-interval", "1", "--no-haproxy")
    assert result["ours"]["agents_moved"] == 10
    assert result["failback"]["agents_back"] == 10
    assert result["floor"]["clients_moved"] == result["floor"]["expected"] == 10
    assert set(result["met"]) == {
        "ours_le_1.5x_floor",
        "failback_le_T+2",
        "failback_peak_le_3x_mean",
    }


@pytest.mark.timeout(120)
def test_convergence_bench():
    result = run_bench("convergence.py", "--agents", "30", "--repeats", "1")
    (rep,) = result["repeats"]
    assert rep["files_ok"] == 30
    assert result["floor_fsync"]["agents"] == 30


@pytest.mark.timeout(120)
def test_scale_bench():
    result = run_bench("scale.py", "--max", "100", "--step", "50", "--window", "1")
    assert [step["agents"] for step in result["steps"]] == [0, 50, 100]
