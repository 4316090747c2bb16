"""Index layer: dense (FAISS kinds, GPU when present; or Qdrant), sparse (bm25s + jieba), tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from faq_bot.index.dense import FaissIndex
from faq_bot.index.sparse import BM25Index
from faq_bot.index.tokenize import tokenize, tokenize_many

if TYPE_CHECKING:
    from faq_bot.config import RetrieveConfig
    from faq_bot.index.qdrant import QdrantIndex

__all__ = ["BM25Index", "DenseIndex", "FaissIndex", "QdrantIndex", "build_dense_index", "tokenize", "tokenize_many"]

logger = logging.getLogger(__name__)


def __getattr__(name: str) -> Any:
    # qdrant-client takes ~1 s to import; FAISS-only deployments never pay for it.
    if name == "QdrantIndex":
        from faq_bot.index.qdrant import QdrantIndex

        return QdrantIndex
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@runtime_checkable
class DenseIndex(Protocol):
    """What retrieval needs from a vector backend (FaissIndex and QdrantIndex both satisfy it)."""

    def add(self, ids: np.ndarray, vecs: np.ndarray) -> None: ...
    def remove(self, ids: np.ndarray) -> int: ...
    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
    def ids(self) -> np.ndarray: ...
    def save(self, path: str | Path) -> None: ...
    def __len__(self) -> int: ...


def build_dense_index(dim: int, cfg: RetrieveConfig, path: Path) -> FaissIndex | QdrantIndex:
    """Open (or create empty) the dense index configured by `cfg.backend`.

    faiss: `path` is the index file; an existing one is loaded with `cfg`'s settings applied
    (a changed index kind rebuilds from the stored vectors), else a new empty index is made.
    qdrant: `cfg.qdrant_url` or, when None, embedded mode in the folder `path.parent / "qdrant"`;
    the collection is named after `path.stem` (e.g. `.../chunks.faiss` -> collection `chunks`).

    Raises:
        ValueError: the stored index has another dimension than `dim`, or a bad setting.
    """
    path = Path(path)
    if cfg.backend == "qdrant":
        from faq_bot.index.qdrant import QdrantIndex

        key = cfg.qdrant_api_key.get_secret_value() if cfg.qdrant_api_key else None
        return QdrantIndex(dim, path.parent / "qdrant", name=path.stem, url=cfg.qdrant_url, api_key=key)
    if cfg.backend != "faiss":
        raise ValueError(f"`retrieve.backend` must be 'faiss' or 'qdrant', got {cfg.backend!r}.")
    if not path.exists():
        return FaissIndex.from_config(dim, cfg)
    index = FaissIndex.load(
        path, kind=cfg.index, device=cfg.device, auto_flat_max=cfg.auto_flat_max, auto_hnsw_max=cfg.auto_hnsw_max,
        hnsw_m=cfg.hnsw_m, ef_search=cfg.ef_search, ef_construction=cfg.ef_construction, nlist=cfg.nlist,
        nprobe=cfg.nprobe, pq_m=cfg.pq_m,
    )
    if index.dim != dim:
        raise ValueError(
            f"`dim` is {dim} but the index at {path} holds {index.dim}-dim vectors; "
            "re-embed and rebuild it (delete the file to start empty)."
        )
    logger.info("Loaded %r from %s.", index, path)
    return index
