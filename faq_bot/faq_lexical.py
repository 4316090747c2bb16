"""Lexical head of the FAQ stage: a softmax classifier over hashed word and character n-grams (TF-IDF), trained on
the FAQ's own questions and answers.

The dense head sees meaning; this one sees the exact words a company's FAQ is written in (product names, payment
brands, "专票", "SF Express") and the answer text, which holds words customers use that no listed question has
("能用云闪付吗" -> the FAQ whose answer lists 银联云闪付). Its log-probability is added to the FAQ score with a
weight chosen on held-out similar questions (`faq_head.fit_matcher`); being a normalized distribution over the
FAQs it also lowers the score of a question that spreads over many FAQs, which is what an out-of-scope question
does (README, "FAQ matching").

Features: NFKC + lower-case + common traditional -> simplified; word unigrams and bigrams (jieba for Chinese,
stop words kept: "how" vs "when" is intent), character 1-3-grams of Chinese runs and 2-4-grams of other words
(padded with spaces), sublinear TF, IDF from the training rows, L2-normalized, hashed (crc32, stable across
processes) into `dim` columns. Training: minibatch softmax regression with Adam updating only the columns a batch
touches (numpy), so a step costs (#FAQs x features in the batch), not (#FAQs x dim).
"""

from __future__ import annotations

import re
import unicodedata
import zlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["LexModel", "fit_lexical", "ngram_features", "DEFAULT_DIM", "LOGP_FLOOR"]

DEFAULT_DIM = 1 << 14
LOGP_FLOOR = -20.0  # log-probabilities are clipped here: one FAQ's score can never drop by more than w * 20
_HAN_RUN = re.compile(r"([\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+)")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)


def ngram_features(text: str) -> list[str]:
    """The n-gram strings of one text (before hashing); empty for text without letters or digits."""
    from .faq import to_simplified
    from .index.tokenize import _get_jieba

    t = to_simplified(unicodedata.normalize("NFKC", text).lower())
    grams: list[str] = []
    words: list[str] = []
    for i, part in enumerate(_HAN_RUN.split(t)):
        if not part:
            continue
        if i % 2:  # a run of Chinese characters
            words += _get_jieba().lcut(part)
            grams += ["c" + part[j:j + n] for n in (1, 2, 3) for j in range(len(part) - n + 1)]
        else:
            for w in _WORD.findall(part):
                words.append(w)
                s = f" {w} "
                grams += ["c" + s[j:j + n] for n in (2, 3, 4) for j in range(len(s) - n + 1)]
    grams += ["w" + w for w in words]
    grams += ["b" + a + " " + b for a, b in zip(words, words[1:])]
    return grams


def _hashed(text: str, dim: int) -> dict[int, int]:
    row: dict[int, int] = {}
    for g in ngram_features(text):
        h = zlib.crc32(g.encode("utf-8")) % dim
        row[h] = row.get(h, 0) + 1
    return row


def _weighted(row: dict[int, int], idf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One text's hashed counts -> (sorted columns, sublinear TF x IDF, L2-normalized); empty stays empty."""
    cols = np.fromiter(sorted(row), np.int64, len(row))
    vals = (1.0 + np.log(np.fromiter((row[c] for c in cols.tolist()), np.float32, len(row)))) * idf[cols]
    vals /= max(float(np.sqrt(vals @ vals)), 1e-9)
    return cols, vals.astype(np.float32)


@dataclass
class LexModel:
    """Hashed TF-IDF n-grams -> softmax over FAQs: log P(faq | text)."""

    faq_ids: list[str]
    idf: np.ndarray  # (dim,) float32
    WT: np.ndarray  # (dim, C) float32: weights, one row per hashed feature (row gathers are the hot path)
    b: np.ndarray  # (C,) float32

    @property
    def dim(self) -> int:
        return len(self.idf)

    def log_proba(self, texts: Sequence[str]) -> np.ndarray:
        """(m, C) log-probabilities, clipped at `LOGP_FLOOR`; a text without features gets the prior (b)."""
        if len(self.b) == 0:
            return np.zeros((len(texts), 0), np.float32)
        z = np.empty((len(texts), len(self.b)), np.float32)
        for i, text in enumerate(texts):  # one question at serving time: gather its ~100 weight rows
            cols, vals = _weighted(_hashed(text, self.dim), self.idf)
            z[i] = vals @ self.WT[cols] + self.b
        z -= z.max(1, keepdims=True)
        z -= np.log(np.exp(z).sum(1, keepdims=True))
        return np.maximum(z, LOGP_FLOOR)


def fit_lexical(texts: Sequence[str], labels: np.ndarray, faq_ids: Sequence[str], *, dim: int = DEFAULT_DIM,
                init: LexModel | None = None, steps: int = 300, min_epochs: int = 3, lr: float = 0.02,
                batch_size: int = 64, seed: int = 0) -> LexModel:
    """Softmax regression on hashed TF-IDF n-grams of `texts` (label = FAQ index into `faq_ids`).

    Adam without bias correction (a row's moments start when the row is first touched, so rare n-grams take
    larger first steps than `lr`: the measured figures are with this rule) and a linearly decaying rate, updating
    only the feature rows present in the batch; `steps` bounds the work (at least `min_epochs` epochs, at most
    200). Warm start: rows of `init` for the FAQs it knows (same `dim`).
    Measured on CLINC150 (15k questions): ~4 s on one core, 92% top-1 alone (README, "FAQ matching").
    """
    labels = np.asarray(labels, np.int64)
    n, C = len(texts), len(faq_ids)
    rows = [_hashed(t, dim) for t in texts]
    df = np.bincount(np.fromiter((c for r in rows for c in r), np.int64), minlength=dim)
    idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
    weighted = [_weighted(r, idf) for r in rows]
    indptr = np.concatenate([[0], np.cumsum([len(c) for c, _ in weighted])]).astype(np.int64)
    data = np.concatenate([np.zeros(0, np.float32), *(v for _, v in weighted)])
    indices = np.concatenate([np.zeros(0, np.int64), *(c for c, _ in weighted)])
    X = sp.csr_matrix((data, indices, indptr), shape=(n, dim))
    WT = np.zeros((dim, C), np.float32)
    b = np.zeros(C, np.float32)
    if init is not None and init.dim == dim:
        old = {f: i for i, f in enumerate(init.faq_ids)}
        keep = [(c, old[f]) for c, f in enumerate(faq_ids) if f in old]
        if keep:
            new_c, old_c = map(list, zip(*keep))
            WT[:, new_c] = init.WT[:, old_c]
            b[new_c] = init.b[old_c]
    if n == 0 or C == 0:
        return LexModel(list(faq_ids), idf, WT, b)
    per_epoch = (n + batch_size - 1) // batch_size
    epochs = int(np.clip(np.ceil(steps / per_epoch), min_epochs, 200))
    total = epochs * per_epoch
    m, v = np.zeros_like(WT), np.zeros_like(WT)
    mb, vb = np.zeros_like(b), np.zeros_like(b)
    # per-step work buffers, reused: fresh (T, C) temporaries would page-fault on every step at large C
    bufs = np.empty((4, 0, C), np.float32)
    rng = np.random.default_rng(seed)
    t = 0
    for _ in range(epochs):
        perm = rng.permutation(n)
        for i in range(0, n, batch_size):
            t += 1
            idx = perm[i:i + batch_size]
            xb = X[idx]
            cols, local = np.unique(xb.indices, return_inverse=True)  # the batch's features, renumbered 0..T-1
            T = len(cols)
            if bufs.shape[1] < T:
                bufs = np.empty((4, max(T, 2 * bufs.shape[1]), C), np.float32)
            w, mm, vv, g = (bufs[k, :T] for k in range(4))
            xs = sp.csr_matrix((xb.data, local.reshape(-1), xb.indptr), shape=(len(idx), T))
            np.take(WT, cols, axis=0, out=w)
            z = xs @ w + b
            z -= z.max(1, keepdims=True)
            p = np.exp(z)
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), labels[idx]] -= 1.0
            p /= len(idx)
            g[...] = xs.T @ p
            gb = p.sum(0)
            rate = lr * (1.0 - (t - 1) / total)
            # Adam on the touched rows only, in place
            np.take(m, cols, axis=0, out=mm)
            mm *= 0.9
            mm += 0.1 * g
            m[cols, :] = mm
            g *= g
            g *= 0.001
            np.take(v, cols, axis=0, out=vv)
            vv *= 0.999
            vv += g
            v[cols, :] = vv
            np.sqrt(vv, out=vv)
            vv += 1e-8
            np.divide(mm, vv, out=mm)
            mm *= rate
            w -= mm
            WT[cols, :] = w
            mb[:] = 0.9 * mb + 0.1 * gb
            vb[:] = 0.999 * vb + 0.001 * gb * gb
            b -= rate * mb / (np.sqrt(vb) + 1e-8)
    return LexModel(list(faq_ids), idf, WT, b)
