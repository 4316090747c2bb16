"""Answer-support checks on text: is an answer in a passage (substring, key facts, token overlap)?

One set of rules decides both "the chunk supports this synthesized answer" and "this passage may hold the
answer, so it can never be a negative" — the second with a lower bar, so refusal examples stay clean.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Sequence

__all__ = ["key_spans", "may_contain", "normalize", "overlap", "supported"]

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"[a-z0-9]+")
_UNIT_ZH = "天日元个件次倍年月周号小时分钟秒积分点%折单笔张台人岁位公斤克米份项"
_NUMBER_SPAN = re.compile(rf"\d+(?:[.,]\d+)?\s*(?:[{_UNIT_ZH}]|%|(?:days?|hours?|minutes?|rmb|yuan|points?|"
                          r"percent|years?|months?|weeks?|times?|items?|kg|km)\b)?", re.IGNORECASE)
_QUOTED = re.compile(r"[“「『\"]([^”」』\"]{2,30})[”」』\"]")


def normalize(text: str) -> str:
    """NFKC, lower case, all whitespace removed: containment then ignores width, case and spacing."""
    return _SPACE.sub("", unicodedata.normalize("NFKC", text or "").lower())


def _features(text: str, cjk: bool) -> set[str]:
    t = unicodedata.normalize("NFKC", text or "").lower()
    if cjk:  # character bigrams: no word segmentation, so a phrase scores the same wherever it occurs
        chars = [c for c in t if c.isalnum()]
        return {a + b for a, b in zip(chars, chars[1:])} or set(chars)
    return set(_WORD.findall(t))


def overlap(answer: str, text: str) -> float:
    """Share of the answer's features (zh: character bigrams, else words) found in `text`; 0 for an empty answer."""
    cjk = bool(_CJK.search(answer or ""))
    a = _features(answer, cjk)
    if not a:
        return 0.0
    return len(a & _features(text, cjk)) / len(a)


def key_spans(answer: str) -> list[str]:
    """Facts an answer hinges on: numbers with their unit ("7天", "20 RMB") and quoted terms (“申请售后”)."""
    spans = [m.group(0).strip() for m in _NUMBER_SPAN.finditer(answer or "")]
    spans += [m.group(1).strip() for m in _QUOTED.finditer(answer or "")]
    return list(dict.fromkeys(s for s in spans if s))


def supported(answer: str, text: str, min_overlap: float) -> bool:
    """The answer is a substring of `text` (normalized) or shares at least `min_overlap` of its features."""
    a = normalize(answer)
    if not a:
        return False
    return a in normalize(text) or overlap(answer, text) >= min_overlap


def may_contain(text: str, answer: str, parts: Sequence[Sequence[str]] | None, max_overlap: float) -> bool:
    """True when `text` might answer the question: then it is never used as a negative passage.

    Short-span answers (`parts`, as RGB): any alternative of any part occurring is enough (token overlap means
    nothing for "6.5%"). Sentence answers: the answer itself, all its key facts together, or `max_overlap` of
    its features.
    """
    t = normalize(text)
    if parts:
        return any(normalize(alt) and normalize(alt) in t for part in parts for alt in part)
    a = normalize(answer)
    if not a:
        return False
    if a in t:
        return True
    keys = [normalize(k) for k in key_spans(answer)]
    if keys and all(k in t for k in keys):
        return True
    return overlap(answer, text) >= max_overlap
