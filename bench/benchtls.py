"""TLS for the benchmarks: certificates issued straight from a CA (the namespace's, read from
Redis, or a fresh one) as enrollment would issue them (an EC P-256 key made here, a CSR, CN = the
guid) for the benches' own clients and floors; agents' keystores provisioned the same way; and
`BenchLab`, a lab whose swarm's agents are provisioned (or enroll with a join token), and whose
servers can be given more hosts for their certificates (`msrv serve --tls-san`, for HAProxy
passing TLS through).

Why provisioned by default: the benches time sessions, not enrollments, and a swarm of 3,000
agents enrolling at once is a storm of its own (before the swarm's dial gate, 8a62b39, none of
3,000 got enrolled in 300 s: two TLS connections each within the 3 s connect timeout, all on the
swarm's one core). Real hosts enroll on their own CPUs. `enroll=True` has the swarm enroll with
a join token instead.

The contexts come from common.tls, so a floor or a protocol client does the same handshake as
an agent and msrv (TLS 1.3, the same curve, a client certificate, the server verified against
the dialled address).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization

from agentd import config
from agentd.keystore import Keystore, csr_pem
from agentd.swarm import SwarmSpec, prepare_properties
from common.ca import CertificateAuthority, ensure_ca, key_pem, new_key
from common.keys import Keys
from common.properties import update_properties
from common.tls import client_context_from_pem, server_context
from msctl.children import LoggedProcess, swarm_ready
from msctl.lab import TOKEN_ENV, Lab, LabServer

# Seconds for a lab's swarm to have every agent connected. All its agents start at once and dial
# the first entry of `host`: before the swarm's dial gate (8a62b39), 3,000 of them took 40 s to
# over 2 minutes here (the swarm's one process could not do 3,000 client handshakes within an
# agent's 3 s connect timeout: most timed out and retried), where msctl.lab allows 60 s + 1 s
# per 50 agents.
START_TIMEOUT = 600.0

PEM = serialization.Encoding.PEM


@dataclass(frozen=True)
class Identities:
    ca: CertificateAuthority

    @classmethod
    def fresh(cls, name: str) -> Identities:
        """A CA of its own (a floor, which has no Redis)."""
        return cls(CertificateAuthority.create(name))

    @classmethod
    async def of_namespace(cls, redis: aioredis.Redis, namespace: str) -> Identities:
        """The namespace's CA (created if there is none yet, as msrv would)."""
        return cls(await ensure_ca(redis, Keys(namespace)))

    def client_pem(self, guid: str, validity_days: float = 1.0) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) of a client certificate for `guid`, from a CSR."""
        key = new_key()
        certificate = self.ca.sign_csr(csr_pem(key, guid), guid, validity_days)
        return certificate.public_bytes(PEM), key_pem(key)

    def client(self, guid: str) -> ssl.SSLContext:
        """A client context presenting a certificate for `guid` and trusting the CA."""
        certificate, key = self.client_pem(guid)
        return client_context_from_pem(self.ca.certificate_pem, certificate, key)

    def server(self, host: str, validity_days: float = 1.0) -> tuple[bytes, bytes]:
        """(certificate PEM, key PEM) of a server certificate for `host`, as msrv issues its own."""
        key = new_key()
        certificate = self.ca.issue_server(host, key, validity_days)
        return certificate.public_bytes(PEM), key_pem(key)

    def server_context(self, host: str) -> ssl.SSLContext:
        certificate, key = self.server(host)
        return server_context(certificate, key, self.ca.certificate_pem)

    def provision(self, folder: Path, guid: str, validity_days: float = 30.0) -> None:
        """The keystore an enrollment leaves (agent.key, agent.crt for `guid`, ca.crt), written
        through the agent's own steps (agentd.keystore: pending key, checks, commit)."""
        keystore = Keystore(folder)
        key = keystore.pending_key()
        certificate = self.ca.sign_csr(csr_pem(key, guid), guid, validity_days)
        keystore.complete(
            guid,
            certificate.public_bytes(PEM),
            self.ca.certificate_pem,
            ca_fingerprint=self.ca.fingerprint,
        )


def provision_swarm(ids: Identities, spec: SwarmSpec) -> None:
    """Agent folders of `spec` as `agentd swarm` makes them, each with a guid and a keystore
    (16 threads: the writes fsync)."""

    def one(index: int) -> None:
        path = prepare_properties(spec, index)
        if Keystore(path.parent).key_path.exists():
            return
        guid = str(uuid.uuid4())
        update_properties(path, {config.GUID: guid})
        ids.provision(path.parent, guid)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(1, spec.count + 1)))


@dataclass
class BenchLab(Lab):
    """A lab whose swarm's agents are provisioned keystores of the namespace's CA (or, with
    `enroll`, enroll with a join token made for them, one use each), and whose servers'
    certificates also name `tls_san` (each server is started with `--tls-san`)."""

    tls_san: tuple[str, ...] = field(default=())
    enroll: bool = False

    async def identities(self) -> Identities:
        client = self.redis()
        try:
            return await Identities.of_namespace(client, self.namespace)
        finally:
            await client.aclose()

    async def provision(self, directory: Path, count: int, host: str) -> None:
        """`count` agents in `directory` (as `agentd swarm --dir`), enrolled already."""
        ids = await self.identities()
        spec = SwarmSpec(count, directory, host=host)
        await asyncio.to_thread(provision_swarm, ids, spec)

    async def start_swarm(self) -> None:
        env = {}
        if self.enroll:
            env[TOKEN_ENV] = await self.join_token(max(self.agents, 1))
        else:
            await self.provision(self.directory / "agents", self.agents, ",".join(self.addresses))
        host = ",".join(self.addresses)
        args = ["-m", "agentd", "swarm", "--count", str(self.agents)]
        args += ["--dir", str(self.directory / "agents"), "--host", host, *self.swarm_args]
        self.swarm = LoggedProcess("swarm", args, env=env)
        await self.swarm.start(ready=swarm_ready(self.agents), timeout=START_TIMEOUT)

    async def start_server(self, server_id: str) -> LabServer:
        member = self.member(server_id)
        if self.tls_san and "--tls-san" not in member.child.args:
            member.child.args += ["--tls-san", ",".join(self.tls_san)]
        return await super().start_server(server_id)
