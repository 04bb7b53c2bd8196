"""What one request may cost the service: body size, time to send the body, and work (history entries, text).

``BodyLimit`` is ASGI middleware: a ``Content-Length`` over the cap is answered 413 before any byte of the body
is read; a body without one (chunked) is counted as it arrives and refused as soon as it passes the cap; a body
that takes longer than ``body_seconds`` to arrive is answered 408. Those answers close the connection, so a
client cannot go on sending into it. The work cap (``Limits.cap``, counted per task by ``twins.serve.tasks``) is
checked on the parsed JSON, before validation, whose time grows with it.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from fastapi import HTTPException

MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """Per-request bounds; the CLI flag that sets each is named in the answer that refuses a request."""

    max_body_bytes: int = 4 * MIB      # --max-body-mb
    body_seconds: float = 10.0         # --body-timeout: from the end of the headers to the end of the body
    header_seconds: float = 10.0       # --header-timeout: from connect (or the previous answer) to the end of the headers
    max_header_bytes: int = 64 * 1024  # request line + headers
    max_items: int = 100_000           # --max-items: basket items per next-basket request
    max_events: int = 20_000           # --max-events: purchases (outlook), orders + readings (replenishment) per request
    max_texts: int = 128               # --max-texts: messages per emotion request (each read up to the bundle's max_length)
    max_connections: int = 256         # --max-connections: open connections + requests in progress (503 above)

    def cap(self, unit: str) -> tuple[int, str]:
        """The cap for a cost ``unit`` ("items", "events" or "texts") and the flag that sets it."""
        return {"items": (self.max_items, "--max-items"), "events": (self.max_events, "--max-events"),
                "texts": (self.max_texts, "--max-texts")}[unit]


def _mib(n: int) -> str:
    return f"{n / MIB:g} MiB"


class BodyTooSlow(HTTPException):
    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s (--body-timeout); send it at once")


class BodyTooLarge(HTTPException):
    def __init__(self, cap: int) -> None:
        super().__init__(413, f"request body over {_mib(cap)} (--max-body-mb); split the batch into smaller requests")


class BodyLimit:
    """ASGI middleware bounding the size and the arrival time of every request body (see the module docstring).

    A refusal raised while the app reads the body is an ``HTTPException``, answered by the app's handler as JSON;
    one known from the headers alone is answered here, without calling the app."""

    def __init__(self, app, limits: Limits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        cap, seconds = self.limits.max_body_bytes, self.limits.body_seconds
        length = _content_length(scope["headers"])
        if length is not None and length > cap:
            return await _refuse(send, BodyTooLarge(cap))
        deadline = time.monotonic() + seconds
        received = 0

        async def bounded_receive():
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0.0))
            except TimeoutError:
                raise BodyTooSlow(seconds) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    raise BodyTooLarge(cap)
            return message

        async def closing_send(message) -> None:
            if message["type"] == "http.response.start" and message["status"] in (408, 413):
                message["headers"] = [*message.get("headers", []), (b"connection", b"close")]
            await send(message)

        await self.app(scope, bounded_receive, closing_send)


def _content_length(headers) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(send, error: HTTPException) -> None:
    body = json.dumps({"error": f"http_{error.status_code}", "message": error.detail}).encode()
    await send({"type": "http.response.start", "status": error.status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
