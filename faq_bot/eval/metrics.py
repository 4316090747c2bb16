"""Evaluation metrics: RGB string scoring, answer containment, refusal confusion, ROUGE-L/BLEU, FAQ thresholds."""

from __future__ import annotations

import logging
import math
import re
from functools import lru_cache
from typing import Any, Literal, Sequence

import numpy as np

from faq_bot.eval.datasets import to_answer_parts

__all__ = [
    "DEFAULT_REFUSAL_TEXTS",
    "RGB_FACT_PHRASES",
    "RGB_REJECTION_PHRASES",
    "bleu",
    "bootstrap_delta",
    "contains_answer",
    "corpus_bleu",
    "fact_flag",
    "faq_metrics",
    "is_rejection",
    "normalize_prediction",
    "percentiles",
    "pick_threshold",
    "refusal_confusion",
    "rgb_all_rate",
    "rgb_correct",
    "rgb_fact_rates",
    "rgb_labels",
    "rgb_reject_ok",
    "rouge_l",
    "threshold_sweep",
    "tokenize",
]

logger = logging.getLogger(__name__)

RGB_REJECTION_PHRASES = ("信息不足", "insufficient information")  # upstream evalue.py, case-sensitive
RGB_FACT_PHRASES = ("事实性错误", "factual errors")
DEFAULT_REFUSAL_TEXTS = ("抱歉，知识库中没有找到相关答案。", "Sorry, the knowledge base has no answer to that.")
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_WORD = re.compile(r"\w+|[^\w\s]")

AnswerParts = Sequence[Sequence[str]]


def _safe_div(num: float, den: float) -> float:
    return num / den if den else 0.0


# ---------------------------------------------------------------------------- RGB string scoring


def normalize_prediction(text: str, lang: str) -> str:
    """RGB rule: for Chinese sets every ASCII space is removed; other languages are left as is."""
    return text.replace(" ", "") if lang == "zh" else text


def is_rejection(text: str, refusal_texts: Sequence[str] = DEFAULT_REFUSAL_TEXTS) -> bool:
    """True when `text` contains an RGB rejection phrase or one of our refusal texts (case-sensitive substrings).

    Our refusal texts also match with their spaces removed, so they survive the zh space removal;
    the RGB phrases match only literally, as upstream.
    """
    if any(p in text for p in RGB_REJECTION_PHRASES):
        return True
    return any(r and (r in text or r.replace(" ", "") in text) for r in refusal_texts)


def rgb_labels(
    prediction: str,
    answer_parts: AnswerParts | Sequence[str | Sequence[str]] | str,
    lang: str,
    refusal_texts: Sequence[str] = DEFAULT_REFUSAL_TEXTS,
) -> list[int]:
    """Upstream `predict` + `checkanswer` labels.

    Returns:
        ``[-1]`` for a rejection; otherwise one label per answer part: 1 if (any alternative of) the
        lower-cased part is a substring of the lower-cased, zh-space-stripped prediction, else 0.
    """
    text = normalize_prediction(prediction, lang)
    if is_rejection(text, refusal_texts):
        return [-1]
    text = text.lower()
    parts = to_answer_parts(answer_parts)  # also accepts upstream's raw `answer` (str, or list of str/list)
    return [int(any(alt.lower() in text for alt in part)) for part in parts]


def rgb_correct(labels: Sequence[int]) -> bool:
    """Upstream accuracy: not a rejection and every answer part found (``0 not in labels and 1 in labels``)."""
    return 0 not in labels and 1 in labels


def rgb_reject_ok(labels: Sequence[int]) -> bool:
    """Upstream noise_rate == 1 rule: a rejection counts, and so does an item that still has the full answer."""
    return (len(labels) > 0 and labels[0] == -1) or rgb_correct(labels)


def rgb_all_rate(labels_list: Sequence[Sequence[int]], noise_rate: float) -> float:
    """Upstream `all_rate` over items: rejection rate (as `rgb_reject_ok`) at noise 1, else accuracy."""
    if not labels_list:
        return 0.0
    ok = rgb_reject_ok if noise_rate == 1 else rgb_correct
    return sum(ok(labels) for labels in labels_list) / len(labels_list)


def fact_flag(prediction: str, lang: str | None = None) -> int:
    """1 when the prediction says the documents contain factual errors (`事实性错误` / `factual errors`).

    With `lang`, the prediction is first normalized as upstream does (zh: spaces removed).
    """
    text = normalize_prediction(prediction, lang) if lang else prediction
    return int(any(p in text for p in RGB_FACT_PHRASES))


def rgb_fact_rates(labels_list: Sequence[Sequence[int]], fact_flags: Sequence[int]) -> dict[str, float]:
    """Upstream `_fact` scores: error detection (share flagged) and correction (among flagged, `0 not in labels`)."""
    if len(labels_list) != len(fact_flags):
        raise ValueError(f"`labels_list` and `fact_flags` differ in length: {len(labels_list)} != {len(fact_flags)}.")
    flagged = [labels for labels, flag in zip(labels_list, fact_flags) if flag == 1]
    corrected = sum(0 not in labels for labels in flagged)
    return {
        "fact_check_rate": _safe_div(len(flagged), len(labels_list)),
        "correct_rate": _safe_div(corrected, len(flagged)),
        "fact_tt": len(flagged),
        "correct_tt": corrected,
    }


# ---------------------------------------------------------------------------- answer containment, refusal


def contains_answer(prediction: str, answer_parts: AnswerParts, lang: str | None = None) -> bool:
    """Every part has an alternative contained in the prediction; case-insensitive.

    For Chinese (`lang="zh"`, or unset and CJK text present) spaces are removed from both sides.
    No parts -> False.
    """
    if isinstance(answer_parts, str) or any(isinstance(part, str) for part in answer_parts):
        raise ValueError(
            f"`answer_parts` must be a list of lists of alternatives, got {answer_parts!r}; "
            "wrap a list of any-one answers as [answers]."
        )
    if not answer_parts:
        return False
    if lang is None:
        texts = [prediction, *(a for part in answer_parts for a in part)]
        lang = "zh" if any(_CJK.search(t) for t in texts) else "en"

    def norm(s: str) -> str:
        s = s.lower()
        return s.replace(" ", "") if lang == "zh" else s

    text = norm(prediction)
    return all(any(norm(alt) in text for alt in part) for part in answer_parts)


def refusal_confusion(expected: Sequence[bool], predicted: Sequence[bool]) -> dict[str, float]:
    """Confusion counts and scores with refusal as the positive class."""
    if len(expected) != len(predicted):
        raise ValueError(f"`expected` and `predicted` differ in length: {len(expected)} != {len(predicted)}.")
    tp = sum(1 for e, p in zip(expected, predicted) if e and p)
    fp = sum(1 for e, p in zip(expected, predicted) if not e and p)
    fn = sum(1 for e, p in zip(expected, predicted) if e and not p)
    tn = sum(1 for e, p in zip(expected, predicted) if not e and not p)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": precision,
        "recall": recall,
        "f1": _safe_div(2 * precision * recall, precision + recall),
        "accuracy": _safe_div(tp + tn, len(expected)),
    }


# ---------------------------------------------------------------------------- ROUGE-L, BLEU


def tokenize(text: str, lang: str | None = None) -> list[str]:
    """Lower-cased tokens: jieba words for Chinese (`lang="zh"` or CJK present), else words and punctuation."""
    text = text.lower()
    if lang == "zh" or (lang is None and _CJK.search(text)):
        from faq_bot.index.tokenize import _get_jieba  # lazy, quiet, built once

        return [t for t in _get_jieba().lcut(text) if t.strip()]
    return _WORD.findall(text)


def _lcs_len(a: Sequence[str], b: Sequence[str]) -> int:
    if len(a) < len(b):
        a, b = b, a
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b, start=1):
            cur.append(prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1]))
        prev = cur
    return prev[-1]


def rouge_l(pred: str, ref: str, lang: str | None = None) -> float:
    """ROUGE-L F1 (LCS over tokens, as rouge-score's fmeasure), 0-1."""
    p, r = tokenize(pred, lang), tokenize(ref, lang)
    if not p or not r:
        return 0.0
    lcs = _lcs_len(p, r)
    precision, recall = lcs / len(p), lcs / len(r)
    return _safe_div(2 * precision * recall, precision + recall)


@lru_cache(maxsize=2)
def _bleu_metric(sentence: bool) -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize="none", effective_order=sentence)


def _refs_list(ref: str | Sequence[str]) -> list[str]:
    refs = [ref] if isinstance(ref, str) else list(ref)
    if not refs:
        raise ValueError("`ref` needs at least one reference string.")
    return refs


def bleu(pred: str, ref: str | Sequence[str], lang: str | None = None) -> float:
    """Sentence BLEU-4 (sacrebleu, exp smoothing, effective order) on our tokens, 0-1."""
    hyp = " ".join(tokenize(pred, lang))
    refs = [" ".join(tokenize(r, lang)) for r in _refs_list(ref)]
    if not hyp or not any(refs):
        return 0.0
    return min(1.0, _bleu_metric(True).sentence_score(hyp, refs).score / 100.0)


def corpus_bleu(preds: Sequence[str], refs: Sequence[str | Sequence[str]], lang: str | None = None) -> float:
    """Corpus BLEU-4 (sacrebleu) on our tokens, 0-1; each item may have several references."""
    if len(preds) != len(refs):
        raise ValueError(f"`preds` and `refs` differ in length: {len(preds)} != {len(refs)}.")
    if not preds:
        return 0.0
    hyps = [" ".join(tokenize(p, lang)) for p in preds]
    ref_lists = [[" ".join(tokenize(r, lang)) for r in _refs_list(ref)] for ref in refs]
    width = max(len(r) for r in ref_lists)
    # sacrebleu takes reference streams; None pads items with fewer references
    streams = [[r[k] if k < len(r) else None for r in ref_lists] for k in range(width)]
    return min(1.0, _bleu_metric(False).corpus_score(hyps, streams).score / 100.0)


# ---------------------------------------------------------------------------- statistics


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95)) -> dict[str, float]:
    """Linear-interpolated percentiles keyed ``p50``, ``p95``, ...; NaN for no values."""
    arr = np.asarray(values, dtype=float)
    return {f"p{q:g}": (float(np.percentile(arr, q)) if arr.size else math.nan) for q in qs}


def bootstrap_delta(a: Sequence[float], b: Sequence[float], n: int = 2000, seed: int = 0) -> dict[str, float]:
    """Paired bootstrap 95% CI of mean(b) - mean(a), resampling items (same items in both).

    Returns:
        {"delta": observed difference, "lo": 2.5th percentile, "hi": 97.5th percentile}.
    """
    if len(a) != len(b):
        raise ValueError(f"`a` and `b` must be paired (same items): lengths {len(a)} != {len(b)}.")
    if not a:
        raise ValueError("`a` and `b` are empty; nothing to bootstrap.")
    if n <= 0:
        raise ValueError(f"`n` must be > 0, got {n}.")
    diff = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(diff), size=(n, len(diff)))
    means = diff[idx].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"delta": float(diff.mean()), "lo": float(lo), "hi": float(hi)}


# ---------------------------------------------------------------------------- FAQ matching


def faq_metrics(pred_ids: Sequence[str | None], gold_ids: Sequence[str | None]) -> dict[str, float]:
    """FAQ matching scores; None = out of scope / not answered.

    Returns:
        in_scope_accuracy (correct among gold not None; a None prediction is wrong), in_scope_precision
        (correct among answered), answer_rate, oos_precision / oos_recall / oos_f1 (positive = predicted
        None), accuracy (None == None counts), and counts.
    """
    if len(pred_ids) != len(gold_ids):
        raise ValueError(f"`pred_ids` and `gold_ids` differ in length: {len(pred_ids)} != {len(gold_ids)}.")
    pairs = list(zip(pred_ids, gold_ids))
    n_in_scope = sum(g is not None for _, g in pairs)
    in_scope_correct = sum(p == g for p, g in pairs if g is not None)
    answered = sum(p is not None for p, _ in pairs)
    answered_correct = sum(p == g for p, g in pairs if p is not None)
    pred_oos = sum(p is None for p, _ in pairs)
    gold_oos = len(pairs) - n_in_scope
    oos_tp = sum(p is None and g is None for p, g in pairs)
    oos_precision = _safe_div(oos_tp, pred_oos)
    oos_recall = _safe_div(oos_tp, gold_oos)
    return {
        "n": len(pairs),
        "n_in_scope": n_in_scope,
        "n_oos": gold_oos,
        "answered": answered,
        "in_scope_accuracy": _safe_div(in_scope_correct, n_in_scope),
        "in_scope_precision": _safe_div(answered_correct, answered),
        "answer_rate": _safe_div(answered, len(pairs)),
        "oos_precision": oos_precision,
        "oos_recall": oos_recall,
        "oos_f1": _safe_div(2 * oos_precision * oos_recall, oos_precision + oos_recall),
        "accuracy": _safe_div(sum(p == g for p, g in pairs), len(pairs)),
    }


def threshold_sweep(
    top_scores: Sequence[float],
    top_ids: Sequence[str | None],
    gold_ids: Sequence[str | None],
    thresholds: Sequence[float],
) -> list[dict[str, float]]:
    """`faq_metrics` per threshold (ascending), predicting `top_id` when its score >= threshold, else None."""
    if not len(top_scores) == len(top_ids) == len(gold_ids):
        raise ValueError(
            f"`top_scores`, `top_ids`, `gold_ids` differ in length: {len(top_scores)}, {len(top_ids)}, {len(gold_ids)}."
        )
    rows = []
    for t in sorted(set(float(x) for x in thresholds)):
        preds = [i if s >= t else None for s, i in zip(top_scores, top_ids)]
        rows.append({"threshold": t, **faq_metrics(preds, gold_ids)})
    return rows


def pick_threshold(
    sweep: Sequence[dict[str, float]],
    objective: Literal["max_accuracy", "balanced", "in_scope_precision"] = "max_accuracy",
    target: float = 0.97,
) -> dict[str, Any]:
    """Choose a row of `threshold_sweep`.

    `max_accuracy`: highest overall accuracy (ties -> lowest threshold). `balanced`: highest mean of in-scope
    accuracy and out-of-scope recall (ties -> lowest threshold). `in_scope_precision`: lowest threshold
    whose in-scope precision (correct answered / answered, rows answering nothing excluded) is >= `target`;
    if none reaches it, the most precise answering row (warning logged).

    Returns:
        The chosen row plus ``objective``, ``target`` (None for max_accuracy) and ``target_met``.
    """
    if not sweep:
        raise ValueError("`sweep` is empty; run `threshold_sweep` with at least one threshold.")
    rows = sorted(sweep, key=lambda r: r["threshold"])
    if objective == "max_accuracy":
        best = max(rows, key=lambda r: r["accuracy"])  # max keeps the first (lowest threshold) on ties
        return {**best, "objective": objective, "target": None, "target_met": True}
    if objective == "balanced":
        # mean of in-scope accuracy and out-of-scope recall: independent of the share of out-of-scope queries,
        # so a point chosen on a split with few of them (CLINC150 val: 3%) holds on one with more (test: 18%)
        best = max(rows, key=lambda r: r["in_scope_accuracy"] + r["oos_recall"])
        return {**best, "objective": objective, "target": None, "target_met": True}
    if objective != "in_scope_precision":
        raise ValueError(f"`objective` must be 'max_accuracy', 'balanced' or 'in_scope_precision', got {objective!r}.")
    answering = [r for r in rows if r["answered"] > 0]
    meeting = [r for r in answering if r["in_scope_precision"] >= target]
    if meeting:
        return {**meeting[0], "objective": objective, "target": target, "target_met": True}
    pool = answering or rows
    best = max(pool, key=lambda r: r["in_scope_precision"])
    logger.warning(
        "no threshold reaches in-scope precision %.3f; best is %.3f at %.4f", target, best["in_scope_precision"],
        best["threshold"],
    )
    return {**best, "objective": objective, "target": target, "target_met": False}
