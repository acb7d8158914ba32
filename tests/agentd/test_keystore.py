"""The agent's keystore: enrollment writes agent.key (0600), agent.crt and ca.crt so that a crash
at any step leaves either no keystore or a complete one; a broken one is refused in one line."""

from __future__ import annotations

import datetime
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from agentd.keystore import (
    CertificateRejected,
    Keystore,
    KeystoreState,
    csr_pem,
)
from common.ca import CertificateAuthority, key_pem, new_key
from common.errors import PropertiesError

GUID = "9f0c-17"


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    return CertificateAuthority.create("unit")


@pytest.fixture(scope="module")
def other_ca() -> CertificateAuthority:
    return CertificateAuthority.create("other")


def pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def enroll(
    keystore: Keystore, ca: CertificateAuthority, guid: str = GUID, validity_days: float = 30
) -> None:
    key = keystore.pending_key()
    certificate = ca.sign_csr(csr_pem(key, guid), guid, validity_days)
    keystore.complete(guid, pem(certificate), ca.certificate_pem, ca_fingerprint=ca.fingerprint)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_an_empty_folder_has_no_keystore(tmp_path: Path) -> None:
    assert Keystore(tmp_path).state() is KeystoreState.NONE


def test_enrollment_makes_a_complete_keystore(tmp_path: Path, ca: CertificateAuthority) -> None:
    keystore = Keystore(tmp_path)
    enroll(keystore, ca)
    assert keystore.state() is KeystoreState.COMPLETE
    assert names(tmp_path) == ["agent.crt", "agent.key", "ca.crt"]  # no pending, no temp files
    assert mode(tmp_path / "agent.key") == 0o600
    certfile, keyfile, cafile = keystore.paths()
    assert (certfile.name, keyfile.name, cafile.name) == ("agent.crt", "agent.key", "ca.crt")
    certificate = x509.load_pem_x509_certificate(certfile.read_bytes())
    cn = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [a.value for a in cn] == [GUID]
    assert cafile.read_bytes() == ca.certificate_pem
    assert b"PRIVATE KEY" in keyfile.read_bytes()


def test_the_pending_key_is_private_and_reused_until_enrollment_completes(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    keystore = Keystore(tmp_path)
    first = keystore.pending_key()
    assert mode(tmp_path / "agent.key.pending") == 0o600
    assert keystore.state() is KeystoreState.NONE
    again = Keystore(tmp_path).pending_key()
    assert key_pem(again) == key_pem(first)
    enroll(keystore, ca)
    enrolled = serialization.load_pem_private_key(
        (tmp_path / "agent.key").read_bytes(), password=None
    )
    assert enrolled.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    ) == first.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


class Crash(BaseException):
    """The process dies here (a BaseException, as nothing in the code may catch it)."""


# os.replace calls in an enrollment: 1 agent.key.pending (pending_key), then in complete():
# 2 ca.crt, 3 agent.crt, 4 agent.key.pending -> agent.key (the commit point).
@pytest.mark.parametrize("crash_at", [1, 2, 3, 4])
def test_a_crash_at_any_step_leaves_no_keystore_and_enrollment_completes_after(
    tmp_path: Path, ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    real_replace = os.replace
    calls = 0

    def replace(src: str | Path, dst: str | Path) -> None:
        nonlocal calls
        calls += 1
        if calls == crash_at:
            raise Crash
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Crash):
        enroll(Keystore(tmp_path), ca)
    monkeypatch.setattr(os, "replace", real_replace)

    keystore = Keystore(tmp_path)  # the agent starts again
    assert keystore.state() is KeystoreState.NONE
    enroll(keystore, ca)
    assert keystore.state() is KeystoreState.COMPLETE
    assert names(tmp_path) == ["agent.crt", "agent.key", "ca.crt"]


def test_leftovers_of_an_interrupted_enrollment_are_none_and_overwritten(
    tmp_path: Path, ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    # A crash after ca.crt and agent.crt were written, before the key's rename; and a temp
    # file the crash left in the middle of writing agent.crt.
    key = new_key()
    (tmp_path / "agent.crt").write_bytes(pem(other_ca.sign_csr(csr_pem(key, GUID), GUID, 30)))
    (tmp_path / "ca.crt").write_bytes(other_ca.certificate_pem)
    (tmp_path / ".agent.crt.x1y2.tmp").write_bytes(b"-----BEGIN CERT")
    keystore = Keystore(tmp_path)
    assert keystore.state() is KeystoreState.NONE
    enroll(keystore, ca)
    assert keystore.state() is KeystoreState.COMPLETE
    assert (tmp_path / "ca.crt").read_bytes() == ca.certificate_pem
    assert names(tmp_path) == ["agent.crt", "agent.key", "ca.crt"]


def test_a_pending_key_others_could_read_is_replaced(tmp_path: Path) -> None:
    pending = tmp_path / "agent.key.pending"
    pending.write_bytes(key_pem(new_key()))
    os.chmod(pending, 0o644)
    old = pending.read_bytes()
    Keystore(tmp_path).pending_key()
    assert pending.read_bytes() != old
    assert mode(pending) == 0o600


@pytest.fixture
def enrolled(tmp_path: Path, ca: CertificateAuthority) -> Keystore:
    keystore = Keystore(tmp_path)
    enroll(keystore, ca)
    return keystore


def refused(keystore: Keystore, file: str, match: str) -> None:
    with pytest.raises(PropertiesError, match=match) as caught:
        keystore.state()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(str(keystore.folder / file) + ":")
    assert "PRIVATE KEY" not in message


def test_a_certificate_from_another_ca_is_refused(
    enrolled: Keystore, other_ca: CertificateAuthority
) -> None:
    (enrolled.folder / "ca.crt").write_bytes(other_ca.certificate_pem)
    refused(enrolled, "agent.crt", "not issued by the CA in .*ca.crt")


def test_a_key_that_is_not_the_certificates_is_refused(enrolled: Keystore) -> None:
    (enrolled.folder / "agent.key").write_bytes(key_pem(new_key()))
    refused(enrolled, "agent.crt", "public key is not the one of .*agent.key")


def test_a_key_others_can_read_is_refused_with_the_chmod_to_run(enrolled: Keystore) -> None:
    key = enrolled.folder / "agent.key"
    os.chmod(key, 0o644)
    refused(enrolled, "agent.key", f"mode 0644 lets group or others read .*chmod 600 {key}$")
    os.chmod(key, 0o640)
    refused(enrolled, "agent.key", "mode 0640")
    os.chmod(key, 0o600)
    assert enrolled.state() is KeystoreState.COMPLETE


@pytest.mark.parametrize(
    ("file", "match"),
    [
        ("agent.key", "not an unencrypted PEM private key"),
        ("agent.crt", "not a PEM certificate"),
        ("ca.crt", "not a PEM certificate"),
    ],
)
def test_garbage_in_any_file_is_refused(enrolled: Keystore, file: str, match: str) -> None:
    (enrolled.folder / file).write_bytes(b"-----BEGIN garbage\nnot base64\n")
    refused(enrolled, file, match)


@pytest.mark.parametrize("file", ["agent.crt", "ca.crt"])
def test_a_key_without_its_certificates_is_broken(enrolled: Keystore, file: str) -> None:
    (enrolled.folder / file).unlink()
    refused(enrolled, file, "missing")


def test_enrolling_again_over_a_complete_keystore_is_refused(
    enrolled: Keystore, ca: CertificateAuthority
) -> None:
    with pytest.raises(PropertiesError, match="already present"):
        enrolled.pending_key()
    assert enrolled.state() is KeystoreState.COMPLETE


def test_complete_checks_what_enrollment_returned_before_writing(
    tmp_path: Path, ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    keystore = Keystore(tmp_path)
    key = keystore.pending_key()
    good = pem(ca.sign_csr(csr_pem(key, GUID), GUID, 30))
    cases = [
        (pem(ca.sign_csr(csr_pem(key, GUID), "other-guid", 30)), ca, "not for guid"),
        (pem(ca.sign_csr(csr_pem(new_key(), GUID), GUID, 30)), ca, "another key"),
        (pem(other_ca.sign_csr(csr_pem(key, GUID), GUID, 30)), ca, "not issued by the CA"),
        (b"garbage", ca, "not PEM"),
    ]
    for certificate_pem, issuer, match in cases:
        with pytest.raises(CertificateRejected, match=match):
            keystore.complete(
                GUID, certificate_pem, issuer.certificate_pem, ca_fingerprint=ca.fingerprint
            )
    with pytest.raises(CertificateRejected, match="the token names"):  # a CA the token didn't name
        keystore.complete(GUID, good, other_ca.certificate_pem, ca_fingerprint=ca.fingerprint)
    assert names(tmp_path) == ["agent.key.pending"]
    keystore.complete(GUID, good, ca.certificate_pem, ca_fingerprint=ca.fingerprint)
    assert keystore.state() is KeystoreState.COMPLETE


def test_renewal_is_due_when_less_than_a_third_of_the_validity_remains(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    keystore = Keystore(tmp_path)
    enroll(keystore, ca, validity_days=3)
    certificate = x509.load_pem_x509_certificate(keystore.paths()[0].read_bytes())
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    two_thirds = start + (end - start) * 2 / 3
    minute = datetime.timedelta(minutes=1)
    assert not keystore.renewal_due(start)
    assert not keystore.renewal_due(two_thirds - minute)
    assert keystore.renewal_due(two_thirds + minute)
    assert keystore.renewal_due(end + minute)
