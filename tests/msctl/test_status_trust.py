"""`msctl status` warns about join tokens still valid, a CA close to its expiry and hosts whose
certificate is close to its expiry."""

from __future__ import annotations

import asyncio
import datetime
import json
import time

from click.testing import CliRunner, Result

from common.configstore import ConfigSnapshot
from common.connection import redis_from_url
from common.keys import Keys
from common.records import HostRecord
from common.settings import CERT_VALIDITY
from msctl.cli import cli
from msctl.status_cmd import Fleet, _trust_warnings

DAY = 86400


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


def host(host_id: int, cert_expires: float) -> HostRecord:
    return HostRecord(host_id, f"guid-{host_id}", name=f"kvm{host_id}", cert_expires=cert_expires)


def test_hosts_whose_certificate_expires_within_30_days_are_warned_about() -> None:
    now = time.time()
    hosts = [
        host(1, now + 40 * DAY),  # fine
        host(2, now + 10 * DAY),
        host(3, 0.0),  # not known (a server that predates certificates)
        host(4, now - DAY),  # expired
        *(host(i, now + 29 * DAY) for i in range(5, 10)),
    ]
    (warning,) = _trust_warnings(Fleet(ConfigSnapshot(0, {}), [], hosts))
    soonest = datetime.datetime.fromtimestamp(now - DAY, datetime.UTC)
    assert warning.startswith(
        "7 hosts have a certificate that expires within 30 days or has expired: "
        f"4 (kvm4, {soonest:%Y-%m-%d %H:%M} UTC), 2 (kvm2, "
    )
    assert "5 (kvm5" in warning and "8 (kvm8" not in warning and ", ...;" in warning
    assert "a disconnected host cannot" in warning and "msctl token create" in warning
    assert _trust_warnings(Fleet(ConfigSnapshot(0, {}), [], hosts[:1] + hosts[2:3])) == []


def test_with_a_short_validity_only_certificates_past_their_renewal_are_warned_about() -> None:
    """With certificates valid 60 days, a healthy agent renews at 20 days left: the window is
    a quarter of the validity (15 days), not 30."""
    now = time.time()
    snapshot = ConfigSnapshot(0, {CERT_VALIDITY: "60"})
    hosts = [host(1, now + 25 * DAY), host(2, now + 14 * DAY)]
    (warning,) = _trust_warnings(Fleet(snapshot, [], hosts))
    assert warning.startswith("1 hosts have a certificate that expires within 15 days")
    assert "2 (kvm2" in warning and "1 (kvm1" not in warning
    hours = ConfigSnapshot(0, {CERT_VALIDITY: "1"})
    (warning,) = _trust_warnings(Fleet(hours, [], [host(1, now + 3600)]))
    assert "expires within 6 hours" in warning


def test_status_warns_about_a_registered_host_whose_certificate_expires_soon(
    redis_url: str, namespace: str
) -> None:
    async def work() -> None:
        redis = redis_from_url(redis_url)
        try:
            keys = Keys(namespace)
            record = HostRecord(
                7, "guid-7", name="kvm7", zone="z1", cert_serial="7f",
                cert_expires=time.time() + 5 * DAY,
            )  # fmt: skip
            await redis.hset(keys.host(7), mapping=record.to_hash())
            await redis.hset(keys.host_ids_by_guid, "guid-7", 7)
        finally:
            await redis.aclose()

    asyncio.run(work())
    status = msctl(redis_url, namespace, "status")
    assert status.exit_code == 0, status.output
    assert "warning: 1 hosts have a certificate that expires within 30 days" in status.output
    assert "7 (kvm7, " in status.output
