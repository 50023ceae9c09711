"""The member's keys: a person key that names them and a device key that signs their entries.

The person key certifies each device key, so a member keeps one id across devices while every
device writes its own log and no two devices ever share a log by accident.
"""
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .ids import b32, canonical_json, now_ms, unb32

CERT_CONTEXT = b"crewnode-device-cert-v1:"


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


def make_device_cert(person_key: Ed25519PrivateKey, device_public: bytes) -> dict:
    """The person key's statement that `device_public` is one of their devices."""
    body = {"person": b32(raw_public(person_key)), "device": b32(device_public), "at": now_ms()}
    sig = person_key.sign(CERT_CONTEXT + canonical_json(body))
    return {**body, "sig": b32(sig)}


def check_device_cert(cert) -> tuple[str, str]:
    """Return (person id, device id) of a valid device certificate, else raise IdentityError."""
    if not isinstance(cert, dict) or set(cert) != {"person", "device", "at", "sig"}:
        raise IdentityError("device certificate is malformed")
    try:
        person = unb32(cert["person"])
        unb32(cert["device"])
        sig = unb32(cert["sig"])
    except (ValueError, TypeError) as exc:
        raise IdentityError("device certificate is malformed") from exc
    if len(person) != 32 or not isinstance(cert["at"], int):
        raise IdentityError("device certificate is malformed")
    body = {k: cert[k] for k in ("person", "device", "at")}
    if not verify(person, sig, CERT_CONTEXT + canonical_json(body)):
        raise IdentityError("device certificate signature does not hold")
    return cert["person"], cert["device"]


def _write_secret(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


@dataclass
class Identity:
    """A member's person key (may be absent on a paired device) and this device's key."""

    person_id: str
    device_key: Ed25519PrivateKey
    cert: dict
    person_key: Ed25519PrivateKey | None = None

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
        _write_secret(folder / "device.key", raw_private(self.device_key))
        _write_secret(folder / "device.cert", canonical_json(self.cert))


def new_device(person_key: Ed25519PrivateKey) -> Identity:
    """A fresh device key certified by `person_key`."""
    device_key = Ed25519PrivateKey.generate()
    cert = make_device_cert(person_key, raw_public(device_key))
    return Identity(cert["person"], device_key, cert, person_key)


def load_identity(home: Path) -> Identity | None:
    """The identity kept in `home`, or None when there is none yet."""
    folder = Path(home) / "identity"
    if not (folder / "device.key").exists():
        return None
    device_key = Ed25519PrivateKey.from_private_bytes((folder / "device.key").read_bytes())
    cert = json.loads((folder / "device.cert").read_bytes())
    person_id, device_id = check_device_cert(cert)
    if device_id != b32(raw_public(device_key)):
        raise IdentityError("device certificate does not match the device key")
    person_key = None
    if (folder / "person.key").exists():
        person_key = Ed25519PrivateKey.from_private_bytes((folder / "person.key").read_bytes())
    return Identity(person_id, device_key, cert, person_key)


def load_or_create_identity(home: Path) -> Identity:
    """The identity in `home`, creating a new person and device on first use."""
    found = load_identity(home)
    if found is not None:
        return found
    identity = new_device(Ed25519PrivateKey.generate())
    identity.save(home)
    return identity
