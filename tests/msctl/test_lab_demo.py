"""The README's main job, run as a user would: `msctl lab demo` as a process."""

import subprocess
import sys


def run_demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "msctl", "lab", "demo", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_demo_on_an_embedded_redis_succeeds():
    done = run_demo()
    assert done.returncode == 0, done.stdout + done.stderr
    assert "embedded Redis (redis-server)" in done.stdout
    assert "refused: host: entry 2 is empty" in done.stdout
    assert "ms-b:8251,[2001:db8::1],ms-a@roundrobin" in done.stdout
    assert done.stdout.rstrip().endswith("demo finished: every step checked")


def test_demo_against_a_given_redis(redis_url, namespace):
    done = run_demo("--redis-url", redis_url, "--namespace", namespace)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "embedded" not in done.stdout
    assert "demo finished" in done.stdout
