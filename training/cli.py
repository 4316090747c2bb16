"""`python -m faq_bot train data | sft | kto | merge | list`: the parser and the dispatcher faq_bot/cli.py calls.

`--config` is the training YAML (configs/train/*.yaml); `--app-config` the app YAML. `--set KEY=VALUE` goes to
the app config when KEY starts with one of its sections (store., generate., train., ...), else to the
training config (trainer.max_steps=3, lora.r=16, rgb.path=..., name=...).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from faq_bot.config import AppConfig, load_config

from .config import TRAIN_CONFIG_DIR, parse_sets, split_overrides

__all__ = ["add_commands", "add_train_parser", "main", "run_train", "script_main"]

logger = logging.getLogger(__name__)

DEFAULT_CONFIGS = {
    "data": TRAIN_CONFIG_DIR / "data.yaml",
    "sft": TRAIN_CONFIG_DIR / "sft_lora.yaml",
    "kto": TRAIN_CONFIG_DIR / "kto.yaml",
}


def _options(p: argparse.ArgumentParser, default_config: Path | None) -> None:
    if default_config is not None:
        p.add_argument("--config", dest="train_config", default=str(default_config),
                       help=f"training YAML (default: {default_config.relative_to(TRAIN_CONFIG_DIR.parent.parent)})")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a training key (trainer.max_steps=3) or an app key (store.path=/tmp/x.db); "
                        "repeatable")
    p.add_argument("--app-config", dest="config", default=None, help="app YAML (default: configs/default.yaml)")
    p.add_argument("-v", "--verbose", action="store_true")


def add_commands(sub: argparse._SubParsersAction) -> None:
    """data | sft | kto | merge | list, on `sub` (the `train` parser's, or `python -m training`'s)."""
    d = sub.add_parser("data", help="build train/val/kto JSONL and the data card from the knowledge base")
    _options(d, DEFAULT_CONFIGS["data"])
    s = sub.add_parser("sft", help="LoRA SFT; writes runs/<name>/ (adapter/, run.json, loss.png)")
    _options(s, DEFAULT_CONFIGS["sft"])
    s.add_argument("--sweep", default=None, metavar="KEY=V1,V2",
                   help="train one run per value and compare them on val, e.g. r=4,8,16")
    k = sub.add_parser("kto", help="KTO on top of an SFT adapter")
    _options(k, DEFAULT_CONFIGS["kto"])
    m = sub.add_parser("merge", help="merge runs/RUN/adapter into its base model -> runs/RUN/merged")
    m.add_argument("run")
    m.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"])
    m.add_argument("--overwrite", action="store_true")
    _options(m, None)
    ls = sub.add_parser("list", help="list finished runs (the adapter registry)")
    _options(ls, None)


def add_train_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `train` and its sub-commands to the main CLI's subparsers."""
    p = subparsers.add_parser("train", help="build training data, fine-tune (SFT, KTO), merge adapters")
    add_commands(p.add_subparsers(dest="train_cmd", required=True))
    p.set_defaults(overrides=[])  # the main CLI's own --set list: training overrides travel in `sets`
    return p


def run_train(cfg: AppConfig, args: argparse.Namespace) -> int:
    """Run `train <cmd>` with the app config the main CLI loaded; returns the exit code."""
    try:
        return _run(cfg, args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(cfg: AppConfig, args: argparse.Namespace) -> int:
    app_over, train_over = split_overrides(parse_sets(args.sets))
    if app_over:
        cfg = load_config(args.config, app_over)
    cmd = args.train_cmd
    if cmd == "list":
        from .runs import list_runs

        runs = list_runs(cfg.train.runs_dir)
        for r in runs:
            loss = f"{r['final_loss']:.4f}" if isinstance(r["final_loss"], (int, float)) else "-"
            merged = "\tmerged" if r["merged"] else ""
            print(f"{r['name']}\t{r['kind']}\t{r['base_model']}\tloss {loss}\t{r['finished']}{merged}")
        if not runs:
            print(f"No finished runs in {cfg.train.runs_dir}.")
        return 0
    if cmd == "merge":
        from .merge import merge_run

        if train_over:
            raise ValueError(f"`train merge` takes no training overrides, got {sorted(train_over)}.")
        out = merge_run(cfg, args.run, dtype=args.dtype, overwrite=args.overwrite)
        print(f"Merged model written to {out}")
        return 0
    train_cfg = _load_train_cfg(cmd, args.train_config, train_over)
    print(f"Resolved {cmd} config ({args.train_config}):\n"
          + json.dumps(json.loads(train_cfg.model_dump_json()), ensure_ascii=False, indent=1), file=sys.stderr)
    if cmd == "data":
        from .data import build_data, format_data_card

        card = build_data(cfg, train_cfg)
        print(format_data_card(card))
        print(f"Wrote train.jsonl, val.jsonl, kto.jsonl and data_card.json to {card['output_dir']}")
        return 0
    if cmd == "sft" and args.sweep:
        from .sweep import run_sweep

        out = run_sweep(train_cfg, cfg, args.sweep)
        print((out / "sweep.md").read_text(encoding="utf-8"))
        print(f"Sweep table: {out / 'sweep.md'} and {out / 'sweep.json'}")
        return 0
    module = importlib.import_module(f"training.{cmd}")
    run_dir = module.main(train_cfg, cfg)
    info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    print(f"{cmd.upper()} run `{info['name']}`: {info['steps']} steps, final loss {info['final_loss']}, "
          f"{info['train_runtime_s']} s, {info['tokens_per_s']} tokens/s\n  adapter: {info['adapter']}\n"
          f"  run.json, loss.png: {run_dir}")
    return 0


def _load_train_cfg(cmd: str, path: str | None, overrides: dict):
    from .config import DataBuildConfig, KtoRunConfig, SftRunConfig, load_train_config

    cls = {"data": DataBuildConfig, "sft": SftRunConfig, "kto": KtoRunConfig}[cmd]
    return load_train_config(cls, path, overrides)


def script_main(cmd: str, argv: list[str] | None = None) -> int:
    """Entry point of `python -m training.sft|kto` (what `accelerate launch -m ...` runs on every process)."""
    parser = argparse.ArgumentParser(prog=f"python -m training.{cmd}")
    _options(parser, DEFAULT_CONFIGS[cmd])
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app_over, train_over = split_overrides(parse_sets(args.sets))
    try:
        app = load_config(args.config, app_over)
        train_cfg = _load_train_cfg(cmd, args.train_config, train_over)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"training.{cmd}")
    module.main(train_cfg, app)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m training <cmd>`: the same commands without going through faq_bot's CLI."""
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    add_commands(parser.add_subparsers(dest="train_cmd", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        app = load_config(args.config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return run_train(app, args)
