"""OpenAI-compatible backend (vLLM, llama.cpp server, ...): the served base model or a served LoRA adapter."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Iterator

from faq_bot.config import GenerateConfig, secrets_scrubbed
from faq_bot.generate.base import Generator

logger = logging.getLogger(__name__)

__all__ = ["OpenAIGenerator"]


class OpenAIGenerator(Generator):
    """Generator over an OpenAI-compatible chat endpoint (`generate.openai`).

    With vLLM, serve adapters with ``--enable-lora --lora-modules NAME=PATH``: a request for adapter
    NAME is sent as ``model=NAME``, the base as ``model=generate.openai.model``. The answer prefix is
    pre-filled with vLLM's ``continue_final_message`` (`prefill=True`); a server that ignores it still
    works, because a reply that already starts with "{" is kept as is. Passages are counted with an
    estimate (no tokenizer here), so keep `generate.context_tokens` below the served context length.

    Args:
        prefill: send the answer prefix as a final assistant message to continue (vLLM extension).
        models_ttl_s: how long the served model list (`adapters()`) is cached.
    """

    def __init__(self, cfg: GenerateConfig, *, prefill: bool = True, models_ttl_s: float = 30.0, **kwargs: Any):
        super().__init__(cfg, **kwargs)
        self.prefill = prefill
        self.models_ttl_s = models_ttl_s
        self._client: Any = None
        self._models: list[str] = []
        self._models_at = -1e9
        self._models_lock = threading.Lock()

    def _load(self) -> None:
        from openai import OpenAI

        o = self.cfg.openai
        with secrets_scrubbed(o.api_key):  # the recorded error is shown by /health and logged
            self._client = OpenAI(base_url=o.base_url, api_key=o.api_key.get_secret_value(), timeout=o.timeout_s,
                                  max_retries=1)
            served = self._served_models(refresh=True)  # fails here, at warm-up, when the endpoint is unreachable
        if served and o.model not in served:
            raise ValueError(f"`generate.openai.model` = {o.model!r} is not served at {o.base_url}; "
                             f"served: {', '.join(served)}.")

    def _served_models(self, refresh: bool = False) -> list[str]:
        with self._models_lock, secrets_scrubbed(self.cfg.openai.api_key):
            if refresh or time.monotonic() - self._models_at > self.models_ttl_s:
                self._models = [m.id for m in self._client.models.list()]
                self._models_at = time.monotonic()
            return list(self._models)

    def adapters(self) -> list[str]:
        """Served model names other than the base model (vLLM lists each --lora-modules NAME)."""
        if self._client is None:
            self._ensure_ready()
        return sorted(m for m in self._served_models() if m != self.cfg.openai.model)

    def _check_adapter(self, adapter: str) -> None:
        if adapter in self.adapters():
            return
        have = sorted(m for m in self._served_models(refresh=True) if m != self.cfg.openai.model)
        if adapter not in have:
            raise ValueError(f"Unknown adapter `{adapter}`: not served at {self.cfg.openai.base_url}. "
                             f"Available: {', '.join(have) if have else 'none'}.")

    def _request(self, messages: list[dict], max_new_tokens: int, adapter: str | None, prefix: str,
                 stream: bool) -> Any:
        msgs = list(messages)
        extra: dict[str, Any] = {}
        if prefix and self.prefill:
            msgs.append({"role": "assistant", "content": prefix})
            extra = {"continue_final_message": True, "add_generation_prompt": False}
        kwargs: dict[str, Any] = {"model": adapter or self.cfg.openai.model, "messages": msgs,
                                  "max_tokens": max_new_tokens, "temperature": self.cfg.temperature}
        if extra:
            kwargs["extra_body"] = extra
        if stream:
            kwargs.update(stream=True, stream_options={"include_usage": True})
        with secrets_scrubbed(self.cfg.openai.api_key):
            return self._client.chat.completions.create(**kwargs)

    @staticmethod
    def _joined(prefix: str, text: str) -> str:
        """The whole reply: the server's text, after `prefix` unless the server started over with its own JSON."""
        if not prefix or text.lstrip().startswith("{"):
            return text
        return prefix + text

    def _chat(self, messages, *, max_new_tokens, adapter, prefix="", usage):
        resp = self._request(messages, max_new_tokens, adapter, prefix, stream=False)
        if resp.usage is not None:
            usage.update(prompt_tokens=resp.usage.prompt_tokens or 0,
                         completion_tokens=resp.usage.completion_tokens or 0)
        text = (resp.choices[0].message.content or "") if resp.choices else ""
        return self._joined(prefix, text)

    def _chat_stream(self, messages, *, max_new_tokens, adapter, prefix="", usage):
        stream = self._request(messages, max_new_tokens, adapter, prefix, stream=True)
        started = False
        try:
            with secrets_scrubbed(self.cfg.openai.api_key):  # an error event in the stream may echo the key
                for chunk in stream:
                    if chunk.usage is not None:
                        usage.update(prompt_tokens=chunk.usage.prompt_tokens or 0,
                                     completion_tokens=chunk.usage.completion_tokens or 0)
                    if not chunk.choices:
                        continue
                    delta = chunk.choices[0].delta.content or ""
                    if not delta:
                        continue
                    if not started:
                        started = True
                        if prefix and self._joined(prefix, delta) != delta:
                            yield prefix
                    yield delta
            if not started and prefix and self.prefill:
                yield prefix
        finally:
            stream.close()
