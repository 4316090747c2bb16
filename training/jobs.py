"""Background training jobs for the admin UI: one `python -m training <cmd>` subprocess at a time, its log, cancel."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from faq_bot.config import ROOT, AppConfig

__all__ = ["Job", "JobManager"]

COMMANDS = ("data", "sft", "kto", "merge", "list")


@dataclass
class Job:
    cmd: str
    name: str | None  # run name (sft/kto): progress is read from runs/<name>/progress.json
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen
    started: float = field(default_factory=time.time)
    cancelled: bool = False


class JobManager:
    """Starts one training subprocess at a time with the app's own resolved config, tails its log, cancels it."""

    def __init__(self, cfg: AppConfig, python: str | None = None):
        self.cfg = cfg
        self.python = python or sys.executable
        self.dir = Path(cfg.train.runs_dir) / ".jobs"
        self._lock = threading.Lock()
        self.job: Job | None = None

    def _app_config_file(self) -> Path:
        """The running app's config as YAML, so the job sees the same store, models and runs folder."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / "app-config.yaml"
        data = self.cfg.dump()
        # dump() masks secrets; drop those keys (training uses neither endpoint nor the admin password)
        data["generate"].pop("openai", None)
        data["eval"].pop("judge", None)
        data["app"].pop("admin_password", None)
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path

    def start(self, cmd: str, *, config: str | None = None, name: str | None = None,
              sets: list[str] | None = None, extra: list[str] | None = None) -> Job:
        """Start `python -m training <cmd>`; sft/kto get `--set name=<name>` (default `<cmd>-<timestamp>`).

        Raises:
            RuntimeError: a job is still running.
            ValueError: unknown command.
        """
        if cmd not in COMMANDS:
            raise ValueError(f"`cmd` must be one of {COMMANDS}, got {cmd!r}.")
        with self._lock:
            if self.running():
                raise RuntimeError(f"A `{self.job.cmd}` job is still running; cancel it or wait.")
            argv = [self.python, "-m", "training", cmd, *(extra or []), "--app-config", str(self._app_config_file())]
            if config and cmd in ("data", "sft", "kto"):
                argv += ["--config", config]
            if cmd in ("sft", "kto"):
                name = name or f"{cmd}-{time.strftime('%Y%m%d-%H%M%S')}"
                argv += ["--set", f"name={name}"]
            for s in sets or []:
                argv += ["--set", s]
            log_path = self.dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{cmd}.log"
            log = open(log_path, "w", encoding="utf-8")
            env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "2"}
            # own session: cancel stops the job and the workers it spawned, nothing else
            proc = subprocess.Popen(argv, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            log.close()
            self.job = Job(cmd, name if cmd in ("sft", "kto") else None, argv, log_path, proc)
            return self.job

    def running(self) -> bool:
        return self.job is not None and self.job.proc.poll() is None

    def cancel(self, timeout: float = 10.0) -> bool:
        """Stop the running job (SIGTERM to its process group, SIGKILL after `timeout`); False if none runs."""
        job = self.job
        if job is None or job.proc.poll() is not None:
            return False
        job.cancelled = True
        try:
            os.killpg(job.proc.pid, signal.SIGTERM)
            job.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(job.proc.pid, signal.SIGKILL)
            job.proc.wait(timeout=timeout)
        except ProcessLookupError:
            pass
        if job.name:
            _mark(Path(self.cfg.train.runs_dir) / job.name / "progress.json", "cancelled")
        return True

    def status(self, tail_lines: int = 40) -> dict:
        """State of the current (or last) job: running/done/failed/cancelled, progress, log tail, loss plot."""
        job = self.job
        if job is None:
            return {"state": "idle"}
        code = job.proc.poll()
        state = "running" if code is None else "cancelled" if job.cancelled else "done" if code == 0 else "failed"
        out = {"state": state, "cmd": job.cmd, "name": job.name, "returncode": code, "pid": job.proc.pid,
               "elapsed_s": round(time.time() - job.started, 1), "log": str(job.log_path),
               "log_tail": tail(job.log_path, tail_lines)}
        if job.name:
            run_dir = Path(self.cfg.train.runs_dir) / job.name
            try:
                out["progress"] = json.loads((run_dir / "progress.json").read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                out["progress"] = {}
            plot = run_dir / "loss.png"
            out["loss_png"] = str(plot) if plot.exists() else None
        return out


def tail(path: Path, lines: int = 40) -> str:
    """Last `lines` lines of a log; tqdm's carriage-return updates collapse to their latest state."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64_000))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    rows = [line.rsplit("\r", 1)[-1] for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join(r for r in rows[-lines:])


def _mark(path: Path, status: str) -> None:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    state.update(status=status, updated=time.time())
    path.write_text(json.dumps(state), encoding="utf-8")
