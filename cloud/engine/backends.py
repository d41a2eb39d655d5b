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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from userlayer.cloud.engine.export import EXPORT_FORMAT
from userlayer.cloud.exceptions import CloudError
from userlayer.sdk.model import AdapterConfig, Recommender, RowAdapters
from userlayer.sdk.model.decoding import Decoder, TorchDecoder, level_codes
from userlayer.sdk.model.steer import STEER_ONLY

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
        self,
        active: np.ndarray,
        tensors: dict[str, np.ndarray],
        mode_weights: np.ndarray,
        steer: np.ndarray | None = None,
        items: bool = True,
    ) -> Decoder:
        """A decoder with these rows bound: ``active`` (A,), ``tensors`` (A, ...).

        ``steer`` (A, S, d): each row's critique steer (zeros: none). ``items``:
        the ranking reads the dense head's item scores (False: a backend may
        skip making or fetching them).
        """


class TorchBackend:
    """The torch module (CPU, or CUDA with ``device="cuda"``)."""

    name = "torch"

    def __init__(self, model: Recommender, acfg: AdapterConfig, device: str = "cpu") -> None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise EngineError("the torch backend was asked for CUDA, but no GPU is visible")
        self.model = model.to(device).eval()
        self.acfg = acfg
        self.device = torch.device(device)
        self.item_vectors = None  # the dense head's, made once: the model is frozen here
        if model.cfg.n_items:
            with torch.no_grad():
                self.item_vectors = self.model.item_vectors().detach()

    def decoder(
        self,
        active: np.ndarray,
        tensors: dict[str, np.ndarray],
        mode_weights: np.ndarray,
        steer: np.ndarray | None = None,
        items: bool = True,
    ) -> Decoder:
        """See :class:`Backend`; a batch without any adapter or steer runs the base alone.

        The torch decoder scores items only when asked, so ``items`` changes nothing here.
        """
        if not active.any() and steer is None:
            return TorchDecoder(self.model, None, self.item_vectors)
        dev = self.device
        if not active.any():  # a steer only: no zero adapter to multiply through
            assert steer is not None
            none = torch.zeros(len(active), dtype=torch.bool, device=dev)
            only = RowAdapters(STEER_ONLY, none, {}, None, torch.from_numpy(steer).to(dev))
            return TorchDecoder(self.model, only, self.item_vectors)
        rows = RowAdapters(
            self.acfg,
            torch.from_numpy(active).to(dev),
            {k: torch.from_numpy(v).to(dev) for k, v in tensors.items()},
            torch.from_numpy(mode_weights).to(dev),
            None if steer is None else torch.from_numpy(steer).to(dev),
        )
        return TorchDecoder(self.model, rows, self.item_vectors)


@dataclass
class _Graphs:
    """A prefill/decode session pair and the names they take and give."""

    prefill: Any
    decode: Any
    prefill_inputs: list[str]
    decode_inputs: list[str]
    cache_names: list[str]  # prefill's outputs after the logits (and the items' scores last)


class _OrtDecoder:
    """The prompts' cache stays as prefill gave it (B rows); only the beams' rows move."""

    def __init__(
        self,
        g: _Graphs,
        feeds: dict[str, np.ndarray],
        wants: list[np.ndarray],
        items: bool = True,
    ) -> None:
        self.g = g
        # prefill's outputs fetched: the items' scores only where the ranking reads them
        self.fetch = ["logits", *(n for n in g.cache_names if items or n != "items")]
        self.feeds = feeds
        self.wants = wants  # per level: its code indices
        self.prompt: dict[str, np.ndarray] = {}
        self.beams: dict[str, np.ndarray] = {}
        self.scores: np.ndarray | None = None  # the dense item head's (prefill's ``items``)

    def prefill(self, tokens: Tensor, ctx: Tensor) -> Tensor:
        feed = {"tokens": tokens.numpy(), "ctx": ctx.numpy(), **self.feeds}
        out = self.g.prefill.run(self.fetch, {n: feed[n] for n in self.g.prefill_inputs})
        self.prompt = dict(zip(self.fetch[1:], out[1:], strict=True))
        self.scores = self.prompt.pop("items", None)
        k = self.prompt["k"]
        empty = np.zeros((*k.shape[:3], 0, k.shape[4]), dtype=k.dtype)
        self.beams = {"bk": empty, "bv": empty, "bpos": self.prompt["next_pos"]}
        return torch.from_numpy(out[0])

    def step(self, origin: Tensor, codes: Tensor, level: int) -> Tensor:
        feed = {"codes": codes.numpy(), "origin": origin.numpy(), "want": self.wants[level]}
        feed |= self.prompt | self.beams | self.feeds
        out = self.g.decode.run(None, {n: feed[n] for n in self.g.decode_inputs})
        self.beams = {"bk": out[1], "bv": out[2], "bpos": out[3]}
        return torch.from_numpy(out[0])

    def items(self) -> Tensor | None:
        """The dense item scores of the last prefill (an export with the head), else None."""
        return None if self.scores is None else torch.from_numpy(self.scores)


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
        if manifest.get("format") != EXPORT_FORMAT:
            raise EngineError(
                f"the export in {d} has format {manifest.get('format')!r}, this engine reads "
                f"{EXPORT_FORMAT!r}: export it again (`userlayer export`)"
            )
        if manifest.get("fingerprint") != fingerprint:
            raise EngineError(
                f"the export in {d} is of base model {manifest.get('fingerprint')}, "
                f"not {fingerprint}: export it again"
            )
        self.manifest = manifest
        self.acfg = AdapterConfig.from_dict(manifest["adapter"])
        self.steer = int(manifest.get("steer", 0))  # the critique steer's prefix vectors
        self.items = int(manifest.get("items", 0))  # the dense item head's items (0: none)
        sizes = manifest["model"]["level_sizes"]
        self.wants = [level_codes(sizes, i).numpy() for i in range(len(sizes))]
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = threads or int(os.environ.get("USERLAYER_THREADS", 0)) or 0
        so.inter_op_num_threads = 1
        # no busy-waiting between calls: beam search runs in Python between graph calls,
        # and spinning pool threads would take its core
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        prov = providers or ["CPUExecutionProvider"]

        def pair(prefix: str) -> _Graphs:
            pre = ort.InferenceSession(str(d / f"{prefix}prefill.onnx"), so, providers=prov)
            dec = ort.InferenceSession(str(d / f"{prefix}decode.onnx"), so, providers=prov)
            outs = manifest[f"{prefix}prefill"]["outputs"][1:]
            # the exporter drops inputs a graph does not use (decode: the prefix vectors)
            return _Graphs(
                pre,
                dec,
                [i.name for i in pre.get_inputs()],
                [i.name for i in dec.get_inputs()],
                list(outs),
            )

        self.graphs = pair("")
        self.base_graphs = pair("base_")

    def decoder(
        self,
        active: np.ndarray,
        tensors: dict[str, np.ndarray],
        mode_weights: np.ndarray,
        steer: np.ndarray | None = None,
        items: bool = True,
    ) -> Decoder:
        """See :class:`Backend`; a batch without any adapter or steer runs the base graphs.

        The items' scores are fetched from prefill only with ``items`` and an
        export that has them.

        Raises:
            EngineError: a steer the export was not made with.
        """
        items = items and self.items > 0
        if not active.any() and steer is None:
            return _OrtDecoder(self.base_graphs, {}, self.wants, items)
        feeds = {"active": active, "mode_weights": mode_weights}
        feeds |= {f"ad.{k}": v for k, v in tensors.items()}
        if self.steer:
            b = len(active)
            d = int(self.manifest["model"]["d_model"])
            feeds["steer"] = np.zeros((b, self.steer, d), np.float32) if steer is None else steer
        elif steer is not None:
            raise EngineError("this ONNX export has no critique steer input: export it again")
        return _OrtDecoder(self.graphs, feeds, self.wants, items)


def tensorrt_available() -> str | None:
    """None when TensorRT can run here, else the reason it cannot."""
    if not torch.cuda.is_available():
        return "TensorRT needs an NVIDIA GPU; none is visible on this machine"
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "the `tensorrt` Python package is not installed (pip install tensorrt)"
    return None
