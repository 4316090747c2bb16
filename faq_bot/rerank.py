"""Rerank stage: re-score the retriever's candidates, keep `top_n`, drop those under `min_score`.

Backends: `encoder` (a second look by an embedding model, cosine), `cross_encoder` (any CrossEncoder),
`llm` (yes/no logit margin of the generator), `none`. A backend that fails to load is skipped: the
hits go on in fused order and the trace says so.
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from .config import RerankConfig
from .models import load_encoder
from .schema import Hit, Query

logger = logging.getLogger(__name__)

__all__ = ["Reranker", "build_reranker", "DEFAULT_MIN_SCORE"]

# Measured defaults per backend (README, "Rerank"): the score scale differs by backend.
DEFAULT_MIN_SCORE = {"encoder": 0.80, "cross_encoder": float("-inf"), "llm": 0.0, "none": float("-inf")}


class Reranker(ABC):
    """Public `rerank()` does thresholding, timing and trace; subclasses fill `_scores()`."""

    backend = "none"

    def __init__(self, cfg: RerankConfig):
        self.cfg = cfg
        self.min_score = cfg.min_score if cfg.min_score is not None else DEFAULT_MIN_SCORE[self.backend]
        self.error: str | None = None

    def warm_up(self) -> None:
        try:
            self._load()
        except Exception as e:  # retrieval still works without a reranker
            self.error = f"{type(e).__name__}: {e}"
            logger.warning("Reranker %s failed to load: %s", self.backend, self.error)

    def _load(self) -> None:
        """Load models (override)."""

    @abstractmethod
    def _scores(self, query: str, hits: list[Hit], lang: str | None) -> np.ndarray: ...

    def rerank(self, query: Query, hits: list[Hit], top_n: int | None = None, *, lang: str | None = None
               ) -> tuple[list[Hit], dict[str, Any]]:
        """Returns (kept hits best first, trace detail). Empty when nothing reaches `min_score`."""
        top_n = top_n or self.cfg.top_n
        detail: dict[str, Any] = {"backend": self.backend, "min_score": self.min_score, "candidates": len(hits)}
        if not hits:
            return [], detail
        if self.error is None:
            try:
                scores = self._scores(query.standalone, hits, lang)
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"
                logger.warning("Reranker %s failed: %s", self.backend, self.error)
        if self.error is not None:
            detail["skipped"] = self.error
            return hits[:top_n], detail
        ranked = []
        for h, s in zip(hits, scores):
            h = h.model_copy(update={"score": float(s), "scores": {**h.scores, "rerank": round(float(s), 4)}})
            ranked.append(h)
        ranked.sort(key=lambda h: h.score, reverse=True)
        kept = [h for h in ranked if h.score >= self.min_score][:top_n]
        detail["scores"] = [[h.chunk.id, round(h.score, 4)] for h in ranked]
        detail["kept"] = len(kept)
        if not kept:
            detail["note"] = "nothing reached min_score"
        return kept, detail


class NoReranker(Reranker):
    backend = "none"

    def _scores(self, query, hits, lang):
        return np.array([h.score for h in hits])


class EncoderReranker(Reranker):
    """Cosine of an embedding model over the candidates (default: the document encoder, calibrated scale)."""

    backend = "encoder"

    def __init__(self, cfg: RerankConfig, default_model: str, kb=None):
        super().__init__(cfg)
        self.model_name = cfg.model or default_model
        self.kb = kb
        self._enc = None

    def _load(self):
        self._enc = load_encoder(self.model_name, field="rerank.model")

    def _scores(self, query, hits, lang):
        if self._enc is None:
            self._load()
        q = self._enc.encode_query(query)  # cached when the retriever embedded the same text
        p = self._stored(hits)
        todo = [i for i, row in enumerate(p) if not row.any()]
        if todo:  # candidates without a stored vector of this model (e.g. BM25-only hits, another encoder)
            p[todo] = self._enc.encode_passages([hits[i].chunk.embed_text() for i in todo], self.cfg.batch_size)
        return p @ q

    def _stored(self, hits: list[Hit]) -> np.ndarray:
        """Passage vectors already in the chunk index when it was built with this encoder: no re-encoding."""
        p = np.zeros((len(hits), self._enc.dim), dtype=np.float32)
        if self.kb is None or self.kb.doc_encoder.name != self._enc.name:
            return p
        dense = self.kb.chunk_index().dense
        vids = [h.chunk.meta.get("vid", -1) for h in hits]
        if dense is not None and all(v >= 0 for v in vids):
            p[:] = dense.vectors(vids)
        return p


class CrossEncoderReranker(Reranker):
    backend = "cross_encoder"

    def __init__(self, cfg: RerankConfig):
        super().__init__(cfg)
        if not cfg.model:
            raise ValueError("`rerank.model` must name a CrossEncoder (local dir or hub id) when backend is cross_encoder.")
        self._model = None

    def _load(self):
        from sentence_transformers import CrossEncoder

        self._model = CrossEncoder(self.cfg.model)

    def _scores(self, query, hits, lang):
        if self._model is None:
            self._load()
        pairs = [(query, h.chunk.embed_text()) for h in hits]
        return np.asarray(self._model.predict(pairs, batch_size=self.cfg.batch_size), dtype=np.float32)


class LlmReranker(Reranker):
    """The generator judges relevance: logit(yes) - logit(no), batched. Best on a GPU."""

    backend = "llm"

    def __init__(self, cfg: RerankConfig, generator):
        super().__init__(cfg)
        self.generator = generator

    def _load(self):
        self.generator.warm_up()
        if self.generator.error:
            raise RuntimeError(self.generator.error)

    def _scores(self, query, hits, lang):
        if not hasattr(self.generator, "score_yes_no"):
            raise RuntimeError("the generator backend cannot score relevance (transformers backend only)")
        return np.asarray(self.generator.score_yes_no(query, [h.chunk.embed_text() for h in hits], lang=lang or "zh"))


def build_reranker(cfg: RerankConfig, *, doc_model: str, generator=None, kb=None) -> Reranker:
    if cfg.backend == "encoder":
        return EncoderReranker(cfg, doc_model, kb)
    if cfg.backend == "cross_encoder":
        return CrossEncoderReranker(cfg)
    if cfg.backend == "llm":
        if generator is None:
            raise ValueError("`rerank.backend` = llm needs a generator.")
        return LlmReranker(cfg, generator)
    return NoReranker(cfg)
