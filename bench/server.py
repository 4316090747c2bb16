"""The app's real HTTP API for the concurrency benchmark: `python -m bench.server --port P --overrides JSON [--rag]`.

Loads the knowledge base the benchmark built (paths in the overrides), warms the pipeline (the generator too
with --rag, before listening), serves `create_app(..., ui=False)` with uvicorn on 127.0.0.1, and exits by
itself after --lifetime-s seconds whatever happens to its parent.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--overrides", required=True, help="JSON object of dotted config overrides")
    p.add_argument("--rag", action="store_true", help="load the generator before listening")
    p.add_argument("--lifetime-s", type=float, default=600.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)

    def _watchdog() -> None:
        time.sleep(args.lifetime_s)
        os._exit(3)  # bounded no matter what: the benchmark never leaves a server behind

    threading.Thread(target=_watchdog, daemon=True, name="bench-server-watchdog").start()

    import uvicorn

    from faq_bot.api import apply_server_threads, create_app
    from faq_bot.config import load_config
    from faq_bot.knowledge import KnowledgeBase
    from faq_bot.pipeline import Pipeline

    cfg = load_config(overrides=json.loads(args.overrides), environ={})
    cfg = apply_server_threads(cfg)  # as `python -m faq_bot serve` does
    pipeline = Pipeline(cfg, KnowledgeBase(cfg))
    pipeline.warm_up(generator=args.rag, background=False)
    app = create_app(pipeline, cfg, ui=False)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
