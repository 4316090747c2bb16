"""Admin Training tab: builds data and trains LoRA adapters (filled by the training module)."""

from __future__ import annotations

import gradio as gr

from ..config import AppConfig
from .guard import AdminContext

__all__ = ["build_tab"]


def build_tab(pipeline, cfg: AppConfig, admin: AdminContext | None = None) -> None:
    """Build the tab's components inside the current `gr.Tab`.

    Handlers added here must take `admin.token` as an input and call `admin.require(token)` first.
    """
    gr.Markdown("### Training\nBuilding training data from the knowledge base and feedback, LoRA training runs "
                "and the adapter registry will appear here; this tab is filled by the training module "
                "(`training/`). Meanwhile: `python -m faq_bot train`.", elem_id="training-placeholder")
