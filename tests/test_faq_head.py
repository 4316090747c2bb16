"""FAQ head: training beats the untrained matcher on held-out paraphrases, falls back when it would not, retrains
(warm) when a FAQ is added and not after a restart; calibration on constructed score distributions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from faq_bot.eval.metrics import pick_threshold, threshold_sweep
from faq_bot.eval.runner import calibrate_faq
from faq_bot.faq import FaqMatcher, decision_score, normalize_question, to_simplified
from faq_bot import faq_head as fh
from faq_bot.faq_head import (Bank, HeadModel, Scorer, _choose, answer_sentences, bank_bm25_fn,
                              check_masks, check_rounds, fit_matcher, holdout_mask, load_model, model_fingerprint,
                              save_model)
from faq_bot.faq_lexical import LOGP_FLOOR, fit_lexical
from faq_bot.knowledge import KnowledgeBase
from faq_bot.schema import Faq, Query

from conftest import make_config


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _nuisance_faq(seed: int = 0, n_faqs: int = 8, per: int = 12, dim: int = 48):
    """Questions whose FAQ shows only in a weak direction, under strong shared nuisance directions: nearest
    neighbour is fooled by the nuisance, a linear head learns to ignore it."""
    rng = np.random.default_rng(seed)

    def draw(c: int, n: int) -> np.ndarray:
        signal = np.zeros((n, dim))
        signal[:, c] = 0.35
        signal[:, n_faqs:] = rng.normal(size=(n, dim - n_faqs)) / np.sqrt(dim - n_faqs)
        return _unit(signal)

    labels = np.repeat(np.arange(n_faqs), per)
    vecs = np.concatenate([draw(c, per) for c in range(n_faqs)])
    texts = [f"q{c}-{i}" for i, c in enumerate(labels)]
    bank = Bank([f"f{c}" for c in range(n_faqs)], labels, vecs, texts, np.arange(len(labels)),
                np.arange(len(labels)) % per == 0)
    return bank, draw


def test_head_training_beats_untrained_matcher_on_held_out_paraphrases():
    bank, draw = _nuisance_faq()
    head, _, rec = fit_matcher("logreg", bank, bank_bm25_fn, use_bm25=False)
    # 8 FAQs of 11 similar questions: one each in round 0, then 2 each (a quarter of 11, rounded down) in two more
    assert rec["n_heldout"] == 40 and rec["check_rounds"] == 3 and rec["head_used"] and head is not None
    assert rec["trained_top1"] > rec["untrained_top1"]
    # and on fresh paraphrases, which neither the check nor the final head has seen
    q = np.concatenate([draw(c, 20) for c in range(8)])
    gold = np.repeat(np.arange(8), 20)
    untrained = np.mean(Scorer(bank).scores(q, None)["score"].argmax(1) == gold)
    trained = np.mean(Scorer(bank, head=head).scores(q, None)["score"].argmax(1) == gold)
    assert trained >= untrained + 0.2, (untrained, trained)


def test_adapter_head_trains_and_is_checked():
    bank, draw = _nuisance_faq(seed=1)
    head, _, rec = fit_matcher("adapter", bank, bank_bm25_fn, use_bm25=False, steps=150)
    assert rec["kind"] == "adapter" and "trained_top1" in rec
    if rec["head_used"]:
        assert head.A.shape == (48, 48) and rec["trained_top1"] >= rec["untrained_top1"]


def _shuffled_faq(n_faqs: int = 10, per: int = 16, dim: int = 64, seed: int = 0) -> Bank:
    """Each FAQ's similar questions carry the next FAQ's meaning (labels shuffled between FAQs); only the standard
    question and the held-out one (a near duplicate of it) are right. The head learns the shuffled labels; the
    nearest neighbour still finds the standard question. For a check of one round (`_one_round`)."""
    rng = np.random.default_rng(seed)
    mu = _unit(rng.normal(size=(n_faqs, dim)))
    labels = np.repeat(np.arange(n_faqs), per)
    texts = [f"s{c}-{i}" for c in range(n_faqs) for i in range(per)]
    standard = np.arange(n_faqs * per) % per == 0
    shape = Bank([f"f{c}" for c in range(n_faqs)], labels, np.zeros((len(labels), dim), np.float32), texts,
                 np.arange(len(labels)), standard)
    held = holdout_mask(shape)
    vecs = np.stack([_unit(mu[c] + 0.05 * rng.normal(size=dim)) if standard[r] or held[r]
                     else _unit(mu[(c + 1) % n_faqs] + 0.2 * rng.normal(size=dim))
                     for r, c in enumerate(labels)])
    return Bank([f"f{c}" for c in range(n_faqs)], labels, vecs, texts, np.arange(len(labels)), standard)


@pytest.fixture
def _one_round(monkeypatch):
    """A check of one held-out round (`_shuffled_faq` makes only round 0's held-out questions right)."""
    monkeypatch.setattr(fh, "CHECK_HELDOUT", 1)


def test_head_falls_back_when_training_makes_it_worse(_one_round):
    head, _, rec = fit_matcher("logreg", _shuffled_faq(), bank_bm25_fn, use_bm25=False)
    assert head is None and rec["head_used"] is False
    assert rec["trained_top1"] < rec["untrained_top1"] == 1.0
    assert "fell back" in rec["reason"]
    assert rec["_check"] is not None  # kept for the next warm start, never used to answer


def test_lexical_head_stays_when_the_dense_head_falls_back(_one_round):
    bank = _shuffled_faq()  # texts "s<c>-<i>": the FAQ's own word, which the lexical head learns
    bank.answers = [f"answer for s{c}" for c in range(bank.n_classes)]
    head, _, rec = fit_matcher("logreg", bank, bank_bm25_fn, use_bm25=False, lexical=True)
    assert rec["head_used"] is False and rec["lex_used"] is True
    assert head is not None and head.kind == "none" and head.uses_lex
    sc = Scorer(bank, head=head)
    out = sc.scores(bank.vectors[:2], None, head.lex_scores(bank.texts[:2]))
    assert "head" not in out and np.allclose(out["score"], out["untrained"] + head.lex_weight * out["lex"])


def test_answer_sentences_split_dedupe_and_bound():
    zh = "签收后15天内可申请退货；运费由商家承担。　签收后15天内可申请退货！好的。"
    assert answer_sentences(zh) == ["签收后15天内可申请退货", "运费由商家承担"]  # repeated and 2-char pieces dropped
    en = "Orders of 1.5 kg ship free. Refunds take 1-3 days!\nSee Orders > Invoice, e.g. for VAT"
    assert answer_sentences(en) == ["Orders of 1.5 kg ship free", "Refunds take 1-3 days",
                                    "See Orders > Invoice, e.g", "for VAT", "See Orders > Invoice"]
    # a sentence listing several facts: its clauses (6+ characters) follow the sentences, as examples of their own
    plus = "会员享有全年免运费、会员专享价、每月4张10元无门槛优惠券，以及生日当月双倍积分。可随时退订。"
    assert answer_sentences(plus) == ["会员享有全年免运费、会员专享价、每月4张10元无门槛优惠券，以及生日当月双倍积分", "可随时退订",
                                      "会员享有全年免运费", "每月4张10元无门槛优惠券", "以及生日当月双倍积分"]
    assert answer_sentences(plus, clauses=False) == answer_sentences(plus)[:2]
    assert answer_sentences("签收后15天内，可申请退货。") == ["签收后15天内，可申请退货", "签收后15天内"]  # 6+ characters
    pay = "We accept Visa, Mastercard, PayPal and Alipay at checkout."
    assert answer_sentences(pay)[1:] == ["We accept Visa", "PayPal and Alipay at checkout"]  # 3+ words in English
    assert answer_sentences("Yes, you can.") == ["Yes, you can"]
    assert answer_sentences("[book_flight]") == ["[book_flight]"] and answer_sentences("") == []
    # no letter or CJK character: an intent id as answer, a number of a list, is no sentence and no clause
    assert answer_sentences("[17]") == [] and answer_sentences("营业时间 9:00-18:00") == ["营业时间 9:00-18:00"]
    hotline = "Call our hotline: 400 820 8820, 400 820 8821, 400 820 8822"
    assert answer_sentences(hotline) == [hotline, "Call our hotline: 400 820 8820"]
    assert answer_sentences("。".join(f"第{i}句话很长" for i in range(40)), limit=5) == [f"第{i}句话很长" for i in range(5)]


def test_plain_question_answer_list_is_checked_on_its_standard_questions():
    """No similar questions at all (a plain Q/A list): the standard questions are held out, the answer sentences
    stand in for them in the check, and the head trained on them is kept when it beats nearest neighbour."""
    rng = np.random.default_rng(3)
    n, dim = 8, 48

    def draw(direction: int, k: int, mix: int | None = None) -> np.ndarray:
        x = rng.normal(size=(k, dim)) * 0.05
        x[:, direction] += 1.0
        if mix is not None:
            x[:, mix] += 0.6
        return _unit(x)

    # standard questions in direction c; answer sentences and customers also say n + c (what the answer is about)
    bank = Bank([f"f{c}" for c in range(n)], np.arange(n), np.concatenate([draw(c, 1) for c in range(n)]),
                [f"standard {c}" for c in range(n)], np.arange(n), np.ones(n, bool), [f"a{c}" for c in range(n)],
                np.concatenate([draw(n + c, 3, mix=c) for c in range(n)]), np.repeat(np.arange(n), 3),
                [f"answer {c} sentence {i}" for c in range(n) for i in range(3)])
    customers = np.concatenate([draw(n + c, 10, mix=(c + 1) % n) for c in range(n)])  # words of a neighbour's question
    gold = np.repeat(np.arange(n), 10)
    head, _, rec = fit_matcher("logreg", bank, bank_bm25_fn, use_bm25=False)
    assert rec["heldout_source"].startswith("standard questions") and rec["n_heldout"] == n
    assert rec["head_used"] and head is not None
    acc = {name: np.mean(Scorer(bank, head=h).scores(customers, None)["score"].argmax(1) == gold)
           for name, h in (("untrained", None), ("trained", head))}
    assert acc["untrained"] < 0.5 and acc["trained"] >= 0.9, acc
    # without answer sentences (or with the adapter head) there is nothing to check on: no head, as before
    plain = Bank(bank.faq_ids, bank.labels, bank.vectors, bank.texts, bank.qids, bank.standard, bank.answers)
    for kind, b in (("logreg", plain), ("adapter", bank)):
        h, _, r = fit_matcher(kind, b, bank_bm25_fn, use_bm25=False)
        assert h is None and r["n_heldout"] == 0 and "to hold one out" in r["reason"]


def test_plain_list_check_never_warm_starts_from_a_model_that_saw_its_held_out_questions():
    """Standard questions unrelated to their answers' sentences: from scratch the check cannot place them; a check
    model fitted while the FAQs still had similar questions trained on them and would score itself."""
    rng = np.random.default_rng(5)
    n, dim = 12, 64
    std = _unit(rng.normal(size=(n, dim)))
    sents = _unit(rng.normal(size=(3 * n, dim)))
    answers = [f"answer {c}" for c in range(n)]
    ex = dict(example_vectors=sents, example_labels=np.repeat(np.arange(n), 3),
              example_texts=[f"answer {c} sentence {i}" for c in range(n) for i in range(3)])
    similar = np.concatenate([np.concatenate([std[c:c + 1], _unit(std[c] + rng.normal(size=(2, dim)) * 0.05)])
                              for c in range(n)])
    with_similar = Bank([f"f{c}" for c in range(n)], np.repeat(np.arange(n), 3), similar,
                        [t for c in range(n) for t in (f"standard {c}", f"s{c}a", f"s{c}b")], np.arange(3 * n),
                        np.tile([True, False, False], n), answers, **ex)
    _, _, rec_similar = fit_matcher("logreg", with_similar, bank_bm25_fn, use_bm25=False)
    plain = Bank(with_similar.faq_ids, np.arange(n), std, [f"standard {c}" for c in range(n)], np.arange(n),
                 np.ones(n, bool), answers, **ex)
    _, _, cold = fit_matcher("logreg", plain, bank_bm25_fn, use_bm25=False)
    _, _, warm = fit_matcher("logreg", plain, bank_bm25_fn, use_bm25=False, init={"check": rec_similar["_check"]})
    assert cold["heldout_source"].startswith("standard questions") and cold["trained_top1"] < 0.5
    assert warm["trained_top1"] == cold["trained_top1"]


def test_answer_examples_key_the_model_only_where_they_are_used():
    from faq_bot.config import FaqConfig

    bank, _ = _nuisance_faq()
    fp = {(head, on): model_fingerprint(bank, ["usem3"], FaqConfig(head=head, answer_examples=on))
          for head in ("logreg", "adapter") for on in (True, False)}
    assert fp["logreg", True] != fp["logreg", False]  # toggling it retrains the logreg head
    assert fp["adapter", True] == fp["adapter", False]  # and nothing else


def _answer_only_faq(seed: int = 0, n_faqs: int = 8, per: int = 6, dim: int = 48):
    """Questions say their FAQ in direction c; customers (and the answers) say it in direction n_faqs + c, which
    no question uses: only a head that learns from the answer sentences can map the customers' wording."""
    rng = np.random.default_rng(seed)

    def draw(direction: int, n: int) -> np.ndarray:
        x = rng.normal(size=(n, dim)) * 0.05
        x[:, direction] += 1.0
        return _unit(x)

    labels = np.repeat(np.arange(n_faqs), per)
    bank = Bank([f"f{c}" for c in range(n_faqs)], labels, np.concatenate([draw(c, per) for c in range(n_faqs)]),
                [f"q{i}" for i in range(len(labels))], np.arange(len(labels)), np.arange(len(labels)) % per == 0)
    customers = np.concatenate([draw(n_faqs + c, 10) for c in range(n_faqs)])
    return bank, draw, customers, np.repeat(np.arange(n_faqs), 10)


def test_logreg_head_learns_from_answer_sentences():
    bank, draw, q, gold = _answer_only_faq()
    plain, _, rec_plain = fit_matcher("logreg", bank, bank_bm25_fn, use_bm25=False)
    bank.example_vectors = np.concatenate([draw(8 + c, 3) for c in range(8)])  # three answer sentences per FAQ
    bank.example_labels = np.repeat(np.arange(8), 3)
    taught, _, rec = fit_matcher("logreg", bank, bank_bm25_fn, use_bm25=False)
    assert rec["n_heldout"] == rec_plain["n_heldout"] == 24  # answer sentences are never held out
    acc = {name: np.mean(Scorer(bank, head=h).scores(q, None)["score"].argmax(1) == gold)
           for name, h in (("plain", plain), ("taught", taught))}
    assert acc["plain"] < 0.4 and acc["taught"] >= 0.9, acc
    kept = bank.subset(holdout_mask(bank) == 0)
    assert kept.example_vectors is bank.example_vectors and kept.example_labels is bank.example_labels


def test_holdout_takes_one_similar_question_per_faq_with_two():
    labels = np.array([0, 0, 0, 1, 1, 2])  # FAQ 0: standard + 2 similar; FAQ 1: standard + 1; FAQ 2: standard only
    bank = Bank(["a", "b", "c"], labels, np.eye(6, dtype=np.float32), ["a0", "a1", "a2", "b0", "b1", "c0"],
                np.arange(6), np.array([True, False, False, True, False, True]))
    held = holdout_mask(bank)
    assert held.sum() == 1 and held[1:3].sum() == 1
    # the next round holds out FAQ 0's other similar question; there is no third one
    second = holdout_mask(bank, 1)
    assert second.sum() == 1 and second[1:3].sum() == 1 and not (held & second).any()
    assert not holdout_mask(bank, 2).any()
    # rounds until about 200 held-out questions, at most 3
    assert check_rounds(99) == 3 and check_rounds(150) == 2 and check_rounds(1000) == 1


def test_only_the_first_check_round_warm_starts(monkeypatch):
    """The previous check model saw every question but round 0's held-out ones (stable by hash): later rounds,
    which hold out others, must train from scratch; the final fit starts from round 0's model."""
    bank, _ = _nuisance_faq()
    first, _, rec = fit_matcher("logreg", bank, bank_bm25_fn, use_bm25=False)
    calls = []
    real = fh.fit_head

    def spy(kind, b, init=None, steps=None):
        calls.append((len(b), init))
        return real(kind, b, init, steps)

    monkeypatch.setattr(fh, "fit_head", spy)
    fit_matcher("logreg", bank, bank_bm25_fn, use_bm25=False, init={"check": rec["_check"], "final": first})
    assert [init is rec["_check"] for _, init in calls[:3]] == [True, False, False]  # the three check rounds
    assert calls[3][0] == len(bank) and calls[3][1] is not None and calls[3][1] is not rec["_check"]  # final


def test_warm_start_resets_a_faq_whose_held_out_question_changed(monkeypatch, tmp_path):
    """The previous check model trained on every question but the ones round 0 held out. When a FAQ's held-out
    question is deleted, the next one in hash order, which that model trained on, is held out now: that FAQ's row
    restarts at its centroid, the others keep their warm start; the hashes persist with the model."""
    bank, _ = _nuisance_faq()
    _, _, rec = fit_matcher("logreg", bank, bank_bm25_fn, use_bm25=False)
    prev = rec["_check"]
    assert prev.heldout is not None and len(prev.heldout) == 8 and all(prev.heldout)
    save_model(tmp_path, "logreg", {"check": {}}, {"check": prev})
    assert load_model(tmp_path, "logreg")[1]["check"].heldout == prev.heldout

    starts = []
    real = fh.fit_head

    def spy(kind, b, init=None, steps=None):
        starts.append(init)
        return real(kind, b, init, steps)

    monkeypatch.setattr(fh, "fit_head", spy)
    _, _, same = fit_matcher("logreg", bank, bank_bm25_fn, use_bm25=False, init={"check": prev})
    assert starts[0] is prev and "warm_start_reset_faqs" not in same  # nothing changed: the whole model
    starts.clear()
    gone = holdout_mask(bank) & (bank.labels == 2)  # FAQ 2's held-out question is deleted
    _, _, rec2 = fit_matcher("logreg", bank.subset(~gone), bank_bm25_fn, use_bm25=False, init={"check": prev})
    assert rec2["warm_start_reset_faqs"] == 1 and rec2["_check"].heldout[2] != prev.heldout[2]
    assert starts[0].faq_ids == [f for f in bank.faq_ids if f != "f2"] and starts[0].W.shape[0] == 7
    assert starts[1] is None and starts[2] is None  # later rounds: from scratch, as always


def test_check_holds_out_several_questions_per_faq_when_few_faqs_have_many():
    """7 intents x 101 utterances: one round of one per FAQ would check on 7 questions; later rounds take 14 per
    FAQ (never more than a quarter of its similar questions) until ~200, each question held out at most once."""
    per = 101
    labels = np.repeat(np.arange(7), per)
    texts = [f"u{i}" for i in range(len(labels))]
    bank = Bank([f"i{c}" for c in range(7)], labels, np.zeros((len(labels), 4), np.float32), texts,
                np.arange(len(labels)), np.arange(len(labels)) % per == 0)
    masks = check_masks(bank)
    assert [int(m.sum()) for m in masks] == [7, 98, 98]
    assert np.array_equal(masks[0], holdout_mask(bank)) and not np.any(np.sum(masks, axis=0) > 1)
    assert all(np.bincount(labels[m], minlength=7).max() <= 25 for m in masks)
    # FAQs of 3 similar questions: one per FAQ per round
    three = Bank([f"f{c}" for c in range(30)], np.repeat(np.arange(30), 4), np.zeros((120, 4), np.float32),
                 [f"t{i}" for i in range(120)], np.arange(120), np.arange(120) % 4 == 0)
    assert [int(m.sum()) for m in check_masks(three)] == [30, 30, 30]


def test_weights_leave_their_prior_only_on_significant_held_out_evidence():
    gold = np.zeros(100, np.int64)

    def scores(n_right: int, offset: int = 0) -> np.ndarray:  # questions offset..offset+n_right-1 ranked right
        s = np.tile([0.0, 1.0], (100, 1))
        s[offset:offset + n_right] = [1.0, 0.0]
        return s

    # 2 more right out of 100, every other question the same: within noise (2 <= sqrt(2)? no: 2 > 1.41), moves
    assert _choose({0.5: scores(60), 0.75: scores(62)}, gold, prior=0.5) == 0.75
    # 2 more right but 8 questions disagree (5 vs 3): 2 <= sqrt(8), the prior stays
    assert _choose({0.5: scores(60), 0.75: scores(62, offset=3)}, gold, prior=0.5) == 0.5
    # a clear win moves: 20 more right
    assert _choose({0.5: scores(40), 0.75: scores(60), 1.0: scores(61)}, gold, prior=0.5) == 0.75


def test_bank_aggregates_per_faq():
    bank = Bank(["a", "b"], np.array([0, 0, 0, 1]), np.eye(4, dtype=np.float32), list("wxyz"), np.arange(4),
                np.array([True, False, False, True]))
    sims = np.array([[0.9, 0.5, 0.7, 0.8]])
    assert bank.aggregate(sims, "max").tolist() == [[0.9, 0.8]]
    assert np.allclose(bank.aggregate(sims, "top2_mean"), [[0.8, 0.8]])  # one question: itself


def test_decision_score_is_monotone_and_below_exact_match():
    raw = np.array([-0.2, 0.3, 0.8, 0.95, 1.3, 5.0])
    s = decision_score(raw)
    assert np.all(np.diff(s) > 0) or np.all(np.diff(s[:-1]) > 0)
    assert s[0] == 0.0 and s[1] == pytest.approx(0.3) and s.max() < 1.0


def test_normalize_question_folds_traditional_chinese():
    assert to_simplified("怎麼申請退貨？運費誰負責") == "怎么申请退货？运费谁负责"
    assert normalize_question("怎麼申請退貨") == normalize_question("怎么 申请 退货?")
    assert to_simplified("How do I return it?") == "How do I return it?"


# ---------------------------------------------------------------------------- lexical head

_TOPICS = {  # FAQ -> (words of its questions, its answer: holds a word no question of any FAQ uses)
    "refund": (["refund", "money back", "reimburse"], "Refunds reach your Alipay wallet in 1-3 days."),
    "invoice": (["invoice", "receipt", "VAT bill"], "Download the fapiao under Orders."),
    "password": (["password", "log in", "locked out"], "Reset it under Settings, security tab."),
    "delivery": (["delivery", "parcel", "courier"], "Zhongtong or Yunda; SF Express costs 15 more."),
    "payment": (["pay", "card", "checkout"], "We take UnionPay, WeChat Pay and Alipay."),
    "points": (["points", "loyalty", "rewards"], "One point per yuan; points expire yearly."),
}
_FRAMES = ["how does {} work", "question about {}", "help with my {}", "{} problem today", "tell me about {}",
           "what about the {}", "i need {} info", "{} please"]


def _text_faq(seed: int = 0, dim: int = 32) -> Bank:
    """FAQs told apart only by their words: the dense vectors are noise, so the embedding heads cannot help."""
    rng = np.random.default_rng(seed)
    faq_ids, labels, texts, answers = list(_TOPICS), [], [], []
    for c, f in enumerate(faq_ids):
        words, answer = _TOPICS[f]
        answers.append(answer)
        for i, frame in enumerate(_FRAMES):
            labels.append(c)
            texts.append(frame.format(words[i % len(words)]))
    labels = np.asarray(labels)
    return Bank(faq_ids, labels, _unit(rng.normal(size=(len(labels), dim))), texts, np.arange(len(labels)),
                np.arange(len(labels)) % len(_FRAMES) == 0, answers)


def test_lexical_head_learns_the_words_and_the_answers():
    bank = _text_faq()
    head, _, rec = fit_matcher("logreg", bank, bank_bm25_fn, use_bm25=False, lexical=True)
    assert rec["lex_used"] and rec["lex_weight"] > 0 and head is not None and head.uses_lex
    assert rec["top1_with_lex"] > max(rec["untrained_top1"], rec["trained_top1"])
    assert rec["top1_by_lex_weight"]["0.0"] < rec["top1_with_lex"]
    # new questions, and words that only the answers hold
    queries = ["my refund never came", "lost my password again", "which courier brings the parcel",
               "is UnionPay accepted", "can I get a fapiao", "do you ship with SF Express", "Alipay wallet timing"]
    gold = ["refund", "password", "delivery", "payment", "invoice", "delivery", "refund"]
    q = _unit(np.random.default_rng(9).normal(size=(len(queries), bank.vectors.shape[1])))
    got = Scorer(bank, head=head).scores(q, None, head.lex_scores(queries))["score"].argmax(1)
    assert [bank.faq_ids[i] for i in got] == gold
    # without the lexical head the same queries are chance
    plain, _, _ = fit_matcher("logreg", bank, bank_bm25_fn, use_bm25=False, lexical=False)
    base = Scorer(bank, head=plain).scores(q, None)["score"].argmax(1)
    assert np.mean([bank.faq_ids[i] == g for i, g in zip(base, gold)]) < 0.6


def test_lexical_weight_that_hurts_held_out_questions_is_not_taken():
    bank, _ = _nuisance_faq(seed=3)
    rng = np.random.default_rng(3)  # words drawn at random, whatever the FAQ: they can only mislead
    vocab = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet"]
    # n<i>: a word of its own per question, so a check model that saw the held-out questions would find them
    bank.texts = [" ".join(rng.choice(vocab, size=3)) + f" n{i}" for i in range(len(bank))]
    bank.answers = ["" for _ in bank.faq_ids]
    head, _, rec = fit_matcher("logreg", bank, bank_bm25_fn, use_bm25=False, lexical=True)
    lost = {w: round((rec["top1_by_lex_weight"]["0.0"] - acc) * rec["n_heldout"])
            for w, acc in rec["top1_by_lex_weight"].items()}  # held-out questions lost to the lexical head
    assert lost["0.05"] >= 3 and lost["0.1"] >= 3  # random words mislead when they weigh enough, the prior too ...
    # ... and such weights are not taken (at most one question's noise is); never below the untrained matcher
    assert lost[str(rec["lex_weight"])] <= 1 and rec["lex_weight"] < 0.05
    assert rec["top1_with_lex"] >= rec["untrained_top1"] and rec["head_used"] and head is not None


def test_lexical_model_log_proba_warm_start_and_persistence(tmp_path):
    bank = _text_faq(seed=4)
    texts, labels = bank.lexical_corpus()
    assert len(texts) == len(bank) + len(bank.faq_ids)  # every question, then every answer
    model = fit_lexical(texts, labels, bank.faq_ids, dim=4096)
    lp = model.log_proba(["refund", "", "???"])
    assert lp.shape == (3, 6) and lp.min() >= LOGP_FLOOR
    assert np.allclose(np.exp(lp[1:]).sum(1), 1.0, atol=1e-3)  # no features: the prior, a distribution
    assert bank.faq_ids[int(lp[0].argmax())] == "refund"
    for text in ("refund", "", "退款 parcel"):  # one text (the serving path) scores as in a batch
        assert np.allclose(model.log_proba([text]), model.log_proba([text, "x"])[:1], atol=1e-5)
    # warm start: a seventh FAQ keeps the six learned rows as its starting point
    bank7 = Bank([*bank.faq_ids, "gift"], np.concatenate([bank.labels, [6, 6]]),
                 np.concatenate([bank.vectors, bank.vectors[:2]]), [*bank.texts, "gift card", "gift wrap"],
                 np.arange(len(bank) + 2), np.concatenate([bank.standard, [True, False]]), [*bank.answers, "Wrapped."])
    t7, l7 = bank7.lexical_corpus()
    warm = fit_lexical(t7, l7, bank7.faq_ids, dim=4096, init=model, steps=1, min_epochs=1, lr=1e-6)
    assert np.allclose(warm.WT[:, :6], model.WT, atol=1e-3) and np.allclose(warm.WT[:, 6], 0.0, atol=1e-3)
    # the persisted model is keyed by the answers too: an edited answer retrains the lexical head
    edited = Bank(bank.faq_ids, bank.labels, bank.vectors, bank.texts, bank.qids, bank.standard,
                  [*bank.answers[:-1], "Points never expire."])
    assert edited.fingerprint() != bank.fingerprint()
    assert fit_lexical([], np.zeros(0, np.int64), []).log_proba(["x"]).shape == (1, 0)
    # saved with the head and loaded back bit for bit
    head = HeadModel("none", bank.faq_ids, lex=model, lex_weight=0.05)
    save_model(tmp_path, "logreg", {"check": {"lex_used": True}}, {"final": head})
    _, models = load_model(tmp_path, "logreg")
    back = models["final"]
    assert back.kind == "none" and back.lex_weight == 0.05 and back.uses_lex
    assert np.array_equal(back.lex_scores(["refund", "parcel"]), head.lex_scores(["refund", "parcel"]))


# ---------------------------------------------------------------------------- calibration


def _constructed_records():
    """60 in-scope queries answered right at 0.70-0.95, 10 in-scope ranked wrong at 0.50-0.59 (right FAQ second),
    30 out-of-scope at 0.30-0.65."""
    recs = [{"question": f"ok{i}", "gold": f"F{i % 5}", "ranked": [(f"F{i % 5}", round(0.70 + 0.25 * i / 59, 4))]}
            for i in range(60)]
    recs += [{"question": f"w{i}", "gold": "G", "ranked": [("F0", round(0.50 + 0.01 * i, 2)), ("G", 0.45)]}
             for i in range(10)]
    recs += [{"question": f"o{i}", "gold": None, "ranked": [("F1", round(0.30 + 0.35 * i / 29, 4))]} for i in range(30)]
    return recs


def test_calibration_balanced_picks_the_right_point():
    recs = _constructed_records()
    top = [r["ranked"][0][1] for r in recs]
    ids = [r["ranked"][0][0] for r in recs]
    gold = [r["gold"] for r in recs]
    sweep = threshold_sweep(top, ids, gold, [round(x, 2) for x in np.arange(0, 1.0001, 0.01)])
    best = pick_threshold(sweep, "balanced")
    # every right answer kept and every out-of-scope query refused from 0.66 to 0.70: the lowest is chosen
    assert best["threshold"] == pytest.approx(0.66)
    assert best["in_scope_accuracy"] == pytest.approx(60 / 70) and best["oos_recall"] == 1.0
    # the same point is what calibrate_faq writes, whatever the mix of in- and out-of-scope queries
    cal = calibrate_faq(recs, answer_threshold=0.9, suggest_threshold=0.5, objective="balanced")["calibration"]
    assert cal["answer_threshold"] == pytest.approx(0.66) and cal["objective"] == "balanced"
    few_oos = [r for r in recs if r["gold"] is not None] + [r for r in recs if r["gold"] is None][::-10]
    cal2 = calibrate_faq(few_oos, answer_threshold=0.9, suggest_threshold=0.5, objective="balanced")["calibration"]
    assert cal2["answer_threshold"] == pytest.approx(0.66)
    # "did you mean" below the answer threshold: where the wrong in-scope ones show their right FAQ second
    assert cal["suggest_threshold"] <= cal["answer_threshold"]


def test_calibration_balanced_suggestion_zone_on_constructed_scores():
    # in scope: right FAQ first at 0.8-0.9 (answered) or second at 0.55-0.65; out of scope at 0.2-0.5
    recs = [{"question": f"a{i}", "gold": "A", "ranked": [("A", 0.8 + 0.01 * i)]} for i in range(10)]
    recs += [{"question": f"b{i}", "gold": "B", "ranked": [("A", 0.55 + 0.01 * i), ("B", 0.54)]} for i in range(10)]
    recs += [{"question": f"o{i}", "gold": None, "ranked": [("A", 0.2 + 0.03 * i)]} for i in range(10)]
    cal = calibrate_faq(recs, answer_threshold=0.9, suggest_threshold=0.5, objective="balanced")["calibration"]
    # answering anywhere from 0.48 to 0.80 keeps in-scope accuracy at 10/20 and refuses every out-of-scope query
    assert cal["answer_threshold"] == pytest.approx(0.48)
    # suggestions (right FAQ among the top 3 shown) reach down to where one out-of-scope query in ten is shown:
    # balanced top-3 precision 1 / (1 + 0.1) >= 0.9 at 0.45, 1 / (1 + 0.2) < 0.9 at 0.44
    assert cal["suggest_threshold"] == pytest.approx(0.45)


# ---------------------------------------------------------------------------- with the knowledge base

FAQ_CSV = """id,question,answer,similar_questions,category
f-return,How do I return an item?,Open the order and tap Return.,I want to send my order back||What is the return process?||Where do I start a return?,Returns
f-refund,When will I get my refund?,Refunds arrive in 1-3 working days.,How long does a refund take?||My refund has not arrived yet||When is the money paid back?,Refunds
f-password,How do I reset my password?,Settings > Security > Reset password.,I forgot my password||I cannot log in to my account||How can I change my password?,Account
f-invoice,Can I get an invoice?,Invoices are under Orders > Invoice.,Where do I download my invoice?||I need a receipt for my order||How do I request a VAT invoice?,Billing
f-points,How do I earn member points?,1 point for every yuan spent.,How are loyalty points calculated?||Do I get points for shopping?||How can I collect more points?,Members
"""


@pytest.mark.slow
def test_adding_a_faq_retrains_the_head_and_a_restart_does_not(tmp_path, faq_encoder):
    (tmp_path / "faq.csv").write_text(FAQ_CSV, encoding="utf-8")
    cfg = make_config(tmp_path)
    kb = KnowledgeBase(cfg)
    assert kb.ingest_paths([tmp_path / "faq.csv"])[0].status == "added"
    matcher = FaqMatcher(cfg.faq, kb)
    matcher.warm_up()
    first = matcher.info()
    # three rounds hold out each of the 3 similar questions of every FAQ once
    assert first["n_faqs"] == 5 and first["n_heldout"] == 15 and first["check_rounds"] == 3
    assert not first["loaded"] and not first["warm_start"]
    meta = json.loads((cfg.store.index_dir / "faq_head_logreg.json").read_text(encoding="utf-8"))
    assert meta["generation"] == kb.store.generation() and meta["check"]["untrained_top1"] is not None
    # the head also learned from the answers' sentences, embedded like questions by the FAQ encoder
    assert first["n_answer_examples"] == 5  # one sentence per answer here
    cached = dict(matcher._sentence_cache)
    vec = faq_encoder.encode_queries(["1 point for every yuan spent"])[0]
    assert np.allclose(cached["1 point for every yuan spent"], vec, atol=1e-5)

    # a new FAQ: the knowledge base tells the matcher, which retrains there (warm start), not on the next question
    kb.upsert_faq(Faq(id="f-shipping", question="How long does delivery take?", answer="2-4 days.",
                      similar_questions=["When will my parcel arrive?", "How many days is shipping?",
                                         "Is there express delivery?"]))
    meta = json.loads((cfg.store.index_dir / "faq_head_logreg.json").read_text(encoding="utf-8"))
    assert meta["generation"] == kb.store.generation() and meta["check"]["n_faqs"] == 6
    assert meta["check"]["warm_start"] is True
    _, models = load_model(cfg.store.index_dir, "logreg")
    assert "f-shipping" in models["check"].faq_ids
    info = matcher.info()
    assert info["n_faqs"] == 6 and info["warm_start"] is True
    # ... embedding only the new answer's sentence: the others come from the previous build
    assert set(matcher._sentence_cache) == {*cached, "2-4 days"}
    assert all(matcher._sentence_cache[t] is v for t, v in cached.items())
    res = matcher.match(Query(text="how many days until my package gets here"))
    assert res.best.faq.id == "f-shipping"

    # a restart (new knowledge base and matcher on the same files) loads the model instead of retraining
    kb2 = KnowledgeBase(cfg)
    again = FaqMatcher(cfg.faq, kb2)
    assert again.info()["loaded"] is True
    assert again.match(Query(text="how many days until my package gets here")).best.faq.id == "f-shipping"
    # ... with every signal as it was, the lexical head's too when the held-out check kept it
    q = Query(text="which settings page resets it")
    before, after = matcher.match(q).matches, again.match(q).matches
    assert [(m.faq.id, m.scores) for m in before] == [(m.faq.id, m.scores) for m in after]
    assert ("lex" in before[0].scores) == bool(info["lex_used"])


@pytest.mark.slow
def test_answer_sentences_shared_by_faqs_teach_neither(tmp_path, faq_encoder):
    shared = "Contact customer support if anything is unclear"
    csv = FAQ_CSV.replace("Open the order and tap Return.", f"Open the order and tap Return. {shared}.")
    csv = csv.replace("Refunds arrive in 1-3 working days.", f"Refunds arrive in 1-3 working days. {shared}!")
    (tmp_path / "faq.csv").write_text(csv, encoding="utf-8")
    cfg = make_config(tmp_path)
    kb = KnowledgeBase(cfg)
    kb.ingest_paths([tmp_path / "faq.csv"])
    matcher = FaqMatcher(cfg.faq, kb)
    assert matcher.info()["n_answer_examples"] == 5  # one own sentence per answer; the shared one in none
    assert shared not in matcher._sentence_cache
    off = FaqMatcher(cfg.faq.model_copy(update={"answer_examples": False}), KnowledgeBase(cfg))
    assert "n_answer_examples" not in off.info() and not off._sentence_cache


@pytest.mark.parametrize("lexical", [False, True])
def test_rank_of_one_query_equals_the_batch_scores(lexical):
    bank, draw = _nuisance_faq(seed=2, n_faqs=30, per=6)
    head, w, _ = fit_matcher("logreg", bank, bank_bm25_fn, use_bm25=False)
    q = np.concatenate([draw(c, 1) for c in range(30)])
    texts = [f"q{c}-{c * 6 + 1}" for c in range(30)]  # each FAQ's own word: the lexical head knows it
    if lexical:
        bank.answers = [f"answer {c}" for c in range(30)]
        t, lab = bank.lexical_corpus()
        head.lex, head.lex_weight = fit_lexical(t, lab, bank.faq_ids, dim=2048), 0.05
    sc = Scorer(bank, "top2_mean", 0.0, head)
    lex = head.lex_scores(texts)
    full = sc.scores(q, None, lex)["score"]
    for i in range(len(q)):
        one = None if lex is None else lex[i:i + 1]
        ranked = sc.rank(q[i:i + 1], None, k=3, pool=8, lex=one)  # pool < FAQs: only the best 12 get dense scores
        assert [r["faq"] for r in ranked] == list(np.argsort(-full[i], kind="stable")[:3])
        assert ranked[0]["score"] == pytest.approx(full[i].max(), abs=1e-5)
        assert bank.labels[ranked[0]["row"]] == ranked[0]["faq"]
