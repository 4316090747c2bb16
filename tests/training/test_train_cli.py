"""Training CLI and configs: argument routing, override parsing, validation of every shipped YAML against trl."""

from __future__ import annotations

import argparse
import json

import pytest
import yaml

from faq_bot.config import ROOT
from training.cli import add_train_parser
from training.config import (DataBuildConfig, KtoRunConfig, SftRunConfig, load_train_config, parse_scalar, parse_sets,
                             split_overrides)
from training.sweep import parse_sweep, sweep_table_markdown

TRAIN_DIR = ROOT / "configs" / "train"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m faq_bot")
    sub = parser.add_subparsers(dest="cmd", required=True)
    add_train_parser(sub)
    return parser


def test_cli_train_args_fit_the_main_cli():
    args = _parser().parse_args(["train", "sft", "--config", "x.yaml", "--set", "trainer.max_steps=3",
                                 "--set", "store.path=/tmp/a.db", "--sweep", "r=4,8,16"])
    assert (args.cmd, args.train_cmd, args.train_config, args.sweep) == ("train", "sft", "x.yaml", "r=4,8,16")
    # what faq_bot.cli.main reads
    assert args.overrides == [] and args.config is None and args.verbose is False
    app, train = split_overrides(parse_sets(args.sets))
    assert app == {"store.path": "/tmp/a.db"} and train == {"trainer.max_steps": 3}
    args = _parser().parse_args(["train", "merge", "my-run", "--app-config", "c.yaml"])
    assert args.run == "my-run" and args.config == "c.yaml"


def test_cli_scalars_keep_strategy_words_and_numbers():
    assert parse_scalar("no") == "no" and parse_scalar("true") is True and parse_scalar("2e-4") == 2e-4
    assert parse_scalar("[q_proj, k_proj]") == ["q_proj", "k_proj"] and parse_scalar("8") == 8
    cfg = load_train_config(SftRunConfig, None, {"trainer.save_strategy": False, "lora.target_modules": "q_proj,o_proj"})
    assert cfg.trainer["save_strategy"] == "no" and cfg.lora.target_modules == ["q_proj", "o_proj"]


def test_train_config_rejects_unknown_keys_and_bad_names():
    with pytest.raises(ValueError, match="lora.rank"):
        load_train_config(SftRunConfig, None, {"lora.rank": 4})
    with pytest.raises(ValueError, match="name"):
        load_train_config(SftRunConfig, None, {"name": "../escape"})
    with pytest.raises(ValueError, match="teacher"):
        load_train_config(DataBuildConfig, None, {"synth.enabled": True, "synth.backend": "openai"})


def test_shipped_configs_validate_against_trl():
    from trl import KTOConfig, SFTConfig

    from training.runs import Precision, trainer_args

    cpu = Precision("float32", bf16=False, fp16=False, device="cpu")
    data = load_train_config(DataBuildConfig, TRAIN_DIR / "data.yaml")
    assert data.mix.refusal_ratio == 0.25 and data.rgb.ids_mod3 == 0 and data.synth.prompt_zh.is_file()
    sft = load_train_config(SftRunConfig, TRAIN_DIR / "sft_lora.yaml")
    args = trainer_args(SFTConfig, sft.trainer, output_dir=ROOT / "runs" / "x", precision=cpu)
    assert args.completion_only_loss is True and args.learning_rate == 2e-4
    assert sft.lora.target_modules == ["q_proj", "v_proj"]
    kto = load_train_config(KtoRunConfig, TRAIN_DIR / "kto.yaml")
    kargs = trainer_args(KTOConfig, kto.trainer, output_dir=ROOT / "runs" / "y", precision=cpu)
    assert kargs.per_device_train_batch_size > 1 and kto.sft_run == "sft-lora"
    with pytest.raises(ValueError, match="max_stepz"):
        trainer_args(SFTConfig, {"max_stepz": 3}, output_dir=ROOT / "runs" / "z", precision=cpu)


def test_scale_out_configs_parse():
    ddp = yaml.safe_load((TRAIN_DIR / "accelerate_ddp.yaml").read_text())
    assert ddp["distributed_type"] == "MULTI_GPU" and ddp["mixed_precision"] == "bf16"
    ds = json.loads((TRAIN_DIR / "deepspeed_zero2.json").read_text())
    assert ds["zero_optimization"]["stage"] == 2
    assert "accelerate launch" in (ROOT / "training" / "README.md").read_text(encoding="utf-8")


def test_sweep_spec_and_table():
    assert parse_sweep("r=4,8,16") == ("lora.r", [4, 8, 16])
    assert parse_sweep("trainer.learning_rate=1e-4,2e-4") == ("trainer.learning_rate", [1e-4, 2e-4])
    with pytest.raises(ValueError):
        parse_sweep("r")
    md = sweep_table_markdown({"key": "lora.r", "base_model": "m", "eval_rows": 2,
                               "rows": [{"run": "base", "lora.r": None, "accuracy": 0.5}, {"run": "a", "lora.r": 4}]})
    assert "| base |  |" in md and "| a | 4 |" in md


def test_cli_list_shows_finished_runs(sft_run, train_cli, capsys):
    assert train_cli(["train", "list"]) == 0
    assert "tiny-sft\tsft" in capsys.readouterr().out
