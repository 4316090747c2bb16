"""Our hybrid retrieval (dense + BM25 + fusion, optional rerank) as a llama-index retriever.

    from faq_bot.integrations.llama_index import FaqBotRetriever
    retriever = FaqBotRetriever.from_config("configs/default.yaml", rerank=True)
    nodes = retriever.retrieve("怎么申请退货")          # list[NodeWithScore], best first
    engine = RetrieverQueryEngine.from_args(retriever, llm=...)   # or any llama-index query engine

Each node is a `TextNode` whose `node_id` is the chunk id and whose text is the chunk body; metadata
holds `title`, `source`, `section` (shown to the LLM) and `doc_id`, `heading_path`, `position`, `vid`,
`scores` (hidden from the LLM and from embedding). Needs llama-index-core (pinned in requirements.txt).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llama_index.core.callbacks import CallbackManager
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

from ..config import AppConfig, load_config
from ..knowledge import KnowledgeBase
from ..rerank import Reranker, build_reranker
from ..retrieve import Retriever
from ..schema import Hit, Query

__all__ = ["FaqBotRetriever", "hit_to_node"]

_HIDDEN_KEYS = ["doc_id", "heading_path", "position", "vid", "scores"]


def hit_to_node(hit: Hit) -> NodeWithScore:
    """One retrieval hit as a scored llama-index node (node id = chunk id)."""
    c = hit.chunk
    metadata = {
        "title": Path(c.source).stem if c.source else c.doc_id,
        "source": c.source,
        "section": " › ".join(c.heading_path),
        "doc_id": c.doc_id,
        "heading_path": list(c.heading_path),
        "position": c.position,
        "vid": int(c.meta.get("vid", -1)),
        "scores": dict(hit.scores),
    }
    node = TextNode(id_=c.id, text=c.text, metadata=metadata,
                    excluded_llm_metadata_keys=list(_HIDDEN_KEYS), excluded_embed_metadata_keys=list(_HIDDEN_KEYS))
    return NodeWithScore(node=node, score=float(hit.score))


class FaqBotRetriever(BaseRetriever):
    """A llama-index `BaseRetriever` over the knowledge base's chunks.

    Args:
        retriever: our hybrid `Retriever` (dense FAISS or Qdrant + BM25, fused as configured).
        reranker: optional second stage; its `top_n` and `min_score` apply (nothing passing -> no nodes).
        top_k: fused candidates per query (default `retrieve.top_k`).
        top_n: nodes kept after rerank (default `rerank.top_n`).
        mode: "hybrid" (default), "dense" or "sparse".
    """

    def __init__(self, retriever: Retriever, *, reranker: Reranker | None = None, top_k: int | None = None,
                 top_n: int | None = None, mode: str | None = None,
                 callback_manager: CallbackManager | None = None, verbose: bool = False) -> None:
        if mode not in (None, "hybrid", "dense", "sparse"):
            raise ValueError(f"`mode` must be 'hybrid', 'dense' or 'sparse', got {mode!r}.")
        for name, value in (("top_k", top_k), ("top_n", top_n)):
            if value is not None and (not isinstance(value, int) or value <= 0):
                raise ValueError(f"`{name}` must be a positive int or None, got {value!r}.")
        self.retriever = retriever
        self.reranker = reranker
        self.top_k = top_k
        self.top_n = top_n
        self.mode = mode
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    @classmethod
    def from_config(cls, cfg: AppConfig | str | Path | None = None, *, kb: KnowledgeBase | None = None,
                    rerank: bool = False, **kwargs: Any) -> FaqBotRetriever:
        """Open the configured knowledge base (a path or None loads that YAML / the default config).

        `rerank=True` adds the configured reranker (`encoder` or `cross_encoder`; `llm` needs the pipeline's
        generator, so build `Reranker` yourself and pass it to the constructor).
        """
        if not isinstance(cfg, AppConfig):
            cfg = load_config(cfg)
        kb = kb or KnowledgeBase(cfg)
        reranker = build_reranker(cfg.rerank, doc_model=cfg.embed.doc_model, kb=kb) if rerank else None
        return cls(Retriever(cfg.retrieve, kb), reranker=reranker, **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = Query(text=query_bundle.query_str)
        hits, _ = self.retriever.retrieve(query, self.top_k, mode=self.mode)
        if self.reranker is not None:
            hits, _ = self.reranker.rerank(query, hits, self.top_n)
        elif self.top_n is not None:
            hits = hits[: self.top_n]
        return [hit_to_node(h) for h in hits]
