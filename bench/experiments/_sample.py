"""What the FAQ experiments share: the sample eval set's single-turn questions, and the sample store's matcher with
those questions embedded (the experiments run as scripts: `python bench/experiments/NAME.py`)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SAMPLE_EVAL = ROOT / "knowledge" / "eval" / "sample_eval.jsonl"
SAMPLE_FAQ = (ROOT / "knowledge" / "faq" / "faq_zh.csv", ROOT / "knowledge" / "faq" / "faq_en.jsonl")


def sample_faqs() -> list[dict]:
    """The sample FAQ as ingest reads it (`read_faqs`), one dict per FAQ (id, question, answer, similar_questions,
    category): what `eval faq --kb FILE.jsonl` reads back."""
    from faq_bot.ingest import read_faqs

    keys = {"id", "question", "answer", "similar_questions", "category"}
    return [f.model_dump(include=keys) for p in SAMPLE_FAQ for f in read_faqs(p.read_bytes(), p.name)]


def sample_queries() -> list[dict]:
    """{"question", "faq_id"} of the sample eval set's single-turn items (faq_id None: out of scope), the queries
    file `eval faq --kb ... --queries ...` reads."""
    out = []
    for line in SAMPLE_EVAL.read_text(encoding="utf-8").splitlines():
        if line.strip():
            d = json.loads(line)
            if not d.get("history"):
                out.append({"question": d["question"], "faq_id": d.get("faq_id")})
    return out


@dataclass
class SampleSet:
    cfg: Any  # AppConfig
    matcher: Any  # FaqMatcher on the sample store
    bank: Any  # faq_head.Bank with answer examples
    texts: list[str]  # the in-scope single-turn questions whose FAQ is in the bank (68)
    gold: np.ndarray  # their FAQ's row in the bank
    q: np.ndarray  # their query vectors, concatenated over the matcher's encoders


def sample_set() -> SampleSet:
    """The default matcher on the sample store (`data/`, built by `make kb`) and the eval set's paraphrases."""
    from faq_bot.config import load_config
    from faq_bot.faq import FaqMatcher, _joint
    from faq_bot.knowledge import KnowledgeBase

    if not (ROOT / "data" / "faq_bot.db").exists():
        sys.exit("data/faq_bot.db: build the sample knowledge base first (make kb).")
    cfg = load_config(ROOT / "configs" / "default.yaml")
    matcher = FaqMatcher(cfg.faq, KnowledgeBase(cfg))
    bank = matcher._with_answer_examples(matcher._refresh().scorer.bank)
    items = [d for d in sample_queries() if d["faq_id"] in bank.faq_ids]
    texts = [d["question"] for d in items]
    gold = np.array([bank.faq_ids.index(d["faq_id"]) for d in items])
    q = _joint([e.encode_queries(texts, 64) for e in matcher.encoders]).astype(np.float32)
    return SampleSet(cfg, matcher, bank, texts, gold, q)
