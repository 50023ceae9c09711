"""Small encodings shared by the node: ids, canonical JSON, clocks."""
import base64
import functools
import json
import os
import time


def b32(raw: bytes) -> str:
    """Encode bytes as lowercase unpadded base32: readable, case-insensitive, URL-safe."""
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def unb32(text: str) -> bytes:
    """Decode what `b32` made; raises ValueError on anything else.

    Only `b32`'s own spelling is taken: base32 also decodes upper case, padding and set
    trailing bits, which would let one key go by several ids, and ids are compared as text.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("not an id")
    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        raw = base64.b32decode(padded)
    except Exception as exc:
        raise ValueError("not an id") from exc
    if b32(raw) != text:
        raise ValueError("not an id")
    return raw


def is_key_id(value) -> bool:
    """True for the base32 text of a 32-byte public key: a member id or a device id.

    The same few hundred ids recur in every entry and message, and base32 decoding is slow
    pure Python, so the answers are cached (public keys only: nothing secret is kept).
    """
    return isinstance(value, str) and len(value) <= 64 and _key_id_ok(value)


@functools.lru_cache(maxsize=1 << 16)
def _key_id_ok(text: str) -> bool:
    try:
        return len(unb32(text)) == 32
    except ValueError:
        return False


def b64(raw: bytes) -> str:
    """Standard base64 text of bytes."""
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    """Decode standard base64; raises ValueError on bad input."""
    try:
        return base64.b64decode(text, validate=True)
    except Exception as exc:
        raise ValueError("bad base64") from exc


def canonical_json(value) -> bytes:
    """JSON with sorted keys and no spaces, so the same value always has the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch."""
    return int(time.time() * 1000)


def new_id(nbytes: int = 10) -> str:
    """A random id for records inside a document."""
    return b32(os.urandom(nbytes))
