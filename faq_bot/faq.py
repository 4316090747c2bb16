"""FAQ stage: exact normalized match, then vector match over standard + similar questions, per-FAQ scores."""

from __future__ import annotations

import logging
import re
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from .config import FaqConfig
from .knowledge import KnowledgeBase
from .schema import Faq, FaqMatch, Query

logger = logging.getLogger(__name__)

__all__ = ["FaqMatcher", "FaqResult", "normalize_question"]

_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)


def normalize_question(text: str) -> str:
    """Full/half width folded (NFKC), lower-cased, punctuation and spaces removed."""
    return _PUNCT.sub("", unicodedata.normalize("NFKC", text).lower())


@dataclass
class FaqResult:
    """What the FAQ stage decided, with every candidate for the trace."""

    decision: Literal["answer", "suggest", "none"]
    matches: list[FaqMatch] = field(default_factory=list)
    exact: bool = False
    ms: float = 0.0

    @property
    def best(self) -> FaqMatch | None:
        return self.matches[0] if self.matches else None


class FaqMatcher:
    """Matches a question to FAQ entries; answers above `answer_threshold`, suggests above `suggest_threshold`."""

    def __init__(self, cfg: FaqConfig, kb: KnowledgeBase):
        self.cfg = cfg
        self.kb = kb
        self._lock = threading.Lock()
        self._generation = -1
        self._faqs: dict[str, Faq] = {}
        self._q2faq: dict[int, tuple[str, str]] = {}
        self._exact: dict[str, str] = {}

    def warm_up(self) -> None:
        self.kb.faq_encoder.encode_query("warm up")
        self._refresh()

    def _refresh(self) -> None:
        iset = self.kb.faq_index()
        if iset.generation == self._generation:
            return
        with self._lock:
            if iset.generation == self._generation:
                return
            faqs = {f.id: f for f in self.kb.store.faqs(enabled_only=True)}
            q2faq, exact = {}, {}
            for qid, faq_id, text in self.kb.store.faq_questions():
                if faq_id in faqs:
                    q2faq[qid] = (faq_id, text)
                    exact.setdefault(normalize_question(text), faq_id)
            self._faqs, self._q2faq, self._exact, self._generation = faqs, q2faq, exact, iset.generation

    def match(self, query: Query, top_k: int | None = None) -> FaqResult:
        """Score FAQs for `query.standalone`; returns the decision and the ranked candidates."""
        t0 = time.perf_counter()
        self._refresh()
        text = query.standalone
        faq_id = self._exact.get(normalize_question(text))
        if faq_id is not None:
            m = FaqMatch(faq=self._faqs[faq_id], score=1.0, matched_question=text, scores={"exact": 1.0})
            return FaqResult("answer", [m], exact=True, ms=_ms(t0))
        matches = self._vector_matches(text, top_k or self.cfg.top_k)
        best = matches[0].score if matches else 0.0
        if best >= self.cfg.answer_threshold:
            decision = "answer"
        elif best >= self.cfg.suggest_threshold:
            decision = "suggest"
        else:
            decision = "none"
        return FaqResult(decision, matches, ms=_ms(t0))

    def suggestions(self, result: FaqResult) -> list[FaqMatch]:
        """Up to `max_suggestions` FAQs in the suggestion zone."""
        lo = self.cfg.suggest_threshold
        return [m for m in result.matches if m.score >= lo][: self.cfg.max_suggestions]

    def _vector_matches(self, text: str, k: int) -> list[FaqMatch]:
        iset = self.kb.faq_index()
        if iset.dense is None or len(iset.dense) == 0:
            return []
        q = self.kb.faq_encoder.encode_query(text)
        scores, ids = iset.dense.search(q, min(k, len(iset.dense)))
        per_faq: dict[str, list[tuple[float, str]]] = {}
        for s, qid in zip(scores[0], ids[0]):
            hit = self._q2faq.get(int(qid))
            if hit is not None:
                per_faq.setdefault(hit[0], []).append((float(s), hit[1]))
        out = []
        for faq_id, cand in per_faq.items():
            cand.sort(reverse=True)
            if self.cfg.aggregate == "top2_mean" and len(cand) > 1:
                score = float(np.mean([c[0] for c in cand[:2]]))
            else:
                score = cand[0][0]
            out.append(FaqMatch(faq=self._faqs[faq_id], score=round(score, 4), matched_question=cand[0][1],
                                scores={"dense": round(cand[0][0], 4)}))
        out.sort(key=lambda m: m.score, reverse=True)
        return out


def _ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000
