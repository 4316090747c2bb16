"""Generate on built examples and score the JSON answers: containment accuracy and refusal accuracy."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Sequence

from faq_bot.config import AppConfig
from faq_bot.eval.metrics import contains_answer
from faq_bot.generate.prompts import ANSWER_PREFIX

from .text import key_spans

logger = logging.getLogger(__name__)

__all__ = ["answer_correct", "evaluate_rows", "generate_texts", "load_for_generation", "parse_output"]


def load_for_generation(setting: str, app: AppConfig, adapter: str | Path | None = None, dtype: str | None = None):
    """A fresh (uncached) model for generation, with a LoRA adapter applied when given; eval mode, left padding.

    Not `load_causal_lm`: its cached model is shared with the app, and wrapping it in an adapter would change it.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from faq_bot.models import pick_device, pick_dtype, resolve_generator_dir

    path = resolve_generator_dir(setting)
    device = pick_device(app.generate.device)
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"  # batched generation continues every row from its last real token
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=pick_dtype(dtype or app.generate.dtype, device))
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.to(device).eval()
    return model, tok


def generate_texts(model: Any, tok: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 4,
                   progress: bool = False, prefix: str = ANSWER_PREFIX) -> list[str]:
    """Greedy completions of rendered prompts, pre-filled with `prefix` as serving does; returned with the prefix."""
    import torch
    from tqdm.auto import tqdm

    tok.padding_side = "left"
    outs: list[str] = []
    for i in tqdm(range(0, len(prompts), batch_size), desc="generate", disable=not progress):
        batch = [p + prefix for p in prompts[i:i + batch_size]]
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.inference_mode():
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        outs += [prefix + t for t in tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)]
    return outs


def parse_output(raw: str, n_passages: int) -> tuple[bool, str, bool]:
    """(answer_in_context, answer, parse_ok) through the project's parser; strict JSON when it is missing."""
    try:
        from faq_bot.generate.parse import parse_answer
    except ImportError:  # generate package not installed: plain JSON, anything else a refusal
        try:
            obj = json.loads(raw.strip())
            return bool(obj.get("answer_in_context")) and bool(obj.get("answer")), str(obj.get("answer", "")), True
        except (json.JSONDecodeError, AttributeError):
            return False, "", False
    p = parse_answer(raw, n_passages=n_passages)
    return p.answer_in_context, p.answer, p.ok


def answer_correct(pred: str, row: dict) -> bool:
    """RGB: every answer part contained. Others: the whole answer, or all of its key facts (numbers, quoted terms)."""
    if row.get("answer_parts"):
        return contains_answer(pred, row["answer_parts"])
    answer = row.get("answer") or ""
    if answer and contains_answer(pred, [[answer]]):
        return True
    keys = key_spans(answer)
    return bool(keys) and contains_answer(pred, [[k] for k in keys])


def evaluate_rows(model: Any, tok: Any, rows: Sequence[dict], *, max_new_tokens: int, batch_size: int = 4,
                  progress: bool = False) -> tuple[dict, list[dict]]:
    """Generate for builder rows (val.jsonl) and score them.

    Returns:
        (metrics, per-row results). answer_accuracy: answerable rows answered with the answer contained;
        refusal_accuracy: refusal rows refused; parse_ok: outputs that were valid JSON answers.
    """
    outs = generate_texts(model, tok, [r["prompt"] for r in rows], max_new_tokens, batch_size, progress)
    results = []
    for row, out in zip(rows, outs):
        in_ctx, answer, ok = parse_output(out, len(row.get("passages") or []) or 1)
        correct = (in_ctx and answer_correct(answer, row)) if row["answerable"] else not in_ctx
        results.append({"group": row.get("group"), "kind": row.get("kind"), "answerable": row["answerable"],
                        "output": out, "answered": in_ctx, "parse_ok": ok, "correct": correct})
    ans = [r for r in results if r["answerable"]]
    ref = [r for r in results if not r["answerable"]]

    def rate(xs, key="correct"):
        return round(sum(x[key] for x in xs) / len(xs), 4) if xs else None

    metrics = {
        "n": len(results),
        "n_answerable": len(ans),
        "n_refusal": len(ref),
        "answer_accuracy": rate(ans),
        "refusal_accuracy": rate(ref),
        "accuracy": rate(results),
        "false_refusal_rate": round(sum(not r["answered"] for r in ans) / len(ans), 4) if ans else None,
        "parse_ok": rate(results, "parse_ok"),
    }
    return metrics, results
