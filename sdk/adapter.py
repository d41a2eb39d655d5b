"""Sealed adapter packages: a user's adapter as it leaves the device.

A package is a JSON manifest plus the adapter tensors in safetensors, signed
with the edge node's Ed25519 key and optionally encrypted to the cloud's
X25519 public key. Nothing is ever unpickled. Needs ``numpy`` and
``safetensors`` (the ``[edge]`` or ``[cloud]`` extra), never torch.

Wire format (all integers big-endian)::

    plain package
      0   4  magic  b"ULAP"
      4   1  version 0x01
      5   1  kind    0x00 (plain)
      6   4  m = manifest length (<= 64 KiB)
      10  m  manifest, UTF-8 JSON (see :class:`Manifest`)
      .   4  n = tensor blob length (<= ``max_tensor_bytes``)
      .   n  safetensors bytes (float32 or float16, names == manifest)
      .  64  Ed25519 signature over every byte before it

    encrypted package (sign, then encrypt): HPKE, RFC 9180, base mode
      0   4  magic  b"ULAP"
      4   1  version 0x02 (sealing format 2)
      5   1  kind    0x01 (sealed to a recipient)
      6   .  HPKE single-shot ciphertext (the 32-byte encapsulated key, then
             AES-256-GCM of the plain package) of the suite DHKEM(X25519,
             HKDF-SHA256), HKDF-SHA256, AES-256-GCM (cryptography's ``hpke``),
             with info = b"userlayer.sealed/2" || the 6 header bytes

    Sealing format 1 (version 0x01, kind 0x01: X25519, HKDF and AES-GCM
    assembled by hand) is refused with an error that says to seal again; the
    registry keeps only plain packages, so nothing stored is in it.

:func:`open_package` checks, in this order and before anything is used: the
framing, the signature against the trusted signer named in the manifest,
the manifest schema, manifest-tensor agreement (names, shapes, dtypes), the
expected base fingerprint, user, service and shapes, finite values and the
norm bound. Every failure is an :class:`AdapterError` that says what is wrong.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from userlayer.sdk.exceptions import AdapterError

__all__ = [
    "ADAPTER_FORMAT",
    "AdapterPackage",
    "Expectation",
    "Manifest",
    "PrivacyRecord",
    "TensorSpec",
    "key_id",
    "load_signing_key",
    "open_package",
    "save_signing_key",
    "seal_package",
    "to_peft",
    "unseal",
]

ADAPTER_FORMAT = "userlayer.adapter/2"
# format 1 manifests (no privacy unit, no randomness source) are still read; their
# privacy record says unit "example" and rng "unrecorded (format 1)"
LEGACY_FORMATS = ("userlayer.adapter/1",)
MAGIC = b"ULAP"
VERSION = 1  # of the plain package
SEALED_VERSION = 2  # of the sealing (HPKE); 1 was the hand-assembled scheme, refused
KIND_PLAIN, KIND_SEALED = 0, 1
_HPKE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)
_HPKE_INFO = b"userlayer.sealed/2"
SIG_LEN = 64
MAX_VERSION = (1 << 31) - 1
MAX_FAVOURITES = 64
MAX_MANIFEST = 64 * 1024
_DTYPES = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16)}
_ST_NAME = {v: k for k, v in _DTYPES.items()}
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:@-")


def key_id(public: Ed25519PublicKey) -> str:
    """A signer's key id: the first 16 hex chars of SHA-256 over its raw public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def save_signing_key(key: Ed25519PrivateKey, path: str | Path) -> None:
    """Write a node's private signing key (raw 32 bytes, hex) to a new 0600 file."""
    raw = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(raw.hex() + "\n")


def load_signing_key(path: str | Path) -> Ed25519PrivateKey:
    """Read a key written by :func:`save_signing_key`.

    Raises:
        AdapterError: if the file does not hold a 32-byte hex key.
    """
    try:
        raw = bytes.fromhex(Path(path).read_text("ascii").strip())
        return Ed25519PrivateKey.from_private_bytes(raw)
    except (OSError, ValueError) as e:
        raise AdapterError(f"{path}: not a signing key written by save_signing_key ({e})") from e


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of one adapter tensor."""

    shape: tuple[int, ...]
    dtype: str  # safetensors dtype name: F32 or F16


@dataclass(frozen=True)
class PrivacyRecord:
    """How the adapter was released: the DP guarantee, as accounted.

    ``epsilon`` is the user's epsilon after this release (composed over their
    ledger's period) at ``delta``, per ``unit`` (``event``: each of the user's
    events; ``user``: a user's whole contribution, for shared parts; ``example``:
    format-1 records, whose unit was one training example). ``examples_per_unit``
    is how many training examples one unit can change (charged by group
    privacy); ``rng`` where the mechanism's randomness came from (``os-csprng``
    in production; a seeded test run says "not private"). ``steps`` to ``clip``
    are the raw mechanism of this release; ``mechanism`` says which it was:
    DP-SGD of the adapter (``dp-sgd``), the profile encoder's Gaussian release
    (``profile``: one step at sample rate 1, sensitivity 1 per event), or the
    release followed by DP-SGD from it (``profile+dp-sgd``; the raw fields are
    then the DP-SGD's, ``profile_noise_multiplier`` is the release's
    ``Mechanism(z, 1, 1)``, and ``epsilon`` composes both from the ledger).
    ``favourites_noise`` is the standard deviation, in counts, of the noise on
    the favourites' histogram when the profile release carried one (the joint
    release's per-event vector still has norm <= 1; see
    :func:`userlayer.edge.encoder.release_profile`).
    """

    epsilon: float
    delta: float
    accountant: str  # prv | rdp
    library: str  # e.g. "opacus 1.6.0"
    steps: int = 0
    noise_multiplier: float = 0.0
    sample_rate: float = 0.0
    clip: float = 0.0
    unit: str = "event"
    examples_per_unit: int = 1
    rng: str = "os-csprng"
    mechanism: str = "dp-sgd"  # dp-sgd | profile | profile+dp-sgd (userlayer.edge.encoder)
    profile_noise_multiplier: float = 0.0  # profile+dp-sgd: the release's Mechanism(z, 1, 1)
    favourites_noise: float = 0.0  # std of the favourites' count noise (0: none released)

    @property
    def private(self) -> bool:
        """Whether the mechanism's randomness was unpredictable (the OS CSPRNG)."""
        return self.rng == "os-csprng"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dict(self.__dict__)


@dataclass(frozen=True)
class Manifest:
    """What a package says about itself (stored as JSON, signed).

    ``privacy`` is ``None`` for an adapter trained without DP (the registry
    decides whether to accept that).
    """

    base_fingerprint: str
    adapter_config: dict[str, Any]
    tensors: dict[str, TensorSpec]
    user_id: str
    service: str
    version: int
    signer: str
    privacy: PrivacyRecord | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    format: str = ADAPTER_FORMAT
    # the user's released favourite items (:mod:`userlayer.sdk.privacy.favourites`),
    # least frequent first; the cloud puts them before the session in the prompt
    favourites: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        """Canonical JSON bytes (sorted keys)."""
        doc = {
            "format": self.format,
            "base_fingerprint": self.base_fingerprint,
            "adapter_config": self.adapter_config,
            "tensors": {
                n: {"shape": list(s.shape), "dtype": s.dtype} for n, s in self.tensors.items()
            },
            "user_id": self.user_id,
            "service": self.service,
            "version": self.version,
            "signer": self.signer,
            "privacy": None if self.privacy is None else self.privacy.to_dict(),
            "created": self.created,
        }
        if self.favourites:  # absent when empty: packages without favourites keep their bytes
            doc["favourites"] = list(self.favourites)
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        """Parse and validate a manifest.

        Raises:
            AdapterError: naming the missing or invalid field.
        """
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:  # also too many digits in an integer
            raise AdapterError(f"manifest is not UTF-8 JSON: {e}") from e
        except RecursionError as e:
            raise AdapterError("manifest JSON is nested too deeply") from e
        if not isinstance(doc, dict):
            raise AdapterError("manifest should be a JSON object")
        need = {
            "format": str,
            "base_fingerprint": str,
            "adapter_config": dict,
            "tensors": dict,
            "user_id": str,
            "service": str,
            "version": int,
            "signer": str,
            "created": str,
        }
        for name, typ in need.items():
            if not isinstance(doc.get(name), typ) or isinstance(doc.get(name), bool):
                raise AdapterError(f"manifest field `{name}` should be a {typ.__name__}")
        extra = set(doc) - set(need) - {"privacy", "favourites"}
        if extra:
            raise AdapterError(f"manifest has unknown fields {sorted(extra)}")
        if doc["format"] != ADAPTER_FORMAT and doc["format"] not in LEGACY_FORMATS:
            raise AdapterError(f"manifest format {doc['format']!r}, expected {ADAPTER_FORMAT!r}")
        for name in ("user_id", "service", "signer", "base_fingerprint"):
            v = doc[name]
            if not 0 < len(v) <= 128 or not set(v) <= _ID_CHARS:
                raise AdapterError(f"manifest field `{name}` has invalid characters or length")
        if not 1 <= doc["version"] <= MAX_VERSION:
            raise AdapterError(f"manifest field `version` should be in [1, {MAX_VERSION}]")
        tensors = {}
        for n, spec in doc["tensors"].items():
            ok = (
                isinstance(spec, dict)
                and set(spec) == {"shape", "dtype"}
                and isinstance(spec["shape"], list)
                and all(isinstance(d, int) and not isinstance(d, bool) for d in spec["shape"])
                and all(0 < d <= 1 << 20 for d in spec["shape"])
                and spec["dtype"] in _DTYPES
            )
            if not ok:
                raise AdapterError(f"manifest entry for tensor {n!r} is invalid: {spec!r}")
            tensors[n] = TensorSpec(tuple(spec["shape"]), spec["dtype"])
        return cls(
            base_fingerprint=doc["base_fingerprint"],
            adapter_config=doc["adapter_config"],
            tensors=tensors,
            user_id=doc["user_id"],
            service=doc["service"],
            version=doc["version"],
            signer=doc["signer"],
            privacy=_privacy(doc.get("privacy"), legacy=doc["format"] in LEGACY_FORMATS),
            created=doc["created"],
            format=doc["format"],
            favourites=_favourites(doc.get("favourites", []), doc["format"]),
        )


def _favourites(v: Any, fmt: str) -> tuple[str, ...]:
    """Validate the manifest's favourites: at most 64 distinct item ids, format 2 only."""
    if v and fmt != ADAPTER_FORMAT:
        raise AdapterError(f"manifest field `favourites` is not part of format {fmt!r}")
    ok = (
        isinstance(v, list)
        and len(v) <= MAX_FAVOURITES
        and all(isinstance(i, str) and 0 < len(i) <= 128 and set(i) <= _ID_CHARS for i in v)
        and len(set(v)) == len(v)
    )
    if not ok:
        raise AdapterError(
            f"manifest field `favourites` should be at most {MAX_FAVOURITES} distinct item ids"
        )
    return tuple(v)


MECHANISMS = ("dp-sgd", "profile", "profile+dp-sgd")
_PRIVACY_FIELDS: dict[str, Any] = {
    "epsilon": float,
    "delta": float,
    "noise_multiplier": float,
    "sample_rate": float,
    "clip": float,
    "steps": int,
    "examples_per_unit": int,
    "accountant": ("prv", "rdp"),
    "unit": ("event", "user", "example"),
    "library": str,
    "rng": str,
    "mechanism": MECHANISMS,
    "profile_noise_multiplier": float,
    "favourites_noise": float,
}


def _privacy(d: Any, legacy: bool = False) -> PrivacyRecord | None:
    """Parse and validate a manifest's privacy record; every field is checked."""
    if d is None:
        return None
    if not isinstance(d, dict):
        raise AdapterError("manifest field `privacy` should be an object or null")
    d = dict(d)
    if legacy:
        if "unit" in d or "rng" in d or "examples_per_unit" in d:
            raise AdapterError(
                "manifest field `privacy` has format-2 fields in a format-1 manifest"
            )
        d.update(unit="example", rng="unrecorded (format 1)", examples_per_unit=1)
    unknown = set(d) - set(_PRIVACY_FIELDS)
    if unknown:
        raise AdapterError(f"manifest field `privacy` has unknown fields {sorted(unknown)}")
    for name, kind in _PRIVACY_FIELDS.items():
        v = d.get(name)
        if v is None and name not in ("epsilon", "delta", "accountant", "library"):
            continue  # optional: the dataclass default
        bad = isinstance(v, bool)
        if kind is float:
            bad = bad or not isinstance(v, int | float) or not math.isfinite(v) or v < 0
        elif kind is int:
            bad = bad or not isinstance(v, int) or not 0 <= v <= 1 << 31
        elif kind is str or (legacy and name == "accountant"):
            bad = bad or not isinstance(v, str) or not 0 < len(v) <= 64
        else:
            bad = bad or v not in kind
        if bad:
            raise AdapterError(f"manifest field `privacy.{name}` is invalid: {v!r}")
    rec = PrivacyRecord(**d)
    if not 0 <= rec.delta < 1 or rec.sample_rate > 1 or rec.examples_per_unit < 1:
        raise AdapterError("manifest field `privacy` is out of range (delta, sample_rate or group)")
    return rec


@dataclass(frozen=True)
class AdapterPackage:
    """A verified (or about to be sealed) adapter: manifest plus float tensors."""

    manifest: Manifest
    tensors: dict[str, np.ndarray]

    def norm(self) -> float:
        """L2 norm over all tensors together."""
        return math.sqrt(
            sum(float(np.square(t, dtype=np.float64).sum()) for t in self.tensors.values())
        )


@dataclass(frozen=True)
class Expectation:
    """What the receiver requires of a package beyond a valid signature.

    ``None`` fields are not checked. ``shapes`` maps every tensor name to its
    shape (from ``userlayer.sdk.model.adapter_shapes``); ``max_norm`` bounds
    the L2 norm over all tensors.
    """

    base_fingerprint: str | None = None
    user_id: str | None = None
    service: str | None = None
    shapes: Mapping[str, tuple[int, ...]] | None = None
    max_norm: float = 1e3
    max_tensor_bytes: int = 64 << 20


def seal_package(
    manifest_fields: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    signing_key: Ed25519PrivateKey,
    recipient: X25519PublicKey | None = None,
) -> bytes:
    """Build, sign and (if ``recipient`` is given) encrypt a package.

    ``manifest_fields`` are the :class:`Manifest` fields except ``tensors``
    and ``signer``, which are filled from the tensors and the key.

    Raises:
        AdapterError: if a tensor is not float32/float16 or not finite.
    """
    arrays = {}
    for name, t in tensors.items():
        a = np.ascontiguousarray(t)
        if a.dtype not in _ST_NAME:
            raise AdapterError(f"tensor {name!r} has dtype {a.dtype}; use float32 or float16")
        if not np.isfinite(a).all():
            raise AdapterError(f"tensor {name!r} has non-finite values")
        arrays[name] = a
    specs = {n: TensorSpec(tuple(a.shape), _ST_NAME[a.dtype]) for n, a in arrays.items()}
    manifest = Manifest(
        tensors=specs, signer=key_id(signing_key.public_key()), **dict(manifest_fields)
    )
    m = manifest.to_json()
    blob = st_save(arrays) if arrays else b""
    body = MAGIC + bytes([VERSION, KIND_PLAIN]) + struct.pack(">I", len(m)) + m
    body += struct.pack(">I", len(blob)) + blob
    plain = body + signing_key.sign(body)
    if recipient is None:
        return plain
    header = MAGIC + bytes([SEALED_VERSION, KIND_SEALED])
    return header + _HPKE.encrypt(plain, recipient, info=_HPKE_INFO + header)


def _decrypt(blob: bytes, recipient_key: X25519PrivateKey | None) -> bytes:
    if blob[4] == 1:
        raise AdapterError(
            "package is sealed with sealing format 1 (X25519 + HKDF + AES-GCM by hand), which "
            "is no longer read: seal it again with this version (HPKE, RFC 9180, format 2)"
        )
    if blob[4] != SEALED_VERSION:
        raise AdapterError(f"unsupported sealing format {blob[4]}")
    if recipient_key is None:
        raise AdapterError("package is encrypted to a recipient but no recipient key was given")
    if len(blob) < 6 + 32 + 16:
        raise AdapterError(f"encrypted package truncated ({len(blob)} bytes)")
    try:
        return _HPKE.decrypt(blob[6:], recipient_key, info=_HPKE_INFO + blob[:6])
    except (InvalidTag, ValueError) as e:
        raise AdapterError("package does not decrypt with this recipient key (tampered?)") from e


def unseal(blob: bytes, recipient_key: X25519PrivateKey | None) -> bytes:
    """The plain (signed, unencrypted) package inside ``blob``; a plain one is returned as is.

    Raises:
        AdapterError: if a sealed package does not decrypt with ``recipient_key``.
    """
    blob = bytes(blob)
    if len(blob) >= 6 and blob[:4] == MAGIC and blob[5] == KIND_SEALED:
        return _decrypt(blob, recipient_key)
    return blob


def open_package(
    blob: bytes,
    trusted: Mapping[str, Ed25519PublicKey],
    expect: Expectation | None = None,
    recipient_key: X25519PrivateKey | None = None,
) -> AdapterPackage:
    """Decrypt (if sealed), verify and parse a package; see the module docstring.

    Args:
        blob: the package bytes.
        trusted: signer key id -> Ed25519 public key of the nodes allowed to upload.
        expect: what the receiver requires (fingerprint, user, shapes, norm bound).
        recipient_key: the receiver's X25519 private key, for encrypted packages.

    Raises:
        AdapterError: on any failure, naming what failed.
    """
    expect = expect or Expectation()
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise AdapterError(f"package should be bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < 6 or blob[:4] != MAGIC:
        raise AdapterError("not an adapter package (bad magic)")
    if blob[4] != VERSION and blob[5] != KIND_SEALED:
        raise AdapterError(f"unsupported package version {blob[4]}")
    if blob[5] == KIND_SEALED:
        blob = _decrypt(blob, recipient_key)
        if blob[:6] != MAGIC + bytes([VERSION, KIND_PLAIN]):
            raise AdapterError("encrypted package does not hold a plain package")
    elif blob[5] != KIND_PLAIN:
        raise AdapterError(f"unknown package kind {blob[5]}")
    manifest_raw, tensor_raw, body, sig = _frame(blob, expect.max_tensor_bytes)
    manifest = _signed_manifest(manifest_raw, body, sig, trusted)
    tensors = _tensors(tensor_raw, manifest)
    pkg = AdapterPackage(manifest, tensors)
    _check_expectation(pkg, expect)
    return pkg


def _frame(blob: bytes, max_tensor_bytes: int) -> tuple[bytes, bytes, bytes, bytes]:
    if len(blob) < 10 + 4 + SIG_LEN:
        raise AdapterError(f"package truncated ({len(blob)} bytes)")
    (m_len,) = struct.unpack(">I", blob[6:10])
    if m_len > MAX_MANIFEST:
        raise AdapterError(f"manifest length {m_len} exceeds {MAX_MANIFEST}")
    pos = 10 + m_len
    if len(blob) < pos + 4 + SIG_LEN:
        raise AdapterError("package truncated inside the manifest")
    (t_len,) = struct.unpack(">I", blob[pos : pos + 4])
    if t_len > max_tensor_bytes:
        raise AdapterError(f"tensor blob of {t_len} bytes exceeds the limit {max_tensor_bytes}")
    end = pos + 4 + t_len
    if len(blob) != end + SIG_LEN:
        raise AdapterError(
            f"package length {len(blob)} does not match its framing ({end + SIG_LEN} expected)"
        )
    return blob[10:pos], blob[pos + 4 : end], blob[:end], blob[end:]


def _signed_manifest(
    raw: bytes, body: bytes, sig: bytes, trusted: Mapping[str, Ed25519PublicKey]
) -> Manifest:
    # the signer is named inside the (not yet trusted) manifest; parse it only
    # far enough to find the key, then verify before trusting anything else
    try:
        signer = json.loads(raw.decode("utf-8")).get("signer")
    except (UnicodeDecodeError, ValueError, AttributeError, RecursionError) as e:
        raise AdapterError("manifest is not a JSON object (or nested too deeply)") from e
    if not isinstance(signer, str) or signer not in trusted:
        raise AdapterError(f"package signer {signer!r} is not a trusted key")
    try:
        trusted[signer].verify(sig, body)
    except InvalidSignature as e:
        raise AdapterError("package signature is invalid (tampered or wrong key)") from e
    return Manifest.from_json(raw)


def _tensors(raw: bytes, manifest: Manifest) -> dict[str, np.ndarray]:
    if not raw:
        arrays: dict[str, np.ndarray] = {}
    else:
        try:
            arrays = st_load(raw)
        except (SafetensorError, ValueError, TypeError) as e:
            raise AdapterError(f"tensor blob is not valid safetensors: {e}") from e
    if set(arrays) != set(manifest.tensors):
        raise AdapterError(
            f"tensors {sorted(arrays)} do not match the manifest {sorted(manifest.tensors)}"
        )
    for name, spec in manifest.tensors.items():
        a = arrays[name]
        if tuple(a.shape) != spec.shape or a.dtype != _DTYPES[spec.dtype]:
            raise AdapterError(
                f"tensor {name!r} is {a.dtype}{tuple(a.shape)}, manifest says "
                f"{spec.dtype}{spec.shape}"
            )
        if not np.isfinite(a).all():
            raise AdapterError(f"tensor {name!r} has non-finite values")
    return arrays


def _check_expectation(pkg: AdapterPackage, e: Expectation) -> None:
    m = pkg.manifest
    if e.base_fingerprint is not None and m.base_fingerprint != e.base_fingerprint:
        raise AdapterError(
            f"adapter was made for base model {m.base_fingerprint}, "
            f"this server runs {e.base_fingerprint}"
        )
    if e.user_id is not None and m.user_id != e.user_id:
        raise AdapterError(f"package is for user {m.user_id!r}, not {e.user_id!r}")
    if e.service is not None and m.service != e.service:
        raise AdapterError(f"package is for service {m.service!r}, not {e.service!r}")
    if e.shapes is not None:
        got = {n: s.shape for n, s in m.tensors.items()}
        want = {n: tuple(s) for n, s in e.shapes.items()}
        if got != want:
            diff = sorted(n for n in set(got) | set(want) if got.get(n) != want.get(n))
            raise AdapterError(
                "adapter shapes do not fit the model: "
                + ", ".join(f"{n}: {got.get(n)} vs {want.get(n)}" for n in diff)
            )
    norm = pkg.norm()
    if norm > e.max_norm:
        raise AdapterError(f"adapter norm {norm:.3g} exceeds the bound {e.max_norm:.3g}")


def to_peft(
    tensors: Mapping[str, np.ndarray], adapter_config: Mapping[str, Any], out: str | Path
) -> Path:
    """Write the LoRA part in the PEFT format (adapter_config.json, adapter_model.safetensors).

    The keys follow the module paths of ``userlayer.sdk.model.Recommender``
    (``blocks.{i}.attn.q``, ``blocks.{i}.mlp.up``...), so ``peft.PeftModel``
    loads them onto the torch base. Prefix, FiLM and mode parts have no PEFT
    equivalent and are left out.
    """
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    targets = list(adapter_config["targets"])
    state = {}
    for t in targets:
        a, b = np.asarray(tensors[f"lora_a.{t}"]), np.asarray(tensors[f"lora_b.{t}"])
        part = "attn" if t in ("q", "k", "v", "o") else "mlp"
        for layer in range(a.shape[0]):
            key = f"base_model.model.blocks.{layer}.{part}.{t}"
            state[f"{key}.lora_A.weight"] = np.ascontiguousarray(a[layer], dtype=np.float32)
            state[f"{key}.lora_B.weight"] = np.ascontiguousarray(b[layer], dtype=np.float32)
    cfg = {
        "peft_type": "LORA",
        "task_type": None,
        "r": int(adapter_config["rank"]),
        "lora_alpha": float(adapter_config["alpha"]),
        "lora_dropout": 0.0,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "use_rslora": False,
        "base_model_name_or_path": None,
    }
    (d / "adapter_config.json").write_text(json.dumps(cfg, indent=2), "utf-8")
    (d / "adapter_model.safetensors").write_bytes(st_save(state))
    return d
