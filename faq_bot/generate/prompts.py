"""Prompt building for the generate, rewrite and llm-rerank steps: one code path for serving and training data."""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Literal, Sequence

from faq_bot.config import ROOT
from faq_bot.schema import Hit

__all__ = [
    "ANSWER_PREFIX",
    "PROMPTS_DIR",
    "Lang",
    "answer_prompt",
    "answer_prompt_text",
    "build_answer_messages",
    "build_rerank_messages",
    "build_rewrite_messages",
    "count_tokens",
    "detect_language",
    "format_answer_json",
    "load_prompt",
    "render_prompt",
]

Lang = Literal["zh", "en"]
PROMPTS_DIR = ROOT / "configs" / "prompts"
# Serving pre-fills the assistant turn with this, so even a small model starts with the JSON verdict;
# it is the first text of `format_answer_json`, so training targets agree with it token for token.
ANSWER_PREFIX = '{"answer_in_context":'

# CJK unified ideographs, extension A and compatibility ideographs.
_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
# Chat-template control tokens (<|im_start|>, <|endoftext|>, ...) written inside user data.
_CONTROL = re.compile(r"<\|([^<>|\s]{1,40})\|>")
_DOC_TAG = re.compile(r"<(/?)doc\b", re.IGNORECASE)
_TRUNC_MARK = "…"
_MIN_TRUNC_TOKENS = 24  # a truncated passage shorter than this is more noise than evidence

_LABELS = {
    "zh": {"question": "问题", "history": "对话历史", "last": "需要改写的问题", "user": "用户", "assistant": "客服"},
    "en": {"question": "Question", "history": "Conversation", "last": "Question to rewrite", "user": "User",
           "assistant": "Assistant"},
}


def detect_language(text: str, default: Lang = "en") -> Lang:
    """`zh` when CJK characters are at least as many as Latin words, else `en`; `default` when neither occurs.

    One Chinese character carries about as much as one English word, so words (not letters) are counted:
    "iPhone 15 怎么退货" is Chinese, "What does 退货 mean?" is English.
    """
    cjk = len(_CJK.findall(text or ""))
    words = len(_LATIN_WORD.findall(text or ""))
    if cjk == 0 and words == 0:
        return default
    return "zh" if cjk >= words else "en"


def load_prompt(name: str, lang: Lang, prompts_dir: str | Path | None = None) -> str:
    """The text of `configs/prompts/<name>_<lang>.txt` (cached per file and modification time).

    Raises:
        ValueError: when the file does not exist; the message lists the prompts that do.
    """
    if lang not in ("zh", "en"):
        raise ValueError(f"`lang` must be 'zh' or 'en', got {lang!r}.")
    folder = Path(prompts_dir) if prompts_dir else PROMPTS_DIR
    path = folder / f"{name}_{lang}.txt"
    if not path.is_file():
        have = sorted(p.stem for p in folder.glob("*.txt")) if folder.is_dir() else []
        raise ValueError(f"Prompt `{name}` ({lang}) not found at {path}; available: {', '.join(have) or 'none'}.")
    return _read_prompt(str(path), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _read_prompt(path: str, mtime_ns: int) -> str:
    return Path(path).read_text(encoding="utf-8").strip()


def count_tokens(text: str, tokenizer: Any | None = None) -> int:
    """Tokens of `text` under `tokenizer`; without one, an estimate (1 per CJK character, 1 per 4 other chars)."""
    if tokenizer is not None:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])
    cjk = len(_CJK.findall(text))
    return cjk + -(-(len(text) - cjk) // 4)


def _truncate_to_tokens(text: str, budget: int, tokenizer: Any | None) -> str:
    """The longest prefix of `text` that fits in `budget` tokens."""
    if budget <= 0:
        return ""
    if tokenizer is not None:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= budget:
            return text
        cut = tokenizer.decode(ids[:budget], skip_special_tokens=False)
        return cut.rstrip("\ufffd")  # a cut inside a multi-byte character decodes to U+FFFD
    lo, hi = 0, len(text)
    while lo < hi:  # binary search on the estimate, which grows with the prefix length
        mid = (lo + hi + 1) // 2
        if count_tokens(text[:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def _clean(text: str) -> str:
    """Neutralize control tokens in user data so it can never open or close a chat turn.

    Done on the string (not only at tokenization) so the rendered prompt is safe for every backend,
    including servers that tokenize it themselves, and identical for serving and training.
    """
    return _CONTROL.sub(lambda m: f"<\uff5c{m.group(1)}\uff5c>", text)


def _attr(value: str) -> str:
    """An attribute value that cannot end its quotes or open a tag (">" stays: headings read "A > B")."""
    return " ".join(_clean(value).split()).replace('"', "'").replace("<", "‹")


def _doc_block(n: int, hit: Hit, body: str) -> str:
    chunk = hit.chunk
    section = " > ".join(chunk.heading_path)
    # A passage must not be able to close its own <doc> element and speak outside it.
    body = _DOC_TAG.sub(lambda m: f"‹{m.group(1)}doc", _clean(body))
    return f'<doc id="{n}" source="{_attr(chunk.source)}" section="{_attr(section)}">\n{body}\n</doc>'


def build_answer_messages(
    question: str,
    hits: Sequence[Hit],
    *,
    lang: Lang,
    tokenizer: Any | None = None,
    context_tokens: int,
    prompts_dir: str | Path | None = None,
) -> tuple[list[dict[str, str]], list[Hit]]:
    """System + user messages for the answer step, with as many passages as fit in `context_tokens`.

    Hits come ranked; they are kept in order until the budget (counted over whole `<doc>` blocks, tags
    included) runs out. The first hit that does not fit is truncated when at least a few dozen tokens of
    it fit, and everything after it is cut. Passage `n` in the prompt is `used[n-1]`, so the model's
    `evidence` numbers index the returned list (and equally the input list, whose prefix it is).

    Returns:
        (messages, used): chat messages and the hits that made it into the prompt.
    """
    if context_tokens <= 0:
        raise ValueError(f"`context_tokens` must be > 0, got {context_tokens}.")
    blocks: list[str] = []
    used: list[Hit] = []
    left = context_tokens
    for n, hit in enumerate(hits, start=1):
        block = _doc_block(n, hit, hit.chunk.text)
        cost = count_tokens(block, tokenizer) + (1 if blocks else 0)  # + the newline joining blocks
        if cost <= left:
            blocks.append(block)
            used.append(hit)
            left -= cost
            continue
        overhead = count_tokens(_doc_block(n, hit, _TRUNC_MARK), tokenizer) + (1 if blocks else 0)
        room = left - overhead
        if room >= _MIN_TRUNC_TOKENS or not blocks:
            body = _truncate_to_tokens(hit.chunk.text, room, tokenizer)
            if body.strip():
                blocks.append(_doc_block(n, hit, body + _TRUNC_MARK))
                used.append(hit)
        break
    sep = "：" if lang == "zh" else ": "
    user = "\n".join(blocks) + f"\n\n{_LABELS[lang]['question']}{sep}{_clean(question.strip())}"
    system = load_prompt("answer", lang, prompts_dir)
    return [{"role": "system", "content": system}, {"role": "user", "content": user}], used


def render_prompt(messages: list[dict[str, str]], tokenizer: Any) -> str:
    """The exact prompt string the model sees: the tokenizer's chat template with the assistant turn opened."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def answer_prompt(
    question: str,
    hits: Sequence[Hit],
    *,
    lang: Lang,
    tokenizer: Any,
    context_tokens: int,
    prompts_dir: str | Path | None = None,
) -> tuple[str, list[Hit]]:
    """Rendered answer prompt and the hits in it: what serving feeds the model and training data is built from."""
    messages, used = build_answer_messages(
        question, hits, lang=lang, tokenizer=tokenizer, context_tokens=context_tokens, prompts_dir=prompts_dir
    )
    return render_prompt(messages, tokenizer), used


def answer_prompt_text(
    question: str,
    hits: Sequence[Hit],
    lang: Lang,
    tokenizer: Any,
    context_tokens: int,
    prompts_dir: str | Path | None = None,
) -> str:
    """The rendered answer prompt only (training-data builder entry point); same code path as serving."""
    return answer_prompt(
        question, hits, lang=lang, tokenizer=tokenizer, context_tokens=context_tokens, prompts_dir=prompts_dir
    )[0]


def format_answer_json(answer_in_context: bool, answer: str, evidence: Sequence[int] = ()) -> str:
    """The assistant target in the exact shape the answer prompt asks for (one line, keys in judging order)."""
    return json.dumps(
        {"answer_in_context": bool(answer_in_context), "answer": answer if answer_in_context else "",
         "evidence": [int(e) for e in evidence] if answer_in_context else []},
        ensure_ascii=False,
    )


def build_rewrite_messages(
    question: str,
    history: Sequence[tuple[str, str]],
    lang: Lang,
    *,
    max_turns: int = 3,
    max_chars: int = 300,
    prompts_dir: str | Path | None = None,
) -> list[dict[str, str]]:
    """Messages asking for a standalone form of `question` given the last `max_turns` user/assistant turns.

    Each history message is cut to `max_chars` characters: long answers cost CPU prefill and rarely
    hold the referent of a follow-up question.
    """
    labels = _LABELS[lang]
    sep = "：" if lang == "zh" else ": "
    lines = []
    for role, content in list(history)[-2 * max_turns:]:
        who = labels["user"] if role == "user" else labels["assistant"]
        text = _clean(" ".join(str(content).split()))
        if len(text) > max_chars:
            text = text[:max_chars] + _TRUNC_MARK
        lines.append(f"{who}{sep}{text}")
    user = f"{labels['history']}{sep}\n" + "\n".join(lines) + f"\n\n{labels['last']}{sep}{_clean(question.strip())}"
    return [{"role": "system", "content": load_prompt("rewrite", lang, prompts_dir)},
            {"role": "user", "content": user}]


def build_rerank_messages(
    query: str, passage: str, lang: Lang, prompts_dir: str | Path | None = None
) -> list[dict[str, str]]:
    """Messages whose next assistant token is judged yes/no (passage relevant to `query`)."""
    labels = _LABELS[lang]
    sep = "：" if lang == "zh" else ": "
    body = _DOC_TAG.sub(lambda m: f"‹{m.group(1)}doc", _clean(passage))
    user = f"<doc>\n{body}\n</doc>\n\n{labels['question']}{sep}{_clean(query.strip())}"
    return [{"role": "system", "content": load_prompt("rerank", lang, prompts_dir)},
            {"role": "user", "content": user}]
