"""Transformers backend: one causal LM in process, LoRA adapters from the run registry switched per request."""

from __future__ import annotations

import copy
import hashlib
import logging
import re
import threading
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

from faq_bot.config import GenerateConfig
from faq_bot.generate.base import BASE_MODEL, Generator
from faq_bot.generate.prompts import build_rerank_messages, count_tokens, render_prompt
from faq_bot.models import load_causal_lm

logger = logging.getLogger(__name__)

__all__ = ["TransformersGenerator", "cache_arg_name", "kv_cache_of", "system_prefix_len"]

_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class _ModelState:
    """Adapter state of one loaded model, shared by every generator using it (models are cached per process).

    LoRA layers are injected into the cached model in place, so adapter switching is global: it happens
    under `lock`, and between requests the adapter layers stay disabled so that any other user of the
    cached model sees the base model.
    """

    lock: threading.RLock = field(default_factory=threading.RLock)
    peft: Any = None
    loaded: dict[str, str] = field(default_factory=dict)  # peft adapter key -> resolved adapter path
    # (peft adapter key or "", system prompt token ids) -> KV cache of those tokens; the LoRA weights change K/V
    prefixes: "OrderedDict[tuple, Any]" = field(default_factory=OrderedDict)
    prefix_hits: int = 0


_states: "weakref.WeakKeyDictionary[Any, _ModelState]" = weakref.WeakKeyDictionary()
_states_lock = threading.Lock()


def _state_for(model: Any) -> _ModelState:
    with _states_lock:
        if model not in _states:
            _states[model] = _ModelState()
        return _states[model]


def kv_cache_of(output: Any) -> Any:
    """The KV cache of a forward pass: `cache` in transformers 5, `past_key_values` before."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else output.past_key_values


def system_prefix_len(tokenizer: Any, messages: list[dict], input_ids: Any) -> int:
    """How many leading tokens of `input_ids` (1-D) are the rendered system turn of `messages`; 0 when there is
    none or it is not a token prefix (then no prefix cache can serve the prompt)."""
    if not messages or messages[0].get("role") != "system":
        return 0
    system = tokenizer.apply_chat_template(messages[:1], tokenize=False)
    sys_ids = tokenizer(system, add_special_tokens=False)["input_ids"]
    n = len(sys_ids)
    return n if 0 < n < input_ids.shape[0] and input_ids[:n].tolist() == sys_ids else 0


def cache_arg_name(model: Any) -> str:
    """Name of the cache argument of `model.forward` / `generate` (`cache` in transformers 5, `past_key_values`
    before)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


class TransformersGenerator(Generator):
    """Generator over a transformers causal LM (`generate.model`), with peft LoRA adapters.

    Adapters live in the registry `generate.adapters_dir`: `<dir>/<name>/adapter/adapter_config.json`
    (what training writes), or `<dir>/<name>/adapter_config.json`. They are loaded on first use
    (`generate.adapter` at warm-up) and reloaded when their files change.
    """

    def __init__(self, cfg: GenerateConfig, **kwargs: Any):
        super().__init__(cfg, **kwargs)
        self._model: Any = None
        self._tok: Any = None
        self._state: _ModelState | None = None

    # ------------------------------------------------------------------ loading

    @property
    def tokenizer(self) -> Any | None:
        return self._tok

    @property
    def model(self) -> Any:
        """The underlying transformers model (None before warm-up); shared, so call it only via this class."""
        return self._model

    def _load(self) -> None:
        self._model, self._tok = load_causal_lm(self.cfg.model, dtype=self.cfg.dtype, device=self.cfg.device)
        self._state = _state_for(self._model)
        if self.cfg.adapter and self.cfg.adapter != BASE_MODEL:
            if self._adapter_path(self.cfg.adapter) is None:
                logger.warning("`generate.adapter` = %r is not in the registry %s; available: %s",
                               self.cfg.adapter, self.cfg.adapters_dir, ", ".join(self.adapters()) or "none")
            else:
                with self._state.lock:
                    self._ensure_adapter(self.cfg.adapter)

    # ------------------------------------------------------------------ adapters

    def _adapter_path(self, name: str) -> Path | None:
        if not _ADAPTER_NAME.match(name) or name in (BASE_MODEL, ".", ".."):
            return None
        root = Path(self.cfg.adapters_dir) / name
        for cand in (root / "adapter", root):
            if (cand / "adapter_config.json").is_file():
                return cand
        return None

    def adapters(self) -> list[str]:
        """Adapter names in the registry (directories holding an adapter_config.json), sorted."""
        root = Path(self.cfg.adapters_dir)
        if not root.is_dir():
            return []
        return sorted(d.name for d in root.iterdir() if d.is_dir() and self._adapter_path(d.name) is not None)

    def _check_adapter(self, adapter: str) -> None:
        if self._adapter_path(adapter) is None:
            have = self.adapters()
            raise ValueError(
                f"Unknown adapter `{adapter}`: no adapter_config.json under {Path(self.cfg.adapters_dir) / adapter}. "
                f"Available: {', '.join(have) if have else 'none'} (registry `generate.adapters_dir` = "
                f"{self.cfg.adapters_dir})."
            )

    def _ensure_adapter(self, name: str) -> str:
        """Load adapter `name` if needed (caller holds the state lock); return its peft adapter key."""
        from peft import PeftModel

        path = self._adapter_path(name)
        if path is None:
            self._check_adapter(name)
        assert path is not None and self._state is not None
        resolved = str(path.resolve())
        stamp = "|".join(f"{p.name}:{p.stat().st_mtime_ns}:{p.stat().st_size}"
                         for p in sorted(path.iterdir()) if p.is_file())
        key = f"{re.sub(r'[^A-Za-z0-9_]', '_', name)}_{hashlib.sha1((resolved + stamp).encode()).hexdigest()[:8]}"
        state = self._state
        if key in state.loaded:
            return key
        logger.info("Loading adapter %s from %s", name, path)
        if state.peft is None:
            state.peft = PeftModel.from_pretrained(self._model, resolved, adapter_name=key, is_trainable=False)
        else:
            state.peft.load_adapter(resolved, adapter_name=key, is_trainable=False)
        for old, old_path in list(state.loaded.items()):
            if old_path == resolved:  # the run was retrained in place: drop the stale weights (and their KV)
                for k in [k for k in state.prefixes if k[0] == old]:
                    del state.prefixes[k]
                if state.peft.active_adapter == old:
                    state.peft.set_adapter(key, inference_mode=True)
                state.peft.delete_adapter(old)
                del state.loaded[old]
        state.loaded[key] = resolved
        state.peft.base_model.disable_adapter_layers()
        return key

    @contextmanager
    def _activate(self, adapter: str | None) -> Iterator[str]:
        """Run the block on the base model (None) or with one adapter; caller holds the state lock. Yields the
        peft key of the active adapter ("" for the base model), the key its prefix caches are filed under."""
        state = self._state
        assert state is not None
        if adapter is None:
            if state.peft is None:
                yield ""
            else:
                with state.peft.disable_adapter():
                    yield ""
            return
        key = self._ensure_adapter(adapter)
        state.peft.set_adapter(key, inference_mode=True)
        state.peft.base_model.enable_adapter_layers()
        try:
            yield key
        finally:
            state.peft.base_model.disable_adapter_layers()

    # ------------------------------------------------------------------ generation

    def _gen_kwargs(self, max_new_tokens: int) -> dict[str, Any]:
        eos = self._model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if self._tok.eos_token_id is not None and self._tok.eos_token_id not in eos_ids:
            eos_ids.append(self._tok.eos_token_id)
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "eos_token_id": eos_ids,
                                  "pad_token_id": self._tok.pad_token_id}
        if self.cfg.temperature > 0:
            kwargs.update(do_sample=True, temperature=self.cfg.temperature)
        else:
            kwargs.update(do_sample=False, top_p=None, top_k=None, temperature=None)
        return kwargs

    def _encode(self, messages: list[dict], prefix: str) -> Any:
        text = render_prompt(messages, self._tok) + prefix
        return self._tok(text, return_tensors="pt", add_special_tokens=False).to(self._model.device)

    _MAX_PREFIXES = 8

    def _prefix_kwargs(self, messages: list[dict], enc: Any, active: str) -> dict[str, Any]:
        """The cache argument holding the system prompt's KV cache when the system turn is a token prefix of the
        prompt (computed once per adapter and system prompt; the caller holds the lock, `active` is the key
        `_activate` yielded). The cached keys/values are those a full prefill computes, up to rounding: a split
        prefill can round differently (in bf16, 3 of the 130 sample-eval answers changed), so a near-tie can flip."""
        ids = enc["input_ids"][0]
        n = system_prefix_len(self._tok, messages, ids) if self.cfg.prefix_cache else 0
        if not n:
            return {}
        state = self._state
        key = (active, tuple(ids[:n].tolist()))
        cache = state.prefixes.get(key)
        if cache is None:
            cache = kv_cache_of(self._model(input_ids=ids[:n].unsqueeze(0), use_cache=True))
            state.prefixes[key] = cache
            while len(state.prefixes) > self._MAX_PREFIXES:
                state.prefixes.popitem(last=False)
        else:
            state.prefixes.move_to_end(key)
            state.prefix_hits += 1
        return {cache_arg_name(self._model): copy.deepcopy(cache)}

    def _chat(self, messages, *, max_new_tokens, adapter, prefix="", usage):
        import torch

        enc = self._encode(messages, prefix)
        n_prompt = enc["input_ids"].shape[1]
        with self._state.lock, torch.inference_mode(), self._activate(adapter) as active:
            out = self._model.generate(**enc, **self._gen_kwargs(max_new_tokens),
                                       **self._prefix_kwargs(messages, enc, active))
        new = out[0, n_prompt:]
        usage.update(prompt_tokens=n_prompt, completion_tokens=int(new.shape[0]))
        return prefix + self._tok.decode(new, skip_special_tokens=True)

    def _chat_stream(self, messages, *, max_new_tokens, adapter, prefix="", usage):
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        enc = self._encode(messages, prefix)
        n_prompt = enc["input_ids"].shape[1]
        cancel = threading.Event()

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = TextIteratorStreamer(self._tok, skip_prompt=True, skip_special_tokens=True)
        result: dict[str, Any] = {}
        state = self._state

        def run() -> None:
            try:
                with state.lock, torch.inference_mode(), self._activate(adapter) as active:
                    out = self._model.generate(**enc, **self._gen_kwargs(max_new_tokens), streamer=streamer,
                                               stopping_criteria=StoppingCriteriaList([_Cancelled()]),
                                               **self._prefix_kwargs(messages, enc, active))
                result["completion_tokens"] = int(out.shape[1] - n_prompt)
            except BaseException as e:  # re-raised in the consuming thread below
                result["error"] = e
                streamer.end()  # unblock the consumer

        thread = threading.Thread(target=run, name="faq-bot-generate", daemon=True)
        thread.start()
        try:
            if prefix:
                yield prefix
            yield from streamer
            thread.join()
            if "error" in result:
                raise result["error"]
            usage.update(prompt_tokens=n_prompt, completion_tokens=result.get("completion_tokens", 0))
        finally:
            cancel.set()  # consumer gone or done: stop decoding at the next step
            thread.join(timeout=60)

    # ------------------------------------------------------------------ llm reranking

    def score_yes_no(self, query: str, passages: Sequence[str], *, lang: str | None = None, batch_size: int = 8,
                     max_passage_tokens: int = 384, adapter: str | None = None) -> list[float]:
        """Relevance of each passage to `query`: logit(yes) - logit(no) for the next token after the rerank prompt.

        Upper/lower-case variants are pooled (logsumexp) so the score does not hinge on capitalisation.
        Batched with left padding, one forward pass per batch, only the last position's logits kept.
        """
        import torch

        if batch_size <= 0:
            raise ValueError(f"`batch_size` must be > 0, got {batch_size}.")
        if not passages:
            return []
        lang_ = self.resolve_language(query, lang)
        name = self.resolve_adapter(adapter)
        self._ensure_ready()
        tok = self._tok
        yes = self._first_token_ids(("yes", "Yes", "YES"))
        no = self._first_token_ids(("no", "No", "NO"))
        texts = []
        for p in passages:
            if count_tokens(p, tok) > max_passage_tokens:
                p = tok.decode(tok(p, add_special_tokens=False)["input_ids"][:max_passage_tokens])
            texts.append(render_prompt(build_rerank_messages(query, p, lang_), tok))
        scores: list[float] = []
        with self._slot():
            for i in range(0, len(texts), batch_size):
                enc = tok(texts[i:i + batch_size], return_tensors="pt", padding=True, padding_side="left",
                          add_special_tokens=False).to(self._model.device)
                # left padding shifts positions; give each row positions counted from its first real token
                pos = (enc["attention_mask"].cumsum(-1) - 1).clamp(min=0)
                with self._state.lock, torch.inference_mode(), self._activate(name):
                    logits = self._model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                         position_ids=pos, logits_to_keep=1, use_cache=False).logits[:, -1].float()
                margin = torch.logsumexp(logits[:, yes], dim=-1) - torch.logsumexp(logits[:, no], dim=-1)
                scores.extend(margin.tolist())
        return scores

    def _first_token_ids(self, words: Sequence[str]) -> list[int]:
        ids = {self._tok(w, add_special_tokens=False)["input_ids"][0] for w in words}
        return sorted(ids)
