"""The HTTP server under ``twins serve``: uvicorn with bounds on connections, header size and header time.

uvicorn bounds the time a connection may sit idle between requests (``timeout_keep_alive``) but not the time a
client may take to send a request's headers, nor (with httptools) their size: a client trickling one header byte
a second would hold its connection for ever. ``protocol`` adds both to the HTTP protocol uvicorn would pick; the
body's size and arrival time are bounded by ``twins.serve.limits.BodyLimit``.
"""

from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from twins.serve.limits import Limits
from twins.serve.logs import log_event


def protocol(limits: Limits) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol, closing a connection whose request line and headers take longer than
    ``limits.header_seconds`` (counted from the connection or the previous answer) or pass ``limits.max_header_bytes``."""

    class BoundedHeaders(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._header_bytes = 0
            self._header_timer = self.loop.call_later(limits.header_seconds, self._header_timeout)

        def _waiting_for_headers(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def data_received(self, data: bytes) -> None:
            waiting = self._waiting_for_headers()
            super().data_received(data)
            if not waiting or not self._waiting_for_headers():  # a body, or headers completed in this chunk
                self._header_bytes = 0
                return
            self._header_bytes += len(data)
            if self._header_bytes > limits.max_header_bytes and not self.transport.is_closing():
                self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n"
                                     b"connection: close\r\n\r\n")
                self.transport.close()

        def _header_timeout(self) -> None:
            if self._waiting_for_headers() and not self.transport.is_closing():
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._header_timer.cancel()
            self._header_timer = self.loop.call_later(limits.header_seconds, self._header_timeout)

        def connection_lost(self, exc) -> None:
            self._header_timer.cancel()
            super().connection_lost(exc)

    return BoundedHeaders


def config(app, host: str = "127.0.0.1", port: int = 8000, limits: Limits = Limits(), proxy_headers: bool = False,
           forwarded_allow_ips: str | None = None) -> uvicorn.Config:
    """uvicorn's configuration for ``app``: ``limits`` on connections and headers, JSON logs left to the app
    (no access log), no WebSocket, the ``X-Forwarded-*`` headers trusted only with ``proxy_headers`` and only from
    ``forwarded_allow_ips``."""
    return uvicorn.Config(app, host=host, port=port, http=protocol(limits), ws="none", access_log=False, log_level="warning",
                          limit_concurrency=limits.max_connections, timeout_keep_alive=5, timeout_graceful_shutdown=10,
                          h11_max_incomplete_event_size=limits.max_header_bytes, server_header=False,
                          proxy_headers=proxy_headers, forwarded_allow_ips=forwarded_allow_ips)


class Server(uvicorn.Server):
    """uvicorn's server that prints ``listening on http://HOST:PORT`` (standard output) and logs it, once bound."""

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        if not self.started:  # the port could not be bound: uvicorn has said why
            return
        host, port = self.config.host, self.config.port
        for server in getattr(self, "servers", []):
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                break
        shown = f"[{host}]" if ":" in str(host) else host
        print(f"twins serve: listening on http://{shown}:{port} (ready: /ready, API docs: /docs; Ctrl-C to stop)",
              flush=True)
        log_event("listening", url=f"http://{shown}:{port}")
