"""Heading-aware chunking: paths, size limits with the heading prefix, sentence cuts, overlap, section borders."""

from __future__ import annotations

import re

import pytest

from faq_bot.config import IngestConfig
from faq_bot.ingest import Block, chunk_blocks, read_document


def count_chars(text: str) -> int:
    return len(text)


def count_words(text: str) -> int:
    return len(text.split())


ZH_RULES = [
    "商品签收后七天内可申请退货。", "退货商品须保持完好。", "吊牌和配件应当齐全。", "赠品需要一并退回。",
    "定制商品不支持退货。", "生鲜食品不支持退货！", "退货申请须在订单页提交。", "客服将在一天内审核；",
    "审核通过后请寄回商品。", "寄回时请填写运单号。", "仓库收货后进行质检。", "质检合格即办理退款。",
]
ZH_SPECIAL = ["贴身衣物拆封后不退。", "数码产品激活后不退。", "大件家具需预约取件。", "预约费用由买家承担？"]


def zh_blocks() -> list[Block]:
    return [
        Block("text", "本文件由客服部维护。"),
        Block("heading", "退货政策", 1),
        Block("text", "本政策适用于所有订单。"),
        Block("heading", "一、退货条件", 2),
        Block("text", "".join(ZH_RULES[:6])),
        Block("text", "".join(ZH_RULES[6:])),
        Block("heading", "（一）特殊商品", 3),
        Block("text", "".join(ZH_SPECIAL)),
        Block("heading", "二、运费", 2),
        Block("heading", "（一）空章节", 3),
        Block("heading", "三、退款", 2),
        Block("text", "退款三个工作日内到账。"),
    ]


def sentences_of(text: str) -> list[str]:
    return [s for s in re.findall(r"[^。！？；\n]+[。！？；]?", text) if s.strip()]


def by_path(chunks, *path: str):
    return [c for c in chunks if c.heading_path == list(path)]


def test_chunk_chinese_paths_limits_sentences_overlap():
    chunks = chunk_blocks(zh_blocks(), doc_id="d1", source="政策.txt", count_tokens=count_chars,
                          chunk_tokens=60, overlap=15)
    assert [c.id for c in chunks] == [f"d1:{i}" for i in range(len(chunks))]
    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert all(c.source == "政策.txt" and c.doc_id == "d1" for c in chunks)
    # Size limit holds for the text that is embedded, heading path included.
    assert all(count_chars(c.embed_text()) <= 60 for c in chunks)
    # Heading paths, outermost first; empty sections give no chunk.
    assert chunks[0].heading_path == [] and chunks[0].text == "本文件由客服部维护。"
    assert [c.text for c in by_path(chunks, "退货政策")] == ["本政策适用于所有订单。"]
    assert by_path(chunks, "退货政策", "三、退款")[0].text == "退款三个工作日内到账。"
    assert not by_path(chunks, "退货政策", "二、运费") and not by_path(chunks, "退货政策", "二、运费", "（一）空章节")
    assert {tuple(c.heading_path) for c in chunks} == {
        (), ("退货政策",), ("退货政策", "一、退货条件"), ("退货政策", "一、退货条件", "（一）特殊商品"),
        ("退货政策", "三、退款")}

    rules = by_path(chunks, "退货政策", "一、退货条件")
    assert len(rules) >= 3
    for chunk in rules:
        got = sentences_of(chunk.text)
        # Whole sentences only, all from this section, in order.
        start = ZH_RULES.index(got[0])
        assert got == ZH_RULES[start:start + len(got)]
    for prev, nxt in zip(rules, rules[1:]):
        shared = [s for s in sentences_of(nxt.text) if s in sentences_of(prev.text)]
        assert shared and prev.text.endswith("".join(shared))  # the next chunk repeats the end of the previous
        assert count_chars("".join(shared)) <= 15
    # Every sentence of the section is in some chunk.
    assert {s for c in rules for s in sentences_of(c.text)} == set(ZH_RULES)
    special = by_path(chunks, "退货政策", "一、退货条件", "（一）特殊商品")
    assert {s for c in special for s in sentences_of(c.text)} == set(ZH_SPECIAL)


def test_chunk_english_with_word_counter():
    body = ("Returns are accepted within 30 days of delivery. Items must be unused and in their original box. "
            "Version 3.14 of the app shows a return button! Do you ship abroad? We ship to 40 countries. "
            "Refunds reach your card in five business days. Gift cards cannot be refunded.")
    blocks = [Block("heading", "Help Center", 1), Block("heading", "Returns and refunds", 2), Block("text", body),
              Block("heading", "Contact", 2), Block("text", "Call us any day.")]
    chunks = chunk_blocks(blocks, doc_id="en", source="help.md", count_tokens=count_words, chunk_tokens=24, overlap=9)
    returns = by_path(chunks, "Help Center", "Returns and refunds")
    assert len(returns) >= 3
    assert all(count_words(c.embed_text()) <= 24 for c in chunks)
    assert all(re.search(r"[.!?]$", c.text) for c in returns)  # cut at sentence ends only
    assert any("Version 3.14 of the app" in c.text for c in returns)  # "3.14" is not a sentence end
    for prev, nxt in zip(returns, returns[1:]):
        first_sentence = re.match(r".+?[.!?](?=\s|$)", nxt.text).group(0)
        assert first_sentence in prev.text  # overlap: whole sentences from the previous chunk
    assert by_path(chunks, "Help Center", "Contact")[0].text == "Call us any day."


def test_chunk_long_sentence_split_hard():
    zh = "这是一句非常长而且没有任何标点符号的中文句子" * 10
    chunks = chunk_blocks([Block("heading", "长句", 1), Block("text", zh)], doc_id="x", source="x.txt",
                          count_tokens=count_chars, chunk_tokens=50, overlap=0)
    assert len(chunks) > 1 and all(count_chars(c.embed_text()) <= 50 for c in chunks)
    assert "".join(c.text for c in chunks) == zh
    en = " ".join(f"word{i}" for i in range(100))
    chunks = chunk_blocks([Block("text", en)], doc_id="y", source="y.txt", count_tokens=count_chars,
                          chunk_tokens=60, overlap=10)
    assert all(len(c.text) <= 60 for c in chunks)
    assert " ".join(c.text for c in chunks).split() == en.split()  # cut between words, never inside one


def test_chunk_overlap_zero_and_tiny_sections_stay_apart():
    blocks = [Block("heading", "A", 1), Block("heading", "A1", 2), Block("text", "短。"),
              Block("heading", "A2", 2), Block("text", "也短。"), Block("text", "第二段。")]
    chunks = chunk_blocks(blocks, doc_id="t", source="t", count_tokens=count_chars, chunk_tokens=100, overlap=0)
    assert [(c.heading_path, c.text) for c in chunks] == [(["A", "A1"], "短。"), (["A", "A2"], "也短。\n第二段。")]
    text = "".join(ZH_RULES)
    chunks = chunk_blocks([Block("text", text)], doc_id="t", source="t", count_tokens=count_chars,
                          chunk_tokens=40, overlap=0)
    assert "".join(c.text for c in chunks) == text  # without overlap nothing repeats


def test_chunk_long_heading_path_still_fits():
    blocks = [Block("heading", "很长的标题" * 20, 1), Block("heading", "小节", 2), Block("text", "正文内容。")]
    chunks = chunk_blocks(blocks, doc_id="h", source="h", count_tokens=count_chars, chunk_tokens=30, overlap=5)
    assert chunks[0].heading_path == ["小节"] and chunks[0].text == "正文内容。"
    assert count_chars(chunks[0].embed_text()) <= 30


def test_chunk_rejects_bad_sizes():
    with pytest.raises(ValueError, match="`overlap` must be >= 0 and < `chunk_tokens` \\(10\\), got 10"):
        chunk_blocks([], doc_id="d", source="s", count_tokens=len, chunk_tokens=10, overlap=10)
    with pytest.raises(ValueError, match="`chunk_tokens` must be > 0"):
        chunk_blocks([], doc_id="d", source="s", count_tokens=len, chunk_tokens=0, overlap=0)


def test_chunk_after_reading_markdown():
    md = ("# 售后政策\n\n一、退货\n\n" + "".join(ZH_RULES) + "\n\n二、换货\n\n换货需在十五天内申请。\n\n## 附则\n\n本政策自发布之日起施行。\n")
    blocks = read_document(md.encode(), "after-sales.md", IngestConfig())
    cfg = IngestConfig(chunk_tokens=64, chunk_overlap=16)
    chunks = chunk_blocks(blocks, doc_id="m", source="after-sales.md", count_tokens=count_chars,
                          chunk_tokens=cfg.chunk_tokens, overlap=cfg.chunk_overlap)
    assert [tuple(c.heading_path) for c in chunks][-2:] == [("售后政策", "二、换货"), ("售后政策", "附则")]
    assert all(c.heading_path == ["售后政策", "一、退货"] for c in chunks[:-2])
    assert all(count_chars(c.embed_text()) <= 64 for c in chunks)
    assert chunks[-1].embed_text() == "售后政策 > 附则\n本政策自发布之日起施行。"
