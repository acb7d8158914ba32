"""TLS for the agent <-> server link: the standard `ssl` module, TLS 1.3 only, no plaintext mode
and no switch that skips verification.

- Servers present a certificate issued by the namespace's CA (common.ca) and ask every client
  for one (CERT_OPTIONAL: a connection without one may only enroll, msrv decides that).
- Agents verify the server's chain against `ca.crt` and its certificate against the address
  they dialled (check_hostname, which matches IP addresses too), and present `agent.crt`.
- Enrollment: an agent that holds only a join token first reads the CA certificate the server
  sends on a connection without a client certificate (`pinning_context`: nothing is verified,
  and nothing is sent on it), pins it against the token's fingerprint, then opens a verified
  connection with that CA (`enrollment_context`) and only there sends the token's secret.
"""

from __future__ import annotations

import asyncio.sslproto
import datetime
import os
import ssl
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import ValidationError

# TLS 1.3 ciphers are fixed by OpenSSL (all AEAD); P-256 first keeps ECDHE cheap.
_CURVE = "prime256v1"

# asyncio gives every TLS connection a receive buffer of SSLProtocol.max_size bytes (256 KiB),
# allocated with the connection and kept for its whole life: 10,000 idle sessions would hold
# 2.5 GB, and a burst of handshakes leaves the allocator hundreds of MB it does not return. Our
# messages are lines of at most 64 KiB, mostly under 1 KiB: a smaller buffer only means more
# reads for a large one (the rest waits in the socket's buffer). 4 KiB rather than 16: 12 KB
# less per session on both sides (a swarm of 1,000 agents: 156 -> 144 KB per agent; a server
# at 1,000 sessions: 115 -> 103 MB), and a page still holds a burst of small messages.
SSL_READ_BUFFER = 4 * 1024
asyncio.sslproto.SSLProtocol.max_size = SSL_READ_BUFFER


def _hardened(context: ssl.SSLContext) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_ecdh_curve(_CURVE)
    return context


def _with_chain(context: ssl.SSLContext, certificate_pem: bytes, key_pem: bytes) -> None:
    """`load_cert_chain` reads files only: write both to a private folder (0700, key 0600),
    load, and remove them at once."""
    with tempfile.TemporaryDirectory(prefix="msrv-tls-") as folder:
        cert_path, key_path = Path(folder) / "cert.pem", Path(folder) / "key.pem"
        cert_path.write_bytes(certificate_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key_pem)
        context.load_cert_chain(cert_path, key_path)


def server_context(certificate_pem: bytes, key_pem: bytes, ca_pem: bytes) -> ssl.SSLContext:
    """A server's context: its certificate, client certificates asked for and verified
    against the CA when given.

    No TLS 1.3 session tickets: OpenSSL sends two after every handshake by default, and making
    them (a copy of the session with the client's certificate, encrypted) took 0.3 ms of the
    server's 1.4 ms per handshake here (bench/handshake.py), and the client kept both (~10 KB
    per connection). Nothing would use them: an agent does not resume a session (asyncio
    offers no way to pass one across connections), and a failover goes to another server,
    whose ticket keys are its own."""
    context = _hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    _with_chain(context, certificate_pem, key_pem)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.load_verify_locations(cadata=ca_pem.decode())
    context.num_tickets = 0
    return context


def client_context(cafile: Path, certfile: Path, keyfile: Path) -> ssl.SSLContext:
    """An enrolled agent's context: the server verified against `cafile` and the dialled
    address; `certfile`/`keyfile` presented."""
    context = _hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.load_verify_locations(cafile=cafile)
    context.load_cert_chain(certfile, keyfile)
    return context


def client_context_from_pem(
    ca_pem: bytes, certificate_pem: bytes, key_pem: bytes
) -> ssl.SSLContext:
    """As `client_context`, from PEM in memory (test clients and benchmarks)."""
    context = _hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.load_verify_locations(cadata=ca_pem.decode())
    _with_chain(context, certificate_pem, key_pem)
    return context


def enrollment_context(ca_pem: bytes) -> ssl.SSLContext:
    """A connection that verifies the server against a CA already pinned by fingerprint, and
    presents no certificate (the agent has none yet)."""
    context = _hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.load_verify_locations(cadata=ca_pem.decode())
    return context


def pinning_context() -> ssl.SSLContext:
    """Only to read the CA certificate a server offers before the agent has one: no
    verification here, so the caller sends nothing on this connection and trusts the CA only
    if its fingerprint is the one its join token names."""
    context = _hardened(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def server_hostname(host: str) -> str:
    """What to verify the server's certificate against: the dialled host, without the
    brackets of an IPv6 literal."""
    return host.removeprefix("[").removesuffix("]")


@dataclass(frozen=True)
class PeerCertificate:
    """What a server learns from a verified client certificate."""

    guid: str  # subject CN
    serial: str  # lowercase hex, as common.revocation stores it
    expires: float  # Unix seconds

    @classmethod
    def of(cls, ssl_object: Any) -> PeerCertificate | None:
        """The verified peer certificate of a connection, or None when the peer gave none."""
        getpeercert: Callable[[], dict[str, Any] | None] | None = getattr(
            ssl_object, "getpeercert", None
        )
        fields = getpeercert() if getpeercert is not None else None
        if not fields:
            return None
        names = [
            value for rdn in fields.get("subject", ()) for key, value in rdn if key == "commonName"
        ]
        if len(names) != 1:
            raise ValidationError("client certificate: expected exactly one subject CN")
        return cls(
            guid=names[0],
            serial=serial_hex(int(fields["serialNumber"], 16)),
            expires=float(ssl.cert_time_to_seconds(fields["notAfter"])),
        )


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def expires_text(expires: float) -> str:
    return datetime.datetime.fromtimestamp(expires, datetime.UTC).isoformat(timespec="seconds")
