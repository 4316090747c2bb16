"""BM25 keyword index over bm25s with stable int64 ids, rebuilt lazily after changes."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any, Iterable, Literal

import bm25s
import numpy as np

from faq_bot.index._atomic import atomic_write
from faq_bot.index.tokenize import TOKENIZER_VERSION, tokenize

logging.getLogger("bm25s").setLevel(logging.NOTSET)  # bm25s pins its logger at DEBUG: follow the app's level

__all__ = ["BM25Index"]

logger = logging.getLogger(__name__)

_FORMAT_VERSION = 1
DEFAULT_FILENAME = "bm25.json"
BM25Method = Literal["robertson", "lucene", "atire", "bm25l", "bm25+"]


def _resolve_path(path: str | Path) -> Path:
    """A folder (existing, or a path without suffix) holds `bm25.json`; anything else is the file itself."""
    path = Path(path)
    if path.is_dir() or (not path.exists() and not path.suffix):
        return path / DEFAULT_FILENAME
    return path


class BM25Index:
    """BM25 over `tokenize` (jieba + English words) with external int64 ids.

    bm25s builds a static sparse matrix, so the index keeps the tokenized corpus (id -> tokens)
    and rebuilds the bm25s model on the first search after `add`/`remove` (cheap at FAQ/chunk
    scale: tens of ms per 10k documents). Persisted as the tokenized corpus in one JSON file.
    Thread-safe: one lock around mutations, rebuilds and searches.
    """

    def __init__(self, *, k1: float = 1.5, b: float = 0.75, method: BM25Method = "lucene") -> None:
        if k1 <= 0:
            raise ValueError(f"`k1` must be > 0, got {k1}.")
        if not 0 <= b <= 1:
            raise ValueError(f"`b` must be in [0, 1], got {b}.")
        if method not in ("robertson", "lucene", "atire", "bm25l", "bm25+"):
            raise ValueError(f"`method` must be one of robertson, lucene, atire, bm25l, bm25+; got {method!r}.")
        self._params = {"k1": float(k1), "b": float(b), "method": method}
        self._docs: dict[int, list[str]] = {}  # insertion-ordered: ties keep insertion order
        self._lock = threading.RLock()
        self._model: bm25s.BM25 | None = None
        self._model_ids = np.empty(0, dtype=np.int64)
        self._dirty = False

    def __len__(self) -> int:
        return len(self._docs)

    def __contains__(self, id_: object) -> bool:
        return isinstance(id_, (int, np.integer)) and int(id_) in self._docs

    def __repr__(self) -> str:
        return f"BM25Index(ndocs={len(self)}, method={self._params['method']!r})"

    def ids(self) -> np.ndarray:
        """All stored ids (int64), in insertion order."""
        with self._lock:
            return np.fromiter(self._docs.keys(), dtype=np.int64, count=len(self._docs))

    def add(self, ids: Iterable[int] | np.ndarray, texts: Iterable[str]) -> None:
        """Index (or re-index) texts under external ids."""
        ids_list = _check_ids(ids)
        texts = list(texts)
        if len(texts) != len(ids_list):
            raise ValueError(f"`ids` and `texts` differ in length: {len(ids_list)} != {len(texts)}.")
        if len(set(ids_list)) != len(ids_list):
            raise ValueError("`ids` contains duplicates within one batch.")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"`texts[{i}]` must be a str, got {type(t).__name__}.")
        tokens = [tokenize(t) for t in texts]  # outside the lock: jieba is the slow part
        with self._lock:
            for i, toks in zip(ids_list, tokens):
                self._docs.pop(i, None)  # a replaced doc moves to the end, like a fresh insert
                self._docs[i] = toks
            self._dirty = self._dirty or bool(ids_list)

    def remove(self, ids: Iterable[int] | np.ndarray) -> int:
        """Remove ids (unknown ones are ignored); returns how many were removed."""
        ids_list = _check_ids(ids)
        with self._lock:
            removed = sum(self._docs.pop(i, None) is not None for i in dict.fromkeys(ids_list))
            self._dirty = self._dirty or removed > 0
            return removed

    def search(self, text: str, k: int) -> list[tuple[int, float]]:
        """Top-`k` `(id, score)` pairs, best first; only documents sharing a token (score > 0)."""
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"`k` must be a positive int, got {k!r}.")
        tokens = tokenize(text)
        if not tokens:
            return []
        with self._lock:
            model = self._ensure_model()
            if model is None:
                return []
            token_ids = model.get_tokens_ids(tokens)
            if not token_ids:  # every query token is unknown to the corpus
                return []
            scores = model.get_scores_from_ids(token_ids)
            doc_ids = self._model_ids
        hits = np.flatnonzero(scores > 0)
        if len(hits) > k:
            hits = hits[np.argpartition(-scores[hits], k - 1)[:k]]
        hits = hits[np.lexsort((hits, -scores[hits]))]  # score desc, then insertion order
        return [(int(doc_ids[h]), float(scores[h])) for h in hits]

    def save(self, path: str | Path) -> Path:
        """Write the tokenized corpus atomically; `path` is a file or a folder (-> `bm25.json`). Returns the file."""
        target = _resolve_path(path)
        with self._lock:
            payload = {
                "format": _FORMAT_VERSION,
                "tokenizer": TOKENIZER_VERSION,
                "params": self._params,
                "ids": list(self._docs.keys()),
                "tokens": list(self._docs.values()),
            }
            data = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        with atomic_write(target) as f:
            f.write(data)
        logger.debug("Saved %r to %s.", self, target)
        return target

    @classmethod
    def load(cls, path: str | Path, **kwargs: Any) -> BM25Index:
        """Open what `save` wrote; `kwargs` (`k1`, `b`, `method`) override the saved parameters."""
        target = _resolve_path(path)
        if not target.is_file():
            raise ValueError(f"`path` {path} holds no BM25 index (looked for {target}).")
        try:
            payload = json.loads(target.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ValueError(f"`path` {target} is not a BM25Index file: {e}") from e
        if not isinstance(payload, dict) or payload.get("format") != _FORMAT_VERSION:
            raise ValueError(f"`path` {target} is not a BM25Index file of format {_FORMAT_VERSION}.")
        if payload.get("tokenizer") != TOKENIZER_VERSION:
            logger.warning(
                "%s was tokenized with tokenizer v%s, current is v%s: rebuild it from the store for best matches.",
                target, payload.get("tokenizer"), TOKENIZER_VERSION,
            )
        obj = cls(**{**payload["params"], **kwargs})
        obj._docs = {int(i): list(t) for i, t in zip(payload["ids"], payload["tokens"])}
        obj._dirty = bool(obj._docs)
        return obj

    def _ensure_model(self) -> bm25s.BM25 | None:
        """The bm25s model for the current corpus, rebuilt if the corpus changed; None when nothing to match."""
        if self._dirty:
            self._model, self._model_ids = None, np.empty(0, dtype=np.int64)
            corpus = list(self._docs.values())
            if any(corpus):  # bm25s cannot index a corpus without a single token
                model = bm25s.BM25(**self._params)
                model.index(corpus, show_progress=False)
                self._model = model
                self._model_ids = np.fromiter(self._docs.keys(), dtype=np.int64, count=len(self._docs))
            self._dirty = False
            logger.debug("Rebuilt BM25 model over %d documents.", len(corpus))
        return self._model


def _check_ids(ids: Any) -> list[int]:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"`ids` must be 1-D, got shape {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"`ids` must hold integers, got dtype {arr.dtype}.")
    if arr.size and (arr < 0).any():
        raise ValueError(f"`ids` must be >= 0, got {int(arr.min())}.")
    return [int(i) for i in arr.tolist()]
