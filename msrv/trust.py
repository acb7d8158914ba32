"""The server's side of trust: its own certificate, the TLS handshake of each connection,
enrollment with a join token and renewal over a session.

At start the server loads the namespace's CA from Redis (creating it on first need) and issues
itself a certificate (SAN = its advertised host, validity = ca.framework.cert.validity.period),
so every start renews it. Each connection's handshake is bounded; one that fails (a plaintext
client, a certificate of another CA, a client that never finishes) is logged with the peer's
address and closed. A connection without a client certificate gets the CA certificate and may
only `enroll`; everything else is refused (msrv.lifecycle). The CA held is put back in Redis
when Redis lost it (`reassert_ca`, at each resync and re-assert, as the hosts are).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence

import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from redis.exceptions import RedisError

from common.addresses import parse_address
from common.ca import (
    CertificateAuthority,
    CsrError,
    csr_key,
    ensure_ca,
    key_id,
    key_pem,
    load_ca,
    new_key,
)
from common.durability import NotReplicatedError
from common.errors import LbError
from common.keys import Keys
from common.protocol import Ca, Enroll, Enrolled, ErrorCode, Renewed
from common.revocation import record_issued
from common.tls import PeerCertificate, expires_text, serial_hex, server_context
from common.tokens import TokenCheck, consume_token
from msrv.connection import Refused, forget_traceback

logger = logging.getLogger(__name__)

_PEM = serialization.Encoding.PEM


# What a host whose certificate was revoked is told (its agent prints it as it stops).
REVOKED_TEXT = (
    "this host's certificate is revoked (msctl hosts remove); to enroll it again, delete "
    "agent.key and agent.crt and add a new token="
)


class HandshakeFailedError(LbError):
    """The TLS handshake of a connection did not complete; the message says why."""


class ServerTrust:
    def __init__(self, redis: aioredis.Redis, keys: Keys, server_id: str) -> None:
        self.redis = redis
        self.keys = keys
        self.server_id = server_id
        self._ca: CertificateAuthority | None = None
        self._context: ssl.SSLContext | None = None
        self.ca_message = Ca("")
        self._other_ca_reported = False

    @property
    def ca(self) -> CertificateAuthority:
        if self._ca is None:
            raise RuntimeError("trust not loaded yet")
        return self._ca

    @property
    def context(self) -> ssl.SSLContext:
        if self._context is None:
            raise RuntimeError("trust not loaded yet")
        return self._context

    async def load(self, advertise: str, validity_days: float, also: Sequence[str] = ()) -> None:
        """Load (or create) the CA and issue this server's certificate for `advertise` and the
        hosts in `also` (`msrv serve --tls-san`)."""
        self._ca = ca = await self._load_ca()
        key = new_key()
        host = parse_address(advertise).host
        certificate = ca.issue_server(host, key, validity_days, also)
        self._context = server_context(
            certificate.public_bytes(_PEM), key_pem(key), ca.certificate_pem
        )
        self.ca_message = Ca(ca.certificate_pem.decode())
        logger.info(
            "msrv %s: CA %s; server certificate for %s valid until %s",
            self.server_id,
            ca.fingerprint,
            ", ".join(dict.fromkeys([host, *also])),
            certificate.not_valid_after_utc.isoformat(timespec="seconds"),
        )

    async def _load_ca(self) -> CertificateAuthority:
        """The namespace's CA; one this server created and no replica confirmed in time is
        used all the same (it is on the master), with a warning."""
        try:
            return await ensure_ca(self.redis, self.keys)
        except NotReplicatedError as exc:
            logger.warning("msrv %s: %s", self.server_id, exc)
        ca = await load_ca(self.redis, self.keys)
        if ca is None:  # gone meanwhile (a failover lost it): make one again
            return await ensure_ca(self.redis, self.keys)
        return ca

    async def reassert_ca(self) -> None:
        """Put the CA this server holds back in Redis when Redis lost it (it came back empty,
        or was flushed): without it the next server to start, or `msctl token create`, would
        make a new CA, refusing every agent's certificate while the agents refuse its own. A
        different CA found there is left alone and logged once: servers and agents trust this
        one, and only an operator can say which is to stay."""
        if self._ca is None:
            return
        ca = self._ca
        if await self.redis.set(self.keys.ca, ca.to_json(), nx=True):
            logger.warning(
                "msrv %s: Redis had lost the CA; CA %s put back", self.server_id, ca.fingerprint
            )
            return
        stored = await load_ca(self.redis, self.keys)
        if stored is not None and stored.fingerprint != ca.fingerprint:
            if not self._other_ca_reported:
                logger.error(
                    "msrv %s: Redis holds CA %s, not CA %s this server and its agents trust: "
                    "servers started now refuse the agents' certificates. Restore Redis's "
                    "data (its `ca` key), or re-enroll every agent",
                    self.server_id,
                    stored.fingerprint,
                    ca.fingerprint,
                )
            self._other_ca_reported = True

    async def handshake(
        self, writer: asyncio.StreamWriter, timeout: float
    ) -> PeerCertificate | None:
        """TLS on a fresh connection, within `timeout` seconds: the client's verified
        certificate, or None when it gave none. Raises HandshakeFailedError."""
        try:
            async with asyncio.timeout(timeout):
                await writer.start_tls(self.context)
        except OSError as exc:  # TimeoutError, ssl.SSLError, ConnectionError among them
            reason = _handshake_failure(exc, timeout)
            # its frames hold the connection, and an asyncio future holds it: a cycle that
            # kept a failed handshake's TLS state (msrv.connection.Connection.close)
            forget_traceback(exc)
            raise HandshakeFailedError(reason) from None
        try:
            return PeerCertificate.of(writer.get_extra_info("ssl_object"))
        except (ValueError, KeyError) as exc:
            raise HandshakeFailedError(f"unusable client certificate: {exc}") from None

    async def enroll(self, request: Enroll, validity_days: float, peer: str) -> Enrolled:
        """Use the join token once and sign the CSR for the request's guid. Raises Refused
        (logged with the peer address) for a token that cannot be used, a CSR that cannot be
        signed, or Redis unreachable (retryable)."""
        guid = request.guid
        try:
            holder = f"{guid}:{key_id(csr_key(request.csr.encode()))}"
        except CsrError as exc:
            logger.warning(
                "msrv %s: enrollment of guid %s from %s: %s", self.server_id, guid, peer, exc
            )
            raise Refused(ErrorCode.BAD_CSR, str(exc)) from None
        try:
            found = await consume_token(
                self.redis, self.keys, request.token_id, request.secret, holder
            )
            if found is not TokenCheck.OK:
                reason = _TOKEN_REFUSALS[found]
                logger.warning(
                    "msrv %s: enrollment of guid %s from %s refused: join token %s %s",
                    self.server_id,
                    guid,
                    peer,
                    request.token_id[:16],
                    reason,
                )
                raise Refused(ErrorCode.BAD_TOKEN, f"join token {reason}")
            certificate = await self._sign(guid, request.csr, validity_days, peer)
        except RedisError as exc:
            raise Refused(
                ErrorCode.UNAVAILABLE, f"registry unavailable: {exc}", retryable=True
            ) from None
        logger.info(
            "msrv %s: enrolled guid %s from %s with join token %s; certificate %s valid until %s",
            self.server_id,
            guid,
            peer,
            request.token_id,
            serial_hex(certificate.serial_number),
            certificate.not_valid_after_utc.isoformat(timespec="seconds"),
        )
        return Enrolled(certificate.public_bytes(_PEM).decode(), self.ca.certificate_pem.decode())

    async def renew(
        self, peer_certificate: PeerCertificate, csr_pem: str, validity_days: float, who: str
    ) -> Renewed | None:
        """A new certificate for the guid of the session's certificate (whatever the CSR asks);
        None when it cannot be done now (logged: the session goes on, the agent asks again)."""
        try:
            certificate = await self._sign(peer_certificate.guid, csr_pem, validity_days, who)
        except (Refused, RedisError) as exc:
            logger.info("%s: renewal not done (%s); the agent asks again later", who, exc)
            return None
        logger.info(
            "%s: renewed the certificate of guid %s (was valid until %s): %s valid until %s",
            who,
            peer_certificate.guid,
            expires_text(peer_certificate.expires),
            serial_hex(certificate.serial_number),
            certificate.not_valid_after_utc.isoformat(timespec="seconds"),
        )
        return Renewed(certificate.public_bytes(_PEM).decode(), self.ca.certificate_pem.decode())

    async def _sign(
        self, guid: str, csr_pem: str, validity_days: float, peer: str
    ) -> x509.Certificate:
        try:
            certificate = self.ca.sign_csr(csr_pem.encode(), guid, validity_days)
        except CsrError as exc:
            logger.warning("msrv %s: guid %s from %s: %s", self.server_id, guid, peer, exc)
            raise Refused(ErrorCode.BAD_CSR, str(exc)) from None
        await record_issued(
            self.redis,
            self.keys,
            guid,
            serial_hex(certificate.serial_number),
            certificate.not_valid_after_utc.timestamp(),
        )
        return certificate


def _handshake_failure(exc: OSError, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"TLS handshake not done within {timeout:g}s"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {exc.reason or exc}"
    return f"connection lost in the TLS handshake: {str(exc) or type(exc).__name__}"


_TOKEN_REFUSALS = {
    TokenCheck.UNKNOWN: "is unknown or expired",
    TokenCheck.BAD_SECRET: "has another secret",
    TokenCheck.USED_UP: "is used up",
    TokenCheck.REVOKED: "is revoked",
}
