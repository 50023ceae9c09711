"""Unit tests for sync.tls: certificates from device keys, TLS 1.3 contexts, key extraction."""

import datetime
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.hashes import SHA256

from sync import tls


def raw_pub(key):
    return key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )


def der_of(cert_pem):
    return x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)


def handshake(client_ctx, server_ctx):
    """Run a TLS handshake in memory; return (client SSLObject, server SSLObject)."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(20):
        for name, obj in (("c", client), ("s", server)):
            if not done[name]:
                try:
                    obj.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            return client, server
    raise AssertionError("handshake did not finish")


def test_certificate_carries_device_key_and_is_self_signed():
    key = Ed25519PrivateKey.generate()
    cert_pem, key_pem = tls.make_certificate(key)
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert tls.peer_device_key(der_of(cert_pem)) == raw_pub(key)
    cert.verify_directly_issued_by(cert)  # signed by the device key itself
    assert cert.signature_hash_algorithm is None  # Ed25519
    assert cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) > (
        datetime.timedelta(days=365 * 50)
    )
    loaded = serialization.load_pem_private_key(key_pem, None)
    assert raw_pub(loaded) == raw_pub(key)


def test_certificate_names_no_one():
    cert_pem, _ = tls.make_certificate(Ed25519PrivateKey.generate())
    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.rfc4514_string() == "CN=crewnode"


def test_make_certificate_rejects_other_keys():
    with pytest.raises(TypeError):
        tls.make_certificate(ec.generate_private_key(ec.SECP256R1()))


def test_fingerprint_is_sha256_of_der():
    key = Ed25519PrivateKey.generate()
    der1 = der_of(tls.make_certificate(key)[0])
    der2 = der_of(tls.make_certificate(key)[0])  # fresh serial: a different certificate
    assert len(tls.fingerprint(der1)) == 32
    assert tls.fingerprint(der1) == tls.fingerprint(bytes(der1))
    assert tls.fingerprint(der1) != tls.fingerprint(der2)


def test_contexts_are_tls13_only():
    key = Ed25519PrivateKey.generate()
    server = tls.server_context(*tls.make_certificate(key))
    client = tls.client_context()
    for ctx in (server, client):
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert ctx.maximum_version == ssl.TLSVersion.TLSv1_3
    assert client.verify_mode == ssl.CERT_NONE and not client.check_hostname
    assert server.verify_mode == ssl.CERT_NONE


def test_handshake_and_peer_key_from_ssl_object():
    key = Ed25519PrivateKey.generate()
    client, server = handshake(tls.client_context(), tls.server_context(*tls.make_certificate(key)))
    assert client.version() == "TLSv1.3"
    assert tls.peer_device_key(client) == raw_pub(key)
    assert tls.peer_device_key(client.getpeercert(binary_form=True)) == raw_pub(key)


def test_tls12_client_is_refused():
    key = Ed25519PrivateKey.generate()
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(old, tls.server_context(*tls.make_certificate(key)))


def test_server_context_rejects_mismatched_key():
    cert_pem, _ = tls.make_certificate(Ed25519PrivateKey.generate())
    _, other_key_pem = tls.make_certificate(Ed25519PrivateKey.generate())
    with pytest.raises(ValueError):
        tls.server_context(cert_pem, other_key_pem)


def test_peer_device_key_rejects_non_ed25519_and_garbage():
    ec_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "x")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ec_cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(ec_key.public_key()).serial_number(1)
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .sign(ec_key, SHA256())
    )
    with pytest.raises(ValueError, match="not an Ed25519"):
        tls.peer_device_key(ec_cert.public_bytes(serialization.Encoding.DER))
    with pytest.raises(ValueError):
        tls.peer_device_key(b"\x30\x03garbage")
    with pytest.raises(TypeError):
        tls.peer_device_key(12345)
