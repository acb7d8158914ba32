"""The embedded Redis fails as one LbError, which `msctl lab up` reports in one line, exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from msctl import embedded_redis
from msctl.cli import cli
from msctl.embedded_redis import EmbeddedRedisError, free_port, wait_for_redis


def test_a_redis_that_never_answers_or_exits_first_is_an_embedded_redis_error() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(EmbeddedRedisError, match=r"did not answer within 0\.2s"):
        wait_for_redis(url, timeout=0.2)
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait()
    with pytest.raises(EmbeddedRedisError, match="exited with 3 before answering"):
        wait_for_redis(url, timeout=10, process=exited)


def test_lab_up_without_redis_server_or_fakeredis_exits_1_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(embedded_redis, "have_redis_server", lambda: False)
    monkeypatch.setitem(sys.modules, "fakeredis", None)  # its import now fails
    result = CliRunner().invoke(
        cli, ["lab", "up", "--servers", "1", "--agents", "0", "--dir", str(tmp_path / "lab")]
    )
    assert result.exit_code == 1, result.output
    *_, last = result.output.splitlines()
    assert last.startswith("Error: no redis-server binary and no fakeredis: install")
    assert "Traceback" not in result.output and result.exception is not None
    assert isinstance(result.exception, SystemExit)
