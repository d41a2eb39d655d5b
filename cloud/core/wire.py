"""The engine socket's frames: a 4-byte big-endian length, then one JSON object.

JSON keeps the channel safe to read from any peer (nothing is unpickled) and
costs microseconds per request beside milliseconds of decoding.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from pathlib import Path
from typing import Any

from userlayer.cloud.exceptions import CloudError

__all__ = ["MAX_FRAME", "FrameReader", "ProtocolError", "encode", "hello"]

MAX_FRAME = 4 << 20  # a request is bounded far below (session and exclude lengths)
HEADER = struct.Struct(">I")


class ProtocolError(CloudError):
    """A frame that is not a length-prefixed JSON object within ``MAX_FRAME`` bytes."""


def encode(msg: dict[str, Any]) -> bytes:
    """One frame holding ``msg``."""
    data = json.dumps(msg, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"a frame of {len(data)} bytes exceeds {MAX_FRAME}")
    return HEADER.pack(len(data)) + data


def decode(data: bytes) -> dict[str, Any]:
    """The JSON object of one frame's payload.

    Raises:
        ProtocolError: not JSON, or not an object.
    """
    try:
        msg = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # RecursionError: [[[[...
        raise ProtocolError(f"a frame is not JSON: {type(e).__name__}: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"a frame should hold a JSON object, got {type(msg).__name__}")
    return msg


class FrameReader:
    """Accumulates bytes from a stream and yields the complete frames."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """Add ``data``; returns the frames it completed.

        Raises:
            ProtocolError: a frame is too long or not a JSON object.
        """
        self.buf += data
        out = []
        while len(self.buf) >= HEADER.size:
            (n,) = HEADER.unpack_from(self.buf)
            if n > MAX_FRAME:
                raise ProtocolError(f"a frame of {n} bytes exceeds {MAX_FRAME}")
            if len(self.buf) < HEADER.size + n:
                break
            payload = bytes(self.buf[HEADER.size : HEADER.size + n])
            del self.buf[: HEADER.size + n]
            out.append(decode(payload))
        return out


def hello(path: str | Path, timeout: float) -> dict[str, Any]:
    """Ask the core at ``path`` who it is, waiting up to ``timeout`` s for it to listen.

    Returns the core's ``hello`` answer (fingerprint, adapter shapes, backend, pid).

    Raises:
        CloudError: nothing answered in time.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(max(0.1, deadline - time.monotonic()))
                s.connect(str(path))
                s.sendall(encode({"id": 0, "op": "hello"}))
                reader = FrameReader()
                while True:
                    chunk = s.recv(1 << 16)
                    if not chunk:
                        raise ConnectionError("the engine closed the connection")
                    frames = reader.feed(chunk)
                    if frames:
                        return dict(frames[0]["ok"])
        except (OSError, KeyError, TypeError) as e:
            last = e
            time.sleep(0.1)
    raise CloudError(f"no engine core answered at {path} within {timeout:g} s ({last})")
