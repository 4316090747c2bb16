"""Trained part of the FAQ stage: per-FAQ scoring from several signals, heads fitted on the FAQ's own question
groups, the held-out check with fall-back, and persistence keyed by the knowledge-base generation.

Signals, per FAQ (never per question):
  dense   cosine of the query to the FAQ's questions, aggregated (max / top-2 mean), averaged over encoders
          (vectors of several encoders are concatenated, each L2-normalized and divided by sqrt(#encoders),
          so one dot product is the mean of the per-encoder cosines)
  bm25    BM25 of the query over the FAQ's questions (jieba for Chinese), max per FAQ, divided by the query's
          best FAQ (0..1)
  head    `logreg`: multinomial logistic regression over the frozen embeddings, one row per FAQ,
          initialised at the FAQ centroids; its logit / scale is cosine-like. Trained on the questions and (when
          the bank carries them) the sentences of the FAQ's answer, and the clauses of its sentences of several
          clauses, as extra examples (`answer_sentences`).
          `adapter`: a linear map of the embedding space trained contrastively on pairs of questions of the
          same FAQ (in-batch negatives, as llama-index's linear adapter), then the dense signal in that space.
  lex     log P(FAQ | text) of a softmax over hashed word/character n-grams trained on the FAQ's questions and
          answers (`faq_lexical.py`), clipped at -20.

untrained score u = dense + w_bm25 * bm25; trained score r = a * head + (1 - a) * u + w_lex * lex. `w_bm25`, `a`
and `w_lex` are chosen on held-out similar questions of the FAQ itself (from each FAQ with >= 2 similar
questions, one or more per round, rounds pooled up to ~200 questions: `check_masks`; `a` and `w_lex` leave their
priors only on significant evidence: `_choose`; for a plain question/answer list without any, the standard
questions, the answer sentences standing in for them in the check: `answer_check_split`, logreg only);
the same held-out questions decide whether the dense head is kept at all: it must not be worse than the untrained
matcher, otherwise the stage falls back to `u` (+ lex when that helps; the check is written to
faq_head_<kind>.json beside the model). Training is numpy (Adam, minibatches): seconds on CPU for 15k questions,
warm-started from the previous model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from .faq_lexical import DEFAULT_DIM as LEX_DIM
from .faq_lexical import LexModel, fit_lexical

logger = logging.getLogger(__name__)

__all__ = ["HEAD_KINDS", "Bank", "HeadModel", "Scorer", "answer_sentences", "fit_matcher", "holdout_mask",
           "load_model", "save_model", "model_files", "model_fingerprint", "update_meta", "uses_answer_examples"]

HeadKind = Literal["none", "logreg", "adapter"]
HEAD_KINDS: tuple[str, ...] = ("none", "logreg", "adapter")
FORMAT_VERSION = 3  # 3: pooled check rounds, answer clauses (a persisted head of 2 is retrained once)
BM25_WEIGHTS = (0.0, 0.1, 0.2, 0.3)
HEAD_WEIGHTS = (0.5, 0.75, 1.0)
# weight of the lexical head's log-probability; the held-out check moves it away from LEX_PRIOR, the weight that
# separated out-of-scope questions best on CLINC150 val (README, "FAQ matching"), only on significant evidence
# (`_choose`), since held-out top-1 cannot see out-of-scope separation
LEX_WEIGHTS = (0.0, 0.02, 0.05, 0.1)
LEX_PRIOR = 0.05
HEAD_PRIOR = 0.75  # the head's weight without significant held-out evidence: mostly the head, a quarter untrained
# the check pools held-out rounds (a different similar question of each FAQ per round) until it has about this
# many questions, at most CHECK_MAX_ROUNDS: with ~100 held-out questions one draw moved the chosen weights
CHECK_HELDOUT = 200
CHECK_MAX_ROUNDS = 3
LEX_MAX_CELLS = 1 << 26  # FAQs x hashed features of the lexical head (256 MB as float32): the dim shrinks above
SCALE = 20.0  # logit scale (inverse temperature) of the logreg head and the adapter's contrastive loss
MAX_ANSWER_SENTENCES = 16  # per FAQ, and as many clauses: bounds the embedding cost of long answers (first kept)
MIN_CLAUSE = 6  # characters of a clause kept as an example of its own
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")
_WORDY = re.compile(r"[^\W\d_]")  # a letter or CJK character: "[17]" (an intent id as answer) is no sentence
_CLAUSE_SEP = re.compile(r"[，、]|,\s")
_SENTENCE_END = re.compile(r"[。！？；;!?\n]+|(?<=[^\d\s.])\.(?=\s|$)")


def answer_sentences(answer: str, limit: int = MAX_ANSWER_SENTENCES, clauses: bool = True) -> list[str]:
    """The sentences of an FAQ answer that the `logreg` head also learns from ("签收后15天内可申请退货" is what a
    customer asking "质量问题签收多少天内能退" means), in order, deduplicated, at most `limit`; fragments under 4
    characters, or without a letter or CJK character, are dropped. With `clauses`, the clauses of sentences of
    several clauses (`_CLAUSE_SEP`) follow, up to `limit` more, each at least `MIN_CLAUSE` characters and,
    without CJK characters, 3 words ("每月4张10元无门槛优惠券" of a sentence that lists five membership
    benefits is what "开了PLUS每个月能拿什么券" asks about)."""
    out: list[str] = []
    for part in _SENTENCE_END.split(answer or ""):
        part = part.strip().strip(",，、:：").strip()
        if len(part) >= 4 and _WORDY.search(part) and part not in out:
            out.append(part)
            if len(out) >= limit:
                break
    if not clauses:
        return out
    extra: list[str] = []
    for sent in out:
        pieces = [p.strip() for p in _CLAUSE_SEP.split(sent)]
        if len(pieces) < 2:
            continue
        for p in pieces:
            if _clause_ok(p) and p not in out and p not in extra and len(extra) < limit:
                extra.append(p)
    return out + extra


def _clause_ok(piece: str) -> bool:
    """Long enough to stand for a fact: `MIN_CLAUSE` characters, a letter or CJK character ("400 820 8821" of a
    list of hotlines is no clause), and 3 words where it has no CJK character."""
    return (len(piece) >= MIN_CLAUSE and bool(_WORDY.search(piece))
            and (len(piece.split()) >= 3 or bool(_CJK.search(piece))))


# ---------------------------------------------------------------------------- the FAQ as matrices


@dataclass
class Bank:
    """Every question of every enabled FAQ, grouped by FAQ (rows of one FAQ are contiguous)."""

    faq_ids: list[str]
    labels: np.ndarray  # (n,) int: FAQ index of each row
    vectors: np.ndarray  # (n, D) float32: concatenated per-encoder vectors / sqrt(#encoders)
    texts: list[str]
    qids: np.ndarray  # (n,) int64: store ids of the questions
    standard: np.ndarray  # (n,) bool: the FAQ's standard question
    answers: list[str] | None = None  # (C,) the FAQ answers (training text of the lexical head), None = unused
    # extra training examples of the logreg head: answer sentences (embedded like questions), their FAQ index and
    # text; never scored against (not in `vectors`), never held out (`answer_check_split` makes them rows)
    example_vectors: np.ndarray | None = None  # (k, D) float32
    example_labels: np.ndarray | None = None  # (k,) int
    example_texts: list[str] | None = None  # (k,)
    starts: np.ndarray = field(init=False)  # (C,) first row of each FAQ
    counts: np.ndarray = field(init=False)  # (C,) rows per FAQ

    def __post_init__(self) -> None:
        n_classes = len(self.faq_ids)
        self.counts = np.bincount(self.labels, minlength=n_classes).astype(np.int64)
        if len(self.labels) and (np.any(np.diff(self.labels) < 0) or np.any(self.counts == 0)):
            raise ValueError("`Bank` rows must be grouped by FAQ, every FAQ with at least one question.")
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_classes(self) -> int:
        return len(self.faq_ids)

    def subset(self, keep: np.ndarray) -> "Bank":
        """The rows where `keep` is True (every FAQ must keep at least one row)."""
        return Bank(self.faq_ids, self.labels[keep], self.vectors[keep], [t for t, k in zip(self.texts, keep) if k],
                    self.qids[keep], self.standard[keep], self.answers, self.example_vectors, self.example_labels,
                    self.example_texts)

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        for i, f in enumerate(self.faq_ids):
            h.update(f.encode("utf-8") + b"\x00")
            for t in self.texts[self.starts[i]:self.starts[i] + self.counts[i]]:
                h.update(t.encode("utf-8") + b"\x01")
            if self.answers is not None:
                h.update(self.answers[i].encode("utf-8") + b"\x02")
        return h.hexdigest()

    def lexical_corpus(self) -> tuple[list[str], np.ndarray]:
        """Training rows of the lexical head: every question, then every non-empty answer, with FAQ labels."""
        texts, labels = list(self.texts), [self.labels]
        if self.answers is not None:
            extra = [(a, c) for c, a in enumerate(self.answers) if a and a.strip()]
            texts += [a for a, _ in extra]
            labels.append(np.asarray([c for _, c in extra], np.int64))
        return texts, np.concatenate(labels)

    def aggregate(self, sims: np.ndarray, how: str = "max") -> np.ndarray:
        """(m, n) question scores -> (m, C) FAQ scores: max, or the mean of the two best (one question: itself)."""
        return aggregate(sims, self.starts, self.counts, how)


def aggregate(sims: np.ndarray, starts: np.ndarray, counts: np.ndarray, how: str = "max") -> np.ndarray:
    """Per-group max (or top-2 mean) of the columns of `sims`, groups contiguous (`starts`, `counts`)."""
    first = np.maximum.reduceat(sims, starts, axis=1)
    if how == "max":
        return first
    rep = np.repeat(first, counts, axis=1)
    is_max = sims >= rep
    n_max = np.add.reduceat(is_max, starts, axis=1)
    second = np.maximum.reduceat(np.where(is_max, -np.inf, sims), starts, axis=1)
    second = np.where((n_max >= 2) | (counts[None, :] == 1), first, second)
    return (first + second) / 2


def _text_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _hash_order(texts: Sequence[str], rows: Sequence[int]) -> list[int]:
    return sorted(rows, key=lambda r: _text_hash(texts[r]))


def answer_check_split(bank: Bank) -> tuple[Bank, np.ndarray] | None:
    """The check's split for a plain question/answer list (no FAQ has similar questions to hold out): the
    standard question of every FAQ with answer sentences is held out, and those sentences stand in for it
    (rows of the check's bank, beside any similar question: what the untrained matcher matches and the head
    learns from); the check model is then trained from scratch (`_fit_matcher`).
    Returns (check bank, held-out rows of `bank`), or None with fewer than 2 such FAQs."""
    if bank.example_labels is None or bank.example_texts is None or not len(bank.example_labels):
        return None
    has = np.bincount(bank.example_labels, minlength=bank.n_classes) > 0
    if has.sum() < 2:
        return None
    vecs, labels, texts = [], [], []
    for c in range(bank.n_classes):
        if has[c]:
            for i in np.flatnonzero(bank.example_labels == c).tolist():
                vecs.append(bank.example_vectors[i])
                texts.append(bank.example_texts[i])
                labels.append(c)
        for r in range(bank.starts[c], bank.starts[c] + bank.counts[c]):
            if not (has[c] and bank.standard[r]):  # its (at most one) similar question stays a row
                vecs.append(bank.vectors[r])
                texts.append(bank.texts[r])
                labels.append(c)
    n = len(labels)
    check = Bank(bank.faq_ids, np.asarray(labels, np.int64), np.asarray(vecs, np.float32), texts,
                 np.arange(n, dtype=np.int64), np.zeros(n, bool), bank.answers)
    return check, bank.standard & has[bank.labels]


def holdout_mask(bank: Bank, round: int = 0, per_faq: int = 1) -> np.ndarray:
    """Held-out similar questions of round `round` of the check, from every FAQ with >= 2 similar questions, in the
    order of a hash of their text: round 0 takes the first (stable across edits of other FAQs, so a check model
    warm-started in round 0 saw none of them; where a FAQ's held-out question changed, `_warm_start` resets that
    FAQ), round r >= 1 the next `per_faq` after those of
    round r - 1, at most a quarter of the FAQ's similar questions (at least one); a FAQ that has run out sits
    the round out."""
    held = np.zeros(len(bank), dtype=bool)
    for c in range(bank.n_classes):
        rows = [r for r in range(bank.starts[c], bank.starts[c] + bank.counts[c]) if not bank.standard[r]]
        if len(rows) < 2:
            continue
        k = min(per_faq, max(1, len(rows) // 4))
        first = 0 if round == 0 else 1 + (round - 1) * k
        n = 1 if round == 0 else k
        held[_hash_order(bank.texts, rows)[first:first + n]] = True
    return held


def check_rounds(n_first: int) -> int:
    """Held-out rounds of the check when the first one holds out `n_first` questions (one per FAQ)."""
    return int(min(CHECK_MAX_ROUNDS, max(1, -(-CHECK_HELDOUT // max(n_first, 1)))))


def check_masks(bank: Bank) -> list[np.ndarray]:
    """Every round's held-out mask: rounds until about `CHECK_HELDOUT` questions (`check_rounds`), later rounds
    taking several similar questions per FAQ when few FAQs have many (7 intents of 2,000 utterances each: 7
    questions in round 0 and 98 in each later round, 203 in all, where one per FAQ per round gave 21)."""
    first = holdout_mask(bank)
    n_first = int(first.sum())
    if not n_first:
        return []
    rounds = check_rounds(n_first)
    per_faq = max(1, -(-(CHECK_HELDOUT - n_first) // (n_first * (rounds - 1)))) if rounds > 1 else 1
    masks = [first] + [holdout_mask(bank, r, per_faq) for r in range(1, rounds)]
    return [m for m in masks if m.any()]


# ---------------------------------------------------------------------------- heads


@dataclass
class HeadModel:
    """A fitted head plus the scoring weights chosen on held-out questions."""

    kind: HeadKind
    faq_ids: list[str]
    W: np.ndarray | None = None  # logreg: (C, D)
    b: np.ndarray | None = None  # logreg: (C,)
    A: np.ndarray | None = None  # adapter: (D, D)
    head_weight: float = 1.0
    lex: LexModel | None = None  # the lexical head, used with `lex_weight` > 0 (also with kind "none")
    lex_weight: float = 0.0
    # check models: per FAQ (as `faq_ids`), a hash of the question round 0 held out ("" none): see `_warm_start`
    heldout: list[str] | None = None

    @property
    def uses_lex(self) -> bool:
        return self.lex is not None and self.lex_weight > 0

    def lex_scores(self, texts: Sequence[str]) -> np.ndarray | None:
        """(m, C) log-probabilities of the lexical head for `texts`, None when it is not used."""
        return self.lex.log_proba(texts) if self.uses_lex else None

    def head_scores(self, q: np.ndarray, bank: Bank, aggregate: str, adapted: np.ndarray | None = None) -> np.ndarray:
        """(m, D) queries -> (m, C) cosine-like head scores (`adapted`: the bank already mapped by `adapt`)."""
        if self.kind == "logreg":
            return q @ self.W.T + self.b / SCALE
        if self.kind == "adapter":
            adapted = self.adapt(bank.vectors) if adapted is None else adapted
            return bank.aggregate(self.adapt(q) @ adapted.T, aggregate)
        raise ValueError(f"`kind` {self.kind!r} has no head scores.")

    def adapt(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(_rownorm(x @ self.A), dtype=np.float32)


def _rownorm(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


class _Adam:
    def __init__(self, params: list[np.ndarray], lr: float, total: int):
        self.params, self.lr, self.total, self.t = params, lr, max(total, 1), 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, grads: list[np.ndarray]) -> None:
        self.t += 1
        lr = self.lr * (1 - (self.t - 1) / self.total)  # linear decay to 0: stable without early stopping
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= 0.9
            m += 0.1 * g
            v *= 0.999
            v += 0.001 * g * g
            p -= lr * (m / (1 - 0.9 ** self.t)) / (np.sqrt(v / (1 - 0.999 ** self.t)) + 1e-8)


def _schedule(n: int, steps: int) -> tuple[int, int]:
    bs = 64 if n < 4096 else 128
    per_epoch = (n + bs - 1) // bs
    epochs = int(np.clip(np.ceil(steps / per_epoch), 2, 50))
    return bs, epochs


def fit_logreg(bank: Bank, *, init: HeadModel | None = None, steps: int = 1000, lr: float = 0.003,
               weight_decay: float = 1e-4, seed: int = 0) -> HeadModel:
    """Softmax regression over the FAQs, rows started at the FAQ centroids of the questions (or, warm, at `init`'s
    rows for the FAQs it knows) and pulled back towards that start by `weight_decay` (few examples per FAQ stay
    near it). Examples: the questions plus the bank's answer-sentence vectors (`Bank.example_vectors`)."""
    X, y, C = bank.vectors.astype(np.float32), bank.labels, bank.n_classes
    start = np.zeros((C, X.shape[1]), np.float32)
    np.add.at(start, y, X)
    if bank.example_vectors is not None and len(bank.example_vectors):
        X = np.concatenate([X, bank.example_vectors.astype(np.float32)])
        y = np.concatenate([y, bank.example_labels])
    start = _rownorm(start).astype(np.float32)
    b = np.zeros(C, np.float32)
    if init is not None and init.kind == "logreg" and init.W is not None and init.W.shape[1] == X.shape[1]:
        old = {f: i for i, f in enumerate(init.faq_ids)}
        for c, f in enumerate(bank.faq_ids):
            if f in old:
                start[c], b[c] = init.W[old[f]], init.b[old[f]]
    W = start.copy()
    bs, epochs = _schedule(len(X), steps)
    rng = np.random.default_rng(seed)
    opt = _Adam([W, b], lr, epochs * ((len(X) + bs - 1) // bs))
    for _ in range(epochs):
        perm = rng.permutation(len(X))
        for i in range(0, len(X), bs):
            idx = perm[i:i + bs]
            xb = X[idx]
            logits = SCALE * (xb @ W.T) + b
            logits -= logits.max(1, keepdims=True)
            p = np.exp(logits)
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1
            p /= len(idx)
            opt.step([SCALE * (p.T @ xb) + 2 * weight_decay * (W - start), p.sum(0)])
    return HeadModel("logreg", list(bank.faq_ids), W=W, b=b)


def fit_adapter(bank: Bank, *, init: HeadModel | None = None, steps: int = 300, lr: float = 0.001,
                weight_decay: float = 1e-3, seed: int = 0) -> HeadModel:
    """Linear adapter x -> x A (A starts at the identity, or `init`'s A) trained with InfoNCE on pairs of
    questions of the same FAQ, in-batch negatives (other FAQs only)."""
    X = bank.vectors.astype(np.float32)
    d = X.shape[1]
    eye = np.eye(d, dtype=np.float32)
    A = init.A.copy() if init is not None and init.kind == "adapter" and init.A is not None and init.A.shape == (d, d) \
        else eye.copy()
    multi = np.flatnonzero(bank.counts >= 2)
    if len(multi) < 2:
        return HeadModel("adapter", list(bank.faq_ids), A=A)
    rng = np.random.default_rng(seed)
    bs = int(min(128, len(multi)))
    opt = _Adam([A], lr, steps)
    for _ in range(steps):
        classes = rng.choice(multi, size=bs, replace=False)
        a_rows = bank.starts[classes] + rng.integers(0, bank.counts[classes])
        shift = 1 + rng.integers(0, bank.counts[classes] - 1)
        p_rows = bank.starts[classes] + (a_rows - bank.starts[classes] + shift) % bank.counts[classes]
        xa, xp = X[a_rows], X[p_rows]
        ua, up = xa @ A, xp @ A
        na, nq = np.linalg.norm(ua, axis=1, keepdims=True), np.linalg.norm(up, axis=1, keepdims=True)
        ha, hp = ua / na, up / nq
        s = SCALE * (ha @ hp.T)
        s -= s.max(1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(1, keepdims=True)
        p[np.arange(bs), np.arange(bs)] -= 1
        ds = SCALE * p / bs
        dha, dhp = ds @ hp, ds.T @ ha
        dua = (dha - ha * (ha * dha).sum(1, keepdims=True)) / na
        dup = (dhp - hp * (hp * dhp).sum(1, keepdims=True)) / nq
        opt.step([xa.T @ dua + xp.T @ dup + 2 * weight_decay * (A - eye)])
    return HeadModel("adapter", list(bank.faq_ids), A=A)


def fit_head(kind: HeadKind, bank: Bank, init: HeadModel | None = None, steps: int | None = None) -> HeadModel:
    if kind == "logreg":
        return fit_logreg(bank, init=init, **({"steps": steps} if steps else {}))
    if kind == "adapter":
        return fit_adapter(bank, init=init, **({"steps": steps} if steps else {}))
    raise ValueError(f"`faq.head` must be one of {', '.join(HEAD_KINDS)}, got {kind!r}.")


# ---------------------------------------------------------------------------- scoring


def bm25_index(bank: Bank):
    """A BM25 index over `bank`'s questions, keyed by question id."""
    from .index import BM25Index

    index = BM25Index()
    if len(bank):
        index.add(bank.qids, bank.texts)
    return index


def bm25_scores(index, label_of: dict[int, int], n_classes: int, texts: Sequence[str], k: int = 100) -> np.ndarray:
    """(m, C): each FAQ's best BM25 over its questions, divided by the query's best FAQ (0 without overlap)."""
    out = np.zeros((len(texts), n_classes), np.float32)
    for i, text in enumerate(texts):
        for qid, s in index.search(text, k):
            c = label_of.get(qid)
            if c is not None and s > out[i, c]:
                out[i, c] = s
        top = out[i].max()
        if top > 0:
            out[i] /= top
    return out


def bank_bm25_fn(bank: Bank, texts: Sequence[str]) -> np.ndarray:
    """`fit_matcher`'s bm25_fn: BM25 of `texts` against a fresh index over `bank`."""
    return bm25_scores(bm25_index(bank), dict(zip(bank.qids.tolist(), bank.labels.tolist())), bank.n_classes, texts)


@dataclass
class Scorer:
    """Per-FAQ scores of queries against a bank: the untrained matcher (`head=None`) or the trained one."""

    bank: Bank
    aggregate: str = "max"
    bm25_weight: float = 0.0
    head: HeadModel | None = None
    _adapted: np.ndarray | None = field(default=None, init=False, repr=False)

    def scores(self, q: np.ndarray, bm25: np.ndarray | None, lex: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Every signal for a batch of queries, (m, C) each; `score` is the one FAQs are ranked and decided by.
        `lex`: the lexical head's log-probabilities of the same queries (`HeadModel.lex_scores`)."""
        dense = self.bank.aggregate(q @ self.bank.vectors.T, self.aggregate)
        u = dense + self.bm25_weight * bm25 if bm25 is not None and self.bm25_weight else dense
        out = {"dense": dense, "untrained": u}
        if bm25 is not None:
            out["bm25"] = bm25
        score = u
        if self.head is not None and self.head.kind != "none":
            if self.head.kind == "adapter" and self._adapted is None:
                self._adapted = self.head.adapt(self.bank.vectors)
            h = self.head.head_scores(q, self.bank, self.aggregate, self._adapted)
            a = self.head.head_weight
            out["head"] = h
            score = a * h + (1 - a) * u
        if lex is not None and self.head is not None and self.head.uses_lex:
            out["lex"] = lex
            score = score + self.head.lex_weight * lex
        out["score"] = score
        return out


    def rank(self, q: np.ndarray, bm25: np.ndarray | None, k: int, pool: int = 50,
             lex: np.ndarray | None = None) -> list[dict]:
        """One query (1, D): the `k` best FAQs, best first, each {"faq": index, "score", "dense", "head", "bm25",
        "lex", "row": its best question}. With a head, only the `max(pool, 4k)` FAQs best by the head (+ lex) get
        the dense/BM25 signals (the dense pass over every question is the cost at 10k+ questions); their ranking
        equals `scores`'."""
        bank = self.bank
        if len(bank) == 0:
            return []
        h = None
        if self.head is not None and self.head.kind != "none":
            if self.head.kind == "adapter" and self._adapted is None:
                self._adapted = self.head.adapt(bank.vectors)
            h = self.head.head_scores(q, bank, self.aggregate, self._adapted)[0]
        lx = lex[0] if lex is not None and self.head is not None and self.head.uses_lex else None
        n_pool = max(pool, 4 * k)
        if h is not None and n_pool < bank.n_classes:
            pre = self.head.head_weight * h + (self.head.lex_weight * lx if lx is not None else 0.0)
            cand = np.argpartition(-pre, n_pool - 1)[:n_pool]
        else:
            cand = np.arange(bank.n_classes)
        counts = bank.counts[cand]
        local = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        rows = np.repeat(bank.starts[cand] - local, counts) + np.arange(int(counts.sum()))
        if len(cand) == bank.n_classes:
            sims = (q @ bank.vectors.T)[0]
        elif 4 * len(rows) > len(bank):  # gathering most of the bank costs more than the product over all of it
            sims = (q @ bank.vectors.T)[0][rows]
        else:
            sims = (q @ bank.vectors[rows].T)[0]
        dense = aggregate(sims[None, :], local, counts, self.aggregate)[0]
        b = bm25[0, cand] if bm25 is not None else None
        u = dense + self.bm25_weight * b if b is not None and self.bm25_weight else dense
        score = u if h is None else self.head.head_weight * h[cand] + (1 - self.head.head_weight) * u
        if lx is not None:
            score = score + self.head.lex_weight * lx[cand]
        k = min(k, len(cand))
        top = np.argpartition(-score, k - 1)[:k] if k < len(cand) else np.arange(len(cand))
        top = top[np.argsort(-score[top], kind="stable")]
        out = []
        for j in top:
            best = local[j] + int(np.argmax(sims[local[j]:local[j] + counts[j]]))
            out.append({"faq": int(cand[j]), "score": float(score[j]), "dense": float(dense[j]),
                        "head": None if h is None else float(h[cand[j]]), "bm25": None if b is None else float(b[j]),
                        "lex": None if lx is None else float(lx[cand[j]]), "row": int(rows[best])})
        return out


def _top1(scores: np.ndarray, gold: np.ndarray) -> float:
    return float(np.mean(scores.argmax(1) == gold)) if len(gold) else 0.0


def _choose(scores_by: dict[float, np.ndarray], gold: np.ndarray, prior: float) -> float:
    """The weight nearest `prior` among those whose held-out top-1 is not significantly below the best one's.

    With ~100 held-out questions the best weight changed with which questions were held out and with training
    history, so the held-out evidence has to earn a move away from the prior: a weight is within reach when its
    deficit to the best (paired, in questions: best right and it wrong, minus the reverse) is at most one
    standard deviation of that difference under no real difference (sqrt of the discordant count: a one-sigma
    sign test). Ties in distance go to the more accurate weight."""
    right = {w: s.argmax(1) == gold for w, s in scores_by.items()}
    best = max(right, key=lambda w: (int(right[w].sum()), -abs(w - prior)))
    def close_enough(w: float) -> bool:
        b, c = int(np.sum(right[best] & ~right[w])), int(np.sum(right[w] & ~right[best]))
        return b - c <= np.sqrt(b + c)
    return min((w for w in right if close_enough(w)), key=lambda w: (abs(w - prior), -int(right[w].sum())))


def fit_matcher(kind: HeadKind, bank: Bank, bm25_fn, *, aggregate: str = "max", use_bm25: bool = True,
                lexical: bool = False, init: dict | None = None,
                steps: int | None = None) -> tuple[HeadModel | None, float, dict]:
    """One BLAS thread: minibatch products are small, and more threads only fight the serving ones."""
    kw = dict(aggregate=aggregate, use_bm25=use_bm25, lexical=lexical, init=init, steps=steps)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: training is still correct, only possibly slower under load
        return _fit_matcher(kind, bank, bm25_fn, **kw)
    with threadpool_limits(limits=1, user_api="blas"):
        return _fit_matcher(kind, bank, bm25_fn, **kw)


def lex_dim(n_classes: int) -> int:
    """Hashed feature columns of the lexical head: `LEX_DIM`, halved while #FAQs x dim > `LEX_MAX_CELLS`."""
    dim = LEX_DIM
    while dim > 1024 and n_classes * dim > LEX_MAX_CELLS:
        dim //= 2
    return dim


def _fit_lex(bank: Bank, init: LexModel | None = None, *, final: bool = False) -> LexModel:
    """The check model from scratch (a few epochs, seconds; nothing of the held-out questions can leak in from an
    earlier final model); the final one warm-started from the check model, a third of the steps."""
    texts, labels = bank.lexical_corpus()
    kw = {"steps": 100, "min_epochs": 2} if final else {}
    return fit_lexical(texts, labels, bank.faq_ids, dim=lex_dim(bank.n_classes), init=init, **kw)


def _fit_matcher(kind: HeadKind, bank: Bank, bm25_fn, *, aggregate: str, use_bm25: bool, lexical: bool,
                 init: dict | None, steps: int | None) -> tuple[HeadModel | None, float, dict]:
    """Choose the BM25 weight, train the heads, run the held-out check, and fit the final heads on everything.

    The check pools held-out rounds (`check_masks`), enough for about `CHECK_HELDOUT` questions;
    every weight and the keep-or-fall-back decision is taken on the pooled questions, and a weight moves away from
    its prior only on significant evidence (`_choose`).

    Args:
        bm25_fn: (bank, texts) -> (m, C) normalized BM25 FAQ scores of `texts` against `bank`'s questions.
        lexical: also train the lexical head (n-grams of questions and answers) and choose its weight.
        init: the previous run's models {"check": HeadModel, "final": HeadModel} for a warm start.

    Returns:
        (final head or None when neither head is used, bm25 weight, check record for faq_head_<kind>.json).
        A dense head that fails the check comes back as kind "none" when the lexical head is still used.
    """
    t0 = time.perf_counter()
    masks = check_masks(bank)
    split = answer_check_split(bank) if not masks and kind == "logreg" else None
    source = "similar questions" if split is None else "standard questions (answer sentences as their questions)"
    if split is not None:
        masks = [split[1]]
    rounds = [_Round(bank, m, split[0] if split is not None else None, bm25_fn if use_bm25 else None, aggregate)
              for m in masks]
    gold = np.concatenate([r.gold for r in rounds]) if rounds else np.zeros(0, np.int64)
    rec: dict = {"kind": kind, "n_questions": int(len(bank)), "n_faqs": bank.n_classes, "n_heldout": int(len(gold)),
                 "check_rounds": len(rounds), "heldout_source": source, "aggregate": aggregate}
    if not len(gold):
        rec.update(head_used=False, lex_used=False, bm25_weight=0.0,
                   reason="no FAQ has 2 or more similar questions (or, for the logreg head, answer sentences) "
                          "to hold one out")
        return None, 0.0, rec

    def pooled(fn) -> np.ndarray:  # one (n_heldout, C) score matrix over every round
        return np.concatenate([fn(r) for r in rounds])

    # untrained matcher: the BM25 weight it gets is chosen on the held-out questions too (fair comparison)
    weights = BM25_WEIGHTS if use_bm25 else (0.0,)
    acc_by_w = {w: _top1(pooled(lambda r: r.untrained(w)), gold) for w in weights}
    w_best = max(weights, key=lambda w: (acc_by_w[w], -w))
    untrained_acc = acc_by_w[w_best]
    rec.update(bm25_weight=w_best, untrained_top1=round(untrained_acc, 4),
               untrained_top1_by_bm25_weight={str(w): round(acc_by_w[w], 4) for w in weights})
    if kind == "none":
        rec.update(head_used=False, lex_used=False, reason="faq.head is none",
                   ms=round((time.perf_counter() - t0) * 1000, 1))
        return None, w_best, rec

    # the dense head, trained without each round's held-out questions; the first round warm-starts from the
    # previous check model (its held-out questions are stable, see `holdout_mask`, `_warm_start`), later rounds and the
    # plain-list split (an earlier check model, fitted when FAQs had similar questions, saw the standard questions
    # it holds out) start from scratch
    t1 = time.perf_counter()
    keys = _heldout_keys(bank, masks[0]) if split is None else None
    warm, reset = _warm_start((init or {}).get("check"), bank.faq_ids, keys)
    rec["warm_start"] = warm is not None
    if reset:
        rec["warm_start_reset_faqs"] = reset
    for i, r in enumerate(rounds):
        r.fit_head(kind, warm if i == 0 else None, steps)
    check = rounds[0].head
    check.heldout = keys
    rec["check_train_ms"] = round((time.perf_counter() - t1) * 1000, 1)
    by_a = {a: pooled(lambda r: a * r.head_scores + (1 - a) * r.untrained(w_best)) for a in HEAD_WEIGHTS}
    acc_by_a = {a: _top1(s, gold) for a, s in by_a.items()}
    # the head is kept when some weight keeps it at or above the untrained matcher; the weight is chosen among those
    keep = {a: sc for a, sc in by_a.items() if acc_by_a[a] >= untrained_acc}
    head_used = bool(keep)
    a_best = _choose(keep or by_a, gold, HEAD_PRIOR)
    trained_acc = acc_by_a[a_best]
    check.head_weight = a_best
    rec.update(head_weight=a_best, trained_top1=round(trained_acc, 4), head_used=head_used,
               trained_top1_by_head_weight={str(a): round(acc_by_a[a], 4) for a in HEAD_WEIGHTS})
    if head_used:
        base, base_acc = by_a[a_best], trained_acc
        rec["reason"] = f"trained >= untrained on held-out {source}"
    else:
        base, base_acc = pooled(lambda r: r.untrained(w_best)), untrained_acc
        rec["reason"] = (f"trained {trained_acc:.4f} < untrained {untrained_acc:.4f} on held-out {source}: "
                         "fell back to the untrained matcher")
        logger.warning("FAQ head (%s) worse than the untrained matcher on %d held-out %s (%.3f < %.3f): "
                       "falling back", kind, len(gold), source, trained_acc, untrained_acc)

    # the lexical head on the same splits; its weight (maybe 0) is chosen on the same held-out questions
    lex_w, check_lex = 0.0, None
    if lexical and bank.n_classes >= 2:  # the check model keeps only the weight (its lexical part: see _fit_lex)
        t1 = time.perf_counter()
        lp = pooled(lambda r: r.lex_log_proba())
        check_lex = rounds[0].lex
        rec["lex_check_train_ms"] = round((time.perf_counter() - t1) * 1000, 1)
        by_l = {w: base + w * lp for w in LEX_WEIGHTS}
        acc_by_l = {w: _top1(s, gold) for w, s in by_l.items()}
        # never below the untrained matcher (weight 0 always qualifies: `base` is at least as good)
        lex_w = _choose({w: sc for w, sc in by_l.items() if w == 0 or acc_by_l[w] >= untrained_acc}, gold, LEX_PRIOR)
        check.lex_weight = lex_w
        rec.update(lex_weight=lex_w, lex_dim=check_lex.dim, top1_with_lex=round(acc_by_l[lex_w], 4),
                   top1_by_lex_weight={str(w): round(acc_by_l[w], 4) for w in LEX_WEIGHTS})
        logger.info("FAQ lexical head: weight %s (held-out top-1 %.3f -> %.3f)", lex_w, base_acc, acc_by_l[lex_w])
    rec["lex_used"] = lex_w > 0
    if not head_used and lex_w == 0:
        rec["ms"] = round((time.perf_counter() - t0) * 1000, 1)
        return None, w_best, {**rec, "_check": check}

    # final heads on every question (and answer), warm-started from the first round's check models
    t1 = time.perf_counter()
    if head_used:
        final = fit_head(kind, bank, check, max(1, (steps or (1000 if kind == "logreg" else 300)) // 3))
        final.head_weight = a_best
    else:
        final = HeadModel("none", list(bank.faq_ids))
    if lex_w > 0:
        final.lex = _fit_lex(bank, check_lex, final=True)
        final.lex_weight = lex_w
    rec.update(final_train_ms=round((time.perf_counter() - t1) * 1000, 1),
               ms=round((time.perf_counter() - t0) * 1000, 1))
    return final, w_best, {**rec, "_check": check}


def _heldout_keys(bank: Bank, held: np.ndarray) -> list[str]:
    """Per FAQ of `bank`, a hash of its question in `held` ("" none): what a warm start checks (`_warm_start`)."""
    keys = [""] * bank.n_classes
    for r in np.flatnonzero(held).tolist():
        keys[bank.labels[r]] = _text_hash(bank.texts[r])[:16]
    return keys


def _warm_start(prev: HeadModel | None, faq_ids: Sequence[str], keys: list[str] | None) -> tuple[HeadModel | None, int]:
    """The previous check model as the start of round 0, minus what would leak: it trained on every question but
    those it held out, so a FAQ whose round-0 held-out question is another one now (the old one edited or
    deleted, or the FAQ just reached 2 similar questions) restarts its logreg row at its centroid; an adapter
    (one matrix for all FAQs) then starts from the identity. Returns (start or None, FAQs reset)."""
    if prev is None or keys is None or prev.heldout is None:
        return None, 0
    old = dict(zip(prev.faq_ids, prev.heldout))
    stale = {f for f, k in zip(faq_ids, keys) if k and f in old and old[f] != k}
    if not stale:
        return prev, 0
    if prev.kind != "logreg" or prev.W is None or prev.b is None:
        return None, len(stale)
    keep = [i for i, f in enumerate(prev.faq_ids) if f not in stale]
    return replace(prev, faq_ids=[prev.faq_ids[i] for i in keep], W=prev.W[keep], b=prev.b[keep],
                   heldout=[prev.heldout[i] for i in keep]), len(stale)


class _Round:
    """One held-out round of the check: the bank without its held-out questions (or the plain-list check bank),
    the held-out questions, and each signal's scores of them, computed once and combined under every weight."""

    def __init__(self, bank: Bank, held: np.ndarray, train: Bank | None, bm25_fn, aggregate: str) -> None:
        self.train = bank.subset(~held) if train is None else train
        self.aggregate = aggregate
        self.q, self.gold = bank.vectors[held], bank.labels[held]
        self.texts = [t for t, h in zip(bank.texts, held) if h]
        self.bm25 = bm25_fn(self.train, self.texts) if bm25_fn is not None else None
        self.dense = self.train.aggregate(self.q @ self.train.vectors.T, aggregate)
        self.head: HeadModel | None = None
        self.head_scores: np.ndarray | None = None
        self.lex: LexModel | None = None

    def untrained(self, w: float) -> np.ndarray:
        return self.dense + w * self.bm25 if self.bm25 is not None and w else self.dense

    def fit_head(self, kind: HeadKind, init: HeadModel | None, steps: int | None) -> None:
        self.head = fit_head(kind, self.train, init, steps)
        self.head_scores = Scorer(self.train, self.aggregate, 0.0, self.head).scores(self.q, None)["head"]

    def lex_log_proba(self) -> np.ndarray:
        self.lex = _fit_lex(self.train)
        return self.lex.log_proba(self.texts)


# ---------------------------------------------------------------------------- persistence


def model_fingerprint(bank: Bank, encoders: Sequence[str], cfg) -> str:
    """What a persisted model depends on: the questions, the encoders and the FAQ settings that shape training."""
    h = hashlib.sha1(bank.fingerprint().encode())
    h.update(json.dumps([FORMAT_VERSION, list(encoders), cfg.head, cfg.aggregate, cfg.bm25, cfg.train_steps,
                         cfg.lexical, uses_answer_examples(cfg)]).encode())
    return h.hexdigest()


def uses_answer_examples(cfg) -> bool:
    """Whether `faq.answer_examples` has an effect: only the logreg head learns from answer sentences."""
    return bool(cfg.answer_examples) and cfg.head == "logreg"


def model_files(directory: Path, kind: str) -> tuple[Path, Path]:
    """(weights .npz, meta .json) of the `kind` model: one pair per kind, so switching `faq.head` back and forth
    keeps each one's warm start."""
    return directory / f"faq_head_{kind}.npz", directory / f"faq_head_{kind}.json"


def save_model(directory: Path, kind: str, meta: dict, models: dict[str, HeadModel]) -> None:
    """Weights of the final and check models (.npz) + meta and the held-out check (.json), each written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    npz, js = model_files(directory, kind)
    arrays: dict[str, np.ndarray] = {}
    for name, m in models.items():
        arrays[f"{name}__faq_ids"] = np.array(m.faq_ids, dtype=str)
        arrays[f"{name}__meta"] = np.array(json.dumps({"kind": m.kind, "head_weight": m.head_weight,
                                                       "lex_weight": m.lex_weight}))
        for k in ("W", "b", "A"):
            v = getattr(m, k)
            if v is not None:
                arrays[f"{name}__{k}"] = v
        if m.heldout is not None:
            arrays[f"{name}__heldout"] = np.array(m.heldout, dtype=str)
        if m.lex is not None:  # trained on the same bank: its FAQ ids are the head's
            rows = np.flatnonzero(np.any(m.lex.WT != 0, axis=1))  # features never seen in training stay 0: not stored
            arrays[f"{name}__lex_idf"], arrays[f"{name}__lex_b"] = m.lex.idf, m.lex.b
            arrays[f"{name}__lex_rows"], arrays[f"{name}__lex_WT"] = rows, m.lex.WT[rows]
    tmp = directory / f".{npz.stem}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, npz)
    _write_json(js, {**meta, "format": FORMAT_VERSION, "models": sorted(models)})


def load_model(directory: Path, kind: str) -> tuple[dict, dict[str, HeadModel]] | None:
    """What `save_model` wrote, or None when missing or unreadable."""
    npz, js = model_files(directory, kind)
    try:
        meta = json.loads(js.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT_VERSION:
            return None
        models = {}
        if meta.get("models"):
            with np.load(npz, allow_pickle=False) as z:
                for name in meta["models"]:
                    info = json.loads(str(z[f"{name}__meta"]))
                    arr = {k: z[f"{name}__{k}"] for k in ("W", "b", "A") if f"{name}__{k}" in z.files}
                    faq_ids = [str(x) for x in z[f"{name}__faq_ids"]]
                    lex = None
                    if f"{name}__lex_WT" in z.files:
                        idf, b = z[f"{name}__lex_idf"], z[f"{name}__lex_b"]
                        WT = np.zeros((len(idf), len(b)), np.float32)
                        WT[z[f"{name}__lex_rows"]] = z[f"{name}__lex_WT"]
                        lex = LexModel(list(faq_ids), idf, WT, b)
                    heldout = ([str(x) for x in z[f"{name}__heldout"]] if f"{name}__heldout" in z.files else None)
                    models[name] = HeadModel(info["kind"], faq_ids,
                                             head_weight=float(info["head_weight"]), lex=lex,
                                             lex_weight=float(info.get("lex_weight", 0.0)), heldout=heldout, **arr)
        return meta, models
    except (OSError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as e:
        logger.info("FAQ head not loadable from %s (%s)", js, e)
        return None


def update_meta(directory: Path, kind: str, meta: dict) -> None:
    _write_json(model_files(directory, kind)[1], meta)


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)
