"""Fuzzing the sealed-package parser: outside bytes give domain errors, never a crash.

Three generators, each checked by ``open_package`` with a trusted signer:
random bytes (with and without a valid-looking header), single and multiple
mutations of valid plain and encrypted packages, and packages that a trusted
(but malicious or buggy) signer signs around an arbitrary manifest and
arbitrary tensor bytes. Only :class:`AdapterError` may come out, and a
package that is accepted must satisfy every expectation. The example count
is ``USERLAYER_FUZZ_EXAMPLES`` (300 in ``make test``; ``make fuzz`` runs
10,000 per property).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import HealthCheck, given
from hypothesis import strategies as st
from safetensors.numpy import save as st_save

from tests.fuzzing import fuzz_settings, json_values
from userlayer.sdk.adapter import MAGIC, Expectation, key_id, open_package, seal_package
from userlayer.sdk.exceptions import AdapterError

FUZZ = fuzz_settings(HealthCheck.data_too_large)
KEY = Ed25519PrivateKey.generate()
TRUSTED = {key_id(KEY.public_key()): KEY.public_key()}
RECIPIENT = X25519PrivateKey.generate()
SHAPES = {"lora_a.q": (1, 2, 4), "lora_b.q": (1, 4, 2), "prefix": (1, 4)}
EXPECT = Expectation(base_fingerprint="f" * 16, user_id="u1", service="kuper", shapes=SHAPES)
FIELDS: dict[str, Any] = {
    "base_fingerprint": "f" * 16,
    "adapter_config": {"rank": 2},
    "user_id": "u1",
    "service": "kuper",
    "version": 3,
}
TENSORS = {k: np.full(s, 0.1, dtype=np.float32) for k, s in SHAPES.items()}
VALID = seal_package(FIELDS, TENSORS, KEY)
SEALED = seal_package(FIELDS, TENSORS, KEY, RECIPIENT.public_key())


def _check(blob: bytes) -> None:
    """Only domain errors; an accepted package meets every expectation."""
    try:
        pkg = open_package(blob, TRUSTED, EXPECT, RECIPIENT)
    except AdapterError:
        return
    assert pkg.manifest.user_id == "u1" and pkg.manifest.service == "kuper"
    assert {k: tuple(v.shape) for k, v in pkg.tensors.items()} == SHAPES
    assert all(np.isfinite(v).all() for v in pkg.tensors.values())


def test_the_valid_packages_open() -> None:
    assert open_package(VALID, TRUSTED, EXPECT).manifest.version == 3
    assert open_package(SEALED, TRUSTED, EXPECT, RECIPIENT).manifest.version == 3


@FUZZ
@given(st.binary(max_size=4096), st.sampled_from([b"", MAGIC + b"\x01\x00", MAGIC + b"\x01\x01"]))
def test_random_bytes(body: bytes, header: bytes) -> None:
    _check(header + body)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    blob = bytearray(draw(st.sampled_from([VALID, SEALED])))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "extend"]))
        i = draw(st.integers(0, max(0, len(blob) - 1)))
        if op == "flip" and blob:
            blob[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and blob:
            blob[i] = draw(st.integers(0, 255))
        elif op == "insert":
            blob[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete" and blob:
            del blob[i : i + draw(st.integers(1, 16))]
        elif op == "truncate":
            del blob[i:]
        else:
            blob += draw(st.binary(min_size=1, max_size=64))
    return bytes(blob)


@FUZZ
@given(_mutated())
def test_mutated_packages_are_refused(blob: bytes) -> None:
    if blob in (VALID, SEALED):  # a mutation that undid itself
        return
    try:
        open_package(blob, TRUSTED, EXPECT, RECIPIENT)
    except AdapterError:
        return
    raise AssertionError("a modified package was accepted")


_json = json_values(text_size=20, key_size=12, max_leaves=12)


def _hostile(base: dict[str, object], kind: str, field: str) -> bytes:
    """Nesting past the recursion limit, or an integer with too many digits, in one field."""
    raw = json.dumps(base)
    value = "[" * 20_000 + "]" * 20_000 if kind == "deep" else "9" * 5000  # < 64 KiB
    return raw.replace(f'"{field}": ', f'"{field}": {value}, "_": ', 1).encode()


@st.composite
def _manifest(draw: st.DrawFn) -> bytes:
    base = json.loads(VALID[10 : 10 + struct.unpack(">I", VALID[6:10])[0]])
    kind = draw(st.sampled_from(["edit", "random", "bytes", "deep", "bigint"]))
    if kind == "bytes":
        return draw(st.binary(max_size=512))
    if kind in ("deep", "bigint"):  # both used to escape as RecursionError / ValueError
        return _hostile(base, kind, draw(st.sampled_from(["signer", "version", "privacy"])))
    if kind == "random":
        return json.dumps(draw(_json)).encode()
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(sorted(base)))
        if draw(st.booleans()):
            base.pop(path, None)
        else:
            base[path] = draw(_json)
    if draw(st.booleans()) and isinstance(base.get("tensors"), dict):
        name = draw(st.sampled_from(sorted(SHAPES)))
        base["tensors"][name] = draw(_json)
    return json.dumps(base).encode()


@st.composite
def _tensor_bytes(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["valid", "reshaped", "nan", "huge", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=512))
    arrays = {k: v.copy() for k, v in TENSORS.items()}
    if kind == "reshaped":
        name = draw(st.sampled_from(sorted(arrays)))
        arrays[name] = np.zeros(draw(st.integers(0, 9)), dtype=np.float32)
    elif kind == "nan":
        arrays["prefix"][0, 0] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    elif kind == "huge":
        arrays["prefix"][:] = 1e30
    return bytes(st_save(arrays))


@pytest.mark.parametrize("kind", ["deep", "bigint"])
@pytest.mark.parametrize("field", ["signer", "version", "adapter_config", "privacy"])
def test_deep_nesting_and_huge_integers_are_adapter_errors(kind: str, field: str) -> None:
    base = json.loads(VALID[10 : 10 + struct.unpack(">I", VALID[6:10])[0]])
    manifest = _hostile(base, kind, field)
    body = MAGIC + b"\x01\x00" + struct.pack(">I", len(manifest)) + manifest
    tensors = bytes(st_save(TENSORS))
    body += struct.pack(">I", len(tensors)) + tensors
    with pytest.raises(AdapterError):
        open_package(body + KEY.sign(body), TRUSTED, EXPECT)


@FUZZ
@given(_manifest(), _tensor_bytes())
def test_trusted_signer_with_malformed_contents(manifest: bytes, tensors: bytes) -> None:
    body = MAGIC + b"\x01\x00" + struct.pack(">I", len(manifest)) + manifest
    body += struct.pack(">I", len(tensors)) + tensors
    _check(body + KEY.sign(body))
