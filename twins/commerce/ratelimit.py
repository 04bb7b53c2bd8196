"""Limits per agent: a token bucket per caller, as ASGI middleware.

The caller is the agent profile it declares (UCP's ``UCP-Agent: profile="<uri>"`` header), else its bearer token
(hashed, never kept), else its address. Each has ``burst`` requests at once and ``rate`` more a second; above
that it is answered 429 with ``Retry-After``. ``/health`` is never limited. At most ``max_agents`` buckets are
kept (the least recently seen are dropped; a dropped caller starts again with a full bucket).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections import OrderedDict

_PROFILE = re.compile(r'profile\s*=\s*"?([^",;\s]+)"?')


def agent_profile(headers: dict[str, str]) -> str | None:
    """The profile URI of a ``UCP-Agent`` header (``headers`` keyed in lower case), or None."""
    found = _PROFILE.search(headers.get("ucp-agent", ""))
    return found.group(1)[:1000] if found else None


def caller_key(scope) -> str:
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    profile = agent_profile(headers)
    if profile:
        return "agent:" + profile
    auth = headers.get("authorization")
    if auth:
        return "bearer:" + hashlib.sha256(auth.encode()).hexdigest()[:24]
    client = scope.get("client")
    return "address:" + (client[0] if client else "unknown")


class Buckets:
    """Token buckets by key; ``take`` returns 0 when a request may go, else the seconds until one may."""

    def __init__(self, rate: float, burst: int, max_agents: int = 100_000) -> None:
        self.rate, self.burst, self.max_agents = rate, burst, max_agents
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, then = self._state.pop(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - then) * self.rate)
            wait = 0.0 if tokens >= 1 else (1 - tokens) / self.rate
            self._state[key] = (tokens - 1 if wait == 0 else tokens, now)
            while len(self._state) > self.max_agents:
                self._state.popitem(last=False)
        return wait


class AgentRateLimit:
    """ASGI middleware answering 429 to a caller over its bucket (see the module docstring)."""

    def __init__(self, app, buckets: Buckets) -> None:
        self.app, self.buckets = app, buckets

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        wait = self.buckets.take(caller_key(scope))
        if wait == 0:
            return await self.app(scope, receive, send)
        body = json.dumps({"error": "rate_limited", "message": (
            f"over {self.buckets.rate:g} requests/s (burst {self.buckets.burst}) for this agent (--agent-rate, "
            f"--agent-burst); retry after {wait:.2f} s")}).encode()
        await send({"type": "http.response.start", "status": 429,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(max(1, math.ceil(wait))).encode())]})
        await send({"type": "http.response.body", "body": body})
