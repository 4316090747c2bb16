"""QA pairs synthesized from document chunks by an LLM (local model or OpenAI-compatible teacher), kept if supported."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from faq_bot.config import AppConfig, OpenAIBackendConfig, secrets_scrubbed
from faq_bot.faq import normalize_question
from faq_bot.generate.prompts import detect_language
from faq_bot.schema import Chunk

from .config import SynthConfig
from .text import supported

logger = logging.getLogger(__name__)

__all__ = ["SynthQA", "Completer", "local_completer", "openai_completer", "parse_pairs", "pick_chunks", "synthesize"]

Completer = Callable[[list[dict[str, str]]], str]
_KEYS_Q = ("question", "q", "问题")
_KEYS_A = ("answer", "a", "答案")


@dataclass
class SynthQA:
    question: str
    answer: str
    chunk: Chunk


def pick_chunks(chunks: Sequence[Chunk], max_chunks: int | None, min_chars: int) -> list[Chunk]:
    """Chunks long enough to hold facts, taken round-robin over documents so every document is covered."""
    by_doc: dict[str, list[Chunk]] = {}
    for c in chunks:
        if len(c.text.strip()) >= min_chars:
            by_doc.setdefault(c.doc_id, []).append(c)
    out: list[Chunk] = []
    queues = [list(v) for v in by_doc.values()]
    while queues and (max_chunks is None or len(out) < max_chunks):
        for q in queues:
            if q and (max_chunks is None or len(out) < max_chunks):
                out.append(q.pop(0))
        queues = [q for q in queues if q]
    return out


def parse_pairs(raw: str) -> list[tuple[str, str]]:
    """(question, answer) pairs from an LLM reply: a JSON array (or object holding one), fenced or not, repaired."""
    import json_repair

    start = min((i for i in (raw.find("["), raw.find("{")) if i >= 0), default=-1)
    if start < 0:
        return []
    try:
        obj = json_repair.loads(raw[start:])
    except Exception as e:  # json-repair is best effort: an unreadable reply yields no pairs
        logger.debug("synth reply not parseable: %s", e)
        return []
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        obj = lists[0] if lists else [obj]
    pairs = []
    for item in obj if isinstance(obj, list) else []:
        if not isinstance(item, dict):
            continue
        q = next((item[k] for k in _KEYS_Q if isinstance(item.get(k), str)), "").strip()
        a = next((item[k] for k in _KEYS_A if isinstance(item.get(k), str)), "").strip()
        if q and a:
            pairs.append((q, a))
    return pairs


def synthesize(
    chunks: Iterable[Chunk],
    cfg: SynthConfig,
    complete: Completer,
    *,
    model_id: str,
    known_questions: Iterable[str] = (),
    cache_path: Path | None = None,
    progress: bool = False,
) -> tuple[list[SynthQA], dict[str, int]]:
    """Ask for `cfg.per_chunk` pairs per chunk; keep new questions whose answer the chunk supports.

    Replies are cached in `cache_path` (by model, prompt and chunk text) so a rebuild does not regenerate.

    Returns:
        (kept pairs, counts: chunks, generated, kept, duplicate, unsupported).
    """
    from tqdm.auto import tqdm

    cache = _read_cache(cache_path)
    seen = {normalize_question(q) for q in known_questions}
    stats = {"chunks": 0, "generated": 0, "kept": 0, "duplicate": 0, "unsupported": 0}
    kept: list[SynthQA] = []
    chunks = list(chunks)
    for chunk in tqdm(chunks, desc="synthesize QA", disable=not progress):
        lang = detect_language(chunk.text)
        system = _prompt(cfg, lang).replace("{n}", str(cfg.per_chunk))
        heading = " > ".join(chunk.heading_path)
        user = (f"{'标题' if lang == 'zh' else 'Section'}: {heading}\n\n" if heading else "") + chunk.text
        key = hashlib.sha1(json.dumps([model_id, system, user], ensure_ascii=False).encode()).hexdigest()
        if key not in cache:
            cache[key] = complete([{"role": "system", "content": system}, {"role": "user", "content": user}])
            _append_cache(cache_path, key, chunk.id, cache[key])
        stats["chunks"] += 1
        for q, a in parse_pairs(cache[key]):
            stats["generated"] += 1
            norm = normalize_question(q)
            if not norm or norm in seen:
                stats["duplicate"] += 1
                continue
            if not supported(a, chunk.text, cfg.min_support):
                stats["unsupported"] += 1
                continue
            seen.add(norm)
            kept.append(SynthQA(q, a, chunk))
            stats["kept"] += 1
    return kept, stats


def _prompt(cfg: SynthConfig, lang: str) -> str:
    path = cfg.prompt_zh if lang == "zh" else cfg.prompt_en
    if not path.is_file():
        raise ValueError(f"`synth.prompt_{lang}` file not found: {path}")
    return path.read_text(encoding="utf-8").strip()


def _read_cache(path: Path | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if path is None or not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            out[row["key"]] = row["raw"]
        except (json.JSONDecodeError, KeyError, TypeError):
            logger.warning("%s: skipping an unreadable cache line", path.name)
    return out


def _append_cache(path: Path | None, key: str, chunk_id: str, raw: str) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"key": key, "chunk_id": chunk_id, "raw": raw}, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------------------- completers


def local_completer(setting: str, app: AppConfig, *, max_new_tokens: int, temperature: float = 0.0) -> Completer:
    """Chat completion with a local causal LM loaded through `faq_bot.models.load_causal_lm`."""
    from faq_bot.models import load_causal_lm

    model, tok = load_causal_lm(setting, dtype=app.generate.dtype, device=app.generate.device)

    def complete(messages: list[dict[str, str]]) -> str:
        import torch

        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        enc = tok(text, return_tensors="pt", add_special_tokens=False).to(model.device)
        kwargs = dict(do_sample=True, temperature=temperature) if temperature > 0 else dict(do_sample=False)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, **kwargs)
        return tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    return complete


def openai_completer(teacher: OpenAIBackendConfig, *, max_new_tokens: int, temperature: float = 0.0) -> Completer:
    """Chat completion against any OpenAI-compatible endpoint (vLLM, a hosted teacher model)."""
    import httpx

    url = teacher.base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {teacher.api_key.get_secret_value()}"}

    def complete(messages: list[dict[str, str]]) -> str:
        body = {"model": teacher.model, "messages": messages, "temperature": temperature, "max_tokens": max_new_tokens}
        with secrets_scrubbed(teacher.api_key):
            r = httpx.post(url, json=body, headers=headers, timeout=teacher.timeout_s)
            r.raise_for_status()
            return r.json()["choices"][0]["message"]["content"] or ""

    return complete

