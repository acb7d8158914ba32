"""`msctl status` warns about join tokens still valid and a CA close to its expiry."""

from __future__ import annotations

import datetime
import json

from click.testing import CliRunner, Result

from common.configstore import ConfigSnapshot
from msctl.cli import cli
from msctl.status_cmd import Fleet, _trust_warnings


def msctl(redis_url: str, namespace: str, *args: str) -> Result:
    return CliRunner().invoke(cli, [*args, "--redis-url", redis_url, "--namespace", namespace])


def test_a_valid_join_token_is_warned_about_until_revoked(redis_url: str, namespace: str) -> None:
    assert "join token" not in msctl(redis_url, namespace, "status").output
    created = msctl(redis_url, namespace, "token", "create", "--json")
    assert created.exit_code == 0, created.output
    token = json.loads(created.output)
    status = msctl(redis_url, namespace, "status")
    assert status.exit_code == 0, status.output
    assert f"warning: 1 join tokens still valid ({token['id']})" in status.output
    assert token["token"] not in status.output  # never the secret
    assert msctl(redis_url, namespace, "token", "revoke", token["id"]).exit_code == 0
    assert "join token" not in msctl(redis_url, namespace, "status").output


def test_a_ca_expiring_within_30_days_is_warned_about() -> None:
    now = datetime.datetime.now(datetime.UTC)
    soon = Fleet(ConfigSnapshot(0, {}), [], [], [], now + datetime.timedelta(days=10, hours=1))
    (warning,) = _trust_warnings(soon)
    assert warning.startswith("the CA certificate expires in 10 days")
    later = Fleet(ConfigSnapshot(0, {}), [], [], [], now + datetime.timedelta(days=300))
    assert _trust_warnings(later) == []
