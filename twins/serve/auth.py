"""Optional bearer-token authentication for ``twins serve``.

With a token set (``$TWINS_SERVE_TOKEN`` or ``--token-file``), every request but ``GET /health`` must send
``Authorization: Bearer <token>``; others are answered 401 with ``WWW-Authenticate: Bearer``. ``/health`` stays
open so that a load balancer can probe the process without the secret; it says nothing but ``ok``.
"""

from __future__ import annotations

import hmac
import json
import os
from pathlib import Path

TOKEN_ENV = "TWINS_SERVE_TOKEN"
OPEN_PATHS = frozenset({"/health"})
MIN_LENGTH = 16


def read_token(token_file: Path | None = None) -> str | None:
    """The service's token: ``token_file``'s content (stripped) if given, else ``$TWINS_SERVE_TOKEN``, else None."""
    if token_file is not None:
        try:
            token, where = token_file.read_text(encoding="utf-8").strip(), str(token_file)
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"--token-file {token_file}: cannot read it ({error})") from None
    else:
        token, where = os.environ.get(TOKEN_ENV, "").strip(), f"${TOKEN_ENV}"
        if not token:
            return None
    if len(token) < MIN_LENGTH or any(c.isspace() or not c.isprintable() for c in token):
        raise ValueError(f"{where}: a token needs at least {MIN_LENGTH} printable characters without spaces; "
                         "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


class BearerAuth:
    """ASGI middleware: 401 unless the request carries the bearer token (compared in constant time)."""

    def __init__(self, app, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = next((value for name, value in scope["headers"] if name == b"authorization"), None)
        if given is not None and hmac.compare_digest(given, self.expected):
            return await self.app(scope, receive, send)
        challenge = b'Bearer realm="twins"' + (b'' if given is None else b', error="invalid_token"')
        message = "send Authorization: Bearer <token>" if given is None else "the bearer token is not valid"
        body = json.dumps({"error": "unauthorized", "message": message}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", challenge)]})
        await send({"type": "http.response.body", "body": body})
