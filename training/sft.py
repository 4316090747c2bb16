"""SFT with LoRA (trl SFTTrainer) on the builder's prompt/completion data; the adapter lands in runs/<name>/adapter.

    python -m faq_bot train sft --config configs/train/sft_lora.yaml --set trainer.max_steps=3
    accelerate launch --config_file configs/train/accelerate_ddp.yaml -m training.sft \
        --config configs/train/sft_lora.yaml
"""

from __future__ import annotations

from pathlib import Path

from faq_bot.config import AppConfig

from .config import SftRunConfig

__all__ = ["main"]


def main(cfg: SftRunConfig, app: AppConfig) -> Path:
    """Train one LoRA adapter; returns the run folder."""
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from faq_bot.models import resolve_generator_dir

    from .runs import (finish_run, load_rows, lora_config, pick_precision, quantization_config, run_log, start_run,
                       trainer_args)

    base = cfg.base_model or app.generate.model
    run = start_run(app, cfg.name, "sft", cfg.overwrite)

    # Load the dataset: prompt/completion rows, so trl computes the loss on the completion only
    train_file, val_file = cfg.data_dir / "train.jsonl", cfg.data_dir / "val.jsonl"
    train = load_rows(train_file, ["prompt", "completion"])
    has_val = val_file.exists() and val_file.stat().st_size > 0
    val = load_rows(val_file, ["prompt", "completion"]) if has_val else None

    # Model, tokenizer, precision, LoRA (QLoRA when `quantization: 4bit` and bitsandbytes is there)
    base_dir = resolve_generator_dir(base)
    precision = pick_precision(cfg.dtype)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    args = trainer_args(
        SFTConfig, cfg.trainer, output_dir=run.dir / "trainer", precision=precision,
        defaults={"completion_only_loss": True, "model_init_kwargs": {"dtype": precision.dtype},
                  "eval_strategy": "epoch" if val is not None else "no"},
    )

    # Trainer
    trainer = SFTTrainer(
        model=base_dir,
        args=args,
        train_dataset=train,
        eval_dataset=val if args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        peft_config=lora_config(cfg.lora),
        quantization_config=quantization_config(cfg.quantization, precision),
        callbacks=[run_log(run)],
    )

    # Train
    try:
        result = trainer.train()
    except BaseException:
        run.write_progress(status="failed")
        raise

    # Save the adapter (safetensors), run.json and loss.png
    trainer.accelerator.wait_for_everyone()
    if trainer.accelerator.is_main_process:
        trainer.model.save_pretrained(str(run.adapter_dir), selected_adapters=["default"])
    finish_run(run, trainer, result, base_model=base, base_dir=base_dir, data_files=[train_file, val_file],
               config=cfg, extra={"lora": cfg.lora.model_dump(), "precision": precision.__dict__,
                                  "n_train": len(train), "n_val": len(val) if val is not None else 0})
    return run.dir


if __name__ == "__main__":
    from .cli import script_main

    raise SystemExit(script_main("sft"))
