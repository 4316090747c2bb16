"""Generation with the default model: time to first token and decode tokens/s, vs the memory-bandwidth bound
(weight bytes read per token / measured copy bandwidth) and a compute bound for prefill; base vs a random LoRA
on q_proj,v_proj (unmerged, as the generator serves adapters) vs the same LoRA merged."""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import numpy as np

from faq_bot.generate.hf import cache_arg_name, kv_cache_of, system_prefix_len

from .common import PartContext, best_time, figure, now
from .data import ZhEnVocab

logger = logging.getLogger(__name__)

NEW_TOKENS = 16
CONTEXT_TOKENS = 192  # passages in the prompt; the system prompt and question come on top


def copy_bandwidth(nbytes: int = 512 * 2**20, repeats: int = 4) -> float:
    """Bytes moved per second (read + write) by a large numpy copy, best of `repeats`."""
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return 2 * src.nbytes / best_time(lambda: np.copyto(dst, src), repeats)


def _bf16_gemm_flops(torch) -> float:
    a = torch.randn(512, 896, dtype=torch.bfloat16)
    b = torch.randn(896, 4864, dtype=torch.bfloat16)
    a @ b
    return 2 * 512 * 896 * 4864 / best_time(lambda: a @ b)


def weight_bytes_per_token(model) -> int:
    """Bytes of every weight a decode step reads: all unique parameters, minus the input embedding table unless it
    is tied to the LM head (a lookup reads one row of it)."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() in seen:
            continue
        seen.add(p.data_ptr())
        total += p.numel() * p.element_size()
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    if head is None or head.weight.data_ptr() != emb.data_ptr():
        total -= emb.numel() * emb.element_size()
    return int(total)


def _measure(model, tok, enc, torch, new_tokens: int, cap_s: float = math.inf, prefix_cache: Any = None
             ) -> dict[str, Any]:
    """One greedy generate: time of the first token (prefill) and of each later decode step.

    Stops after `new_tokens`, or once `cap_s` seconds have passed and at least 4 tokens are out. `prefix_cache`:
    a KV cache of the prompt's first tokens, copied into the call as the generator's prefix cache does.
    """
    from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

    stamps: list[float] = []

    class Stamp(LogitsProcessor):
        def __call__(self, input_ids, scores):
            stamps.append(time.perf_counter())
            return scores

    class Cap(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            done = len(stamps) >= 4 and time.perf_counter() - t0 > cap_s
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool)

    extra = {} if prefix_cache is None else {cache_arg_name(model): copy.deepcopy(prefix_cache)}
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(**enc, **extra, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, top_p=None,
                       top_k=None, temperature=None, pad_token_id=tok.pad_token_id,
                       logits_processor=LogitsProcessorList([Stamp()]), stopping_criteria=StoppingCriteriaList([Cap()]))
    total = time.perf_counter() - t0
    steps = np.diff(stamps)
    return {"ttft_s": round(stamps[0] - t0, 3), "decode_tok_s": round(len(steps) / (stamps[-1] - stamps[0]), 3),
            "decode_step_ms_p50": round(float(np.median(steps)) * 1000, 1), "total_s": round(total, 2),
            "new_tokens": len(stamps)}


def _prefix_cache_ttft(ctx: PartContext, model, tok, messages, enc, torch, base: dict) -> None:
    """TTFT with the system prompt's KV cache reused (`generate.prefix_cache`, what TransformersGenerator does)
    vs a full prefill, alternated 3 times each (median)."""
    ids = enc["input_ids"]
    n_sys = system_prefix_len(tok, messages, ids[0])
    if not n_sys or not ctx.budget.fits(8 * base["ttft_s"] + 5):
        ctx.result.note("prefix-cache TTFT skipped (system turn not a token prefix, or no budget left)")
        return
    with torch.inference_mode():
        cache = kv_cache_of(model(input_ids=ids[:, :n_sys], use_cache=True))
    full, cached = [], []
    for _ in range(3):
        full.append(_measure(model, tok, enc, torch, 2)["ttft_s"])
        cached.append(_measure(model, tok, enc, torch, 2, prefix_cache=cache)["ttft_s"])
    n = int(ids.shape[1])
    ctx.result.raw["prefix_cache_ttft_s"] = {"full": full, "cached": cached, "system_tokens": n_sys}
    ctx.result.add(figure("ttft_prefix_cache", f"Time to first token, system prompt KV cached ({n_sys} of "
                          f"{n} prompt tokens; generate.prefix_cache)", float(np.median(cached)), "s",
                          peer_label="full prefill (prefix_cache off), median of 3", peer=float(np.median(full)),
                          note="3 alternated runs each; the saving is the system turn's share of the prompt"))


def run(ctx: PartContext) -> None:
    res = ctx.result
    if ctx.quick:
        res.note("--quick: generation skipped (run `python -m bench generation`).")
        return
    import torch

    from faq_bot.config import GenerateConfig
    from faq_bot.generate.prompts import ANSWER_PREFIX, build_answer_messages, render_prompt
    from faq_bot.models import load_causal_lm
    from faq_bot.schema import Chunk, Hit

    gcfg = GenerateConfig()
    threads_default = torch.get_num_threads()
    t0 = now()
    model, tok = load_causal_lm(gcfg.model, dtype=gcfg.dtype, device=gcfg.device)
    load_s = now() - t0
    bw = copy_bandwidth()
    gemm = _bf16_gemm_flops(torch)
    vocab = ZhEnVocab(seed=5)
    hits = [Hit(chunk=Chunk(id=f"c{i}", doc_id="d", text=vocab.text(60), source="policy.md",
                            heading_path=["售后政策", f"第{i + 1}节"]), score=1.0) for i in range(4)]
    messages, used = build_answer_messages("商品有质量问题，退货运费谁承担？", hits, lang="zh", tokenizer=tok,
                                           context_tokens=CONTEXT_TOKENS)
    enc = tok(render_prompt(messages, tok) + ANSWER_PREFIX, return_tensors="pt", add_special_tokens=False)
    n_prompt = int(enc["input_ids"].shape[1])
    wbytes = weight_bytes_per_token(model)
    n_params = sum(p.numel() for p in {p.data_ptr(): p for p in model.parameters()}.values())
    bound = bw / wbytes
    prefill_bound_s = 2 * n_params * n_prompt / gemm
    res.config = {"model": gcfg.model, "dtype": str(model.dtype), "device": str(model.device),
                  "torch_threads": threads_default, "prompt_tokens": n_prompt, "passages": len(used),
                  "new_tokens": NEW_TOKENS, "weight_bytes_per_token": wbytes, "params": n_params,
                  "copy_bandwidth_GBps": round(bw / 1e9, 2), "bf16_gemm_GFLOPs": round(gemm / 1e9, 1),
                  "lora": "r=16, alpha=32, q_proj+v_proj, random init (init_lora_weights=False)"}
    res.raw["load_s"] = round(load_s, 2)
    res.note(f"Bandwidth bound = {bw / 1e9:.1f} GB/s (single-thread numpy copy, read+write) / {wbytes / 1e9:.2f} GB "
             f"of weights read per token = {bound:.1f} tok/s. Prefill bound = 2 x {n_params / 1e6:.0f}M params x "
             f"{n_prompt} tokens / {gemm / 1e9:.0f} GFLOP/s (torch bf16 GEMM here).")
    _measure(model, tok, tok("warm up", return_tensors="pt"), torch, 2)
    runs: dict[str, dict] = {}
    cap = max(15.0, ctx.budget.left() / 5)
    runs["base"] = r = _measure(model, tok, enc, torch, NEW_TOKENS, cap)
    res.add(figure("ttft_base", f"Time to first token, base ({n_prompt}-token prompt)", r["ttft_s"], "s",
                   peer_label="compute bound (2·params·tokens / bf16 GEMM rate)", peer=prefill_bound_s))
    res.add(figure("decode_base", "Decode, base model", r["decode_tok_s"], "tok/s",
                   peer_label="memory-bandwidth bound", peer=bound, ratio_label="fraction of bound",
                   target="≥ 60% of bound", target_check=lambda v, q: q >= 0.6,
                   note=f"{r['decode_step_ms_p50']} ms/step p50, {r['new_tokens']} tokens; torch threads {threads_default}"))
    _prefix_cache_ttft(ctx, model, tok, messages, enc, torch, r)
    threads = threads_default
    if threads_default > 1 and ctx.budget.left() > 3 * cap:
        torch.set_num_threads(1)
        try:
            runs["base_1_thread"] = r1 = _measure(model, tok, enc, torch, NEW_TOKENS, cap)
        finally:
            torch.set_num_threads(threads_default)
        res.add(figure("decode_base_1t", "Decode, base model, torch 1 thread", r1["decode_tok_s"], "tok/s",
                       peer_label="memory-bandwidth bound", peer=bound, ratio_label="fraction of bound",
                       note=f"TTFT {r1['ttft_s']} s vs {r['ttft_s']} s with {threads_default} threads (default)"))
        if r1["decode_tok_s"] > r["decode_tok_s"]:
            threads, r = 1, r1
            res.note("torch with 1 thread decodes faster than the default here: the LoRA comparison runs with 1 thread "
                     "(base figure for it: the 1-thread run).")
    if not ctx.budget.fits(2.2 * min(cap, r["total_s"]) + 10):
        res.note(f"LoRA variants skipped: one run takes {r['total_s']:.0f} s, {ctx.budget.left():.0f} s left.")
        res.raw["runs"] = runs
        return
    from peft import LoraConfig, get_peft_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    lcfg = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=["q_proj", "v_proj"],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    pm = get_peft_model(model, lcfg)
    pm.eval()
    lora_bytes = sum(p.numel() * p.element_size() for n, p in pm.named_parameters() if "lora_" in n)
    cap = max(10.0, min(cap, ctx.budget.left() / 2.5))
    runs["lora_unmerged"] = ru = _measure(pm, tok, enc, torch, NEW_TOKENS, cap)
    res.add(figure("decode_lora_unmerged", f"Decode, LoRA unmerged (peft, as the generator serves adapters), "
                   f"torch {threads} thread{'s' if threads > 1 else ''}", ru["decode_tok_s"], "tok/s",
                   peer_label="base model, same threads", peer=r["decode_tok_s"],
                   note=f"bound {(bw / (wbytes + lora_bytes)):.1f} tok/s; TTFT {ru['ttft_s']} s vs {r['ttft_s']} s"))
    if ctx.budget.fits(min(cap, ru["total_s"]) + 5):
        merged = pm.merge_and_unload()
        runs["lora_merged"] = rm = _measure(merged, tok, enc, torch, NEW_TOKENS, cap)
        res.add(figure("decode_lora_merged", f"Decode, LoRA merged into the weights, torch {threads} "
                       f"thread{'s' if threads > 1 else ''}", rm["decode_tok_s"], "tok/s",
                       peer_label="base model, same threads", peer=r["decode_tok_s"], note=f"TTFT {rm['ttft_s']} s"))
    else:
        res.note("Merged-LoRA run skipped: part budget used up.")
    torch.set_num_threads(threads_default)
    res.raw["runs"] = runs
    res.raw["lora_bytes"] = lora_bytes
