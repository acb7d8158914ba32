"""Credentials for test agents: keystores issued straight from a CA (for tests that are not
about enrollment), join tokens of a namespace (for tests that enroll for real), and the TLS
context of a scripted server that such an agent trusts.

A keystore is written through the agent's own enrollment steps (agentd.keystore: pending key,
checks against the guid and the CA, commit by renaming the key), so what a test starts from is
what an enrollment leaves.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agentd.keystore import Keystore, csr_pem
from common.ca import CertificateAuthority, ensure_ca, key_pem, new_key
from common.connection import redis_from_url
from common.keys import Keys
from common.tls import server_context
from common.tokens import create_token

PEM = serialization.Encoding.PEM
PROVISIONED_DAYS = 30.0  # a provisioned agent certificate's validity: no renewal is due
TOKEN_TTL = 600  # seconds


def provision(
    folder: Path,
    ca: CertificateAuthority,
    guid: str,
    *,
    validity: tuple[datetime.datetime, datetime.datetime] | None = None,
) -> Keystore:
    """Write into `folder` the keystore of an agent already enrolled: agent.key (0600),
    agent.crt (CN = `guid`, issued by `ca`), ca.crt. `validity`: (not before, not after), aware
    UTC, instead of PROVISIONED_DAYS from now."""
    folder.mkdir(parents=True, exist_ok=True)
    keystore = Keystore(folder)
    key = keystore.pending_key()
    if validity is None:
        certificate = ca.sign_csr(csr_pem(key, guid), guid, PROVISIONED_DAYS)
    else:
        certificate = agent_certificate(ca, key, guid, *validity)
    keystore.complete(
        guid, certificate.public_bytes(PEM), ca.certificate_pem, ca_fingerprint=ca.fingerprint
    )
    return keystore


def agent_certificate(
    ca: CertificateAuthority,
    key: ec.EllipticCurvePrivateKey,
    guid: str,
    not_before: datetime.datetime,
    not_after: datetime.datetime,
) -> x509.Certificate:
    """An agent certificate for `key` with the validity given, built as common.ca builds its
    own (CN = guid, client authentication, not a CA)."""
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, guid)]))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
        .sign(ca.key, hashes.SHA256())
    )


def server_tls(ca: CertificateAuthority, host: str = "127.0.0.1") -> ssl.SSLContext:
    """The TLS context of a scripted test server at `host`, made as msrv makes its own: a
    certificate from `ca` for that address, client certificates asked for."""
    key = new_key()
    certificate = ca.issue_server(host, key, 1.0)
    return server_context(certificate.public_bytes(PEM), key_pem(key), ca.certificate_pem)


async def namespace_ca(redis_url: str, namespace: str) -> CertificateAuthority:
    """The namespace's CA in Redis (created now if no server made it yet)."""
    redis = redis_from_url(redis_url)
    try:
        return await ensure_ca(redis, Keys(namespace))
    finally:
        await redis.aclose()


async def join_token(redis_url: str, namespace: str, uses: int = 1) -> str:
    """A join token of the namespace (as `msctl token create --uses N` makes it)."""
    redis = redis_from_url(redis_url)
    try:
        text, _ = await create_token(redis, Keys(namespace), ttl_seconds=TOKEN_TTL, uses=uses)
    finally:
        await redis.aclose()
    return text


async def token_uses_left(redis_url: str, namespace: str, token_id: str) -> int:
    redis = redis_from_url(redis_url)
    try:
        uses = await redis.hget(Keys(namespace).token(token_id), "uses")
    finally:
        await redis.aclose()
    assert uses is not None, f"no join token {token_id}"
    return int(uses)
