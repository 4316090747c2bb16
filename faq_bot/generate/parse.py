"""Parse the answer model's JSON output; anything that cannot be trusted becomes a refusal.

The model is asked for ``{"answer_in_context": bool, "answer": str, "evidence": [int, ...]}``.
Parsing is lenient about form and strict about meaning:

* Form: Markdown fences are stripped, the first JSON object in the text is used (prose around it is
  ignored), broken JSON (truncated by `max_new_tokens`, single quotes, trailing commas) is repaired with
  json-repair, booleans written as strings ("true", "yes", "是") are accepted, evidence numbers may be
  strings ("2", "[2]", "doc 2"); invalid or out-of-range evidence entries are dropped.
* Meaning, the unparseable-output rule: if no JSON object can be recovered, or it has no usable
  `answer_in_context`, the output is treated as a refusal (``ok=False``, `note` says why). The product
  prefers "no answer" to an unverified one; the caller keeps the raw text in the trace.
* ``answer_in_context: true`` with an empty answer is a refusal, and so is an answer that is itself a
  refusal phrase (信息不足, 没有找到, cannot answer, no answer, ...): the model judged "yes" but said "no".
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

import json_repair

logger = logging.getLogger(__name__)

__all__ = ["ParsedAnswer", "is_refusal_text", "parse_answer", "support"]

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)
_TRUE = {"true", "yes", "y", "1", "是", "有", "对", "真"}
_FALSE = {"false", "no", "n", "0", "否", "无", "没有", "不", "假", "none", "null", ""}
_REFUSAL_PHRASES = (
    # zh
    "信息不足", "没有找到", "未找到", "找不到相关", "无法回答", "无法确定", "无法提供", "没有相关", "没有提到",
    "没有提及", "未提及", "未提到", "不知道", "没有答案", "资料中没有", "文档中没有", "资料没有", "文档没有",
    "没有足够",
    # en
    "cannot answer", "can't answer", "can not answer", "unable to answer", "no answer", "not mentioned in",
    "don't know", "do not know", "insufficient information", "not enough information", "no information about",
    "no relevant information", "documents do not", "documents don't", "context does not", "context doesn't",
    "not in the documents", "not in the context", "not provided in",
)
_POLITE_PREFIX = re.compile(r"^(?:抱歉|对不起|很抱歉|不好意思|sorry|i'm sorry|i am sorry|unfortunately)[，,。.!！\s]*",
                            re.IGNORECASE)
_SHORT_ANSWER = 40  # characters: a refusal phrase inside a longer answer may be legitimate content


@dataclass
class ParsedAnswer:
    """The model's verdict after the rules above; `ok` is False when the output broke the JSON contract."""

    answer_in_context: bool
    answer: str
    evidence: list[int] = field(default_factory=list)
    ok: bool = True
    note: str = ""


def is_refusal_text(answer: str) -> bool:
    """True when `answer` is itself a refusal: it starts with a refusal phrase, or is short and contains one.

    The length guard keeps real answers such as "If the order is not found, contact support ..." intact.
    """
    text = _POLITE_PREFIX.sub("", answer.strip().lower())
    if not text:
        return False
    for phrase in _REFUSAL_PHRASES:
        pos = text.find(phrase)
        if pos == 0 or (pos > 0 and len(text) <= _SHORT_ANSWER):
            return True
    return False


def _refusal(note: str, ok: bool = False) -> ParsedAnswer:
    return ParsedAnswer(answer_in_context=False, answer="", evidence=[], ok=ok, note=note)


def _candidates(raw: str) -> list[str]:
    """Texts to search for a JSON object: fenced blocks first, then the whole output."""
    fenced = [m.group(1) for m in _FENCE.finditer(raw) if m.group(1).strip()]
    return [*fenced, raw]


def _first_object(text: str) -> tuple[dict | None, str]:
    """The first JSON object in `text` that looks like an answer; (obj, how) or (None, why)."""
    decoder = json.JSONDecoder()
    starts = [m.start() for m in re.finditer(r"\{", text)][:8]
    if not starts:
        return None, "no JSON object in output"
    fallback: dict | None = None
    for start in starts:
        try:
            obj, _ = decoder.raw_decode(text[start:])
            how = "json"
        except json.JSONDecodeError:
            try:
                obj = json_repair.loads(text[start:])
            except Exception as e:  # json-repair is best effort; a crash means "not recoverable"
                logger.debug("json-repair failed: %s", e)
                continue
            how = "repaired"
        if isinstance(obj, dict):
            if "answer_in_context" in obj or "answer" in obj:
                return obj, how
            fallback = fallback or obj
    if fallback is not None:
        return None, "JSON object without `answer_in_context` or `answer`"
    return None, "no JSON object could be recovered"


def _as_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v in _TRUE:
            return True
        if v in _FALSE:
            return False
    return None


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list):
        return "\n".join(_as_text(v) for v in value if _as_text(v))
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, ensure_ascii=False)


def _as_evidence(value: Any, n_passages: int | None) -> tuple[list[int], int]:
    """Valid 1-based passage numbers in order without duplicates, and how many entries were dropped."""
    if value is None:
        return [], 0
    items = value if isinstance(value, list) else re.split(r"[,，\s]+", value) if isinstance(value, str) else [value]
    out, dropped = [], 0
    for item in items:
        num: int | None = None
        if isinstance(item, bool):
            num = None
        elif isinstance(item, int):
            num = item
        elif isinstance(item, float) and item.is_integer():
            num = int(item)
        elif isinstance(item, str):
            m = re.fullmatch(r"\D{0,12}?(\d{1,4})\D{0,4}", item.strip())
            num = int(m.group(1)) if m else None
        if num is None or num < 1 or (n_passages is not None and num > n_passages):
            if not (isinstance(item, str) and not item.strip()):
                dropped += 1
            continue
        if num not in out:
            out.append(num)
    return out, dropped


def parse_answer(raw: str, *, n_passages: int | None = None) -> ParsedAnswer:
    """Parse one model output under the rules in the module docstring.

    Args:
        raw: the model's text, as generated.
        n_passages: passages in the prompt; evidence numbers outside 1..n_passages are dropped.
    """
    obj, how = None, "empty output"
    if raw and raw.strip():
        for text in _candidates(raw):
            obj, how = _first_object(text)
            if obj is not None:
                break
    if obj is None:
        return _refusal(f"unparseable output ({how}): treated as a refusal")

    notes = ["repaired broken JSON"] if how == "repaired" else []
    verdict = _as_bool(obj.get("answer_in_context"))
    answer = _as_text(obj.get("answer"))
    if verdict is None:
        got = obj.get("answer_in_context", "<missing>")
        return _refusal("; ".join([*notes, f"`answer_in_context` unusable ({got!r}): treated as a refusal"]))
    if not verdict:
        return ParsedAnswer(False, answer, [], True, "; ".join([*notes, "model judged: not in context"]))
    if not answer:
        return _refusal("; ".join([*notes, "answer_in_context true but answer empty: refusal"]), ok=True)
    if is_refusal_text(answer):
        return ParsedAnswer(False, answer, [], True, "; ".join([*notes, "answer is a refusal phrase: refusal"]))
    evidence, dropped = _as_evidence(obj.get("evidence"), n_passages)
    if dropped:
        notes.append(f"dropped {dropped} invalid evidence entr{'y' if dropped == 1 else 'ies'}")
    if not evidence:
        notes.append("no valid evidence")
    return ParsedAnswer(True, answer, evidence, True, "; ".join(notes))


_STOP_CJK = set("的了是在和与及或也都就而等着把被让给对从向到这那个些之其你我他她它们吗呢吧啊呀哦嗯可以会能要有没不很更最再还又")
_STOP_EN = {
    "a", "an", "the", "is", "are", "was", "were", "be", "been", "to", "of", "in", "on", "at", "for", "by", "with",
    "and", "or", "but", "it", "its", "this", "that", "these", "those", "you", "your", "we", "our", "they", "their",
    "i", "my", "me", "he", "she", "can", "could", "will", "would", "should", "may", "do", "does", "did", "has",
    "have", "had", "yes", "no", "not", "as", "from", "if", "so", "than", "then", "there", "here", "all", "any",
    "s", "t", "also", "please", "within", "up", "into", "about",
}
_NUM = re.compile(r"\d+(?:[.,]\d+)*")
_CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"[a-z]+")


def _content_units(text: str) -> set[str]:
    """CJK characters and English words that carry content (function words dropped), lower-cased."""
    text = text.lower()
    units = {c for c in _CJK_CHAR.findall(text) if c not in _STOP_CJK}
    units |= {_stem(w) for w in _WORD.findall(text) if w not in _STOP_EN and len(w) > 1}
    return units


def _stem(word: str) -> str:
    """Crude plural folding ("years" ~ "year", "policies" ~ "policy"); enough for an overlap check."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


_ZH_DIGITS = {"零": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
# Chinese numerals only where a counter follows, so words like 一般 or 统一 are left alone.
_ZH_NUM = re.compile(r"([零一二两三四五六七八九十]{1,3})(?=[天个年月日周次元倍件台张份位]|小时|分钟|工作日)")


def _zh_numeral(text: str) -> str:
    """"七天" -> "7天", "十五天" -> "15天", "二十四小时" -> "24小时" (1-99 before a counter)."""

    def value(m: re.Match) -> str:
        s = m.group(1)
        if "十" not in s:
            return str(_ZH_DIGITS[s]) if len(s) == 1 else m.group(0)
        tens, _, ones = s.partition("十")
        if (tens and tens not in _ZH_DIGITS) or (ones and ones not in _ZH_DIGITS):
            return m.group(0)
        return str((_ZH_DIGITS[tens] if tens else 1) * 10 + (_ZH_DIGITS[ones] if ones else 0))

    return _ZH_NUM.sub(value, text)


def support(answer: str, passages: list[str]) -> tuple[float, list[str]]:
    """How much of `answer` is found in `passages`: (share of its content units present, numbers absent).

    A cheap grounding check for small models, which often judge "true" and then answer from their own
    weights: a number in the answer that no passage contains (Chinese numerals before a counter count as
    numbers), or an answer made of words no passage uses, is not an answer from the knowledge base.
    """
    ctx = _zh_numeral(" ".join(passages))
    answer = _zh_numeral(answer)
    ctx_nums = {n.replace(",", "") for n in _NUM.findall(ctx)}
    missing = sorted({n for n in _NUM.findall(answer) if n.replace(",", "") not in ctx_nums})
    units = _content_units(answer)
    if not units:
        return (0.0 if missing else 1.0), missing
    ctx_units = _content_units(ctx)
    return len(units & ctx_units) / len(units), missing
