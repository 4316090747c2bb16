"""Launch FAQ Bot (web UI + API): python app.py [--config FILE] [--host HOST] [--port PORT]."""

import argparse

from faq_bot.api import serve
from faq_bot.config import load_config

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Run FAQ Bot: chat UI at /, API under /api and /v1.")
    parser.add_argument("--config", default=None, help="YAML config (default: configs/default.yaml)")
    parser.add_argument("--host", default=None, help="bind address (default: app.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="port (default: app.port, 7860)")
    args = parser.parse_args()
    serve(load_config(args.config), host=args.host, port=args.port)
