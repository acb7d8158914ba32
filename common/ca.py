"""The deployment's certificate authority: one per namespace, kept in Redis, created on first
need (the first `msrv serve` or `msctl token create`), atomically and once.

Keys are EC P-256 (a handshake's cryptography costs little next to the rest). The CA issues
server certificates (SAN = the advertised address) and agent certificates from a CSR made on
the host, whose subject CN is the host's guid; the agent's key never leaves its host. The CA's
fingerprint is `sha256:<hex>` of its DER certificate, as join tokens carry it.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import redis.asyncio as aioredis
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.durability import confirm_replicated
from common.errors import ValidationError
from common.keys import Keys

CA_VALIDITY_DAYS = 3650
BACKDATE = datetime.timedelta(minutes=5)  # tolerate clocks a little behind the CA's


class CsrError(ValidationError):
    """A certificate signing request that cannot be signed."""


def fingerprint(certificate: x509.Certificate) -> str:
    return (
        "sha256:" + hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
    )


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


# What cryptography raises for a CSR it loaded but whose key it cannot use: a point off the
# curve ("Invalid key"), an unknown key type or curve (the key is read when used, not loaded).
_UNREADABLE = (ValueError, UnsupportedAlgorithm)


def csr_key(csr_pem: bytes) -> ec.EllipticCurvePublicKey:
    """The EC key a CSR proves its maker holds. Raises CsrError for a CSR that is not one."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except x509.InvalidVersion as exc:
        raise CsrError(f"csr: unusable: {str(exc)[:80]}") from None
    except ValueError:
        raise CsrError("csr: not a PEM certificate signing request") from None
    try:
        valid = csr.is_signature_valid
    except InvalidSignature:
        valid = False
    except _UNREADABLE as exc:
        raise CsrError(f"csr: unusable: {str(exc)[:80]}") from None
    if not valid:
        raise CsrError("csr: its signature does not match its key")
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        raise CsrError("csr: the key must be an EC P-256 key")
    return public_key


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """SHA-256 (hex) of a public key's DER SubjectPublicKeyInfo."""
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def expires(self) -> datetime.datetime:
        return self.certificate.not_valid_after_utc

    @classmethod
    def create(cls, namespace: str) -> CertificateAuthority:
        key = new_key()
        name = _name(f"indirect-agent-lb CA ({namespace})")
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=CA_VALIDITY_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    def _issue(
        self,
        subject: str,
        public_key: ec.EllipticCurvePublicKey,
        usage: x509.ObjectIdentifier,
        validity_days: float,
        san: list[x509.GeneralName],
    ) -> x509.Certificate:
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(subject))
            .issuer_name(self.certificate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - BACKDATE)
            .not_valid_after(now + datetime.timedelta(days=validity_days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(self.key, hashes.SHA256())

    def issue_server(
        self,
        host: str,
        key: ec.EllipticCurvePrivateKey,
        validity_days: float,
        also: Sequence[str] = (),
    ) -> x509.Certificate:
        """A server certificate for its advertised host (an IP address or a DNS name), and for
        the names in `also` (a TCP load balancer's, that agents dial to reach this server)."""
        names = list(dict.fromkeys([host, *also]))
        return self._issue(
            host,
            key.public_key(),
            ExtendedKeyUsageOID.SERVER_AUTH,
            validity_days,
            [_san(name) for name in names],
        )

    def sign_csr(self, csr_pem: bytes, guid: str, validity_days: float) -> x509.Certificate:
        """An agent certificate for `guid` (its subject CN, whatever the CSR asked), for the
        key the CSR proves it holds. Raises CsrError for a CSR that is not one."""
        public_key = csr_key(csr_pem)
        return self._issue(guid, public_key, ExtendedKeyUsageOID.CLIENT_AUTH, validity_days, [])

    def to_json(self) -> str:
        return json.dumps(
            {"certificate": self.certificate_pem.decode(), "key": key_pem(self.key).decode()}
        )

    @classmethod
    def from_json(cls, text: str) -> CertificateAuthority:
        body = json.loads(text)
        certificate = x509.load_pem_x509_certificate(body["certificate"].encode())
        key = serialization.load_pem_private_key(body["key"].encode(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValidationError("the CA key in Redis is not an EC key")
        return cls(certificate, key)


async def load_ca(redis: aioredis.Redis, keys: Keys) -> CertificateAuthority | None:
    stored = cast(str | None, await redis.get(keys.ca))
    return CertificateAuthority.from_json(stored) if stored is not None else None


async def ensure_ca(redis: aioredis.Redis, keys: Keys) -> CertificateAuthority:
    """The namespace's CA, created now if there is none (SET NX: of two creators racing, one
    wins and both use its CA). A new CA is returned once a replica holds it, when the master
    has replicas (NotReplicatedError otherwise: it is on the master, and a failover now would
    have the next server or `msctl token create` make another CA, refusing this one's
    certificates)."""
    existing = await load_ca(redis, keys)
    if existing is not None:
        return existing
    candidate = CertificateAuthority.create(keys.namespace)
    if await redis.set(keys.ca, candidate.to_json(), nx=True):
        await confirm_replicated(redis, keys, f"the new CA {candidate.fingerprint}")
        return candidate
    winner = await load_ca(redis, keys)
    if winner is None:  # deleted in between: extremely unlikely; try once more
        return await ensure_ca(redis, keys)
    return winner
