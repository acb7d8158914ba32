"""The agent's side of trust: enrollment with a join token, the TLS context of its sessions, and
renewal of its certificate over a session.

Enrollment at one server (common.tls explains the two connections):
1. a connection that verifies nothing and sends nothing: the server's first line is its CA
   certificate, which must have the fingerprint the token names (a server of another CA gets
   nothing, not even the token's id);
2. a connection verified against that CA and the dialled address: `enroll` (guid, token id and
   secret, a CSR of a key made here) -> `enrolled` (the certificate, CN = guid, and the CA's);
3. the keystore is written (agentd.keystore: crash-safe), then the `token` line is removed from
   agent.properties (atomically). A crash before 3 leaves no keystore and the token line: the
   next start enrolls again with the same key, if the token has uses left.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import ssl
from pathlib import Path

from cryptography import x509

from agentd import config
from agentd.keystore import CertificateRejected, Keystore, KeystoreState, csr_pem
from agentd.link import ConnectFailedError
from common import protocol
from common.addresses import Address
from common.ca import fingerprint
from common.errors import PropertiesError, ProtocolError
from common.properties import update_properties
from common.protocol import Ca, Enroll, Enrolled, Error, ErrorCode, Message, Renewed
from common.tls import client_context, enrollment_context, pinning_context, server_hostname
from common.tokens import JoinToken

logger = logging.getLogger(__name__)

RENEW_CHECK_EVERY = 3600.0  # seconds between checks of the certificate's remaining validity


def no_credentials_message(properties: Path) -> str:
    return (
        f"{properties}: no certificate (agent.key beside it) and no token= line; "
        f"create a join token with `msctl token create` and add token=<it> to this file"
    )


class AgentTrust:
    def __init__(self, properties: Path, guid: str, token: JoinToken | None, label: str) -> None:
        self.properties = properties
        self.guid = guid
        self.token = token
        self.label = label
        self.keystore = Keystore(properties.parent)
        self._context: ssl.SSLContext | None = None
        self.renewing = False

    def state(self) -> KeystoreState:
        """NONE or COMPLETE; PropertiesError (one line naming the file) for a broken keystore,
        or for no keystore and no token."""
        state = self.keystore.state()
        if state is KeystoreState.NONE and self.token is None:
            raise PropertiesError(no_credentials_message(self.properties))
        return state

    @property
    def context(self) -> ssl.SSLContext:
        """The TLS context of this agent's sessions (its certificate, the CA's)."""
        if self._context is None:
            certfile, keyfile, cafile = self.keystore.paths()
            self._context = client_context(cafile, certfile, keyfile)
        return self._context

    # ---- enrollment
    async def enroll_at(self, address: Address, port: int, timeout: float) -> None:
        """Enroll at one server; ConnectFailedError when it cannot be done there (retryable
        unless the server's CA is not the token's, or it refused the token)."""
        token = self.token
        assert token is not None
        host, dial_port = address.endpoint(port)
        try:
            async with asyncio.timeout(timeout):
                ca_pem = await self._pinned_ca(address, host, dial_port, token)
                reply = await self._enroll(host, dial_port, ca_pem, token)
        except TimeoutError:
            raise ConnectFailedError(
                address, f"enrollment: no answer within {timeout:g}s"
            ) from None
        except ssl.SSLError as exc:
            raise ConnectFailedError(address, f"enrollment: TLS: {exc.reason or exc}") from None
        except OSError as exc:
            raise ConnectFailedError(address, f"enrollment: {exc.strerror or exc}") from None
        except ProtocolError as exc:
            raise ConnectFailedError(address, f"enrollment: bad reply: {exc.message}") from None
        if isinstance(reply, Error):
            retryable = reply.retryable and reply.code != ErrorCode.BAD_TOKEN
            raise ConnectFailedError(address, f"enrollment refused: {reply.message}", retryable)
        if not isinstance(reply, Enrolled):
            raise ConnectFailedError(address, f"enrollment: unexpected reply {reply!r}")
        try:
            self.keystore.complete(
                self.guid,
                reply.certificate.encode(),
                reply.ca.encode(),
                ca_fingerprint=token.ca_fingerprint,
            )
        except CertificateRejected as exc:
            raise ConnectFailedError(address, str(exc), retryable=False) from None
        update_properties(self.properties, {config.TOKEN: None})
        self.token = None
        logger.info(
            "%s: enrolled at %s; token line removed from %s", self.label, address, self.properties
        )

    async def _pinned_ca(self, address: Address, host: str, port: int, token: JoinToken) -> bytes:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=pinning_context(), limit=protocol.READER_LIMIT
        )
        try:
            first = await protocol.read_message(reader)
        finally:
            writer.close()
        if not isinstance(first, Ca):
            raise ConnectFailedError(
                address, f"enrollment: expected the CA certificate, got {first!r}"
            )
        try:
            found = fingerprint(x509.load_pem_x509_certificate(first.certificate.encode()))
        except ValueError:
            raise ConnectFailedError(address, "enrollment: the CA certificate is not PEM") from None
        if found != token.ca_fingerprint:
            raise ConnectFailedError(
                address,
                f"enrollment: this server's CA is {found}, the join token names "
                f"{token.ca_fingerprint}; nothing sent",
                retryable=False,
            )
        return first.certificate.encode()

    async def _enroll(
        self, host: str, port: int, ca_pem: bytes, token: JoinToken
    ) -> Message | None:
        key = self.keystore.pending_key()
        reader, writer = await asyncio.open_connection(
            host,
            port,
            ssl=enrollment_context(ca_pem),
            server_hostname=server_hostname(host),
            limit=protocol.READER_LIMIT,
        )
        try:
            first = await protocol.read_message(reader)  # the CA again
            if not isinstance(first, Ca):
                return first if isinstance(first, Error) else None
            request = Enroll(self.guid, token.id, token.secret, csr_pem(key, self.guid).decode())
            writer.write(protocol.encode(request))
            await writer.drain()
            reply = await protocol.read_message(reader)
        finally:
            writer.close()
        return reply if not isinstance(reply, protocol.UnknownMessage) else None

    # ---- renewal
    def renewal_due(self) -> bool:
        return not self.renewing and self.keystore.renewal_due(datetime.datetime.now(datetime.UTC))

    def renewal_request(self) -> protocol.Renew:
        """A `renew` for a new key (kept in agent.key.next until the certificate comes)."""
        self.renewing = True
        key = self.keystore.next_key()
        return protocol.Renew(csr_pem(key, self.guid).decode())

    def renewed(self, message: Renewed) -> None:
        """Take the renewed certificate; later sessions use it (this one goes on)."""
        self.renewing = False
        try:
            expires = self.keystore.complete_renewal(self.guid, message.certificate.encode())
        except CertificateRejected as exc:
            logger.error("%s: renewed certificate refused: %s", self.label, exc)
            return
        self._context = None
        logger.info("%s: certificate renewed, valid until %s", self.label, expires.isoformat())
