"""Export a run as a standalone model: base weights with the LoRA adapter merged in, to runs/<RUN>/merged."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from faq_bot.config import AppConfig

__all__ = ["merge_run"]


def merge_run(app: AppConfig, name: str, *, dtype: str = "auto", overwrite: bool = False) -> Path:
    """Merge runs/<name>/adapter into its base model and save it (safetensors + tokenizer) under merged/.

    Raises:
        ValueError: no such run, or merged/ exists without `overwrite`.
    """
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from faq_bot.models import resolve_generator_dir

    run_dir = Path(app.train.runs_dir) / name
    adapter = run_dir / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise ValueError(f"No adapter for run `{name}` at {adapter}; `python -m faq_bot train list` shows the runs.")
    out = run_dir / "merged"
    if out.exists() and not overwrite:
        raise ValueError(f"{out} exists; pass --overwrite to replace it.")
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8")) if (run_dir / "run.json").exists() else {}
    base = info.get("base_model") or app.generate.model
    base_dir = resolve_generator_dir(base)
    # Merge in the dtype the model will be served in; fp32 merging of a bf16 checkpoint only wastes disk
    torch_dtype = getattr(torch, dtype) if dtype != "auto" else "auto"
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch_dtype)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    tmp = out.with_name(".merged.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(str(tmp))
    (tmp / "merged_from.json").write_text(json.dumps({"base_model": base, "base_model_dir": base_dir,
                                                      "adapter": str(adapter)}, indent=1), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
