"""Tests for faq_bot.eval.metrics on hand-made cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from faq_bot.eval.metrics import (
    DEFAULT_REFUSAL_TEXTS,
    bleu,
    bootstrap_delta,
    contains_answer,
    corpus_bleu,
    fact_flag,
    faq_metrics,
    is_rejection,
    normalize_prediction,
    percentiles,
    pick_threshold,
    refusal_confusion,
    rgb_all_rate,
    rgb_correct,
    rgb_fact_rates,
    rgb_labels,
    rgb_reject_ok,
    rouge_l,
    threshold_sweep,
    tokenize,
)

ZH_REJECT = "文档信息不足，因此我无法基于提供的文档回答该问题。"
EN_REJECT = "I can not answer the question because of the insufficient information in documents."


# ---------------------------------------------------------------------------- RGB labels


def test_normalize_prediction_removes_spaces_for_zh_only():
    assert normalize_prediction("5 月 17 日", "zh") == "5月17日"
    assert normalize_prediction("May 17", "en") == "May 17"


def test_rgb_labels_nested_answer_lists():
    parts = [["4次", "四次"], "夺冠"]  # upstream form: inner list = alternatives, str = required part
    assert rgb_labels("他四次夺冠", parts, "zh") == [1, 1]
    assert rgb_labels("他4次参赛", parts, "zh") == [1, 0]
    assert rgb_labels("他从未参赛", parts, "zh") == [0, 0]
    assert rgb_labels("他四次夺冠", [["4次", "四次"], ["夺冠"]], "zh") == [1, 1]  # answer_parts form
    assert rgb_labels("It was Emmanuel Macron.", "Emmanuel Macron", "en") == [1]  # bare str answer


def test_rgb_labels_rejection_phrases():
    assert rgb_labels(ZH_REJECT, ["5月17日"], "zh") == [-1]
    assert rgb_labels(EN_REJECT, ["May 17"], "en") == [-1]
    # rejection wins even when the answer is there
    assert rgb_labels("5月17日？" + ZH_REJECT, ["5月17日"], "zh") == [-1]
    # case-sensitive, as upstream
    assert rgb_labels("Insufficient Information.", ["May 17"], "en") == [0]
    # zh sets strip spaces first, so the English phrase cannot match there (upstream behaviour)
    assert rgb_labels("insufficient information", ["x"], "zh") == [0]
    # our refusal texts count as rejections, also after zh space removal
    for text in DEFAULT_REFUSAL_TEXTS:
        assert rgb_labels(text, ["x"], "zh") == [-1]
        assert rgb_labels(text, ["x"], "en") == [-1]
    assert rgb_labels("无可奉告", ["x"], "zh", refusal_texts=("无可奉告",)) == [-1]
    assert rgb_labels(DEFAULT_REFUSAL_TEXTS[0], ["x"], "zh", refusal_texts=()) == [0]


def test_is_rejection():
    assert is_rejection(ZH_REJECT) and is_rejection(EN_REJECT)
    assert is_rejection("Sorry, the knowledge base has no answer to that.")
    assert not is_rejection("答案是5月17日")
    assert not is_rejection("INSUFFICIENT INFORMATION")


def test_rgb_labels_zh_space_removal_and_lowercase():
    assert rgb_labels("上映时间是 5 月 17 日", ["5月17日"], "zh") == [1]
    assert rgb_labels("上映时间是 5 月 17 日", ["5月17日"], "en") == [0]
    assert rgb_labels("EMMANUEL MACRON won", [["Emmanuel Macron", "Macron"]], "en") == [1]
    assert rgb_labels("获奖的是 iPhone", ["IPHONE"], "zh") == [1]


def test_rgb_correct_and_noise_one_counting_rule():
    assert rgb_correct([1, 1]) and not rgb_correct([1, 0]) and not rgb_correct([-1]) and not rgb_correct([])
    assert rgb_reject_ok([-1])
    assert rgb_reject_ok([1])  # still containing the answer also counts at noise 1
    assert not rgb_reject_ok([1, 0]) and not rgb_reject_ok([0]) and not rgb_reject_ok([])
    labels = [[-1], [1], [0], [1, 0]]
    assert rgb_all_rate(labels, noise_rate=1.0) == 0.5
    assert rgb_all_rate(labels, noise_rate=0.4) == 0.25  # a rejection is wrong when passages had the answer


def test_fact_flag_and_rates():
    assert fact_flag("提供文档的文档存在事实性错误。正确答案是70。") == 1
    assert fact_flag("There are factual errors in the provided documents.") == 1
    assert fact_flag("There are Factual Errors.") == 0
    assert fact_flag("There are factual errors", lang="zh") == 0  # upstream strips zh spaces first
    assert fact_flag("存在 事实性 错误", lang="zh") == 1
    rates = rgb_fact_rates([[1], [0], [1], [-1]], [1, 1, 0, 0])
    assert rates["fact_check_rate"] == 0.5 and rates["correct_rate"] == 0.5
    assert rgb_fact_rates([[1]], [0])["correct_rate"] == 0


# ---------------------------------------------------------------------------- containment, refusal


def test_contains_answer():
    assert contains_answer("卖家 承担 运费", [["卖家承担", "商家承担"]])
    assert contains_answer("The SELLER pays.", [["seller pays", "merchant pays"]])
    assert not contains_answer("buyer pays", [["seller pays"]])
    assert contains_answer("1月3日和1月12日", [["1月3日"], ["1月12日"]])
    assert not contains_answer("1月3日", [["1月3日"], ["1月12日"]])
    assert not contains_answer("anything", [])
    assert not contains_answer("ab c", [["abc"]], lang="en")
    assert contains_answer("ab c", [["abc"]], lang="zh")
    with pytest.raises(ValueError):
        contains_answer("abc", ["abc"])  # a flat list is ambiguous: wrap as [answers]


def test_refusal_confusion():
    m = refusal_confusion([True, True, False, False, True], [True, False, True, False, True])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 1)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(3 / 5)
    none = refusal_confusion([False, False], [False, False])
    assert none["precision"] == 0.0 and none["recall"] == 0.0 and none["accuracy"] == 1.0
    with pytest.raises(ValueError):
        refusal_confusion([True], [])


# ---------------------------------------------------------------------------- ROUGE-L, BLEU


def test_tokenize_zh_and_en():
    assert tokenize("Hello, World!") == ["hello", ",", "world", "!"]
    zh = tokenize("退货运费由卖家承担")
    assert "".join(zh) == "退货运费由卖家承担" and 1 < len(zh) < 9


def test_rouge_l_matches_rouge_score_on_english():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    for pred, ref in [("the cat sat on the mat", "the cat is on the mat"), ("a b c d", "d c b a"), ("x y", "z")]:
        assert rouge_l(pred, ref) == pytest.approx(scorer.score(ref, pred)["rougeL"].fmeasure)
    assert rouge_l("退货运费由卖家承担", "退货运费由卖家承担") == 1.0
    assert 0 < rouge_l("运费由卖家承担", "退货运费由卖家承担") < 1
    assert rouge_l("", "abc") == 0.0


def test_bleu_range_and_order():
    assert bleu("the seller pays the return shipping", "the seller pays the return shipping") == pytest.approx(1.0)
    assert bleu("completely different words here", "the seller pays the return shipping") == pytest.approx(0.0, abs=0.05)
    partial = bleu("the seller pays shipping", "the seller pays the return shipping")
    assert 0.0 < partial < 1.0
    assert bleu("退货运费由卖家承担", "退货运费由卖家承担") == pytest.approx(1.0)
    assert bleu("", "abc") == 0.0
    assert bleu("the seller pays", ["nope", "the seller pays"]) == pytest.approx(1.0)


def test_corpus_bleu_with_ragged_references():
    preds = ["the seller pays the return shipping", "退货运费由卖家承担"]
    assert corpus_bleu(preds, [["x y", "the seller pays the return shipping"], "退货运费由卖家承担"]) == pytest.approx(1.0)
    assert 0.0 < corpus_bleu(preds, ["the buyer pays the return shipping", "退货运费由买家承担"]) < 1.0
    with pytest.raises(ValueError):
        corpus_bleu(preds, ["one"])


# ---------------------------------------------------------------------------- statistics


def test_percentiles():
    p = percentiles(list(range(1, 101)))
    assert p == {"p50": pytest.approx(50.5), "p95": pytest.approx(95.05)}
    assert set(percentiles([3.0], (50, 99.9))) == {"p50", "p99.9"}
    assert math.isnan(percentiles([])["p50"])


def test_bootstrap_delta_ci_contains_true_delta():
    rng = np.random.default_rng(1)
    a = rng.normal(0.5, 0.2, size=400)
    b = a + 0.1 + rng.normal(0.0, 0.05, size=400)  # true paired delta 0.1
    ci = bootstrap_delta(a.tolist(), b.tolist(), n=2000, seed=0)
    assert ci["lo"] < 0.1 < ci["hi"]
    assert ci["lo"] < ci["delta"] < ci["hi"] and ci["hi"] - ci["lo"] < 0.03
    assert bootstrap_delta(a.tolist(), b.tolist(), n=2000, seed=0) == ci  # seeded
    const = bootstrap_delta([0, 1, 0, 1], [1, 1, 1, 1])
    assert const["delta"] == 0.5 and const["lo"] <= 0.5 <= const["hi"]
    same = bootstrap_delta([0.2, 0.4], [0.5, 0.7])
    assert same == {"delta": pytest.approx(0.3), "lo": pytest.approx(0.3), "hi": pytest.approx(0.3)}
    with pytest.raises(ValueError):
        bootstrap_delta([1.0], [1.0, 2.0])


# ---------------------------------------------------------------------------- FAQ


def test_faq_metrics():
    m = faq_metrics(["a", None, "c", None, "x"], ["a", "b", None, None, "d"])
    assert m["in_scope_accuracy"] == pytest.approx(1 / 3)  # a right; b missed (None); d wrong
    assert m["oos_precision"] == 0.5 and m["oos_recall"] == 0.5
    assert m["accuracy"] == pytest.approx(2 / 5)
    assert m["in_scope_precision"] == pytest.approx(1 / 3) and m["answered"] == 3


# (score, top_id, gold)
_CASE = [
    (0.95, "a", "a"),
    (0.90, "b", "b"),
    (0.85, "c", "x"),
    (0.80, "d", "d"),
    (0.70, "e", None),
    (0.60, "f", None),
    (0.55, "g", "g"),
    (0.40, "h", None),
]
_THRESHOLDS = [0.99, 0.5, 0.65, 0.75, 0.82, 0.88]


def _sweep():
    scores, ids, gold = zip(*_CASE)
    return threshold_sweep(list(scores), list(ids), list(gold), _THRESHOLDS)


def test_threshold_sweep_rows():
    rows = _sweep()
    assert [r["threshold"] for r in rows] == sorted(_THRESHOLDS)
    acc = {r["threshold"]: r["accuracy"] for r in rows}
    assert acc == {0.5: 5 / 8, 0.65: 5 / 8, 0.75: 6 / 8, 0.82: 5 / 8, 0.88: 5 / 8, 0.99: 3 / 8}
    prec = {r["threshold"]: r["in_scope_precision"] for r in rows}
    assert prec[0.5] == pytest.approx(4 / 7) and prec[0.75] == 0.75 and prec[0.82] == pytest.approx(2 / 3) and prec[0.88] == 1.0
    assert rows[-1]["answered"] == 0


def test_pick_threshold_both_objectives():
    rows = _sweep()
    best = pick_threshold(rows, "max_accuracy")
    assert best["threshold"] == 0.75 and best["objective"] == "max_accuracy" and best["accuracy"] == 0.75
    precise = pick_threshold(rows, "in_scope_precision", target=0.97)
    assert precise["threshold"] == 0.88 and precise["objective"] == "in_scope_precision" and precise["target_met"]
    looser = pick_threshold(rows, "in_scope_precision", target=0.7)
    assert looser["threshold"] == 0.75  # lowest threshold that is precise enough answers the most
    unreachable = pick_threshold(rows[:3], "in_scope_precision", target=0.97)
    assert unreachable["target_met"] is False and unreachable["threshold"] == 0.75
    with pytest.raises(ValueError):
        pick_threshold([], "max_accuracy")
