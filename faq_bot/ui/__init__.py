"""Gradio UI: thin tabs over the library (chat for customers, admin tabs behind a login)."""

from .app import CSS, build_app

__all__ = ["build_app", "CSS"]
