"""Engine backends: the same decoding on torch, ONNX Runtime or TensorRT.

A backend turns one batch's adapter rows (numpy arrays gathered from the
engine's slab) into a :class:`~userlayer.sdk.model.decoding.Decoder`, which
beam search drives. ``torch`` runs the module itself (the reference, and
CUDA where there is a GPU); ``onnxruntime`` runs the exported prefill and
decode graphs (:mod:`userlayer.cloud.engine.export`); ``tensorrt`` builds
engines from the same graphs and needs an NVIDIA GPU with the ``tensorrt``
package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from userlayer.cloud.exceptions import CloudError
from userlayer.sdk.model import AdapterConfig, Recommender, RowAdapters
from userlayer.sdk.model.decoding import Decoder, TorchDecoder

__all__ = [
    "Backend",
    "EngineError",
    "OnnxBackend",
    "TorchBackend",
    "tensorrt_available",
]


class EngineError(CloudError):
    """The engine cannot start or run (backend missing, export mismatch, bad batch)."""


class Backend(Protocol):
    """Makes a decoder for one batch's adapter rows."""

    name: str

    def decoder(
        self, active: np.ndarray, tensors: dict[str, np.ndarray], mode_weights: np.ndarray
    ) -> Decoder:
        """A decoder with these rows bound: ``active`` (A,), ``tensors`` (A, ...)."""


class TorchBackend:
    """The torch module (CPU, or CUDA with ``device="cuda"``)."""

    name = "torch"

    def __init__(self, model: Recommender, acfg: AdapterConfig, device: str = "cpu") -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("the torch backend was asked for CUDA, but no GPU is visible")
        self.model = model.to(device).eval()
        self.acfg = acfg
        self.device = torch.device(device)

    def decoder(
        self, active: np.ndarray, tensors: dict[str, np.ndarray], mode_weights: np.ndarray
    ) -> Decoder:
        """See :class:`Backend`."""
        dev = self.device
        rows = RowAdapters(
            self.acfg,
            torch.from_numpy(active).to(dev),
            {k: torch.from_numpy(v).to(dev) for k, v in tensors.items()},
            torch.from_numpy(mode_weights).to(dev),
        )
        return TorchDecoder(self.model, rows)


class _OrtDecoder:
    def __init__(self, be: OnnxBackend, feeds: dict[str, np.ndarray]) -> None:
        self.be = be
        self.feeds = feeds
        self.cache: dict[str, np.ndarray] = {}

    def _run(self, sess: Any, names: list[str], feed: dict[str, np.ndarray]) -> Tensor:
        out = sess.run(None, {n: feed[n] for n in names})
        self.cache = dict(zip(self.be.cache_names, out[1:], strict=True))
        return torch.from_numpy(out[0])

    def prefill(self, tokens: Tensor, ctx: Tensor) -> Tensor:
        feed = {"tokens": tokens.numpy(), "ctx": ctx.numpy(), **self.feeds}
        return self._run(self.be.prefill_sess, self.be.prefill_inputs, feed)

    def step(self, origin: Tensor, codes: Tensor) -> Tensor:
        feed = {"codes": codes.numpy(), "origin": origin.numpy(), **self.cache, **self.feeds}
        return self._run(self.be.decode_sess, self.be.decode_inputs, feed)


class OnnxBackend:
    """ONNX Runtime sessions over an export directory (CPU by default)."""

    name = "onnxruntime"

    def __init__(
        self,
        onnx_dir: str | Path,
        fingerprint: str,
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        import onnxruntime as ort

        d = Path(onnx_dir)
        try:
            manifest = json.loads((d / "manifest.json").read_text("utf-8"))
        except (OSError, ValueError) as e:
            raise EngineError(f"{d} is not an ONNX export (`userlayer export`): {e}") from e
        if manifest.get("fingerprint") != fingerprint:
            raise EngineError(
                f"the export in {d} is of base model {manifest.get('fingerprint')}, "
                f"not {fingerprint}: export it again"
            )
        self.manifest = manifest
        self.acfg = AdapterConfig.from_dict(manifest["adapter"])
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads or int(os.environ.get("USERLAYER_THREADS", 0)) or 0
        so.inter_op_num_threads = 1
        prov = providers or ["CPUExecutionProvider"]
        self.prefill_sess = ort.InferenceSession(str(d / "prefill.onnx"), so, providers=prov)
        self.decode_sess = ort.InferenceSession(str(d / "decode.onnx"), so, providers=prov)
        # the exporter drops inputs a graph does not use (decode: the prefix vectors)
        self.prefill_inputs = [i.name for i in self.prefill_sess.get_inputs()]
        self.decode_inputs = [i.name for i in self.decode_sess.get_inputs()]
        self.cache_names = [o.removeprefix("out.") for o in manifest["decode"]["outputs"][1:]]

    def decoder(
        self, active: np.ndarray, tensors: dict[str, np.ndarray], mode_weights: np.ndarray
    ) -> Decoder:
        """See :class:`Backend`."""
        feeds = {"active": active, "mode_weights": mode_weights}
        feeds |= {f"ad.{k}": v for k, v in tensors.items()}
        return _OrtDecoder(self, feeds)


def tensorrt_available() -> str | None:
    """None when TensorRT can run here, else the reason it cannot."""
    if not torch.cuda.is_available():
        return "TensorRT needs an NVIDIA GPU; none is visible on this machine"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the `tensorrt` Python package is not installed (pip install tensorrt)"
    return None
