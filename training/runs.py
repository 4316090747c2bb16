"""The adapter registry `runs/<name>/`: run folders, model/precision/LoRA setup, live log, run.json, loss plot."""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from faq_bot.config import AppConfig

from .config import LoraSection

logger = logging.getLogger(__name__)

__all__ = [
    "Precision",
    "Run",
    "file_sha256",
    "finish_run",
    "list_runs",
    "load_rows",
    "lora_config",
    "pick_precision",
    "plot_losses",
    "quantization_config",
    "run_log",
    "start_run",
    "trainer_args",
]


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Run:
    """One training run's folder in the registry."""

    name: str
    dir: Path
    kind: str
    started: float

    @property
    def adapter_dir(self) -> Path:
        return self.dir / "adapter"

    def write_progress(self, **fields: Any) -> None:
        if not _is_main():
            return
        path = self.dir / "progress.json"
        try:
            state = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
        except (OSError, json.JSONDecodeError):
            state = {}
        state.update(fields, updated=time.time())
        tmp = path.with_name(f".progress.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)


def start_run(app: AppConfig, name: str, kind: str, overwrite: bool = False) -> Run:
    """Create `runs/<name>/`; an existing run is an error unless `overwrite`.

    Raises:
        ValueError: the run exists (the message says how to pick another name).
    """
    d = Path(app.train.runs_dir) / name
    if _is_main():
        if d.exists() and any(d.iterdir()):
            if not overwrite:
                raise ValueError(f"Run `{name}` already exists at {d}; pass --set name=<new name> or "
                                 "--set overwrite=true to replace it.")
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
    if Path(app.generate.adapters_dir).resolve() != Path(app.train.runs_dir).resolve():
        logger.warning("train.runs_dir (%s) differs from generate.adapters_dir (%s): the app will not see this "
                       "adapter until it is copied there.", app.train.runs_dir, app.generate.adapters_dir)
    run = Run(name, d, kind, time.time())
    run.write_progress(status="running", kind=kind, step=0, max_steps=None, pid=os.getpid(), started=run.started)
    return run


@dataclass
class Precision:
    dtype: str  # torch dtype name for from_pretrained
    bf16: bool
    fp16: bool
    device: str


def pick_precision(dtype: str) -> Precision:
    """auto: bf16 weights and bf16 autocast on a GPU that supports it; fp32 on CPU (fp32 or bf16 both work)."""
    import torch

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else ("float16" if cuda else "float32")
    return Precision(dtype, bf16=dtype == "bfloat16", fp16=dtype == "float16", device=device)


def quantization_config(kind: str, precision: Precision):
    """A 4-bit BitsAndBytesConfig (QLoRA) or None.

    Raises:
        ValueError: `4bit` without bitsandbytes or without a GPU.
    """
    if kind == "none":
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError("`quantization: 4bit` needs bitsandbytes (pip install -r requirements-gpu.txt); "
                         "set `quantization: none` to train in full precision.")
    if precision.device != "cuda":
        raise ValueError("`quantization: 4bit` needs a CUDA GPU; set `quantization: none` on CPU.")
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=getattr(torch, precision.dtype))


def lora_config(lora: LoraSection):
    from peft import LoraConfig

    return LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                      target_modules=list(lora.target_modules), bias=lora.bias, task_type="CAUSAL_LM")


def trainer_args(config_cls: type, kwargs: dict[str, Any], *, output_dir: Path, precision: Precision,
                 defaults: dict[str, Any] | None = None):
    """trl's own config (SFTConfig/KTOConfig) from the YAML `trainer:` section; unknown keys fail loudly.

    `bf16`/`fp16` follow the model precision unless the YAML sets them.
    """
    names = {f.name for f in dataclasses.fields(config_cls)}
    bad = sorted(set(kwargs) - names)
    if bad:
        raise ValueError(f"`trainer` has unknown {config_cls.__name__} key(s) {bad}; see the trl docs for "
                         f"{config_cls.__name__} (and transformers TrainingArguments).")
    merged = {"report_to": "none", "bf16": precision.bf16, "fp16": precision.fp16, **(defaults or {}), **kwargs}
    merged["output_dir"] = str(output_dir)
    merged.setdefault("use_cpu", precision.device == "cpu")
    return config_cls(**merged)


def load_rows(path: Path, columns: Iterable[str]):
    """A datasets.Dataset with only `columns` from a JSONL file (the builder's extra fields are kept on disk)."""
    from datasets import Dataset

    columns = list(columns)
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                obj = json.loads(line)
                rows.append({c: obj[c] for c in columns})
    if not rows:
        raise ValueError(f"{path} has no rows; build the data first (python -m faq_bot train data).")
    return Dataset.from_list(rows)


def file_sha256(paths: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p.exists():
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
    return h.hexdigest()


def run_log(run: Run):
    """A transformers TrainerCallback writing every log to runs/<name>/log.jsonl and progress.json and redrawing
    loss.png, so the admin tab can follow a run from another process."""
    from transformers import TrainerCallback

    class RunLog(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            run.write_progress(max_steps=state.max_steps, step=0)

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            row = {"step": state.global_step, "epoch": state.epoch, **logs}
            with open(run.dir / "log.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row, default=float) + "\n")
            loss = logs.get("loss", logs.get("train_loss"))
            run.write_progress(step=state.global_step, max_steps=state.max_steps, epoch=state.epoch,
                               **({"loss": loss} if loss is not None else {}))
            if "loss" in logs or "eval_loss" in logs:
                plot_losses(state.log_history, run.dir / "loss.png", title=run.name)

    return RunLog()


def plot_losses(history: list[dict], path: Path, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), marker="o", ms=3, label="train loss")
    if evals:
        ax.plot(*zip(*evals), marker="s", ms=4, label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def finish_run(run: Run, trainer: Any, result: Any, *, base_model: str, base_dir: str, data_files: list[Path],
               config: Any, extra: dict | None = None) -> dict:
    """Write run.json (base model, data hash, config, losses, time, tokens/s) and the final loss plot."""
    import peft
    import torch
    import transformers
    import trl

    history = trainer.state.log_history
    losses = [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h]
    evals = [{"step": h["step"], "eval_loss": h["eval_loss"]} for h in history if "eval_loss" in h]
    tokens = max((h.get("num_tokens", 0) for h in history), default=0)
    runtime = float(result.metrics.get("train_runtime", 0.0)) or (time.time() - run.started)
    info = {
        "name": run.name,
        "kind": run.kind,
        "base_model": base_model,
        "base_model_dir": base_dir,
        "adapter": str(run.adapter_dir),
        "data": {"files": [str(p) for p in data_files], "sha256": file_sha256(data_files)},
        "config": json.loads(config.model_dump_json()),
        "trainer_args": {k: v for k, v in trainer.args.to_dict().items() if isinstance(v, (int, float, str, bool))
                         or v is None},
        "losses": losses,
        "eval_losses": evals,
        "final_loss": losses[-1]["loss"] if losses else None,
        "train_loss": result.metrics.get("train_loss"),
        "steps": trainer.state.global_step,
        "tokens": int(tokens),
        "train_runtime_s": round(runtime, 2),
        "tokens_per_s": round(tokens / runtime, 1) if tokens and runtime else None,
        "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.started)),
        "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        "wall_s": round(time.time() - run.started, 1),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
                     "peft": peft.__version__},
        **(extra or {}),
    }
    if _is_main():
        (run.dir / "run.json").write_text(json.dumps(info, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
        plot_losses(history, run.dir / "loss.png", title=run.name)
        run.write_progress(status="done", step=trainer.state.global_step)
    return info


def list_runs(runs_dir: Path) -> list[dict]:
    """Finished runs (an adapter with a run.json), newest first: name, kind, base model, loss, when."""
    out = []
    for d in Path(runs_dir).glob("*/run.json"):
        try:
            info = json.loads(d.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not (d.parent / "adapter" / "adapter_config.json").exists():
            continue
        out.append({"name": info.get("name", d.parent.name), "kind": info.get("kind"),
                    "base_model": info.get("base_model"), "final_loss": info.get("final_loss"),
                    "steps": info.get("steps"), "finished": info.get("finished"),
                    "adapter": str(d.parent / "adapter"), "merged": (d.parent / "merged").exists()})
    out.sort(key=lambda r: r.get("finished") or "", reverse=True)
    return out
