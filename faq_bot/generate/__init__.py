"""Generate stage: backends (transformers + peft adapters, OpenAI-compatible endpoint), prompts, JSON parsing."""

from __future__ import annotations

from typing import Any

from faq_bot.config import GenerateConfig
from faq_bot.generate.base import BASE_MODEL, Generator, GeneratorBusy, GeneratorUnavailable
from faq_bot.generate.parse import ParsedAnswer, parse_answer
from faq_bot.generate.prompts import (
    answer_prompt,
    answer_prompt_text,
    build_answer_messages,
    build_rewrite_messages,
    detect_language,
    format_answer_json,
    load_prompt,
    render_prompt,
)

__all__ = [
    "BASE_MODEL",
    "Generator",
    "GeneratorBusy",
    "GeneratorUnavailable",
    "ParsedAnswer",
    "answer_prompt",
    "answer_prompt_text",
    "build_answer_messages",
    "build_rewrite_messages",
    "detect_language",
    "format_answer_json",
    "load_generator",
    "load_prompt",
    "parse_answer",
    "render_prompt",
]


def load_generator(cfg: GenerateConfig, **kwargs: Any) -> Generator:
    """The generator for `cfg.backend`, constructed but not loaded (call `warm_up()`, or the first request will).

    Extra keyword arguments go to the backend (`min_support`, and `prefill` for openai).
    """
    if cfg.backend == "transformers":
        from faq_bot.generate.hf import TransformersGenerator

        return TransformersGenerator(cfg, **kwargs)
    if cfg.backend == "openai":
        from faq_bot.generate.openai_backend import OpenAIGenerator

        return OpenAIGenerator(cfg, **kwargs)
    raise ValueError(f"`generate.backend` must be 'transformers' or 'openai', got {cfg.backend!r}.")
