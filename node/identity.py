"""The member's keys: a person key that names them and a device key that signs their entries.

The person key certifies each device key, so a member keeps one id across devices while every
device writes its own log and no two devices ever share a log by accident. The same certificate
names the device's X25519 sealing key, with which others seal bundles for that member
(node/carry.py): whoever can check a device's entries can also seal for it.
"""
import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .ids import b32, canonical_json, now_ms, unb32

# v2: the certificate also names the device's X25519 sealing key. There is one format only:
# a v1 certificate (without "seal") is malformed.
CERT_CONTEXT = b"crewnode-device-cert-v2:"
CERT_KEYS = {"person", "device", "seal", "at", "sig"}


class IdentityError(ValueError):
    """A key or certificate that does not hold."""


def raw_public(key: Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of a private key's public half."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def raw_private(key: Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of a private key."""
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def verify(public_raw: bytes, signature: bytes, message: bytes) -> bool:
    """True when `signature` is the holder of `public_raw`'s signature over `message`."""
    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(signature, message)
        return True
    except (InvalidSignature, ValueError):
        return False


def raw_seal_public(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of an X25519 private key's public half."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def raw_seal_private(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of an X25519 private key."""
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def make_device_cert(person_key: Ed25519PrivateKey, device_public: bytes, seal_public: bytes | None = None) -> dict:
    """The person key's statement that `device_public` (signing) and `seal_public` (X25519,
    sealing) are the keys of one of their devices.

    Without `seal_public` the certificate names a throwaway sealing key whose private half is
    dropped: still the one certificate format, for callers (tests) that never open a bundle.
    """
    if seal_public is None:
        seal_public = raw_seal_public(X25519PrivateKey.generate())
    if len(device_public) != 32 or len(seal_public) != 32:
        raise IdentityError("device and sealing keys are 32 bytes each")
    body = {"person": b32(raw_public(person_key)), "device": b32(device_public), "seal": b32(seal_public),
            "at": now_ms()}
    sig = person_key.sign(CERT_CONTEXT + canonical_json(body))
    return {**body, "sig": b32(sig)}


def check_device_cert(cert) -> tuple[str, str]:
    """Return (person id, device id) of a valid device certificate, else raise IdentityError.

    Strict: exactly the fields of the current format, each key 32 bytes, the person key's
    signature over all of them. `cert_seal_key` gives the sealing key of a checked certificate.
    """
    if not isinstance(cert, dict) or set(cert) != CERT_KEYS:
        raise IdentityError("device certificate is malformed")
    fields = (cert["person"], cert["device"], cert["seal"], cert["at"], cert["sig"])
    if not all(type(v) is str for v in fields[:3] + fields[4:]) or type(fields[3]) is not int:
        raise IdentityError("device certificate is malformed")
    problem = _cert_problem(*fields)
    if problem:
        raise IdentityError(problem)
    return cert["person"], cert["device"]


@functools.lru_cache(maxsize=4096)
def _cert_problem(person_id: str, device_id: str, seal_id: str, at: int, sig_text: str) -> str | None:
    # Cached: the same certificate comes with a device's first entry in every document and with
    # every connection, and checking it is a signature verification.
    try:
        person, device, seal, sig = (unb32(v) for v in (person_id, device_id, seal_id, sig_text))
    except ValueError:
        return "device certificate is malformed"
    if len(person) != 32 or len(device) != 32 or len(seal) != 32 or len(sig) != 64 or at < 0:
        return "device certificate is malformed"
    if b32(person) != person_id or b32(device) != device_id or b32(seal) != seal_id:
        return "device certificate is malformed"      # one spelling per key
    body = {"person": person_id, "device": device_id, "seal": seal_id, "at": at}
    if not verify(person, sig, CERT_CONTEXT + canonical_json(body)):
        return "device certificate signature does not hold"
    return None


def cert_seal_key(cert) -> bytes:
    """The raw X25519 sealing key a valid device certificate names (checks the certificate)."""
    check_device_cert(cert)
    return unb32(cert["seal"])


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


@dataclass
class Identity:
    """A member's person key (absent on a paired device), this device's signing key and its
    sealing key."""

    person_id: str
    device_key: Ed25519PrivateKey
    cert: dict
    person_key: Ed25519PrivateKey | None = None
    seal_key: X25519PrivateKey | None = None

    @property
    def device_id(self) -> str:
        """This device's id: its public key, base32."""
        return b32(raw_public(self.device_key))

    @property
    def cert_blob(self) -> bytes:
        """The device certificate as bytes, for the transport to hand to peers."""
        return canonical_json(self.cert)

    def sign(self, message: bytes) -> bytes:
        """Sign with the device key."""
        return self.device_key.sign(message)

    def save(self, home: Path) -> None:
        """Write the keys (mode 0600) and certificate into `home/identity/`."""
        folder = Path(home) / "identity"
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        if self.person_key is not None:
            _write_secret(folder / "person.key", raw_private(self.person_key))
        if self.seal_key is not None:
            _write_secret(folder / "seal.key", raw_seal_private(self.seal_key))
        _write_secret(folder / "device.key", raw_private(self.device_key))
        _write_secret(folder / "device.cert", canonical_json(self.cert))


def new_device(person_key: Ed25519PrivateKey) -> Identity:
    """A fresh device (signing and sealing keys) certified by `person_key`."""
    device_key = Ed25519PrivateKey.generate()
    seal_key = X25519PrivateKey.generate()
    cert = make_device_cert(person_key, raw_public(device_key), raw_seal_public(seal_key))
    return Identity(cert["person"], device_key, cert, person_key, seal_key)


def load_identity(home: Path) -> Identity | None:
    """The identity kept in `home`, or None when there is none yet."""
    folder = Path(home) / "identity"
    if not (folder / "device.key").exists():
        return None
    device_key = Ed25519PrivateKey.from_private_bytes((folder / "device.key").read_bytes())
    cert = json.loads((folder / "device.cert").read_bytes())
    try:
        person_id, device_id = check_device_cert(cert)
    except IdentityError as exc:
        if isinstance(cert, dict) and "seal" not in cert:
            raise IdentityError(f"the identity in {folder} was made by an older crewnode (its device "
                                "certificate names no sealing key); start a new home") from exc
        raise
    if device_id != b32(raw_public(device_key)):
        raise IdentityError("device certificate does not match the device key")
    if not (folder / "seal.key").exists():
        raise IdentityError(f"the sealing key {folder / 'seal.key'} is missing")
    seal_key = X25519PrivateKey.from_private_bytes((folder / "seal.key").read_bytes())
    if b32(raw_seal_public(seal_key)) != cert["seal"]:
        raise IdentityError("device certificate does not match the sealing key")
    person_key = None
    if (folder / "person.key").exists():
        person_key = Ed25519PrivateKey.from_private_bytes((folder / "person.key").read_bytes())
        if b32(raw_public(person_key)) != person_id:
            raise IdentityError("the person key does not match the device certificate")
    return Identity(person_id, device_key, cert, person_key, seal_key)


def load_or_create_identity(home: Path) -> Identity:
    """The identity in `home`, creating a new person and device on first use."""
    found = load_identity(home)
    if found is not None:
        return found
    identity = new_device(Ed25519PrivateKey.generate())
    identity.save(home)
    return identity
