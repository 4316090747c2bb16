"""Benchmark data: CLINC150-based FAQ sets with cheap paraphrases, fresh query streams, synthetic zh/en text,
markdown documents and clustered vectors. Deterministic (seeded); embeddings cached on disk between runs.

CLINC150 data by Larson et al. / Clinc, Inc. (https://github.com/clinc/oos-eval), licensed under CC BY 3.0;
read from ../shared/data, never copied into the repository.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import numpy as np

from .common import ROOT, cache_dir

logger = logging.getLogger(__name__)

CLINC_PATH = ROOT.parent / "shared" / "data" / "clinc150" / "data_full.json"
QUESTIONS_PER_FAQ = 10

_PREFIXES = ("", "hey ", "please ", "can you tell me ", "i need to know ", "quick question, ", "excuse me, ",
             "help me: ", "i was wondering ", "tell me ")
_SUFFIXES = ("", " please", " thanks", " right now", " today", " for me", " asap", " if you can")
_STOP = {"the", "a", "an", "my", "to", "of", "for", "is", "i", "me", "please", "can", "you", "what", "how", "do"}
# Query-side wrappers differ from the FAQ-side ones, so a query never equals a stored question by construction.
_Q_PREFIXES = ("so ", "um ", "ok so ", "one more thing: ", "hello, ", "hi there, ", "quick one: ", "sorry, ")
_Q_SUFFIXES = ("", "?", " thank you", " :)", " now", " again")


def clinc_available() -> bool:
    return CLINC_PATH.is_file()


def _load_clinc() -> dict:
    return json.loads(CLINC_PATH.read_text(encoding="utf-8"))


def _norm(text: str) -> str:
    from faq_bot.faq import normalize_question

    return normalize_question(text)


def _variant(text: str, rng: random.Random) -> str:
    """A cheap paraphrase: template prefix/suffix plus one word-level edit (adjacent swap or stop-word drop)."""
    words = text.split()
    op = rng.random()
    if len(words) > 3 and op < 0.4:
        i = rng.randrange(1, len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
    elif len(words) > 3 and op < 0.7:
        stops = [i for i, w in enumerate(words) if w in _STOP]
        if stops:
            del words[rng.choice(stops)]
    return (rng.choice(_PREFIXES) + " ".join(words) + rng.choice(_SUFFIXES)).strip()


class FaqData:
    """FAQ entries built from CLINC150 train+val utterances grouped by intent, grown with paraphrases.

    The FAQ list is ordered so that its first N/10 entries are the N-question set: sets of different sizes
    are prefixes of one master list (so their embeddings are shared in the cache).
    """

    def __init__(self, max_questions: int, seed: int = 0):
        from faq_bot.schema import Faq

        data = _load_clinc()
        by_intent: dict[str, list[str]] = defaultdict(list)
        for split in ("train", "val"):
            for text, intent in data[split]:
                by_intent[intent].append(text.strip())
        intents = sorted(by_intent)
        rng = random.Random(seed)
        seen: set[str] = set()
        streams: dict[str, list[str]] = {}
        per_intent = -(-max_questions // len(intents)) + QUESTIONS_PER_FAQ  # ceil, plus one spare FAQ
        for intent in intents:
            base = []
            for t in by_intent[intent]:
                if _norm(t) not in seen:
                    seen.add(_norm(t))
                    base.append(t)
            stream = list(base)
            level = 0
            while len(stream) < per_intent:
                level += 1
                for t in base:
                    for _ in range(8):
                        v = _variant(t, rng)
                        if _norm(v) and _norm(v) not in seen:
                            seen.add(_norm(v))
                            stream.append(v)
                            break
                    if len(stream) >= per_intent:
                        break
                if level > 50:
                    break
            streams[intent] = stream
        self.intents = intents
        self.faqs: list[Faq] = []
        pos = {i: 0 for i in intents}
        j = 0
        while len(self.faqs) * QUESTIONS_PER_FAQ < max_questions:
            intent = intents[j % len(intents)]
            qs = streams[intent][pos[intent]:pos[intent] + QUESTIONS_PER_FAQ]
            pos[intent] += QUESTIONS_PER_FAQ
            j += 1
            if len(qs) < QUESTIONS_PER_FAQ:
                continue
            k = len(self.faqs)
            self.faqs.append(Faq(id=f"bench-{k:06d}", question=qs[0], similar_questions=qs[1:], category=intent,
                                 answer=f"[{intent}] answer #{k}: see the help centre article for {intent}."))
        self.seen_norm = seen
        self.test = [(t.strip(), i) for t, i in data["test"]]

    def subset(self, n_questions: int):
        """The first n_questions/10 FAQ entries."""
        return self.faqs[: n_questions // QUESTIONS_PER_FAQ]

    @staticmethod
    def questions(faqs) -> list[str]:
        return [q for f in faqs for q in f.all_questions()]


class QueryStream:
    """Never-repeating query texts (cache misses): CLINC test utterances first, then wrapped variants of them.

    No query normalizes to a stored FAQ question, so every query takes the vector path (query embedding +
    search), never the exact-match shortcut.
    """

    def __init__(self, test: list[tuple[str, str]], exclude_norm: set[str], seed: int = 1):
        self._rng = random.Random(seed)
        self._base = [t for t, _ in test]
        self._rng.shuffle(self._base)
        self._exclude = exclude_norm
        self._used: set[str] = set()
        self._it = self._gen()

    def _gen(self) -> Iterator[str]:
        for t in self._base:
            yield t
        for rnd in range(1000):
            for t in self._base:
                yield (self._rng.choice(_Q_PREFIXES) + t + self._rng.choice(_Q_SUFFIXES)).strip()

    def take(self, n: int) -> list[str]:
        out = []
        for t in self._it:
            k = _norm(t)
            if not k or k in self._exclude or k in self._used:
                continue
            self._used.add(k)
            out.append(t)
            if len(out) >= n:
                break
        return out


def _emb_path(block: list[str], model: str) -> Path:
    h = hashlib.sha1(("\n".join(block) + f"|{model}|q").encode("utf-8")).hexdigest()[:20]
    return cache_dir() / f"emb-{model}-{h}.npy"


def embeddings_cached(texts: list[str], model: str, chunk: int = 10_000) -> bool:
    """True when `embed_cached` would compute nothing."""
    return all(_emb_path(texts[i:i + chunk], model).exists() for i in range(0, len(texts), chunk))


def embed_cached(texts: list[str], model: str, *, chunk: int = 10_000, batch_size: int = 256) -> tuple[np.ndarray, dict]:
    """Embeddings of `texts` by encoder `model` (query side, as FAQ questions are stored), cached per 10k block.

    Computed with a 1-thread encoder instance of its own (fastest on a shared 2-core box; the vectors are the
    model's, whatever the thread count). Setup only: never part of a timed figure.
    """
    from faq_bot.models import load_encoder

    enc = None
    parts, info = [], {"computed": 0, "cached": 0, "compute_s": 0.0}
    for i in range(0, len(texts), chunk):
        block = texts[i:i + chunk]
        path = _emb_path(block, model)
        if path.exists():
            parts.append(np.load(path))
            info["cached"] += len(block)
            continue
        if enc is None:
            enc = load_encoder(model, threads=1, cache_size=0)
        t0 = time.perf_counter()
        vecs = enc.encode_queries(block, batch_size=batch_size)
        info["compute_s"] += time.perf_counter() - t0
        info["computed"] += len(block)
        tmp = path.with_name(path.name + f".{int(time.time() * 1e6)}.tmp.npy")
        np.save(tmp, vecs)
        tmp.replace(path)
        parts.append(vecs)
    mat = np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)
    info["compute_s"] = round(info["compute_s"], 2)
    return mat.astype(np.float32, copy=False), info


# ----------------------------------------------------------------------------------------------- synthetic text
_EN_WORDS = ("refund shipping order invoice member points coupon delivery warranty repair account password login "
             "payment card return exchange discount voucher balance address courier package parcel tracking "
             "service support policy privacy security data cancel subscription upgrade plan price fee charge bill "
             "credit debit bank transfer store online offline product quality damage broken missing late early "
             "express standard international domestic customs tax receipt email phone message notification app "
             "website mobile desktop version update install error failure success verify identity document").split()


class ZhEnVocab:
    """Zipf-weighted vocabulary: frequent multi-character words from jieba's dictionary plus English terms."""

    def __init__(self, n_zh: int = 20_000, seed: int = 0):
        import jieba

        from faq_bot.index.tokenize import STOPWORDS, _get_jieba

        _get_jieba()
        freq = jieba.dt.FREQ
        words = [w for w, f in freq.items() if f > 0 and 2 <= len(w) <= 4 and w not in STOPWORDS
                 and all("\u4e00" <= ch <= "\u9fff" for ch in w)]
        words.sort(key=lambda w: -freq[w])
        self.zh = words[:n_zh]
        self.en = list(_EN_WORDS)
        self._rng = np.random.default_rng(seed)
        ranks = np.arange(1, len(self.zh) + 1)
        p = 1.0 / ranks ** 1.05
        self._p_zh = p / p.sum()

    def text(self, n_words: int, en_share: float = 0.15) -> str:
        """Chinese word runs (no spaces, as written) with English terms between them."""
        n_en = int(round(n_words * en_share))
        zh = self._rng.choice(len(self.zh), size=n_words - n_en, p=self._p_zh)
        en = self._rng.choice(len(self.en), size=n_en)
        parts, k = [], 0
        cut = sorted(self._rng.choice(max(1, n_words - n_en), size=min(n_en, max(1, n_words - n_en)), replace=False))
        for j, idx in enumerate(zh):
            parts.append(self.zh[idx])
            if k < len(cut) and j == cut[k]:
                parts.append(f" {self.en[en[k]]} ")
                k += 1
        return "".join(parts).strip() + "。"

    def query(self, n_words: int) -> str:
        """A short query: words drawn from the middle of the distribution (the realistic, selective ones)."""
        lo, hi = 50, min(5000, len(self.zh))
        idx = self._rng.integers(lo, hi, size=n_words)
        q = "".join(self.zh[i] for i in idx)
        if self._rng.random() < 0.3:
            q += " " + self.en[int(self._rng.integers(len(self.en)))]
        return q


def markdown_docs(n_docs: int, sections: int, paras: int, vocab: ZhEnVocab, words_per_para: int = 90) -> list[tuple[str, bytes]]:
    """(name, bytes) markdown documents with headings and paragraphs, Chinese/English mixed."""
    docs = []
    for d in range(n_docs):
        lines = [f"# 服务条款 {d} Policy"]
        for s in range(sections):
            lines.append(f"\n## 第{s + 1}节 {vocab.en[(d + s) % len(vocab.en)]}\n")
            for _ in range(paras):
                lines.append(vocab.text(words_per_para) + "\n")
        docs.append((f"bench_doc_{d:03d}.md", "\n".join(lines).encode("utf-8")))
    return docs


# ----------------------------------------------------------------------------------------------- vectors
class Mixture:
    """Clustered unit vectors: cluster centre + low-rank within-cluster variation + small isotropic noise.

    Real sentence embeddings have a low intrinsic dimension and clusters of related texts; pure isotropic
    gaussian noise in 384-d makes every neighbour equidistant (no ANN works) and is not what indexes see.
    """

    def __init__(self, dim: int = 384, clusters: int = 1000, rank: int = 24, spread: float = 0.9,
                 noise: float = 0.15, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim, self.clusters, self.rank, self.spread, self.noise = dim, clusters, rank, spread, noise
        self.centres = rng.standard_normal((clusters, dim), dtype=np.float32)
        self.centres /= np.linalg.norm(self.centres, axis=1, keepdims=True)
        basis = rng.standard_normal((rank, dim), dtype=np.float32)
        self.basis = basis / np.sqrt(dim)  # rows of ~unit norm: the latent part has norm ~spread

    def params(self) -> dict:
        return {"dim": self.dim, "clusters": self.clusters, "rank": self.rank, "spread": self.spread,
                "noise": self.noise}

    def sample(self, n: int, seed: int, block: int = 100_000) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32)
        for i in range(0, n, block):
            m = min(block, n - i)
            lab = rng.integers(0, self.clusters, size=m)
            x = self.centres[lab].copy()
            z = rng.standard_normal((m, self.rank), dtype=np.float32) * (self.spread / np.sqrt(self.rank))
            x += z @ self.basis
            x += rng.standard_normal((m, self.dim), dtype=np.float32) * (self.noise / np.sqrt(self.dim))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[i:i + m] = x
        return out


def exact_topk(base: np.ndarray, queries: np.ndarray, k: int, block: int = 200_000) -> np.ndarray:
    """Exact inner-product top-k ids (ground truth), blockwise to bound memory."""
    best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_i = np.full((len(queries), k), -1, dtype=np.int64)
    for i in range(0, len(base), block):
        s = queries @ base[i:i + block].T
        top = np.argpartition(-s, min(k, s.shape[1] - 1), axis=1)[:, :k]
        ts = np.take_along_axis(s, top, axis=1)
        cs = np.concatenate([best_s, ts], axis=1)
        ci = np.concatenate([best_i, top + i], axis=1)
        order = np.argsort(-cs, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(cs, order, axis=1), np.take_along_axis(ci, order, axis=1)
    return best_i


def recall_at_k(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist())) for f, t in zip(found, truth)]
    return float(np.mean(hits) / k) if hits else float("nan")


def faq_csv(faqs, similar_per_row: int = 2) -> bytes:
    """A FAQ CSV (question, answer, similar_questions joined by '||') as staff would upload it."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["question", "answer", "similar_questions", "category"])
    for f in faqs:
        w.writerow([f.question, f.answer, "||".join(f.similar_questions[:similar_per_row]), f.category])
    return buf.getvalue().encode("utf-8")


def synthetic_faqs(n: int, vocab: ZhEnVocab, similar: int = 2):
    """FAQ entries from synthetic text, when CLINC150 is absent."""
    from faq_bot.schema import Faq

    return [Faq(id=f"syn-{i:06d}", question=vocab.query(4) + f" {i}", answer=vocab.text(20),
                similar_questions=[vocab.query(4) + f" {i}" for _ in range(similar)]) for i in range(n)]


def sample_eval_rag_questions(path: Path | None = None) -> list[str]:
    """Questions of the shipped sample eval set that should be answered from documents (no FAQ, no refusal)."""
    path = path or ROOT / "knowledge" / "eval" / "sample_eval.jsonl"
    out = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if not row.get("faq_id") and not row.get("refuse") and not row.get("history"):
                    out.append(row["question"])
    return out
