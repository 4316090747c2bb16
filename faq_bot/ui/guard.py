"""Server-side admin checks for UI handlers: the session token lives in a gr.State, verified on every call."""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from ..auth import Auth

__all__ = ["AdminContext", "client_of", "SESSION_EXPIRED"]

SESSION_EXPIRED = "Your admin session is missing or has expired: log in again on the Admin tab."


def client_of(request: gr.Request | None) -> str:
    """The client's address, the key for rate limits and login lock-out."""
    client = getattr(request, "client", None) if request is not None else None
    return getattr(client, "host", "") or ""


@dataclass
class AdminContext:
    """What an admin tab needs: the auth service and the session-token state to pass to its handlers.

    Every admin handler takes the token as an input and calls `require(token)` first: hiding components
    is only cosmetic, the events can still be called.
    """

    auth: Auth
    token: gr.State

    def require(self, token: str | None) -> None:
        if not self.auth.check(token):
            raise gr.Error(SESSION_EXPIRED)
