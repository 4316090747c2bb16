"""Training data builder: SFT prompt/completion examples (answerable + refusal) and a KTO set, with a data card.

Sources become *seeds* (question, answer, gold passage, question group):
  (a) FAQ entries — every standard/similar question, the FAQ answer as the passage;
  (b) QA pairs an LLM synthesized from document chunks, kept only when the chunk supports the answer;
  (c) app feedback rows with a correction; (d) user JSONL {question, answer, context};
  (e) RGB items (`rgb.path`, `rgb.ids_mod3`): a positive passage among negatives, refusals from negatives only.

Each seed gives a positive (the gold passage among passages retrieved for the question, at a random place;
some with many more distractors: long context). Refusals reuse the questions with the gold passage taken away:
hard negatives (what our retriever returns for the question, minus anything that may hold the answer — checked
on the text, never assumed) or a chunk swap (the gold passage replaced by one from another document).
Prompts come from `faq_bot.generate.prompts.answer_prompt`, the serving code path; targets from
`format_answer_json`. Train/val are split by question group (FAQ id, chunk id, RGB id, ...).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from faq_bot.config import AppConfig
from faq_bot.eval.datasets import rgb_lang, to_answer_parts
from faq_bot.eval.metrics import contains_answer
from faq_bot.faq import normalize_question
from faq_bot.generate.prompts import answer_prompt, detect_language, format_answer_json
from faq_bot.schema import Chunk, Faq, Hit, Query

from .config import DataBuildConfig
from .text import may_contain, overlap, supported

logger = logging.getLogger(__name__)

__all__ = [
    "DataBuilder",
    "Example",
    "Seed",
    "build_data",
    "context_hits",
    "faq_chunk",
    "format_data_card",
    "read_jsonl",
    "refusal_completion",
]

ANSWERABLE_KINDS = ("positive", "long_context")
REFUSAL_KINDS = ("hard_negative", "swap", "given_negative")
_BLOCK = re.compile(r'<doc id="(\d+)"(?: [a-z_]+="[^"]*")*>\n(.*?)\n</doc>', re.S)  # attribute values never hold '"'


# ---------------------------------------------------------------------------- types


@dataclass
class Seed:
    """A question with its answer and gold passage, before contexts are assembled."""

    group: str
    source: str  # faq | synth | feedback | user | rgb
    question: str
    answer: str
    gold: Hit | None
    lang: str
    family: str = "kb"  # where distractors and swap chunks come from: the knowledge base or RGB
    parts: list[list[str]] | None = None  # short answer spans (RGB): used for containment checks
    extra: list[Hit] = field(default_factory=list)  # passages that came with the seed (user JSONL)
    pool: list[Hit] = field(default_factory=list)  # ranked candidates without the answer
    refusal_only: bool = False


@dataclass
class Example:
    """One SFT example: the exact serving prompt and the JSON target, with what it was built from."""

    prompt: str
    completion: str
    question: str
    answer: str  # the seed's answer, also kept on refusals (KTO uses it for made-up bad outputs)
    lang: str
    kind: str
    source: str
    group: str
    answerable: bool
    evidence: list[int]
    passages: list[str]
    parts: list[list[str]] | None = None
    hits: list[Hit] = field(default_factory=list, repr=False)  # not written

    def row(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.completion, "question": self.question,
                "answer": self.answer, "answer_parts": self.parts, "lang": self.lang, "kind": self.kind,
                "source": self.source, "group": self.group, "answerable": self.answerable,
                "evidence": self.evidence, "passages": self.passages}


def faq_chunk(faq: Faq) -> Chunk:
    """An FAQ entry as a passage: its answer as the text, category and standard question as the section."""
    return Chunk(id=f"faq:{faq.id}", doc_id=f"faq:{faq.id}", text=faq.answer,
                 heading_path=[p for p in (faq.category, faq.question) if p], source=faq.source or "faq")


def context_hits(texts: Sequence[str], prefix: str) -> list[Hit]:
    """Hits for raw passages (RGB, eval bad cases, user JSONL), rendered exactly as the eval runner renders given
    contexts (`faq_bot.eval.runner.context_hits`), with ids made unique for bookkeeping."""
    from faq_bot.eval.runner import context_hits as eval_context_hits

    ids = lambda i: {"id": f"{prefix}-{i}", "doc_id": f"{prefix}-{i}"}  # noqa: E731
    return [h.model_copy(update={"chunk": h.chunk.model_copy(update=ids(i))})
            for i, h in enumerate(eval_context_hits(list(texts)))]


def refusal_completion(lang: str, app: AppConfig, style: str = "empty") -> str:
    """The refusal target: `format_answer_json(False, ...)`, or with the configured refusal text in `answer`."""
    if style == "text":
        text = app.generate.refusal_zh if lang == "zh" else app.generate.refusal_en
        return json.dumps({"answer_in_context": False, "answer": text, "evidence": []}, ensure_ascii=False)
    return format_answer_json(False, "", [])


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path.name} line {lineno}: invalid JSON ({e.msg}).") from None
    return rows


# ---------------------------------------------------------------------------- builder


class DataBuilder:
    """Builds examples from seeds for one tokenizer and context budget (the serving ones)."""

    def __init__(self, app: AppConfig, cfg: DataBuildConfig, tokenizer: Any, kb: Any | None = None):
        self.app, self.cfg, self.tok, self.kb = app, cfg, tokenizer, kb
        self.context_tokens = cfg.context_tokens or app.generate.context_tokens
        self.rng = random.Random(cfg.seed)
        self.stats: Counter = Counter()
        self._universe: dict[str, list[Hit]] = {"kb": [], "rgb": []}
        self._faq_of_qid: dict[int, str] = {}
        self._faq_chunks: dict[str, Hit] = {}
        self._refusal_use: Counter = Counter()
        self._refusal_prompts: set[str] = set()

    # ------------------------------------------------------------------ seeds
    def lang_of(self, text: str) -> str:
        lang = self.app.generate.language
        return detect_language(text) if lang == "auto" else lang

    def faq_seeds(self) -> list[Seed]:
        seeds = []
        for faq in self.kb.store.faqs(enabled_only=True):
            gold = self._faq_chunks[faq.id]
            qs = faq.all_questions()[: self.cfg.faq.max_questions]
            seeds += [Seed(f"faq:{faq.id}", "faq", q, faq.answer, gold, self.lang_of(q)) for q in qs if q.strip()]
        return seeds

    def synth_seeds(self, complete=None, progress: bool = False) -> list[Seed]:
        from .synth import local_completer, openai_completer, pick_chunks, synthesize

        s = self.cfg.synth
        chunks = pick_chunks(self.kb.store.chunks(), s.max_chunks, s.min_chunk_chars)
        if complete is None:
            if s.backend == "openai":
                complete = openai_completer(s.teacher, max_new_tokens=s.max_new_tokens, temperature=s.temperature)
            else:
                setting = s.model or self.cfg.base_model or self.app.generate.model
                complete = local_completer(setting, self.app, max_new_tokens=s.max_new_tokens,
                                           temperature=s.temperature)
        model_id = s.teacher.model if s.backend == "openai" and s.teacher else (s.model or self.cfg.base_model
                                                                                or self.app.generate.model)
        known = [q for f in self.kb.store.faqs() for q in f.all_questions()]
        pairs, stats = synthesize(chunks, s, complete, model_id=model_id, known_questions=known,
                                  cache_path=self.cfg.output_dir / "synth_cache.jsonl", progress=progress)
        self.stats.update({f"synth_{k}": v for k, v in stats.items()})
        return [Seed(f"chunk:{p.chunk.id}", "synth", p.question, p.answer, Hit(chunk=p.chunk, score=1.0),
                     self.lang_of(p.question)) for p in pairs]

    def feedback_seeds(self) -> list[Seed]:
        seeds = []
        for row in self.kb.store.feedback(limit=self.cfg.feedback.limit):
            correction = (row.get("correction") or "").strip()
            question = (row.get("question") or "").strip()
            if not correction or not question:
                continue
            gold = self._supporting_chunk(question, correction)
            if gold is None:  # the knowledge base has no passage for it: the correction is the passage
                gold = Hit(chunk=Chunk(id=f"feedback:{row['id']}", doc_id=f"feedback:{row['id']}", text=correction,
                                       source="feedback"), score=1.0)
                self.stats["feedback_without_passage"] += 1
            seeds.append(Seed(f"feedback:{row['id']}", "feedback", question, correction, gold, self.lang_of(question)))
        return seeds

    def user_seeds(self, paths: Iterable[Path]) -> list[Seed]:
        seeds = []
        for path in paths:
            for i, row in enumerate(read_jsonl(path)):
                question = str(row.get("question") or "").strip()
                if not question:
                    raise ValueError(f"{path.name} line {i + 1}: `question` is missing or empty.")
                answer = str(row.get("answer") or "").strip()
                ctx = row.get("context", row.get("contexts")) or []
                ctx = [ctx] if isinstance(ctx, str) else [str(c) for c in ctx]
                group = f"user:{row.get('group') or row.get('id') or f'{path.stem}:{i + 1}'}"
                hits = context_hits(ctx, f"{group}-ctx")
                refuse = bool(row.get("refuse")) or not answer
                gold = None if refuse else next((h for h in hits if supported(answer, h.chunk.text, 0.8)), None)
                if not refuse and gold is None:
                    self.stats["user_unsupported"] += 1
                    continue
                extra = [h for h in hits if h is not gold]
                seeds.append(Seed(group, "user", question, answer, gold, self.lang_of(question), extra=extra,
                                  refusal_only=refuse))
        return seeds

    def rgb_seeds(self) -> list[Seed]:
        r = self.cfg.rgb
        seeds = []
        for item in read_jsonl(r.path):
            rid = int(item["id"])
            if r.ids_mod3 is not None and rid % 3 != r.ids_mod3:
                continue
            if r.max_items is not None and len(seeds) >= r.max_items:
                break
            parts = to_answer_parts(item["answer"])
            answer = "、".join(p[0] for p in parts) if rgb_lang(r.path, item) == "zh" else ", ".join(p[0] for p in parts)
            positives = [p for p in item.get("positive", []) if isinstance(p, str) and contains_answer(p, parts)]
            negatives = [n for n in item.get("negative", []) if not may_contain(n, answer, parts, 1.0)]
            if not positives:
                self.stats["rgb_without_positive"] += 1
                continue
            group = f"rgb:{rid}"
            gold_text = self._window(self.rng.choice(positives), parts, item["query"])
            if not contains_answer(gold_text, parts):
                self.stats["rgb_window_lost_answer"] += 1
                continue
            gold = context_hits([gold_text], f"rgb-{rid}-pos")[0]
            pool = context_hits([self._window(n, None) for n in negatives], f"rgb-{rid}-neg")
            self._universe["rgb"].append(gold)
            seeds.append(Seed(group, "rgb", item["query"], answer, gold, rgb_lang(r.path, item), family="rgb",
                              parts=parts, pool=pool))
        return seeds

    def _window(self, text: str, parts: list[list[str]] | None, question: str = "") -> str:
        """Cut a long passage to about `max_passage_tokens` (a serving chunk). With `parts`, the window holds an
        answer occurrence — the one whose surroundings share most with the question, not merely the first."""
        from faq_bot.generate.prompts import count_tokens

        budget = self.cfg.rgb.max_passage_tokens
        if count_tokens(text, self.tok) <= budget:
            return text
        spans = [(0, 0)]
        if parts:
            low = text.lower()
            spans = [(m.start(), m.end()) for part in parts for alt in part if alt
                     for m in re.finditer(re.escape(alt.lower()), low)] or spans
        best = max(spans, key=lambda sp: overlap(question, text[max(0, sp[0] - budget // 2):sp[1] + budget // 2]))
        at, end = best
        lo, hi = max(0, at - budget // 2), min(len(text), at + budget)
        while count_tokens(text[lo:hi], self.tok) > budget and hi - lo > 16:
            cut = max(1, (hi - lo) // 10)
            if at - lo > hi - end:  # trim the longer side, never the answer itself
                lo = min(at, lo + cut)
            else:
                hi = max(end, hi - cut)
            if lo == at and hi == end:
                break
        return text[lo:hi].strip()

    # ------------------------------------------------------------------ candidates
    def prepare_kb(self) -> None:
        """FAQ passages and the swap universe; call once before building KB seeds."""
        store = self.kb.store
        self._faq_chunks = {f.id: Hit(chunk=faq_chunk(f), score=1.0) for f in store.faqs(enabled_only=True)}
        self._faq_of_qid = {qid: fid for qid, fid, _ in store.faq_questions()}
        self._universe["kb"] = [Hit(chunk=c, score=0.0) for c in store.chunks()] + list(self._faq_chunks.values())

    def attach_pools(self, seeds: list[Seed], progress: bool = False) -> None:
        """Rank candidates for each KB seed (retrieved chunks + nearest FAQs) and drop any that may answer it."""
        from tqdm.auto import tqdm

        kb_seeds = [s for s in seeds if s.family == "kb" and not s.refusal_only]
        if not kb_seeds or self.kb is None:
            return
        questions = list(dict.fromkeys(s.question for s in kb_seeds))
        doc_enc = _BatchedQueries(self.kb.doc_encoder, questions, progress, "encode questions (docs)")
        faq_enc = _BatchedQueries(self.kb.faq_encoder, questions, progress, "encode questions (FAQs)")
        retriever = self._retriever_over(_KbView(self.kb, doc_enc, faq_enc))
        k = self.cfg.mix.retrieve_k
        for seed in tqdm(kb_seeds, desc="retrieve distractors", disable=not progress):
            docs, _ = retriever.retrieve(Query(text=seed.question), top_k=k)
            faqs = self._faq_neighbors(seed.question, k, faq_enc)
            ranked = _interleave(faqs, docs) if seed.source == "faq" else _interleave(docs, faqs)
            seed.pool = self._clean_pool(seed, [*seed.extra, *ranked])
            seed.extra = [h for h in seed.extra if h in seed.pool]

    def _retriever_over(self, kb: Any) -> Any:
        from faq_bot.retrieve import Retriever

        return Retriever(self.app.retrieve, kb)

    def _clean_pool(self, seed: Seed, hits: Iterable[Hit]) -> list[Hit]:
        out, seen = [], set()
        gold_id = seed.gold.chunk.id if seed.gold else None
        for h in hits:
            cid = h.chunk.id
            if cid in seen or cid == gold_id or cid == seed.group:
                continue
            seen.add(cid)
            if not self._negative_ok(seed, h):
                continue
            out.append(h)
        return out

    def _negative_ok(self, seed: Seed, hit: Hit) -> bool:
        """A passage can stand beside or instead of the gold one only if it provably lacks the answer.

        Containment can only be checked in the answer's language: a passage in another language (the zh
        twin of an en FAQ) might say the same thing, so it is never used.
        """
        text = hit.chunk.text
        if seed.answer and detect_language(text, seed.lang) != detect_language(seed.answer, seed.lang):
            self.stats["candidates_other_language_dropped"] += 1
            return False
        if may_contain(text, seed.answer, seed.parts, self.cfg.mix.negative_max_overlap):
            self.stats["candidates_with_answer_dropped"] += 1
            return False
        return True

    def _faq_neighbors(self, question: str, k: int, encoder: Any) -> list[Hit]:
        iset = self.kb.faq_index()
        if iset.dense is None or len(iset.dense) == 0:
            return []
        q = encoder.encode_query(question)
        _, ids = iset.dense.search(q, min(4 * k, len(iset.dense)))
        out: list[Hit] = []
        for qid in ids[0]:
            fid = self._faq_of_qid.get(int(qid))
            hit = self._faq_chunks.get(fid) if fid else None
            if hit is not None and hit not in out:
                out.append(hit)
            if len(out) >= k:
                break
        return out

    def _supporting_chunk(self, question: str, answer: str) -> Hit | None:
        hits, _ = self._retriever_over(self.kb).retrieve(Query(text=question), top_k=self.cfg.mix.retrieve_k)
        return next((h for h in hits if supported(answer, h.chunk.text, 0.8)), None)

    # ------------------------------------------------------------------ examples
    def render(self, seed: Seed, hits: list[Hit], kind: str, gold_pos: int | None) -> Example | None:
        """Prompt through the serving code path; None when the gold passage did not make it into the budget."""
        prompt, used = answer_prompt(seed.question, hits, lang=seed.lang, tokenizer=self.tok,
                                     context_tokens=self.context_tokens)
        if not used:
            return None
        if gold_pos is None:
            completion = refusal_completion(seed.lang, self.app, self.cfg.mix.refusal_answer)
            evidence: list[int] = []
        else:
            if gold_pos >= len(used) or not self._gold_intact(prompt, gold_pos + 1, seed):
                return None
            evidence = [gold_pos + 1]
            completion = format_answer_json(True, seed.answer, evidence)
        return Example(prompt, completion, seed.question, seed.answer, seed.lang, kind, seed.source, seed.group,
                       gold_pos is not None, evidence, [h.chunk.id for h in used], seed.parts, list(used))

    def _gold_intact(self, prompt: str, n: int, seed: Seed) -> bool:
        block = next((m.group(2) for m in _BLOCK.finditer(prompt) if m.group(1) == str(n)), "")
        if seed.gold.chunk.text in block:
            return True
        if seed.parts:  # truncated: the answer must still be there
            return contains_answer(block, seed.parts)
        return supported(seed.answer, block, 0.8)

    def positive(self, seed: Seed, n_distractors: int, kind: str) -> Example | None:
        distract = seed.pool[:n_distractors]
        pos = self.rng.randint(0, len(distract))
        ex = self.render(seed, distract[:pos] + [seed.gold] + distract[pos:], kind, pos)
        while ex is None and pos > 0:  # the gold passage fell outside the budget: an earlier random place
            pos = self.rng.randint(0, pos - 1)
            ex = self.render(seed, distract[:pos] + [seed.gold] + distract[pos:], kind, pos)
        if ex is None:
            self.stats["gold_did_not_fit"] += 1
        return ex

    def hard_negative(self, seed: Seed) -> Example | None:
        hits = seed.pool[: self.cfg.mix.distractors + 1]
        return self.render(seed, hits, "hard_negative", None) if hits else None

    def swap(self, seed: Seed) -> Example | None:
        n = self.cfg.mix.distractors
        distract = seed.pool[:n]
        gold_doc = seed.gold.chunk.doc_id if seed.gold else ""
        used_ids = {h.chunk.id for h in distract}
        other = next((h for h in seed.pool[n:] if h.chunk.doc_id != gold_doc), None)
        if other is None:
            universe = self._universe[seed.family]
            for h in self.rng.sample(universe, min(len(universe), 40)):
                if (h.chunk.doc_id != gold_doc and h.chunk.id not in used_ids
                        and not (seed.gold and h.chunk.id == seed.gold.chunk.id) and self._negative_ok(seed, h)):
                    other = h
                    break
        if other is None:
            return None
        pos = self.rng.randint(0, len(distract))
        return self.render(seed, distract[:pos] + [other] + distract[pos:], "swap", None)

    def given_negative(self, seed: Seed) -> Example | None:
        """A no-answer line from user JSONL: only its own contexts (retrieved ones might hold an answer)."""
        if not seed.extra:
            self.stats["user_refusal_without_context"] += 1
            return None
        return self.render(seed, seed.extra, "given_negative", None)

    def build_examples(self, seeds: list[Seed]) -> list[Example]:
        """Positives for every seed, then refusals to reach `mix.refusal_ratio` (positives trimmed if short)."""
        mix = self.cfg.mix
        answerable = [s for s in seeds if not s.refusal_only and s.gold is not None]
        n_long = round(len(answerable) * mix.long_context_share)
        long_ids = set(self.rng.sample(range(len(answerable)), n_long)) \
            if mix.long_distractors > mix.distractors else set()
        positives = []
        for i, seed in enumerate(answerable):
            if i in long_ids:
                ex = self.positive(seed, mix.long_distractors, "long_context")
            else:
                ex = self.positive(seed, mix.distractors, "positive")
            if ex is not None:
                positives.append(ex)
        refusals = [ex for s in seeds if s.refusal_only if (ex := self.given_negative(s)) is not None]
        r = mix.refusal_ratio
        target = round(len(positives) * r / (1 - r)) if r > 0 else 0
        n_hard = round(max(0, target - len(refusals)) * mix.hard_negative_share)
        refusals += self._refusals(answerable, n_hard, [self.hard_negative, self.swap])
        refusals += self._refusals(answerable, target - len(refusals), [self.swap, self.hard_negative])
        if r > 0 and not refusals and positives:
            logger.warning("No refusal example could be built (no passage without the answer): ratio not met.")
            self.stats["no_refusal_possible"] += 1
        elif r > 0 and len(refusals) < target:  # too few refusals could be made: keep the ratio by dropping positives
            keep = round(len(refusals) * (1 - r) / r)
            self.stats["positives_dropped_for_ratio"] += len(positives) - keep
            positives = self.rng.sample(positives, keep)
        refusals = refusals[: target if r > 0 else 0]
        return positives + refusals

    def _refusals(self, seeds: list[Seed], n: int, makers: list) -> list[Example]:
        """Up to `n` refusals, cycling over shuffled seeds so each question is reused as little as possible."""
        out: list[Example] = []
        if n <= 0 or not seeds:
            return out
        order = list(range(len(seeds)))
        self.rng.shuffle(order)
        used = self._refusal_use
        idle = 0
        i = 0
        while len(out) < n and idle < len(order):
            seed = seeds[order[i % len(order)]]
            i += 1
            key = (seed.group, seed.question)
            if used[key] >= 2:  # a question at most twice among refusals (once per kind)
                idle += 1
                continue
            ex = None
            for make in makers:
                ex = make(seed)
                if ex is not None:
                    break
            if ex is None:
                idle += 1
                continue
            if ex.prompt in self._refusal_prompts:
                idle += 1
                continue
            idle = 0
            used[key] += 1
            self._refusal_prompts.add(ex.prompt)
            out.append(ex)
        return out


class _BatchedQueries:
    """An encoder whose query vectors for known texts were computed in batches (several times faster than one
    by one on CPU); anything else goes to the wrapped encoder."""

    def __init__(self, encoder: Any, texts: list[str], progress: bool, desc: str, batch: int = 64):
        from tqdm.auto import tqdm

        self._enc = encoder
        self._vecs: dict[str, Any] = {}
        for i in tqdm(range(0, len(texts), batch), desc=desc, disable=not progress):
            part = texts[i:i + batch]
            self._vecs.update(zip(part, encoder.encode_queries(part)))

    def encode_query(self, text: str):
        vec = self._vecs.get(text)
        return vec if vec is not None else self._enc.encode_query(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._enc, name)


class _KbView:
    """The knowledge base as the Retriever sees it, with batch-encoded queries: same retrieval code path."""

    def __init__(self, kb: Any, doc_encoder: Any, faq_encoder: Any):
        self._kb, self.doc_encoder, self.faq_encoder = kb, doc_encoder, faq_encoder

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kb, name)


def _interleave(a: list[Hit], b: list[Hit]) -> list[Hit]:
    out = []
    for i in range(max(len(a), len(b))):
        out += [x[i] for x in (a, b) if i < len(x)]
    return out


# ---------------------------------------------------------------------------- split, KTO, card


def split_by_group(examples: list[Example], val_ratio: float, seed: int) -> tuple[list[Example], list[Example]]:
    """Whole question groups go to train or val, never both."""
    groups = sorted({e.group for e in examples})
    rng = random.Random(seed + 1)
    rng.shuffle(groups)
    n_val = math.ceil(len(groups) * val_ratio) if val_ratio > 0 and len(groups) > 1 else 0
    val_groups = set(groups[:n_val])
    train = [e for e in examples if e.group not in val_groups]
    val = [e for e in examples if e.group in val_groups]
    rng.shuffle(train)
    rng.shuffle(val)
    return train, val


def _group_of_questions(seeds: list[Seed]) -> None:
    """The same question from two sources (an FAQ paraphrase also corrected in feedback) shares one group."""
    first: dict[str, str] = {}
    for s in seeds:
        key = normalize_question(s.question)
        s.group = first.setdefault(key, s.group)


def build_kto(builder: DataBuilder, train: list[Example], *, self_negatives: list[dict] | None = None) -> list[dict]:
    """KTO rows (prompt, completion, label): gold outputs desirable; made-up, badcase, feedback and the model's
    own wrong answers undesirable. Only train-split prompts are used, so val stays unseen."""
    k = builder.cfg.kto
    rng = random.Random(builder.cfg.seed + 2)
    app = builder.app
    rows: list[dict] = []

    def add(prompt: str, completion: str, label: bool, kind: str, source: str, group: str) -> None:
        rows.append({"prompt": prompt, "completion": completion, "label": label, "kind": kind, "source": source,
                     "group": group})

    for ex in rng.sample(train, min(k.desirable, len(train))):
        add(ex.prompt, ex.completion, True, "gold", ex.source, ex.group)
    refusals = [e for e in train if not e.answerable and e.answer]
    answerable = [e for e in train if e.answerable]
    n_half = k.synthetic // 2
    for ex in rng.sample(refusals, min(n_half, len(refusals))):  # answering from memory: context lacks it
        add(ex.prompt, format_answer_json(True, ex.answer, [1]), False, "hallucinated_answer", ex.source, ex.group)
    for ex in rng.sample(answerable, min(k.synthetic - n_half, len(answerable))):  # over-cautious refusal
        add(ex.prompt, refusal_completion(ex.lang, app, builder.cfg.mix.refusal_answer), False, "false_refusal",
            ex.source, ex.group)
    for row in self_negatives or []:
        add(row["prompt"], row["completion"], False, "self_negative", row["source"], row["group"])
    for path in k.badcases:
        rows += _badcase_rows(builder, path)
    if k.feedback and builder.kb is not None:
        rows += _feedback_rows(builder)
    seen, out = set(), []
    for r in rows:
        key = (r["prompt"], r["completion"], r["label"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def _as_completion(output: str, lang: str, app: AppConfig, style: str) -> str:
    """The model's output as it would have generated it: kept when JSON, else wrapped in the answer format."""
    from faq_bot.generate.parse import is_refusal_text, parse_answer

    text = (output or "").strip()
    if text.startswith("{") and parse_answer(text).ok:
        return text
    refusals = {app.generate.refusal_zh, app.generate.refusal_en}
    if not text or text in refusals or is_refusal_text(text):
        return refusal_completion(lang, app, style)
    return format_answer_json(True, text, [1])


def _badcase_rows(builder: DataBuilder, path: Path) -> list[dict]:
    """Eval bad cases (faq_bot.eval.runner: question, contexts, expected, refuse, output, raw): the model's raw
    output undesirable; the expected answer (or the refusal) desirable when a context holds it."""
    app, style = builder.app, builder.cfg.mix.refusal_answer
    rows = []
    for i, bc in enumerate(read_jsonl(path)):
        question = str(bc.get("question") or "").strip()
        contexts = [str(c) for c in bc.get("contexts") or []]
        if not question or not contexts:
            builder.stats["badcase_without_contexts"] += 1
            continue
        lang = bc.get("lang") or builder.lang_of(question)
        hits = context_hits(contexts, f"badcase-{i}")
        prompt, used = answer_prompt(question, hits, lang=lang, tokenizer=builder.tok,
                                     context_tokens=builder.context_tokens)
        group = f"badcase:{bc.get('id', i)}"
        bad = _as_completion(str(bc.get("raw") or bc.get("output") or ""), lang, app, style)
        rows.append({"prompt": prompt, "completion": bad, "label": False, "kind": "badcase", "source": "eval",
                     "group": group})
        expected = bc.get("expected")
        expected = [expected] if isinstance(expected, str) else [str(e) for e in expected or [] if str(e).strip()]
        if bc.get("refuse") or not expected:
            good = refusal_completion(lang, app, style)
        else:
            at = next((n for n, h in enumerate(used, 1) if contains_answer(h.chunk.text, [expected])), None)
            good = format_answer_json(True, expected[0], [at]) if at else None
        if good and good != bad:
            rows.append({"prompt": prompt, "completion": good, "label": True, "kind": "badcase_fixed",
                         "source": "eval", "group": group})
    return rows


def _feedback_rows(builder: DataBuilder) -> list[dict]:
    """Thumbs-down answers that went through the model, rebuilt from their trace (passages + raw output)."""
    store = builder.kb.store
    by_id = None
    rows = []
    for fb in store.feedback(rating=-1, limit=builder.cfg.feedback.limit):
        steps = {s.get("stage"): s.get("detail", {}) for s in (fb.get("trace") or {}).get("steps", [])}
        raw = (steps.get("generate") or {}).get("raw")
        ids = [h.get("chunk_id") for h in (steps.get("rerank") or {}).get("hits", [])]
        if not raw or not ids:
            builder.stats["feedback_negative_without_trace"] += 1
            continue
        if by_id is None:
            by_id = {c.id: c for c in store.chunks()}
        chunks = [by_id[i] for i in ids if i in by_id]
        if len(chunks) != len(ids):
            builder.stats["feedback_negative_chunks_gone"] += 1
            continue
        lang = builder.lang_of(fb["question"])
        prompt, _ = answer_prompt(fb["question"], [Hit(chunk=c, score=0.0) for c in chunks], lang=lang,
                                  tokenizer=builder.tok, context_tokens=builder.context_tokens)
        rows.append({"prompt": prompt, "completion": raw.strip(), "label": False, "kind": "thumbs_down",
                     "source": "feedback", "group": f"feedback:{fb['id']}"})
    return rows


def self_negatives(builder: DataBuilder, train: list[Example], n: int, progress: bool = False) -> list[dict]:
    """Run the base model on `n` hard-negative prompts; its answers where it should have refused."""
    from faq_bot.generate.parse import parse_answer

    from .evaluate import generate_texts, load_for_generation

    cands = [e for e in train if e.kind in ("hard_negative", "swap")]
    rng = random.Random(builder.cfg.seed + 3)
    picked = rng.sample(cands, min(n, len(cands)))
    if not picked:
        return []
    setting = builder.cfg.kto.self_model or builder.cfg.base_model or builder.app.generate.model
    model, tok = load_for_generation(setting, builder.app)
    outs = generate_texts(model, tok, [e.prompt for e in picked], builder.cfg.kto.max_new_tokens, progress=progress)
    rows = []
    for ex, out in zip(picked, outs):
        parsed = parse_answer(out, n_passages=len(ex.passages))
        builder.stats["self_negative_tried"] += 1
        if parsed.answer_in_context:
            rows.append({"prompt": ex.prompt, "completion": out.strip(), "source": ex.source, "group": ex.group})
    builder.stats["self_negative_kept"] += len(rows)
    return rows


def _lengths(tok: Any, texts: list[str]) -> dict[str, float]:
    if not texts:
        return {"n": 0}
    lens = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    lens.sort()
    return {"n": len(lens), "min": lens[0], "mean": round(statistics.fmean(lens), 1),
            "p50": lens[len(lens) // 2], "p95": lens[min(len(lens) - 1, int(len(lens) * 0.95))], "max": lens[-1]}


def _split_card(tok: Any, exs: list[Example]) -> dict:
    n_ans = sum(e.answerable for e in exs)
    return {
        "examples": len(exs),
        "groups": len({e.group for e in exs}),
        "answerable": n_ans,
        "refusal": len(exs) - n_ans,
        "refusal_ratio": round((len(exs) - n_ans) / len(exs), 4) if exs else 0.0,
        "by_kind": dict(sorted(Counter(e.kind for e in exs).items())),
        "by_source": dict(sorted(Counter(e.source for e in exs).items())),
        "by_lang": dict(sorted(Counter(e.lang for e in exs).items())),
        "tokens": {"prompt": _lengths(tok, [e.prompt for e in exs]),
                   "completion": _lengths(tok, [e.completion for e in exs]),
                   "total": _lengths(tok, [e.prompt + e.completion for e in exs])},
    }


def format_data_card(card: dict) -> str:
    """The data card as a short text report (what `train data` prints)."""
    lines = [f"Data card — {card['output_dir']}",
             f"  base model (tokenizer): {card['base_model']}   context_tokens: {card['context_tokens']}   "
             f"refusal target: {card['refusal_ratio_target']:.0%}",
             "  seeds by source: " + ", ".join(f"{k} {v}" for k, v in card["seeds"].items())]
    for name in ("train", "val"):
        s = card["splits"][name]
        tok = s["tokens"]["total"]
        lines.append(f"  {name:5s}: {s['examples']} examples in {s['groups']} groups — answerable {s['answerable']}, "
                     f"refusal {s['refusal']} ({s['refusal_ratio']:.1%})")
        lines.append("         kinds: " + ", ".join(f"{k} {v}" for k, v in s["by_kind"].items()))
        lines.append("         sources: " + ", ".join(f"{k} {v}" for k, v in s["by_source"].items()))
        if tok.get("n"):
            lines.append(f"         tokens (prompt+completion): min {tok['min']}, mean {tok['mean']}, "
                         f"p50 {tok['p50']}, p95 {tok['p95']}, max {tok['max']}")
    k = card["kto"]
    lines.append(f"  kto  : {k['rows']} rows — desirable {k['desirable']}, undesirable {k['undesirable']}; "
                 + ", ".join(f"{a} {b}" for a, b in k["by_kind"].items()))
    if card["notes"]:
        lines.append("  notes: " + ", ".join(f"{a} {b}" for a, b in card["notes"].items()))
    return "\n".join(lines) + "\n"


def _write_jsonl(path: Path, rows: Iterable[dict]) -> str:
    h = hashlib.sha256()
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            line = json.dumps(r, ensure_ascii=False) + "\n"
            h.update(line.encode("utf-8"))
            f.write(line)
    tmp.replace(path)
    return h.hexdigest()


# ---------------------------------------------------------------------------- entry point


def build_data(app: AppConfig, cfg: DataBuildConfig, *, tokenizer: Any = None, kb: Any = None, complete=None,
               progress: bool = True) -> dict:
    """Build train/val/kto JSONL and data_card.json in `cfg.output_dir`; returns the data card.

    Args:
        tokenizer: the generator's tokenizer (default: loaded for `cfg.base_model` or `generate.model`).
        kb: a KnowledgeBase (default: built from `app`, i.e. `store.path` / `store.index_dir`).
        complete: chat-completion callable for synthesis (default: from `cfg.synth`).
    """
    t0 = time.time()
    base = cfg.base_model or app.generate.model
    if tokenizer is None:
        from transformers import AutoTokenizer

        from faq_bot.models import resolve_generator_dir

        tokenizer = AutoTokenizer.from_pretrained(resolve_generator_dir(base))
    needs_kb = cfg.faq.enabled or cfg.synth.enabled or cfg.feedback.enabled or cfg.user_jsonl or cfg.kto.feedback
    if kb is None and needs_kb:
        from faq_bot.knowledge import KnowledgeBase

        kb = KnowledgeBase(app)
    builder = DataBuilder(app, cfg, tokenizer, kb)
    seeds: list[Seed] = []
    if kb is not None:
        kb.sync()
        builder.prepare_kb()
        if cfg.faq.enabled:
            seeds += builder.faq_seeds()
        if cfg.synth.enabled:
            seeds += builder.synth_seeds(complete, progress)
        if cfg.feedback.enabled:
            seeds += builder.feedback_seeds()
        seeds += builder.user_seeds(cfg.user_jsonl)
    elif cfg.user_jsonl:
        seeds += builder.user_seeds(cfg.user_jsonl)
    if cfg.rgb.path is not None:
        seeds += builder.rgb_seeds()
    if not seeds:
        raise ValueError("No training seeds: the knowledge base is empty and no `user_jsonl` / `rgb.path` is set. "
                         "Ingest FAQs or documents first (python -m faq_bot ingest ...).")
    _group_of_questions(seeds)
    builder.attach_pools(seeds, progress)

    examples = builder.build_examples(seeds)
    train, val = split_by_group(examples, cfg.split.val_ratio, cfg.seed)
    negatives = self_negatives(builder, train, cfg.kto.self_negatives, progress) if cfg.kto.enabled and \
        cfg.kto.self_negatives else []
    kto = build_kto(builder, train, self_negatives=negatives) if cfg.kto.enabled else []

    out = cfg.output_dir
    out.mkdir(parents=True, exist_ok=True)
    hashes = {"train.jsonl": _write_jsonl(out / "train.jsonl", (e.row() for e in train)),
              "val.jsonl": _write_jsonl(out / "val.jsonl", (e.row() for e in val)),
              "kto.jsonl": _write_jsonl(out / "kto.jsonl", kto)}
    n_des = sum(r["label"] for r in kto)
    card = {
        "built": time.strftime("%Y-%m-%d %H:%M:%S"),
        "seconds": round(time.time() - t0, 1),
        "output_dir": str(out),
        "base_model": base,
        "context_tokens": builder.context_tokens,
        "refusal_ratio_target": cfg.mix.refusal_ratio,
        "seeds": dict(sorted(Counter(s.source for s in seeds).items())),
        "groups": len({s.group for s in seeds}),
        "splits": {"train": _split_card(tokenizer, train), "val": _split_card(tokenizer, val)},
        "total": {"examples": len(examples), "answerable": sum(e.answerable for e in examples),
                  "refusal": sum(not e.answerable for e in examples),
                  "refusal_ratio": round(sum(not e.answerable for e in examples) / max(1, len(examples)), 4)},
        "kto": {"rows": len(kto), "desirable": n_des, "undesirable": len(kto) - n_des,
                "by_kind": dict(sorted(Counter(r["kind"] for r in kto).items()))},
        "notes": dict(sorted(builder.stats.items())),
        "files": hashes,
        "config": json.loads(cfg.model_dump_json()),
    }
    (out / "data_card.json").write_text(json.dumps(card, ensure_ascii=False, indent=1), encoding="utf-8")
    return card
