"""Retrieve stage: dense (FAISS or Qdrant) + sparse (BM25, jieba) candidates fused by reciprocal rank or weighted scores."""

from __future__ import annotations

import logging
import time

from .config import RetrieveConfig
from .knowledge import KnowledgeBase
from .schema import Hit, Query

logger = logging.getLogger(__name__)

__all__ = ["Retriever", "rrf_fuse", "weighted_fuse"]


def rrf_fuse(rankings: dict[str, list[tuple[int, float]]], k: int = 60) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: score(d) = sum over rankings of 1 / (k + rank), rank from 1."""
    fused: dict[int, float] = {}
    for ranking in rankings.values():
        for rank, (doc, _) in enumerate(ranking, start=1):
            fused[doc] = fused.get(doc, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda x: x[1], reverse=True)


def weighted_fuse(dense: list[tuple[int, float]], sparse: list[tuple[int, float]], w: float) -> list[tuple[int, float]]:
    """w * dense cosine + (1 - w) * BM25 score min-max normalized over the candidates."""
    fused = {d: w * s for d, s in dense}
    if sparse:
        hi, lo = max(s for _, s in sparse), min(s for _, s in sparse)
        span = (hi - lo) or 1.0
        for d, s in sparse:
            fused[d] = fused.get(d, 0.0) + (1 - w) * (s - lo) / span
    return sorted(fused.items(), key=lambda x: x[1], reverse=True)


class Retriever:
    """Hybrid retriever over the knowledge base's chunk indexes.

    For llama-index: `faq_bot.integrations.llama_index.FaqBotRetriever` wraps it as a `BaseRetriever`.
    """

    def __init__(self, cfg: RetrieveConfig, kb: KnowledgeBase):
        self.cfg = cfg
        self.kb = kb

    def warm_up(self) -> None:
        self.kb.doc_encoder.encode_query("warm up")
        self.kb.chunk_index()

    def retrieve(self, query: Query, top_k: int | None = None, *, mode: str | None = None) -> tuple[list[Hit], dict]:
        """Top fused hits for `query.standalone`.

        Args:
            mode: "hybrid" (default), "dense" or "sparse" — the last two for evaluation.

        Returns:
            (hits best first, trace detail with each list's candidates).
        """
        top_k = top_k or self.cfg.top_k
        mode = mode or ("hybrid" if self.cfg.use_bm25 else "dense")
        text = query.standalone
        iset = self.kb.chunk_index()
        detail: dict = {"mode": mode}
        dense: list[tuple[int, float]] = []
        sparse: list[tuple[int, float]] = []
        t0 = time.perf_counter()
        n_dense = len(iset.dense) if mode in ("hybrid", "dense") and iset.dense is not None else 0  # Qdrant: one call
        if n_dense:
            q = self.kb.doc_encoder.encode_query(text)
            scores, ids = iset.dense.search(q, min(self.cfg.dense_k, n_dense))
            dense = [(int(i), float(s)) for s, i in zip(scores[0], ids[0]) if i >= 0]
        detail["dense_ms"] = round((time.perf_counter() - t0) * 1000, 3)
        t1 = time.perf_counter()
        if mode in ("hybrid", "sparse"):
            if iset.sparse is None:
                detail["sparse_skipped"] = "BM25 index unavailable"
            else:
                try:
                    sparse = [(int(i), float(s)) for i, s in iset.sparse.search(text, self.cfg.sparse_k)]
                except Exception as e:  # retrieval goes on dense-only; the trace says why
                    logger.warning("BM25 search failed: %s", e)
                    detail["sparse_skipped"] = f"{type(e).__name__}: {e}"
        detail["sparse_ms"] = round((time.perf_counter() - t1) * 1000, 3)
        if mode == "dense" or not sparse:
            fused = dense
        elif mode == "sparse" or not dense:
            fused = sparse
        elif self.cfg.fusion == "rrf":
            fused = rrf_fuse({"dense": dense, "sparse": sparse}, self.cfg.rrf_k)
        else:
            fused = weighted_fuse(dense, sparse, self.cfg.dense_weight)
        fused = fused[:top_k]
        d_map, s_map = dict(dense), dict(sparse)
        chunks = {int(c.meta["vid"]): c for c in self.kb.chunks([v for v, _ in fused])}
        hits = []
        for vid, score in fused:
            if vid not in chunks:
                continue
            scores = {"fused": round(score, 6)}
            if vid in d_map:
                scores["dense"] = round(d_map[vid], 4)
            if vid in s_map:
                scores["sparse"] = round(s_map[vid], 4)
            hits.append(Hit(chunk=chunks[vid], score=score, scores=scores))
        detail["dense"] = [[v, round(s, 4)] for v, s in dense[:10]]
        detail["sparse"] = [[v, round(s, 4)] for v, s in sparse[:10]]
        return hits, detail
