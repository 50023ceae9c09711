"""TLS plumbing for the node-to-node transport.

Each node serves HTTPS with a self-signed certificate made from its Ed25519 *device* key. Nobody
verifies these certificates through a CA chain: the client accepts any certificate (CERT_NONE),
reads the device key out of it and authenticates it at the application layer (see
``sync.transport``). TLS 1.3 itself proves that the server holds the private key of the
certificate it presented (CertificateVerify), so "the key in the certificate" is the server's key.

Contexts are built by hand rather than with ``ssl.create_default_context``: the defaults change
between Python versions (3.13 adds ``VERIFY_X509_STRICT``) and would reject or second-guess our
self-signed Ed25519 certificates.
"""

from __future__ import annotations

import datetime
import hashlib
import os
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

__all__ = [
    "make_certificate",
    "server_context",
    "client_context",
    "peer_device_key",
    "fingerprint",
]

# The subject names no person and no group: the certificate is only a carrier for the key.
_SUBJECT = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crewnode")])
# RFC 5280 4.1.2.5: 99991231235959Z means "no well-defined expiration date". Device keys are
# rotated by replacing the device, not by certificate expiry, so the certificate never expires.
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.timezone.utc)


def make_certificate(device_key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """Make a self-signed X.509 certificate for ``device_key``.

    Returns ``(cert_pem, key_pem)``: the certificate and the unencrypted PKCS#8 private key, both
    PEM. The certificate carries the device's Ed25519 public key, is signed by that same key
    (Ed25519 takes no separate hash, hence algorithm ``None``) and never expires.
    """
    if not isinstance(device_key, Ed25519PrivateKey):
        raise TypeError("device_key must be an Ed25519PrivateKey")
    # Back-date by a day so a peer whose clock runs behind still sees a valid certificate
    # (we do not verify dates ourselves, but other TLS stacks might).
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_SUBJECT)
        .issuer_name(_SUBJECT)
        .public_key(device_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(_NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(device_key, None)
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = device_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def _tls13_only(ctx: ssl.SSLContext) -> ssl.SSLContext:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.options |= ssl.OP_NO_COMPRESSION
    return ctx


def server_context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """Build a server-side ``ssl.SSLContext``: TLS 1.3 only, serving ``cert_pem``/``key_pem``.

    The server does not ask for a client certificate: clients prove their key at the application
    layer. Raises ``ValueError`` if the certificate or key cannot be loaded or do not match.
    """
    ctx = _tls13_only(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    ctx.verify_mode = ssl.CERT_NONE
    # No session tickets: nobody resumes sessions here, and a ticket arriving after the handshake
    # would make an idle client connection look readable (i.e. closed by the server).
    ctx.num_tickets = 0
    # ssl can only load a certificate chain from files. Write them into a private (0700)
    # directory, load, and remove them at once so the private key does not linger on disk.
    with tempfile.TemporaryDirectory(prefix="crewnode-tls-") as tmp:
        cert_path = os.path.join(tmp, "cert.pem")
        key_path = os.path.join(tmp, "key.pem")
        for path, data in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as e:
            raise ValueError(f"cannot load TLS certificate and key: {e}") from e
    return ctx


def client_context() -> ssl.SSLContext:
    """Build a client-side ``ssl.SSLContext``: TLS 1.3 only, no certificate verification.

    ``CERT_NONE`` is deliberate: peers have self-signed certificates, and the client instead
    checks the key in the server's certificate against the device key the server proves at the
    application layer (see ``sync.transport.SyncClient``).
    """
    ctx = _tls13_only(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    ctx.check_hostname = False  # must be switched off before verify_mode can be CERT_NONE
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _der_of(ssl_object_or_der) -> bytes:
    if isinstance(ssl_object_or_der, (bytes, bytearray, memoryview)):
        return bytes(ssl_object_or_der)
    getpeercert = getattr(ssl_object_or_der, "getpeercert", None)
    if getpeercert is None:
        raise TypeError("expected DER bytes, an ssl.SSLSocket or an ssl.SSLObject")
    der = getpeercert(binary_form=True)
    if not der:
        raise ValueError("peer presented no certificate")
    return der


def peer_device_key(ssl_object_or_der) -> bytes:
    """Return the raw 32-byte Ed25519 public key from a peer's certificate.

    Accepts the certificate as DER bytes, or a connected ``ssl.SSLSocket``/``ssl.SSLObject``
    (its peer certificate is used). Raises ``ValueError`` if the certificate cannot be parsed or
    does not carry an Ed25519 key.
    """
    der = _der_of(ssl_object_or_der)
    try:
        cert = x509.load_der_x509_certificate(der)
        public_key = cert.public_key()
    except ValueError as e:
        raise ValueError(f"unreadable peer certificate: {e}") from e
    if not isinstance(public_key, Ed25519PublicKey):
        raise ValueError(
            f"peer certificate key is {type(public_key).__name__}, not an Ed25519 device key"
        )
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def fingerprint(der: bytes) -> bytes:
    """Return the SHA-256 digest (32 bytes) of a DER-encoded certificate."""
    return hashlib.sha256(bytes(der)).digest()
