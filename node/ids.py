"""Small encodings shared by the node: ids, canonical JSON, clocks."""
import base64
import json
import os
import time


def b32(raw: bytes) -> str:
    """Encode bytes as lowercase unpadded base32: readable, case-insensitive, URL-safe."""
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def unb32(text: str) -> bytes:
    """Decode what `b32` made; raises ValueError on anything else."""
    if not isinstance(text, str) or not text:
        raise ValueError("not an id")
    padded = text.upper() + "=" * (-len(text) % 8)
    try:
        return base64.b32decode(padded)
    except Exception as exc:
        raise ValueError("not an id") from exc


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
