"""Mixed Chinese/English tokenizer for BM25: NFKC, lower-case, jieba for Han runs, stop words dropped."""

from __future__ import annotations

import logging
import re
import threading
import unicodedata
from typing import Iterable

__all__ = ["TOKENIZER_VERSION", "tokenize", "tokenize_many"]

logger = logging.getLogger(__name__)

# Bump when the output for the same text changes: stored BM25 corpora record it.
TOKENIZER_VERSION = 1

_HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ebef\U00030000-\U0003134f"
_HAN_RUN = re.compile(f"([{_HAN}]+)")
# Numbers stay whole ("2.5", "1,000" -> "1000"); otherwise runs of letters/digits of any script, no "_".
_WORD = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)+|[^\W_]+")

STOPWORDS_EN = frozenset(
    """
    a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her
    here hers herself him himself his how i if in into is it its itself just me more most my myself nor of
    off on once only or other our ours ourselves out over own same she should so some such than that the
    their theirs them themselves then there these they this those through to too under until up very was we
    were what when where which while who whom why will with would you your yours yourself yourselves
    s t d ll m re ve please
    """.split()
)
# Negations (不, 没, 无, not, no) are deliberately kept: they flip the meaning of a policy question.
STOPWORDS_ZH = frozenset(
    """
    的 了 吗 呢 吧 啊 呀 哦 嗯 哈 么 嘛 是 我 你 您 他 她 它 我们 你们 他们 她们 它们 这 那 这个 那个 这些 那些
    和 与 及 或 或者 在 就 都 也 还 又 把 被 给 让 对 从 向 之 其 请问 请 一下 一个 怎么 怎样 怎么样 如何 什么
    哪 哪些 为什么 可以 能 能否 能不能 是否 是不是 有没有 要 想 应该 地 得 着 过
    """.split()
)
STOPWORDS = STOPWORDS_EN | STOPWORDS_ZH

_jieba_lock = threading.Lock()
_jieba = None


def _get_jieba():
    """Import and initialize jieba once, without its INFO chatter on stderr."""
    global _jieba
    if _jieba is None:
        with _jieba_lock:
            if _jieba is None:
                import jieba

                if hasattr(jieba, "setLogLevel"):
                    jieba.setLogLevel(logging.WARNING)
                logging.getLogger("jieba").setLevel(logging.WARNING)
                jieba.initialize()
                _jieba = jieba
    return _jieba


def _han_tokens(run: str) -> list[str]:
    jieba = _get_jieba()
    tokens = jieba.lcut_for_search(run)
    # Search mode follows one segmentation path ("退货运费" -> 退/货运/运费), so a query for
    # "退货" would miss; adding the other multi-character dictionary words (full mode) fixes that.
    seen = set(tokens)
    for word in jieba.lcut(run, cut_all=True):
        if len(word) > 1 and word not in seen:
            tokens.append(word)
            seen.add(word)
    return tokens


def tokenize(text: str) -> list[str]:
    """Split `text` into lower-case search tokens: jieba (search mode) for Chinese, words/numbers otherwise.

    Punctuation, whitespace and stop words are dropped; an empty list is a valid result.
    """
    if not isinstance(text, str):
        raise ValueError(f"`text` must be a str, got {type(text).__name__}.")
    text = unicodedata.normalize("NFKC", text).lower()
    out: list[str] = []
    for i, part in enumerate(_HAN_RUN.split(text)):
        if not part:
            continue
        # re.split with one capturing group alternates: non-Han, Han, non-Han, ...
        pieces = _han_tokens(part) if i % 2 else [w.replace(",", "") for w in _WORD.findall(part)]
        out.extend(t for t in pieces if t.strip() and t not in STOPWORDS)
    return out


def tokenize_many(texts: Iterable[str]) -> list[list[str]]:
    """`tokenize` each text, in order."""
    return [tokenize(t) for t in texts]
