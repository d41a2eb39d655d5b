"""Russian item text to vectors with navec, the word embeddings shipped inside ``natasha``.

No multilingual sentence encoder comes inside a PyPI package (MiniLM is
English-only; WordLlama's bundled Llama-2 token table puts Russian titles of
unrelated categories at cosine 0.4-0.6, see docs/semantic_ids.md), so a
Cyrillic catalog is encoded with navec: 250,002 words (Russian news, with
common Latin words and brands), 300 dimensions, product-quantized, MIT
licence, inside the ``natasha`` 1.6.0 wheel. The file is read once, its
SHA-256 checked against :data:`NAVEC_SHA256`, and navec's parsers read those
same bytes (a plain tar, JSON, gzip and raw arrays: no pickle).

A text is the SIF average of its tokens' vectors (Arora et al., 2017: each
word weighted ``a / (a + p(word))`` by its corpus frequency), L2-normalized.
Each text's vector depends on that text alone (SIF's second step, removing
the batch's common component, would not: ``sids build`` centres the catalog
before its PCA instead). A token the vocabulary
lacks (a transliterated brand, "3,2%", "930") gets a fixed pseudo-random
vector derived from its text, ``oov_scale`` times a typical word's length, as
a rare word's weight: items of one brand or one pack size then lean
together, and titles that differ only there do not collapse into one point
(``oov_scale=0`` skips such tokens). :class:`NavecEncoding` says how many
tokens the vocabulary knew.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import re
import tarfile
import unicodedata
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from userlayer.sdk.exceptions import TextEncoderError

__all__ = [
    "NAVEC_SHA256",
    "Navec",
    "NavecEncoding",
    "cyrillic_share",
    "navec_embeddings",
    "navec_path",
]

NAVEC_FILE = "data/emb/navec_news_v1_1B_250K_300d_100q.tar"
# navec_news_v1_1B_250K_300d_100q.tar inside natasha 1.6.0
NAVEC_SHA256 = "f07270833d78523edc5781538d67038e95b43975e4a7ae757c693b687f9cbfca"
SIF_A = 1e-3
OOV_SCALE = 1.0
_WORD = re.compile(r"\d+(?:[.,]\d+)?%?|[a-zа-яё]+(?:-[a-zа-яё]+)*")
_CYRILLIC = re.compile(r"[а-яё]")
_LETTER = re.compile(r"[a-zа-яё]")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class NavecEncoding:
    """Vectors and how much of the text the vocabulary covered."""

    vectors: np.ndarray  # (n, 300) float32, L2-normalized (zero for a text without tokens)
    words: int  # tokens read
    known: int  # of them in the vocabulary
    empty: int  # texts with no known word


def cyrillic_share(texts: Sequence[str]) -> float:
    """The share of letters that are Cyrillic over all ``texts`` (0 with no letters)."""
    letters = cyrillic = 0
    for t in texts:
        low = t.lower()
        letters += len(_LETTER.findall(low))
        cyrillic += len(_CYRILLIC.findall(low))
    return cyrillic / letters if letters else 0.0


def navec_path() -> Path:
    """The navec file inside the installed ``natasha`` package (natasha is not imported).

    Raises:
        TextEncoderError: if natasha is not installed or lacks the file.
    """
    spec = importlib.util.find_spec("natasha")
    if spec is None or not spec.submodule_search_locations:
        raise TextEncoderError(
            "Russian text vectors need navec: pip install 'userlayer[critique-text]' "
            "(serving) or 'userlayer[sids-text]' (Semantic IDs)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / NAVEC_FILE
    if not path.is_file():
        raise TextEncoderError(
            f"the natasha package has no {NAVEC_FILE} (reinstall natasha==1.6.0)"
        )
    return path


def _tokens(text: str, vocab: Container[str]) -> list[str]:
    out: list[str] = []
    for w in _WORD.findall(unicodedata.normalize("NFC", text).lower()):
        w = w.replace(",", ".")
        if "-" in w and w not in vocab:  # "трусики-подгузники": its parts, when unknown whole
            out.extend(w.split("-"))
        else:
            out.append(w)
    return out


def _load(path: Path) -> Any:
    """Read the file once, check its SHA-256, and load navec from those same bytes."""
    try:
        from navec.meta import Meta
        from navec.navec import META, PQ_, VOCAB, Navec
        from navec.pq import PQ
        from navec.vocab import Vocab
    except ImportError as e:
        raise TextEncoderError(
            "Russian text vectors need navec: pip install 'userlayer[critique-text]' "
            "(serving) or 'userlayer[sids-text]' (Semantic IDs)"
        ) from e
    try:
        data = path.read_bytes()
    except OSError as e:
        raise TextEncoderError(f"cannot read the text encoder's weights at {path}: {e}") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != NAVEC_SHA256:
        raise TextEncoderError(
            f"the text encoder's weights at {path} have SHA-256 {digest}, not the pinned "
            f"{NAVEC_SHA256}: refusing to load them (reinstall natasha==1.6.0)"
        )
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:  # plain tar, as pinned

        def member(name: str) -> Any:
            f = tar.extractfile(name)
            if f is None:
                raise TextEncoderError(f"{path} has no {name}")
            return f

        meta = Meta.from_file(member(META))
        Meta.check_protocol(meta.protocol)
        return Navec(meta, Vocab.from_file(member(VOCAB)), PQ.from_file(member(PQ_)))


def _oov_vector(token: str, dim: int) -> np.ndarray:
    """A unit vector fixed by the token's text alone (SHAKE-256 bytes, not a numpy RNG stream)."""
    raw = np.frombuffer(hashlib.shake_256(token.encode()).digest(4 * dim), dtype="<u4")
    v = raw.astype(np.float64) / 2**32 - 0.5
    out: np.ndarray = v / np.linalg.norm(v)
    return out


class Navec:
    """navec loaded once (checked against :data:`NAVEC_SHA256`); encodes texts on demand."""

    def __init__(self, path: Path | None = None) -> None:
        nv = _load(path or navec_path())
        self._nv = nv
        self.ids: dict[str, int] = nv.vocab.word_ids
        counts = np.asarray(nv.vocab.counts, dtype=np.float64)
        self.weight_of = SIF_A / (SIF_A + counts / counts.sum())
        self.dim = int(nv.pq.dim)
        self.typical = float(np.median(nv.pq.norm))  # the vocabulary's: no text depends on another

    def _rows(self, ids: np.ndarray) -> np.ndarray:
        """The words' vectors (n, dim) float64, decoded from their product-quantized codes.

        Read straight from the codebooks: navec's ``pq.sampled`` rebuilds a
        centroid-product table on every call (milliseconds a text).
        """
        pq = self._nv.pq
        parts = pq.codes[np.arange(pq.qdim), pq.indexes[ids]]  # (n, qdim, dim / qdim)
        out: np.ndarray = parts.reshape(len(ids), self.dim).astype(np.float64)
        return out

    def encode(self, texts: Sequence[str], oov_scale: float = OOV_SCALE) -> NavecEncoding:
        """SIF-averaged vectors of ``texts`` (see the module docstring).

        Raises:
            TextEncoderError: if ``oov_scale`` is negative or not finite.
        """
        if not 0.0 <= oov_scale < float("inf"):
            raise TextEncoderError(f"`oov_scale` should be finite and >= 0, got {oov_scale}")
        ids, weight_of, dim = self.ids, self.weight_of, self.dim
        tokenized = [_tokens(t, ids) for t in texts]
        known_ids = sorted({ids[w] for ws in tokenized for w in ws if w in ids})
        col = {wid: j for j, wid in enumerate(known_ids)}
        table = self._rows(np.asarray(known_ids, dtype=np.int64))
        oov: dict[str, np.ndarray] = {}
        emb = np.zeros((len(texts), dim))
        words = known = empty = 0
        for i, ws in enumerate(tokenized):
            words += len(ws)
            hit = [ids[w] for w in ws if w in ids]
            known += len(hit)
            empty += not hit
            miss = [w for w in ws if w not in ids] if oov_scale > 0 else []
            if not hit and not miss:
                continue
            vecs = [table[[col[h] for h in hit]]] if hit else []
            weights = [weight_of[hit]] if hit else []
            if miss:
                for w in miss:
                    if w not in oov:
                        oov[w] = oov_scale * self.typical * _oov_vector(w, dim)
                vecs.append(np.stack([oov[w] for w in miss]))
                weights.append(np.ones(len(miss)))
            v, wt = np.concatenate(vecs), np.concatenate(weights)
            emb[i] = (wt[:, None] * v).sum(0) / wt.sum()
        norm = np.linalg.norm(emb, axis=1, keepdims=True)
        emb = np.divide(emb, norm, out=np.zeros_like(emb), where=norm > 0)
        logger.info(
            "navec: %d texts, %d of %d words known, %d texts with none",
            len(texts),
            known,
            words,
            empty,
        )
        return NavecEncoding(emb.astype(np.float32), words, known, empty)


def navec_embeddings(
    texts: Sequence[str], path: Path | None = None, oov_scale: float = OOV_SCALE
) -> NavecEncoding:
    """SIF-averaged navec vectors of ``texts`` (loads navec for this call).

    Raises:
        TextEncoderError: if navec is missing, its file is not the pinned one, or
            ``oov_scale`` is negative or not finite.
    """
    if not 0.0 <= oov_scale < float("inf"):
        raise TextEncoderError(f"`oov_scale` should be finite and >= 0, got {oov_scale}")
    return Navec(path).encode(texts, oov_scale)
