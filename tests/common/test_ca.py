"""The certificate authority: created once per namespace, issues server and agent certificates
that a real TLS 1.3 handshake (the standard ssl module, mutual) accepts."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import fakeredis
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from common.ca import CertificateAuthority, CsrError, ensure_ca, key_pem, load_ca, new_key
from common.keys import Keys

KEYS = Keys("unit")


def csr_for(key: object, cn: str = "whatever") -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM)


def test_the_ca_is_created_once_even_when_two_race() -> None:
    async def main() -> None:
        redis = fakeredis.FakeAsyncRedis(decode_responses=True)
        assert await load_ca(redis, KEYS) is None
        first, second = await asyncio.gather(ensure_ca(redis, KEYS), ensure_ca(redis, KEYS))
        assert first.fingerprint == second.fingerprint
        assert (await ensure_ca(redis, KEYS)).fingerprint == first.fingerprint
        assert first.fingerprint.startswith("sha256:") and len(first.fingerprint) == 7 + 64
        other = await ensure_ca(redis, Keys("other"))
        assert other.fingerprint != first.fingerprint  # one CA per namespace
        await redis.aclose()

    asyncio.run(main())


def test_an_agent_certificate_names_the_guid_whatever_the_csr_asked() -> None:
    ca = CertificateAuthority.create("unit")
    cert = ca.sign_csr(csr_for(new_key(), cn="someone-else"), "guid-1", validity_days=1.5)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "guid-1"
    cert.verify_directly_issued_by(ca.certificate)
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 86400
    assert abs(days - 1.5) < 0.01  # decimals allowed; backdated by a few minutes


@pytest.mark.parametrize(
    ("csr", "message"),
    [
        (b"not a csr", "not a PEM certificate signing request"),
        (csr_for(rsa.generate_private_key(65537, 2048)), "must be an EC P-256 key"),
    ],
)
def test_a_bad_csr_is_refused_with_one_line(csr: bytes, message: str) -> None:
    with pytest.raises(CsrError, match=message):
        CertificateAuthority.create("unit").sign_csr(csr, "guid-1", 1)


def test_the_certificates_complete_a_mutual_tls13_handshake(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("unit")
    server_key, agent_key = new_key(), new_key()
    server_cert = ca.issue_server("127.0.0.1", server_key, 1)
    agent_cert = ca.sign_csr(csr_for(agent_key), "guid-7", 1)
    files = {
        "ca.crt": ca.certificate_pem,
        "server.crt": server_cert.public_bytes(serialization.Encoding.PEM),
        "server.key": key_pem(server_key),
        "agent.crt": agent_cert.public_bytes(serialization.Encoding.PEM),
        "agent.key": key_pem(agent_key),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    server_ctx.load_verify_locations(tmp_path / "ca.crt")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=tmp_path / "ca.crt")
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    client_ctx.load_cert_chain(tmp_path / "agent.crt", tmp_path / "agent.key")

    async def main() -> str:
        seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            peer = writer.get_extra_info("peercert")
            seen.set_result(dict(x[0] for x in peer["subject"])["commonName"])
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
        cn = await asyncio.wait_for(seen, 5)
        writer.close()
        server.close()
        await server.wait_closed()
        return cn

    assert asyncio.run(main()) == "guid-7"


def test_a_server_certificate_is_valid_for_the_extra_hosts_given(tmp_path: Path) -> None:
    """`msrv serve --tls-san`: agents that dial a TCP load balancer passing TLS through verify
    the server's certificate against the balancer's address; any other host still fails."""
    from common.tls import client_context_from_pem, server_context

    ca = CertificateAuthority.create("unit")
    server_key, agent_key = new_key(), new_key()
    server_cert = ca.issue_server("127.0.0.1", server_key, 1, also=["127.0.0.10", "lb.example"])
    sans = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(n.value) for n in sans] == ["127.0.0.1", "127.0.0.10", "lb.example"]
    pem = serialization.Encoding.PEM
    server_ctx = server_context(
        server_cert.public_bytes(pem), key_pem(server_key), ca.certificate_pem
    )
    agent_cert = ca.sign_csr(csr_for(agent_key), "guid-7", 1)
    client_ctx = client_context_from_pem(
        ca.certificate_pem, agent_cert.public_bytes(pem), key_pem(agent_key)
    )

    async def dial(as_host: str) -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=client_ctx, server_hostname=as_host
            )
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    for host in ("127.0.0.1", "127.0.0.10", "lb.example"):
        asyncio.run(dial(host))
    with pytest.raises(ssl.SSLCertVerificationError):
        asyncio.run(dial("127.0.0.11"))
