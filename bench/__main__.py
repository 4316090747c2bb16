"""`python -m bench [PART ...] [--quick]`: run benchmark parts, write bench/results/*.json, refresh bench/README.md.

Several parts run one after another, each in its own process (clean memory and thread pools), sharing one
time budget: 14 min in all (3 min with --quick); time a part leaves unused goes to the parts after it.
One part alone runs in this process.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from .common import (BUDGET_FULL_S, BUDGET_QUICK_S, PARTS, ROOT, WEIGHTS_FULL, WEIGHTS_QUICK, Budget, PartContext,
                     Result, setup_logging)

logger = logging.getLogger("bench")


def _command(argv: list[str]) -> str:
    py = Path(sys.executable)
    try:
        py_s = str(py.relative_to(ROOT)) if py.is_relative_to(ROOT) else str(py)
    except ValueError:
        py_s = str(py)
    return " ".join([py_s, "-m", "bench", *map(shlex.quote, argv)])


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("parts", nargs="*", metavar="PART",
                   help=f"any of {', '.join(PARTS)} (default: all), or `report` to only rebuild bench/README.md")
    p.add_argument("--quick", action="store_true", help="smaller sizes, no generation: under 3 minutes")
    p.add_argument("--budget-s", type=float, default=None,
                   help="wall-clock budget in seconds for all requested parts (default 840, quick 165)")
    p.add_argument("--no-report", action="store_true", help="do not rebuild bench/README.md")
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="faq: FAQ question counts; retrieval: vector counts (default: the part's own)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="faq: a config override for the measured matcher (YAML value, repeatable), e.g. "
                        "--set 'faq.extra_encoders=[e5-small]'; shown in every figure's label")
    p.add_argument("--tag", default="", help="suffix of the result files (bench/results/PART-TAG.json), to keep a "
                                            "special run (e.g. a long budget) beside the regular one")
    p.add_argument("--command", default=None, help=argparse.SUPPRESS)  # the parent's command, recorded by children
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        args.overrides = dict(_override(o) for o in args.overrides)
    except ValueError as e:
        p.error(str(e))
    bad = [x for x in args.parts if x not in (*PARTS, "report")]
    if bad:
        p.error(f"unknown part(s) {', '.join(bad)}; choose from {', '.join(PARTS)} or report")
    return args


def _override(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set {text!r}: expected KEY=VALUE, e.g. faq.head=none")
    return key.strip(), yaml.safe_load(value)


def run_part(part: str, quick: bool, budget_s: float, command: str, tag: str = "",
             sizes: list[int] | None = None, overrides: dict | None = None) -> bool:
    """Run one part in this process and write its result file; True when it finished without error."""
    res = Result(part, quick, budget_s, command, tag)
    options = {"sizes": sizes} if sizes else {}
    if overrides:
        options["overrides"] = overrides
    ctx = PartContext(quick=quick, budget=Budget(budget_s), result=res, options=options)
    mod = importlib.import_module(f"bench.{part}")
    logger.info("part %s%s: budget %.0f s", part, " (quick)" if quick else "", budget_s)
    try:
        mod.run(ctx)
    except Exception as e:  # recorded in the result file; the other parts still run
        logger.error("part %s failed:\n%s", part, traceback.format_exc())
        res.write(status="error", error=f"{type(e).__name__}: {e}")
        return False
    path = res.write()
    logger.info("part %s done in %.0f s -> %s", part, ctx.budget.elapsed(), path.relative_to(ROOT))
    return True


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(argv)
    setup_logging()
    command = args.command or _command(argv)
    parts = [p for p in args.parts if p != "report"] or ([] if "report" in args.parts else list(PARTS))
    weights = WEIGHTS_QUICK if args.quick else WEIGHTS_FULL
    total = args.budget_s if args.budget_s is not None else (BUDGET_QUICK_S if args.quick else BUDGET_FULL_S)
    if len(parts) == 1 and args.budget_s is None and not args.child:
        total = total * weights[parts[0]] / sum(weights.values()) if weights[parts[0]] else total * 0.2
    ok = True
    if args.sizes and len(parts) != 1:
        logger.error("--sizes applies to one part at a time (faq or retrieval)")
        return 2
    if args.overrides and parts != ["faq"]:
        logger.error("--set applies to the faq part alone (python -m bench faq --set KEY=VALUE)")
        return 2
    if len(parts) == 1 or args.child:
        for part in parts:
            ok &= run_part(part, args.quick, total, command, args.tag, args.sizes, args.overrides)
    else:
        ok = _run_children(parts, args.quick, total, weights, command, args.tag)
    if not args.no_report and not args.child:
        from .report import write_report

        path = write_report()
        logger.info("refreshed %s", path.relative_to(ROOT))
    return 0 if ok else 1


def _run_children(parts: list[str], quick: bool, total: float, weights: dict[str, float], command: str,
                  tag: str = "") -> bool:
    """Each part in a child process with its share of what is left; a child past its share + grace is stopped."""
    t0 = time.perf_counter()
    ok = True
    for i, part in enumerate(parts):
        left = total - (time.perf_counter() - t0)
        rest = sum(weights[p] for p in parts[i:]) or 1.0
        share = left * weights[part] / rest
        if weights[part] == 0:
            share = 0.0
        if share < 5 and weights[part] > 0:
            logger.warning("part %s: no time left in the budget; skipped", part)
            res = Result(part, quick, share, command, tag)
            res.note("skipped: the run's time budget was used up by the parts before it")
            res.write(status="skipped")
            continue
        cmd = [sys.executable, "-m", "bench", part, "--budget-s", f"{share:.1f}", "--no-report", "--child",
               "--command", command] + (["--quick"] if quick else []) + (["--tag", tag] if tag else [])
        grace = 25 + 0.1 * share
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=share + grace)
        except subprocess.TimeoutExpired:
            logger.error("part %s overran its budget (%.0f s + %.0f s grace): stopped", part, share, grace)
            os.killpg(proc.pid, signal.SIGTERM)  # the child's own process group (it started its own session)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            res = Result(part, quick, share, command, tag)
            res.write(status="error", error=f"stopped after {share + grace:.0f} s (over budget)")
            rc = 1
        ok &= rc == 0
    return ok


if __name__ == "__main__":
    sys.exit(main())
