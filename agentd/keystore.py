"""The agent's keystore: `agent.key`, `agent.crt` and `ca.crt` beside agent.properties.

`agent.key` is the host's EC P-256 private key (PKCS8 PEM, mode 0600); it is made on the host
and never leaves it (only a CSR does). `agent.crt` is the certificate the CA issued for it,
subject CN = the host's guid; `ca.crt` is the deployment's CA certificate.

States (`Keystore.state()`):
- NONE: no `agent.key`. The agent must enroll. An `agent.crt`, `ca.crt` or
  `agent.key.pending` lying there are leftovers of an enrollment that did not finish; the
  next enrollment reuses the pending key and overwrites the certificates.
- COMPLETE: all three files present and consistent (agent.crt holds agent.key's public key
  and is signed by ca.crt; agent.key is readable by its owner only).
- Anything else with `agent.key` present is broken: PropertiesError, one line naming the file.

Enrollment, in the order that makes it crash-safe:
1. `pending_key()`: reuse `agent.key.pending` if an earlier enrollment left one, else make a
   key and write it there atomically, mode 0600 from before its first byte.
2. The caller sends `csr_pem(key, guid)` and gets a certificate and the CA certificate back.
3. `complete(...)` checks them against the pending key, the guid and the token's CA
   fingerprint before writing anything, then writes `ca.crt`, then `agent.crt` (each
   atomically and durably), and last renames `agent.key.pending` to `agent.key` and fsyncs
   the folder. That rename is the commit point: before it there is no `agent.key`, so a crash
   at any moment leaves NONE (and the pending key for the next attempt); after it all three
   files are in place. A keystore is never half written.
Renewal replaces the key and certificate of a COMPLETE keystore, in this order:
1. `next_key()`: reuse `agent.key.next` if an earlier renewal left one, else make one there
   (atomically, 0600). The caller sends `csr_pem(next key, guid)` over its session.
2. `complete_renewal(...)` checks the certificate (for the next key and the guid, issued by
   ca.crt), writes `agent.crt` atomically, then renames `agent.key.next` to `agent.key` and
   fsyncs the folder. Between the two, agent.crt holds the next key's public key: `state()`
   finds that and finishes the rename, so a crash at any moment leaves a complete keystore
   (the old pair, or the new one).

Key material is never logged or printed; errors name files, never their contents.
"""

from __future__ import annotations

import datetime
import enum
import logging
import os
import stat
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common.ca import fingerprint, key_pem, new_key
from common.errors import PropertiesError, ValidationError
from common.properties import atomic_write, fsync_folder, remove_stale_temp_files

logger = logging.getLogger(__name__)

KEY_FILE = "agent.key"
CERT_FILE = "agent.crt"
CA_FILE = "ca.crt"
PENDING_SUFFIX = ".pending"
NEXT_SUFFIX = ".next"
KEY_MODE = 0o600


class KeystoreState(enum.Enum):
    NONE = "none"
    COMPLETE = "complete"


class CertificateRejected(ValidationError):
    """The certificate or CA certificate an enrollment got back does not fit the request."""


def csr_pem(key: ec.EllipticCurvePrivateKey, guid: str) -> bytes:
    """A certificate signing request for `key`, subject CN = `guid`."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, guid)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


class Keystore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key_path = folder / KEY_FILE
        self.cert_path = folder / CERT_FILE
        self.ca_path = folder / CA_FILE
        self.pending_path = folder / (KEY_FILE + PENDING_SUFFIX)
        self.next_path = folder / (KEY_FILE + NEXT_SUFFIX)

    def paths(self) -> tuple[Path, Path, Path]:
        """(certfile, keyfile, cafile), as `ssl.SSLContext` takes them."""
        return self.cert_path, self.key_path, self.ca_path

    def state(self) -> KeystoreState:
        """NONE or COMPLETE; PropertiesError for a keystore present but broken."""
        if not self.key_path.exists():
            return KeystoreState.NONE
        key = _read_key(self.key_path)
        certificate = _read_certificate(self.cert_path)
        ca = _read_certificate(self.ca_path)
        if not _same_key(certificate, key) and self._finish_renewal(certificate):
            key = _read_key(self.key_path)
        if not _same_key(certificate, key):
            raise PropertiesError(
                f"{self.cert_path}: its public key is not the one of {self.key_path}"
            )
        if not _issued_by(certificate, ca):
            raise PropertiesError(f"{self.cert_path}: not issued by the CA in {self.ca_path}")
        return KeystoreState.COMPLETE

    def pending_key(self) -> ec.EllipticCurvePrivateKey:
        """The key of the enrollment under way: the one an interrupted enrollment left in
        agent.key.pending, or a new one written there (atomically, mode 0600)."""
        self._refuse_if_enrolled()
        for path in (self.cert_path, self.ca_path):
            remove_stale_temp_files(path)
        return _key_kept_in(self.pending_path)

    def complete(
        self, guid: str, certificate_pem: bytes, ca_pem: bytes, *, ca_fingerprint: str
    ) -> None:
        """Check what enrollment returned, then write ca.crt, agent.crt and, as the commit
        point, rename agent.key.pending to agent.key. Raises CertificateRejected, with nothing
        written, when the certificate is not for the pending key and `guid`, not issued by
        `ca_pem`, or `ca_pem` is not the CA whose fingerprint the join token named."""
        self._refuse_if_enrolled()
        key = _read_key(self.pending_path)
        certificate, ca = _check_enrolled(guid, key, certificate_pem, ca_pem, ca_fingerprint)
        atomic_write(self.ca_path, ca.public_bytes(serialization.Encoding.PEM))
        atomic_write(self.cert_path, certificate.public_bytes(serialization.Encoding.PEM))
        os.replace(self.pending_path, self.key_path)
        fsync_folder(self.folder)
        logger.info(
            "agent %s: enrolled, certificate valid until %s",
            guid,
            certificate.not_valid_after_utc.isoformat(),
        )

    def _finish_renewal(self, certificate: x509.Certificate) -> bool:
        """A renewal that wrote agent.crt and stopped before renaming its key: finish it."""
        if not self.next_path.exists() or not _same_key(certificate, _read_key(self.next_path)):
            return False
        os.replace(self.next_path, self.key_path)
        fsync_folder(self.folder)
        logger.info("%s: finished a renewal that was interrupted", self.key_path)
        return True

    def next_key(self) -> ec.EllipticCurvePrivateKey:
        """The key of the renewal under way: the one an interrupted renewal left in
        agent.key.next, or a new one written there (atomically, mode 0600)."""
        return _key_kept_in(self.next_path)

    def complete_renewal(self, guid: str, certificate_pem: bytes) -> datetime.datetime:
        """Check the renewed certificate against the next key, `guid` and ca.crt, then write
        agent.crt and, last, rename agent.key.next to agent.key. Raises CertificateRejected with
        nothing written. Returns the new certificate's expiry."""
        key = _read_key(self.next_path)
        ca_pem = _read(self.ca_path)
        certificate, _ = _check_enrolled(
            guid, key, certificate_pem, ca_pem, fingerprint(x509.load_pem_x509_certificate(ca_pem))
        )
        atomic_write(self.cert_path, certificate.public_bytes(serialization.Encoding.PEM))
        os.replace(self.next_path, self.key_path)
        fsync_folder(self.folder)
        return certificate.not_valid_after_utc

    def expires(self) -> datetime.datetime:
        return _read_certificate(self.cert_path).not_valid_after_utc

    def renewal_due(self, now: datetime.datetime) -> bool:
        """Whether less than a third of agent.crt's validity remains at `now` (aware, UTC)."""
        certificate = _read_certificate(self.cert_path)
        start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        return end - now < (end - start) / 3

    def _refuse_if_enrolled(self) -> None:
        if self.key_path.exists():
            raise PropertiesError(
                f"{self.key_path}: already present; enrollment is for a host without a key"
            )


def _key_kept_in(path: Path) -> ec.EllipticCurvePrivateKey:
    """The key an interrupted enrollment or renewal left in `path`, or a new one written there
    (atomically, mode 0600 from before its first byte), so a retry asks for the same key."""
    remove_stale_temp_files(path)
    if path.exists():
        try:
            return _read_key(path)
        except PropertiesError as exc:
            logger.warning("%s; making a new key", exc)
    key = new_key()
    atomic_write(path, key_pem(key), mode=KEY_MODE)
    return key


def _check_enrolled(
    guid: str,
    key: ec.EllipticCurvePrivateKey,
    certificate_pem: bytes,
    ca_pem: bytes,
    ca_fingerprint: str,
) -> tuple[x509.Certificate, x509.Certificate]:
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        raise CertificateRejected("enrollment: the certificates are not PEM") from None
    if fingerprint(ca) != ca_fingerprint:
        raise CertificateRejected(
            f"enrollment: the CA certificate is {fingerprint(ca)}, the token names {ca_fingerprint}"
        )
    if not _is_ca(ca):
        raise CertificateRejected("enrollment: the CA certificate is not a CA's")
    if not _issued_by(certificate, ca):
        raise CertificateRejected("enrollment: the certificate is not issued by the CA")
    if not _same_key(certificate, key):
        raise CertificateRejected("enrollment: the certificate is for another key")
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [name.value for name in names] != [guid]:
        raise CertificateRejected(f"enrollment: the certificate is not for guid {guid}")
    return certificate, ca


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PropertiesError(f"{path}: missing") from None
    except OSError as exc:
        raise PropertiesError(f"{path}: cannot read: {exc.strerror}") from None


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The EC P-256 key in `path`, which must be readable by its owner only."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        raise PropertiesError(f"{path}: missing") from None
    if mode & 0o077:
        raise PropertiesError(
            f"{path}: mode {mode:04o} lets group or others read the private key;"
            f" run: chmod 600 {path}"
        )
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError):  # TypeError: encrypted, needs a password
        raise PropertiesError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise PropertiesError(f"{path}: not an EC P-256 private key")
    return key


def _read_certificate(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path))
    except ValueError:
        raise PropertiesError(f"{path}: not a PEM certificate") from None


def _same_key(certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bool:
    public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    return certificate.public_key().public_bytes(*public) == key.public_key().public_bytes(*public)


def _issued_by(certificate: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return False
    return constraints.value.ca
