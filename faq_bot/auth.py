"""Admin sessions (hashed password, expiring random tokens, per-client lock-out) and a per-client rate limiter."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Mapping

from .config import AppConfig, admin_password

logger = logging.getLogger(__name__)

__all__ = ["Auth", "LoginResult", "RateLimiter", "ADMIN_HELP"]

ADMIN_HELP = "Admin is off: set the environment variable FAQ_BOT_ADMIN_PASSWORD (or `app.admin_password`) and restart."

_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_MAX_TRACKED = 10_000  # clients remembered by the limiters before idle ones are pruned


class RateLimiter:
    """Sliding one-minute window per client key: at most `per_min` events in any 60 s."""

    def __init__(self, per_min: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        if per_min <= 0:
            raise ValueError(f"`app.rate_limit_per_min` must be > 0, got {per_min}.")
        self.per_min = per_min
        self.window_s = window_s
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> float:
        """Count one event for `key`. Returns 0 when allowed, else the seconds until the next one is allowed."""
        now = self._clock()
        with self._lock:
            q = self._hits.setdefault(key, deque())
            while q and q[0] <= now - self.window_s:
                q.popleft()
            if len(q) >= self.per_min:
                return max(0.001, q[0] + self.window_s - now)
            q.append(now)
            if len(self._hits) > _MAX_TRACKED:
                self._prune(now)
            return 0.0

    def _prune(self, now: float) -> None:
        for k in [k for k, q in self._hits.items() if not q or q[-1] <= now - self.window_s]:
            del self._hits[k]


@dataclass
class LoginResult:
    ok: bool
    token: str = ""
    message: str = ""
    retry_after_s: float = 0.0  # > 0 when the client is locked out


class Auth:
    """Admin login for one configured password; sessions live in memory (one app process).

    The password is kept only as a salted scrypt hash; comparisons are constant-time. After
    `app.max_login_failures` wrong passwords from one client, that client is locked out for `app.lockout_s`.
    """

    def __init__(self, cfg: AppConfig, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        a = cfg.app
        self.session_ttl_s = a.session_ttl_s
        self.max_failures = a.max_login_failures
        self.lockout_s = a.lockout_s
        self._clock = clock
        self.limiter = RateLimiter(a.rate_limit_per_min, clock=clock)
        password = admin_password(cfg, environ)
        self._salt = os.urandom(16)
        self._hash = _hash(password, self._salt) if password else None
        self._sessions: dict[str, float] = {}
        self._failures: dict[str, tuple[int, float]] = {}  # client -> (failures, locked until)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self._hash is not None

    def login(self, password: str, client: str = "") -> LoginResult:
        """Check a password; on success open a session and return its token."""
        if not self.enabled:
            return LoginResult(False, message=ADMIN_HELP)
        now = self._clock()
        with self._lock:
            until = self._failures.get(client, (0, 0.0))[1]
        if until > now:
            wait = until - now
            return LoginResult(False, message=f"Too many failed logins; try again in {wait:.0f} s.",
                               retry_after_s=wait)
        ok = hmac.compare_digest(_hash(password or "", self._salt), self._hash)
        with self._lock:
            if not ok:
                fails = self._failures.get(client, (0, 0.0))[0] + 1  # re-read: parallel attempts all count
                locked = now + self.lockout_s if fails >= self.max_failures else 0.0
                self._failures[client] = (0 if locked else fails, locked)
                if len(self._failures) > _MAX_TRACKED:
                    self._failures = {k: v for k, v in self._failures.items() if v[1] > now}
                if locked:
                    logger.warning("Admin login locked for %s after %d failures", client or "?", fails)
                    return LoginResult(False, message=f"Too many failed logins; try again in {self.lockout_s} s.",
                                       retry_after_s=float(self.lockout_s))
                return LoginResult(False, message="Wrong password.")
            self._failures.pop(client, None)
            token = secrets.token_urlsafe(32)
            self._sessions[_key(token)] = now + self.session_ttl_s
            self._sessions = {t: exp for t, exp in self._sessions.items() if exp > now}
        logger.info("Admin login from %s", client or "?")
        return LoginResult(True, token=token, message="Logged in.")

    def check(self, token: str | None) -> bool:
        """True when `token` is a live admin session."""
        if not token or not self.enabled:
            return False
        now = self._clock()
        with self._lock:
            exp = self._sessions.get(_key(token))
            if exp is None:
                return False
            if exp <= now:
                del self._sessions[_key(token)]
                return False
        return True

    def logout(self, token: str | None) -> None:
        with self._lock:
            self._sessions.pop(_key(token or ""), None)


def _key(token: str) -> str:
    """Sessions are stored by token digest, so a memory dump or a timing probe of the dict reveals no token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _hash(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, **_SCRYPT)
