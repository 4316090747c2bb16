"""KTO smoke test: 2 steps on top of the tiny SFT adapter; loss logged, the adapter moved away from SFT's."""

from __future__ import annotations

import json
import math

import pytest


@pytest.fixture(scope="module")
def kto_run(train_cli, sft_run, built_data, tiny_lm_dir, train_env, tiny_trainer_args):
    cfg, _, _ = train_env
    dcfg, _ = built_data
    assert train_cli(["train", "kto", "--set", "name=tiny-kto", "--set", f"base_model={tiny_lm_dir}",
                      "--set", "sft_run=tiny-sft", "--set", f"data={dcfg.output_dir / 'kto.jsonl'}",
                      "--set", "trainer.max_steps=2", "--set", "trainer.per_device_train_batch_size=2",
                      *tiny_trainer_args]) == 0
    return cfg.train.runs_dir / "tiny-kto"


def test_kto_logs_loss_and_saves_only_the_policy_adapter(kto_run):
    info = json.loads((kto_run / "run.json").read_text(encoding="utf-8"))
    assert info["kind"] == "kto" and info["parent"] == "tiny-sft" and info["steps"] == 2
    assert info["losses"] and all(math.isfinite(x["loss"]) for x in info["losses"])
    assert (kto_run / "loss.png").exists()
    assert (kto_run / "adapter" / "adapter_model.safetensors").exists()
    assert not (kto_run / "adapter" / "ref").exists()  # trl's frozen reference copy is not exported


def test_kto_moves_the_sft_adapter(kto_run, sft_run):
    import torch
    from safetensors.torch import load_file

    sft = load_file(str(sft_run / "adapter" / "adapter_model.safetensors"))
    kto = load_file(str(kto_run / "adapter" / "adapter_model.safetensors"))
    assert sft.keys() == kto.keys()
    assert any(not torch.allclose(sft[k], kto[k]) for k in sft)
