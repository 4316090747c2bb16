"""Train one SFT run per value of a setting (`--sweep r=4,8,16`) and compare them on the val split."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Any

from faq_bot.config import AppConfig

from .config import SftRunConfig, parse_scalar, set_dotted

__all__ = ["parse_sweep", "run_sweep", "sweep_table_markdown"]

_ALIASES = {"r": "lora.r", "alpha": "lora.alpha", "dropout": "lora.dropout", "lr": "trainer.learning_rate"}


def parse_sweep(spec: str) -> tuple[str, list[Any]]:
    """`r=4,8,16` -> ("lora.r", [4, 8, 16]); any dotted SFT config key works (`trainer.learning_rate=1e-4,2e-4`)."""
    if "=" not in spec:
        raise ValueError(f"--sweep expects KEY=V1,V2,..., got {spec!r}.")
    key, values = spec.split("=", 1)
    key = _ALIASES.get(key.strip(), key.strip())
    vals = [parse_scalar(v.strip()) for v in values.split(",") if v.strip()]
    if not vals:
        raise ValueError(f"--sweep {spec!r} lists no values.")
    return key, vals


def _eval_rows(cfg: SftRunConfig) -> list[dict]:
    path = cfg.data_dir / "val.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if path.exists() else []
    if not rows:
        raise ValueError(f"{path} is empty: the sweep evaluates on the val split; set `split.val_ratio` > 0.")
    return rows[: cfg.sweep_eval.max_items]


def _evaluate(setting: str, app: AppConfig, adapter: Path | None, rows: list[dict], cfg: SftRunConfig) -> dict:
    from .evaluate import evaluate_rows, load_for_generation

    model, tok = load_for_generation(setting, app, adapter)
    metrics, _ = evaluate_rows(model, tok, rows, max_new_tokens=cfg.sweep_eval.max_new_tokens,
                               batch_size=cfg.sweep_eval.batch_size, progress=True)
    del model
    gc.collect()
    return metrics


def run_sweep(cfg: SftRunConfig, app: AppConfig, spec: str) -> Path:
    """Train and evaluate each value; writes runs/sweep-<ts>/sweep.json and sweep.md. Returns that folder."""
    from . import sft

    key, values = parse_sweep(spec)
    ts = time.strftime("%Y%m%d-%H%M%S")
    out = Path(app.train.runs_dir) / f"sweep-{ts}"
    out.mkdir(parents=True, exist_ok=True)
    rows = _eval_rows(cfg)
    base = cfg.base_model or app.generate.model
    table: list[dict] = []
    if cfg.sweep_eval.include_base:
        table.append({"run": "base", key: None, **_evaluate(base, app, None, rows, cfg)})
    for v in values:
        data = json.loads(cfg.model_dump_json())
        set_dotted(data, key, v)
        data["name"] = f"{cfg.name}-{key.rsplit('.', 1)[-1]}{v}-{ts}"
        run_cfg = SftRunConfig.model_validate(data)
        run_dir = sft.main(run_cfg, app)
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
        metrics = _evaluate(base, app, run_dir / "adapter", rows, cfg)
        table.append({"run": run_cfg.name, key: v, **metrics, "final_loss": info.get("final_loss"),
                      "train_runtime_s": info.get("train_runtime_s"), "tokens_per_s": info.get("tokens_per_s")})
    result = {"key": key, "values": values, "base_model": base, "eval_rows": len(rows), "created": ts, "rows": table}
    (out / "sweep.json").write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    (out / "sweep.md").write_text(sweep_table_markdown(result), encoding="utf-8")
    return out


def sweep_table_markdown(result: dict) -> str:
    key = result["key"]
    cols = ["run", key, "answer_accuracy", "refusal_accuracy", "accuracy", "false_refusal_rate", "parse_ok",
            "final_loss", "train_runtime_s", "tokens_per_s"]
    lines = [f"# Sweep over `{key}` — {result['base_model']}, {result['eval_rows']} val examples", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in result["rows"]:
        cells = []
        for c in cols:
            v = row.get(c)
            cells.append("" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
