"""TLS for the benchmarks: certificates issued straight from a CA (the namespace's, read from
Redis, or a fresh one) as enrollment would issue them (an EC P-256 key made here, a CSR, CN = the
guid) for the benches' own clients and floors; the join token a swarm enrolls with; and
`BenchLab`, a lab whose swarm enrolls with one, and whose servers can be given more hosts for
their certificates (`msrv serve --tls-san`, for HAProxy passing TLS through).

The contexts come from common.tls, so a floor or a protocol client does the same handshake as
an agent and msrv (TLS 1.3, the same curve, a client certificate, the server verified against
the dialled address).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization

from agentd.keystore import csr_pem
from common.ca import CertificateAuthority, ensure_ca, key_pem, new_key
from common.keys import Keys
from common.tls import client_context_from_pem, server_context
from common.tokens import create_token
from msctl.lab import Lab, LabServer

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


async def join_token(redis: aioredis.Redis, namespace: str, uses: int) -> str:
    """A join token of the namespace for `uses` enrollments, valid for a day."""
    text, _ = await create_token(redis, Keys(namespace), ttl_seconds=86400, uses=uses)
    return text


@dataclass
class BenchLab(Lab):
    """A lab whose swarm enrolls with a join token made for it (one use per agent), and whose
    servers' certificates also name `tls_san` (each server is started with `--tls-san`)."""

    tls_san: tuple[str, ...] = field(default=())

    async def token(self, uses: int) -> str:
        client = self.redis()
        try:
            return await join_token(client, self.namespace, uses)
        finally:
            await client.aclose()

    async def start_swarm(self) -> None:
        token = await self.token(max(self.agents, 1))
        self.swarm_args = (*self.swarm_args, "--token", token)
        await super().start_swarm()

    async def start_server(self, server_id: str) -> LabServer:
        member = self.member(server_id)
        if self.tls_san and "--tls-san" not in member.child.args:
            member.child.args += ["--tls-san", ",".join(self.tls_san)]
        return await super().start_server(server_id)
