"""Client certificates for test clients: issued straight from the namespace's CA in Redis, as
enrollment would (CN = the guid), without an agent's keystore on disk."""

from __future__ import annotations

import ssl

import redis.asyncio as aioredis
from cryptography.hazmat.primitives import serialization

from agentd.keystore import csr_pem
from common.ca import CertificateAuthority, ensure_ca, key_pem, new_key
from common.keys import Keys
from common.tls import client_context_from_pem, enrollment_context, serial_hex

PEM = serialization.Encoding.PEM


def identity(
    ca: CertificateAuthority,
    guid: str,
    validity_days: float = 1.0,
    *,
    trusting: CertificateAuthority | None = None,
) -> ssl.SSLContext:
    """A TLS context presenting a certificate for `guid` issued by `ca`, trusting `ca` (or
    `trusting`: a certificate of another CA shown to our servers)."""
    return issued(ca, guid, validity_days, trusting=trusting)[0]


def issued(
    ca: CertificateAuthority,
    guid: str,
    validity_days: float = 1.0,
    *,
    trusting: CertificateAuthority | None = None,
) -> tuple[ssl.SSLContext, str, float]:
    """As `identity`, with the certificate's serial (hex) and expiry (Unix seconds)."""
    key = new_key()
    certificate = ca.sign_csr(csr_pem(key, guid), guid, validity_days)
    context = client_context_from_pem(
        (trusting or ca).certificate_pem, certificate.public_bytes(PEM), key_pem(key)
    )
    return (
        context,
        serial_hex(certificate.serial_number),
        certificate.not_valid_after_utc.timestamp(),
    )


def anonymous(ca: CertificateAuthority) -> ssl.SSLContext:
    """A TLS context that trusts `ca` and presents no certificate (an agent before enrolling,
    or an intruder)."""
    return enrollment_context(ca.certificate_pem)


async def namespace_ca(redis: aioredis.Redis, namespace: str) -> CertificateAuthority:
    return await ensure_ca(redis, Keys(namespace))
