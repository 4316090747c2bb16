"""KTO (trl KTOTrainer) on top of the SFT adapter: desirable gold outputs, undesirable wrong answers and refusals.

    python -m faq_bot train kto --config configs/train/kto.yaml
    accelerate launch --config_file configs/train/accelerate_ddp.yaml -m training.kto --config configs/train/kto.yaml
"""

from __future__ import annotations

import json
from pathlib import Path

from faq_bot.config import AppConfig

from .config import KtoRunConfig

__all__ = ["main"]


def main(cfg: KtoRunConfig, app: AppConfig) -> Path:
    """Continue the SFT adapter (`sft_run`) with KTO, or train a fresh LoRA when `sft_run` is null."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import KTOConfig, KTOTrainer

    from faq_bot.models import resolve_generator_dir

    from .runs import (finish_run, load_rows, lora_config, pick_precision, quantization_config, run_log, start_run,
                       trainer_args)

    sft_adapter = Path(app.train.runs_dir) / cfg.sft_run / "adapter" if cfg.sft_run else None
    if sft_adapter is not None and not (sft_adapter / "adapter_config.json").exists():
        raise ValueError(f"`sft_run` = {cfg.sft_run!r}: no adapter at {sft_adapter}; train SFT first or set "
                         "`sft_run: null` for a fresh LoRA.")
    parent = json.loads((sft_adapter.parent / "run.json").read_text(encoding="utf-8")) \
        if sft_adapter is not None and (sft_adapter.parent / "run.json").exists() else {}
    base = cfg.base_model or parent.get("base_model") or app.generate.model  # the adapter's own base by default
    run = start_run(app, cfg.name, "kto", cfg.overwrite)

    # Load the dataset: unpaired prompt/completion/label rows
    train = load_rows(cfg.data, ["prompt", "completion", "label"])

    # Model and tokenizer; the SFT adapter is the policy, trl keeps a frozen copy of it as the reference
    base_dir = resolve_generator_dir(base)
    precision = pick_precision(cfg.dtype)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    quant = quantization_config(cfg.quantization, precision)
    model = AutoModelForCausalLM.from_pretrained(
        base_dir, dtype=precision.dtype, **({"quantization_config": quant, "device_map": "auto"} if quant else {}))
    if sft_adapter is not None:
        model = PeftModel.from_pretrained(model, str(sft_adapter), is_trainable=True)
    args = trainer_args(KTOConfig, cfg.trainer, output_dir=run.dir / "trainer", precision=precision)

    # Trainer
    trainer = KTOTrainer(
        model=model,
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
        peft_config=None if sft_adapter is not None else lora_config(cfg.lora),
        callbacks=[run_log(run)],
    )

    # Train
    try:
        result = trainer.train()
    except BaseException:
        run.write_progress(status="failed")
        raise

    # Save the trained adapter only (not trl's "ref" copy), run.json and loss.png
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        trainer.model.save_pretrained(str(run.adapter_dir), selected_adapters=["default"])
    finish_run(run, trainer, result, base_model=base, base_dir=base_dir, data_files=[cfg.data], config=cfg,
               extra={"parent": cfg.sft_run, "precision": precision.__dict__, "n_train": len(train),
                      "n_desirable": int(sum(train["label"]))})
    return run.dir


if __name__ == "__main__":
    from .cli import script_main

    raise SystemExit(script_main("kto"))
