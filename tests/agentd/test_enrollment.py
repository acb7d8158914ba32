"""Enrollment and renewal end to end: real `agentd run` / `agentd swarm` processes, a real
`msrv serve` and a real redis-server. An agent with a join token gets its certificate at start
(the CA pinned against the token's fingerprint before anything is sent), one with neither a
certificate nor a token stops with exit code 2, and an agent whose certificate has less than a
third of its validity left renews it over its session (DESIGN.md, Trust)."""

from __future__ import annotations

import asyncio
import datetime
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import NameOID

from agentd.keystore import CA_FILE, CERT_FILE, KEY_FILE, csr_pem
from agentd.trust import no_credentials_message
from common.ca import CertificateAuthority, fingerprint, key_pem, new_key
from common.connection import redis_from_url
from common.keys import Keys
from common.properties import AgentProperties
from common.records import HostRecord, load_hosts
from common.tokens import JoinToken, parse_token
from tests.agentd.test_agent_process import set_config
from tests.support.agents import (
    AgentProcess,
    SwarmProcess,
    host_value,
    start_agent,
    write_properties,
)
from tests.support.keystores import join_token, namespace_ca, provision, token_uses_left
from tests.support.logged_process import LoggedProcess
from tests.support.msrv_process import MsrvProcess, run_servers

PUBLIC = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
PENDING_FILE = KEY_FILE + ".pending"
NEXT_FILE = KEY_FILE + ".next"
# an enrolling agent that cannot reach its server retries quickly
FAST_BACKOFF = {"failover.backoff.initial": "0.05", "failover.backoff.max": "0.2"}


# ---- helpers


def certificate(folder: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((folder / CERT_FILE).read_bytes())


def common_name(cert: x509.Certificate) -> str:
    (name,) = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(name.value)


def public_key(holder: x509.Certificate | PrivateKeyTypes | Path) -> bytes:
    """The public key (DER) of a certificate, a private key, or a PEM private key file."""
    if isinstance(holder, Path):
        holder = serialization.load_pem_private_key(holder.read_bytes(), password=None)
    return holder.public_key().public_bytes(*PUBLIC)


def write_private(path: Path, data: bytes) -> None:
    """As the keystore writes a key: mode 0600 from before its first byte."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as out:
        out.write(data)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def guid_of(path: Path) -> str:
    guid = AgentProperties.load(path).get("guid")
    assert guid, path.read_text()
    return guid


async def hosts(redis_url: str, namespace: str) -> dict[str, HostRecord]:
    redis = redis_from_url(redis_url)
    try:
        return {h.guid: h for h in await load_hosts(redis, Keys(namespace))}
    finally:
        await redis.aclose()


async def exit_code(process: LoggedProcess, timeout: float) -> int:
    """Wait for the process to end by itself; its code."""
    async with asyncio.timeout(timeout):
        assert process.process is not None
        await process.process.wait()
    return await process.stop()


def error_lines(process: LoggedProcess) -> list[str]:
    return [line for line in process.lines if line.startswith("Error:")]


def enrollment_lines(server: MsrvProcess) -> list[str]:
    """What a server logs of enrollments: done, refused, or a connection with no certificate
    that sent something other than `enroll`."""
    return server.matching(r"enroll|no client certificate")


# ---- tests


@pytest.mark.timeout(60)
def test_an_agent_with_a_token_enrolls_and_connects(redis_url, namespace, tmp_path):
    async def scenario():
        async with run_servers(1, redis_url, namespace) as (server,):
            # a list to push, so that the file is written again after the enrollment
            await set_config(redis_url, namespace, host=f"{server.address},127.0.0.1:9")
            token = await join_token(redis_url, namespace, uses=1)
            folder = tmp_path / "hv0"
            agent = await start_agent(
                folder, "hv0", server.address, token=token, **{"custom.key": "kept"}
            )
            await agent.wait_connected(server.address)
            await agent.wait_for(r"persisted host=")
            path = agent.path
            guid = guid_of(path)

            assert mode(folder / KEY_FILE) == 0o600
            assert common_name(certificate(folder)) == guid
            ca = x509.load_pem_x509_certificate((folder / CA_FILE).read_bytes())
            assert fingerprint(ca) == parse_token(token).ca_fingerprint
            assert public_key(certificate(folder)) == public_key(folder / KEY_FILE)
            assert sorted(p.name for p in folder.iterdir()) == sorted(
                [KEY_FILE, CERT_FILE, CA_FILE, "agent.properties"]
            )  # the pending key became agent.key; no temporary file left

            text = path.read_text()
            assert AgentProperties.load(path).get("token") is None
            assert parse_token(token).secret not in text
            lines = text.splitlines()
            assert lines[0] == "# test agent hv0"
            for kept in ("name=hv0", "zone=z1", "custom.key=kept", f"guid={guid}"):
                assert kept in lines, text
            assert host_value(path) == f"{server.address},127.0.0.1:9@static"

            assert agent.count(r"enrolled at ") == 1, agent.tail()
            assert server.count(rf"enrolled guid {guid} from 127\.0\.0\.1:\d+ ") == 1
            assert await token_uses_left(redis_url, namespace, parse_token(token).id) == 0
            host = (await hosts(redis_url, namespace))[guid]
            assert host.state == "connected" and host.name == "hv0"
            assert await agent.stop() == 0, agent.tail()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_a_token_of_another_ca_sends_nothing_and_exits_2(redis_url, namespace, tmp_path):
    async def scenario():
        async with run_servers(1, redis_url, namespace, verbose=True) as (server,):
            real = parse_token(await join_token(redis_url, namespace, uses=3))
            other = CertificateAuthority.create("elsewhere")
            forged = JoinToken(other.fingerprint, real.id, real.secret).as_text()
            folder = tmp_path / "hv0"
            path = write_properties(folder, "hv0", server.address, token=forged, **FAST_BACKOFF)
            agent = await AgentProcess(path, "hv0").start()
            code = await exit_code(agent, timeout=10)
            assert code == 2, agent.tail()
            assert error_lines(agent) == [
                f"Error: agent hv0: every server refused it: {server.address}: enrollment: this "
                f"server's CA is {(await namespace_ca(redis_url, namespace)).fingerprint}, the "
                f"join token names {other.fingerprint}; nothing sent"
            ], agent.tail()
            assert not agent.matching("Traceback"), agent.tail()
            # nothing sent: the one connection the server saw (the agent reading its CA) ended
            # with no message, no enroll; the token is untouched
            await server.wait_for(r"agent from 127\.0\.0\.1:\d+ closed the connection", timeout=5)
            assert server.count(r"agent from ") == 1, server.tail()
            assert enrollment_lines(server) == [], server.tail()
            assert await token_uses_left(redis_url, namespace, real.id) == 3
            # and nothing made: no key, the token line still there for the operator to fix
            assert sorted(p.name for p in folder.iterdir()) == ["agent.properties"]
            assert AgentProperties.load(path).get("token") == forged

    asyncio.run(scenario())


def test_neither_certificate_nor_token_exits_2_saying_how_to_get_a_token(tmp_path):
    path = write_properties(tmp_path / "hv0", "hv0", "127.0.0.1:9")
    done = subprocess.run(
        [sys.executable, "-m", "agentd", "run", "--properties", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr == f"Error: {no_credentials_message(path)}\n"
    assert len(done.stderr.splitlines()) == 1
    assert "msctl token create" in done.stderr and "token=" in done.stderr
    assert sorted(p.name for p in path.parent.iterdir()) == ["agent.properties"]


@pytest.mark.timeout(60)
def test_a_single_use_token_enrolls_one_agent_and_refuses_the_second(
    redis_url, namespace, tmp_path
):
    async def scenario():
        async with run_servers(1, redis_url, namespace) as (server,):
            token = await join_token(redis_url, namespace, uses=1)
            token_id = parse_token(token).id
            first = await start_agent(tmp_path / "hv1", "hv1", server.address, token=token)
            path = write_properties(
                tmp_path / "hv2", "hv2", server.address, token=token, **FAST_BACKOFF
            )
            second = await AgentProcess(path, "hv2").start()
            code = await exit_code(second, timeout=10)
            assert code == 2, second.tail()
            assert error_lines(second) == [
                f"Error: agent hv2: every server refused it: {server.address}: enrollment "
                f"refused: join token is used up"
            ], second.tail()
            assert not second.matching("no server reachable"), second.tail()  # not retried
            guid = guid_of(path)
            refusals = server.matching(
                rf"enrollment of guid {guid} from 127\.0\.0\.1:\d+ refused: "
                rf"join token {token_id} is used up"
            )
            assert len(refusals) == 1, server.tail()
            assert not (tmp_path / "hv2" / KEY_FILE).exists()
            assert AgentProperties.load(path).get("token") == token
            # the first agent is untouched
            assert guid not in await hosts(redis_url, namespace)
            assert (await hosts(redis_url, namespace))[guid_of(first.path)].state == "connected"
            assert not first.matching("lost server"), first.tail()
            assert await first.stop() == 0, first.tail()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_an_enrollment_killed_before_its_commit_is_redone_with_the_pending_key(
    redis_url, namespace, tmp_path
):
    """What a kill just before the key's rename leaves: agent.key.pending, ca.crt, an agent.crt
    for the pending key, a temporary file, and the token line. The next start enrolls again
    (a use of the token) with the same key."""

    async def scenario():
        async with run_servers(1, redis_url, namespace) as (server,):
            token = await join_token(redis_url, namespace, uses=2)
            ca = await namespace_ca(redis_url, namespace)
            folder = tmp_path / "hv0"
            guid = "g-killed-enrollment"
            path = write_properties(folder, "hv0", server.address, token=token, guid=guid)
            pending = new_key()
            write_private(folder / PENDING_FILE, key_pem(pending))
            stray = ca.sign_csr(csr_pem(pending, guid), guid, 1.0)
            (folder / CA_FILE).write_bytes(ca.certificate_pem)
            (folder / CERT_FILE).write_bytes(stray.public_bytes(serialization.Encoding.PEM))
            (folder / f".{CERT_FILE}.x1y2z3.tmp").write_bytes(b"half a certi")

            agent = await AgentProcess(path, "hv0").start(
                ready=r"agent hv0: connected to", timeout=15
            )
            enrolled = certificate(folder)
            assert enrolled.serial_number != stray.serial_number  # enrolled again
            assert public_key(enrolled) == public_key(pending)
            assert public_key(folder / KEY_FILE) == public_key(pending)
            assert common_name(enrolled) == guid
            assert mode(folder / KEY_FILE) == 0o600
            assert sorted(p.name for p in folder.iterdir()) == sorted(
                [KEY_FILE, CERT_FILE, CA_FILE, "agent.properties"]
            )
            assert AgentProperties.load(path).get("token") is None
            assert await token_uses_left(redis_url, namespace, parse_token(token).id) == 1
            assert (await hosts(redis_url, namespace))[guid].state == "connected"
            assert await agent.stop() == 0, agent.tail()

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_a_certificate_two_thirds_through_its_validity_is_renewed_over_the_session(
    redis_url, namespace, tmp_path
):
    async def scenario():
        async with run_servers(1, redis_url, namespace) as (server,):
            ca = await namespace_ca(redis_url, namespace)
            folder = tmp_path / "hv0"
            guid = "g-old-certificate"
            now = datetime.datetime.now(datetime.UTC)
            old_validity = (now - datetime.timedelta(days=20), now + datetime.timedelta(days=5))
            provision(folder, ca, guid, validity=old_validity)
            old = certificate(folder)
            old_key = public_key(folder / KEY_FILE)
            path = write_properties(folder, "hv0", server.address, guid=guid)

            agent = await AgentProcess(path, "hv0").start(ready=r"agent hv0: connected to")
            await agent.wait_for(r"agent hv0: certificate renewed, valid until ", timeout=10)
            assert agent.count(r"agent hv0: certificate expires .*; renewing") == 1
            assert server.count(rf"renewed the certificate of guid {guid} ") == 1

            new = certificate(folder)
            assert new.serial_number != old.serial_number
            assert new.not_valid_after_utc > old.not_valid_after_utc
            assert common_name(new) == guid
            assert public_key(folder / KEY_FILE) != old_key  # a new key, not only a new file
            assert mode(folder / KEY_FILE) == 0o600
            assert public_key(new) == public_key(folder / KEY_FILE)
            assert sorted(p.name for p in folder.iterdir()) == sorted(
                [KEY_FILE, CERT_FILE, CA_FILE, "agent.properties"]
            )  # agent.key.next became agent.key
            # the session went on: one connection, never lost, the host still connected
            await asyncio.sleep(0.3)
            assert agent.count(r"connected to ") == 1, agent.tail()
            assert not agent.matching(r"lost server|ERROR"), agent.tail()
            assert (await hosts(redis_url, namespace))[guid].state == "connected"
            assert await agent.stop() == 0, agent.tail()

            # the renewed keystore is the one the next start connects with, renewing nothing
            again = await AgentProcess(path, "hv0").start(ready=r"agent hv0: connected to")
            assert not again.matching(r"; renewing|certificate renewed"), again.tail()
            assert certificate(folder).serial_number == new.serial_number
            assert await again.stop() == 0, again.tail()

    asyncio.run(scenario())


@pytest.mark.timeout(90)
def test_a_swarm_with_one_token_enrolls_all_its_agents(redis_url, namespace, tmp_path):
    count = 20

    async def scenario():
        async with run_servers(1, redis_url, namespace) as (server,):
            token = await join_token(redis_url, namespace, uses=count)
            swarm = SwarmProcess(tmp_path / "swarm", count, server.address, token=token)
            try:
                await swarm.start(ready=rf"swarm: {count}/{count} agents connected", timeout=30)
                assert swarm.count(r"enrolled at ") == count, swarm.tail()
                assert server.count(r"enrolled guid ") == count, server.tail()
                assert await token_uses_left(redis_url, namespace, parse_token(token).id) == 0
                paths = swarm.properties()
                assert len(paths) == count
                guids = set()
                for path in paths:
                    assert AgentProperties.load(path).get("token") is None, path
                    assert mode(path.parent / KEY_FILE) == 0o600
                    guid = guid_of(path)
                    assert common_name(certificate(path.parent)) == guid
                    guids.add(guid)
                registered = await hosts(redis_url, namespace)
                assert set(registered) == guids
                assert {h.state for h in registered.values()} == {"connected"}
            finally:
                assert await swarm.stop() == 0, swarm.tail()

    asyncio.run(scenario())
