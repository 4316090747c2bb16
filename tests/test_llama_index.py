"""llama-index integration: our hybrid retriever as a `BaseRetriever` (real FAISS, bm25s, e5-small, encoder rerank)."""

from __future__ import annotations

import asyncio

import pytest
from llama_index.core.retrievers import BaseRetriever
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle, TextNode

from faq_bot.integrations.llama_index import FaqBotRetriever
from faq_bot.knowledge import KnowledgeBase
from faq_bot.rerank import build_reranker
from faq_bot.retrieve import Retriever
from faq_bot.schema import Query

from conftest import make_config

DOCS = {
    "积分规则.md": "# 积分规则\n## 兑换\n积分可以兑换优惠券，100积分抵1元。\n## 过期\n积分每年12月31日清零。\n",
    "配送说明.md": "# 配送说明\n## 运费\n订单满99元包邮，不满99元收取运费8元。\n## 时效\n一般3到5个工作日送达，偏远地区7天。\n",
    "returns.md": "# Returns\n## Window\nItems can be returned within 30 days of delivery.\n"
                  "## Refunds\nRefunds reach the original payment method within 5 business days.\n",
}
QUESTIONS = ["满多少钱包邮", "积分什么时候清零", "how long do refunds take", "积分怎么兑换优惠券"]


@pytest.fixture(scope="module")
def kb(tmp_path_factory, faq_encoder, doc_encoder) -> KnowledgeBase:
    kb = KnowledgeBase(make_config(tmp_path_factory.mktemp("llama-kb")))
    for name, text in DOCS.items():
        assert kb.ingest_bytes(text.encode("utf-8"), name).status == "added"
    return kb


def _ids(nodes: list[NodeWithScore]) -> list[str]:
    return [n.node.node_id for n in nodes]


def test_llama_index_retriever_returns_our_hits_in_our_order(kb):
    ours = Retriever(kb.cfg.retrieve, kb)
    wrapper = FaqBotRetriever(ours)
    assert isinstance(wrapper, BaseRetriever)
    for question in QUESTIONS:
        hits, _ = ours.retrieve(Query(text=question))
        nodes = wrapper.retrieve(question)
        assert hits and _ids(nodes) == [h.chunk.id for h in hits], question
        assert [n.score for n in nodes] == pytest.approx([h.score for h in hits])
        assert all(isinstance(n, NodeWithScore) and isinstance(n.node, TextNode) for n in nodes)
        assert _ids(wrapper.retrieve(QueryBundle(question))) == _ids(nodes)  # a QueryBundle works too
        assert _ids(asyncio.run(wrapper.aretrieve(question))) == _ids(nodes)

    top = wrapper.retrieve("满多少钱包邮")[0]
    chunk = kb.store.chunks(doc_id=top.node.metadata["doc_id"])[0]
    assert top.node.node_id == chunk.id and "99元包邮" in top.node.get_content()
    meta = top.node.metadata
    assert meta["title"] == "配送说明" and meta["source"] == "配送说明.md" and meta["section"] == "配送说明 › 运费"
    assert meta["heading_path"] == ["配送说明", "运费"] and meta["vid"] == chunk.meta["vid"]
    assert set(meta["scores"]) >= {"fused", "dense", "sparse"}
    llm_view = top.node.get_content(MetadataMode.LLM)  # what a query engine shows the LLM
    assert "source: 配送说明.md" in llm_view and "section: 配送说明 › 运费" in llm_view
    assert "vid" not in llm_view and "doc_id" not in llm_view and "scores" not in llm_view


def test_llama_index_retriever_top_k_mode_and_rerank(kb):
    ours = Retriever(kb.cfg.retrieve, kb)
    assert len(FaqBotRetriever(ours, top_k=2).retrieve("积分什么时候清零")) == 2
    sparse, _ = ours.retrieve(Query(text="运费"), mode="sparse")
    assert _ids(FaqBotRetriever(ours, mode="sparse").retrieve("运费")) == [h.chunk.id for h in sparse]

    reranker = build_reranker(kb.cfg.rerank, doc_model=kb.cfg.embed.doc_model, kb=kb)  # `encoder`, the default
    wrapper = FaqBotRetriever(ours, reranker=reranker)
    for question in QUESTIONS:
        query = Query(text=question)
        kept, _ = reranker.rerank(query, ours.retrieve(query)[0])
        nodes = wrapper.retrieve(question)
        assert _ids(nodes) == [h.chunk.id for h in kept], question
        assert len(nodes) <= kb.cfg.rerank.top_n and all("rerank" in n.node.metadata["scores"] for n in nodes)
    assert wrapper.retrieve("满多少钱包邮")[0].node.metadata["source"] == "配送说明.md"

    built = FaqBotRetriever.from_config(kb.cfg, kb=kb, rerank=True)
    assert built.reranker.backend == "encoder"
    assert _ids(built.retrieve("how long do refunds take")) == _ids(wrapper.retrieve("how long do refunds take"))
    with pytest.raises(ValueError, match="`mode`"):
        FaqBotRetriever(ours, mode="bm25")
    with pytest.raises(ValueError, match="`top_k`"):
        FaqBotRetriever(ours, top_k=0)


def test_llama_index_query_engine_uses_our_nodes(kb):
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine

    wrapper = FaqBotRetriever(Retriever(kb.cfg.retrieve, kb), top_k=3)
    engine = RetrieverQueryEngine.from_args(wrapper, llm=MockLLM(max_tokens=8))  # offline stand-in LLM
    response = engine.query("满多少钱包邮")
    assert _ids(response.source_nodes) == _ids(wrapper.retrieve("满多少钱包邮"))
    assert response.source_nodes[0].node.metadata["source"] == "配送说明.md"
