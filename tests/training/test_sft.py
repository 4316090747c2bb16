"""SFT smoke test on the tiny model: 2 steps, loss logged, LoRA weights moved, the adapter changes outputs."""

from __future__ import annotations

import json
import math

import pytest


def _prompt(built_data) -> str:
    dcfg, _ = built_data
    return json.loads((dcfg.output_dir / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])["prompt"]


def test_sft_run_logs_loss_and_writes_registry_entry(sft_run):
    info = json.loads((sft_run / "run.json").read_text(encoding="utf-8"))
    assert info["kind"] == "sft" and info["steps"] == 2
    assert len(info["losses"]) == 2 and all(math.isfinite(x["loss"]) and x["loss"] > 0 for x in info["losses"])
    assert info["tokens"] > 0 and info["tokens_per_s"] > 0 and len(info["data"]["sha256"]) == 64
    assert info["config"]["lora"]["r"] == 8 and info["base_model"].endswith("tiny-qwen0")
    assert (sft_run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((sft_run / "progress.json").read_text())["status"] == "done"
    adapter_cfg = json.loads((sft_run / "adapter" / "adapter_config.json").read_text())
    assert adapter_cfg["r"] == 8 and set(adapter_cfg["target_modules"]) == {"q_proj", "v_proj"}


def test_sft_lora_params_changed(sft_run):
    from safetensors.torch import load_file

    weights = load_file(str(sft_run / "adapter" / "adapter_model.safetensors"))
    lora_b = {k: v for k, v in weights.items() if "lora_B" in k}
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b.values())  # LoRA B starts at exactly zero


def test_sft_adapter_loads_and_changes_outputs(sft_run, tiny_lm_dir, built_data):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    ids = tok(_prompt(built_data), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32).eval()
        base_logits = base(**ids).logits[0, -1]
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32),
                                          str(sft_run / "adapter")).eval()
        tuned_logits = tuned(**ids).logits[0, -1]
    assert not torch.allclose(base_logits, tuned_logits, atol=1e-4)


def test_sft_existing_run_name_is_refused(sft_run, train_cli, built_data, tiny_lm_dir, capsys):
    dcfg, _ = built_data
    code = train_cli(["train", "sft", "--set", "name=tiny-sft", "--set", f"base_model={tiny_lm_dir}",
                      "--set", f"data_dir={dcfg.output_dir}", "--set", "trainer.max_steps=1"])
    assert code == 2 and "already exists" in capsys.readouterr().err


def test_merge_exports_a_model_that_matches_the_adapter(sft_run, train_cli, tiny_lm_dir, built_data):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert train_cli(["train", "merge", "tiny-sft", "--dtype", "float32"]) == 0
    merged_dir = sft_run / "merged"
    assert (merged_dir / "config.json").exists() and list(merged_dir.glob("*.safetensors"))
    tok = AutoTokenizer.from_pretrained(str(merged_dir))
    ids = tok(_prompt(built_data), return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32).eval()
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.float32),
                                          str(sft_run / "adapter")).eval()
        assert torch.allclose(merged(**ids).logits[0, -1], tuned(**ids).logits[0, -1], atol=1e-3)


@pytest.mark.slow
def test_sft_sweep_writes_one_table(train_env, built_data, tiny_lm_dir):
    from training.config import SftRunConfig
    from training.sweep import run_sweep

    cfg, _, _ = train_env
    dcfg, _ = built_data
    run_cfg = SftRunConfig(name="sw", base_model=tiny_lm_dir, data_dir=dcfg.output_dir,
                           trainer={"max_steps": 1, "per_device_train_batch_size": 1, "logging_steps": 1,
                                    "eval_strategy": "no", "activation_checkpointing": False, "max_length": 768},
                           sweep_eval={"max_items": 2, "max_new_tokens": 4, "batch_size": 2})
    out = run_sweep(run_cfg, cfg, "r=4")  # one trained value keeps the test short; parse_sweep covers lists
    table = json.loads((out / "sweep.json").read_text(encoding="utf-8"))
    assert [r["run"] for r in table["rows"]][0] == "base" and [r.get("lora.r") for r in table["rows"]] == [None, 4]
    assert all(r["n"] == 2 and r["accuracy"] is not None for r in table["rows"])
    adapter_cfg = cfg.train.runs_dir / table["rows"][1]["run"] / "adapter" / "adapter_config.json"
    assert json.loads(adapter_cfg.read_text())["r"] == 4
    md = (out / "sweep.md").read_text(encoding="utf-8")
    assert md.count("\n| ") == 3 and "refusal_accuracy" in md  # header + 2 rows
