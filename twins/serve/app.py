"""The FastAPI application: model endpoints per configured bundle, twin look-up, health, readiness, reloads.

Routes: ``POST /v1/models/<name>/<action>`` (see ``twins.serve.tasks``), ``GET /v1/models``,
``GET /v1/twins/<source>/<id>`` and ``POST /v1/twins/<source>`` (a batch of ids), ``GET /health``,
``GET /ready``, and the OpenAPI schema at ``/openapi.json`` (docs at ``/docs``).
"""

import json
import math
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import Body, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

import twins
from twins.serve.auth import BearerAuth
from twins.serve.limits import BodyLimit, Limits
from twins.serve.logs import log_event
from twins.serve.models import ModelSlot, NotLoaded, TwinSource, default_name, public
from twins.serve.tasks import MAX_BATCH, ROUTES, TaskRoute


class TwinIds(BaseModel):
    ids: list[Annotated[str, Field(min_length=1, max_length=256)]] = Field(min_length=1, max_length=MAX_BATCH)


class Service:
    """What the app serves; ``refresh`` reloads every model and twin source whose source moved."""

    def __init__(self, models: Mapping[str, str], twin_sources: Sequence[str], store_root: Path,
                 allow_future: bool = False) -> None:
        self.models = {name: ModelSlot(name, str(uri)) for name, uri in models.items()}
        self.twins = {source: TwinSource(source, store_root) for source in twin_sources}
        self.allow_future = allow_future

    def future_leaks(self) -> list[str]:
        """For each served model fitted on a served source's events at or after its snapshot's as_of, why
        (``twins.provenance.future_leak``): such a model has seen those customers' future."""
        from twins.provenance import future_leak

        leaks = []
        for slot in self.models.values():
            for source, twin_source in self.twins.items():
                if slot.current is not None and twin_source.snapshot is not None:
                    what = f"the twins {twin_source.snapshot.label} served for {source}"
                    leak = future_leak(slot.current[0].manifest, source, twin_source.as_of(), what)
                    leaks += [f"model {slot.name}: {leak}"] if leak else []
        return leaks

    def refresh(self) -> None:
        for slot in [*self.models.values(), *self.twins.values()]:
            try:
                slot.refresh()
            except Exception as error:  # the poller must outlive any one broken source; /ready reports it
                slot.error = f"refresh failed: {type(error).__name__}: {error}"
                log_event("refresh_failed", level="ERROR", slot=slot.name, error=repr(error))

    def poll(self, seconds: float, stop: threading.Event) -> None:
        while not stop.wait(seconds):
            self.refresh()

    def ready(self) -> dict[str, Any]:
        """``ready``: every model and twin source has something to serve. ``degraded``: something is wrong even so
        (a source unreadable, a newer version or snapshot refused), each problem in ``reasons``."""
        models = {name: slot.status() for name, slot in self.models.items()}
        twin_state = {source: t.status() for source, t in self.twins.items()}
        ok = all(m["loaded"] for m in models.values()) and all(t["snapshot"] for t in twin_state.values())
        reasons = [f"model {name}: {m['error']}" for name, m in models.items() if m["error"]]
        reasons += [f"twins {source}: {t['error']}" for source, t in twin_state.items() if t["error"]]
        reasons += [] if self.allow_future else self.future_leaks()
        return {"ready": ok, "degraded": bool(reasons), "reasons": reasons, "models": models, "twins": twin_state}


def create_app(models: Mapping[str, str] | Sequence[str] = (), twin_sources: Sequence[str] = (),
               store_root: str | Path | None = None, poll_seconds: float = 30.0, limits: Limits = Limits(),
               token: str | None = None, allowed_hosts: Sequence[str] = (), allow_future: bool = False) -> FastAPI:
    """An app serving ``models`` (``{name: uri}``, or URIs named after their model or folder) and the latest twin
    snapshots of ``twin_sources`` (store: ``store_root``, default ``$TWINS_HOME/store``).

    Every model is loaded now (a model that cannot be loaded, or whose task has no route, is an error) and its
    task's route added. While the app runs, a thread polls every ``poll_seconds`` (0: never) and reloads what
    moved (``Service.refresh``). Every request is bounded by ``limits``; with a ``token`` every path but
    ``/health`` needs it as a bearer token; with ``allowed_hosts`` other ``Host`` headers are answered 400.
    A model fitted on a served source's events at or after its snapshot's ``as_of`` is refused (``ValueError``)
    unless ``allow_future`` (then a warning); one that becomes so at a reload makes ``/ready`` degraded.
    """
    from twins import paths

    if not isinstance(models, Mapping):
        models = {default_name(uri): uri for uri in models}
    service = Service(models, twin_sources, Path(store_root) if store_root else paths.store_dir(), allow_future)
    service.refresh()
    for slot in service.models.values() if service.twins else ():
        if slot.current is not None and "data_until" not in slot.current[0].manifest:
            warnings.warn(f"model {slot.name!r}: its bundle does not record the data it was fitted on (no data_until); "
                          "the service cannot check that it never saw the served twins' future; re-export it")
    for leak in service.future_leaks():
        if not allow_future:
            raise ValueError(leak)
        warnings.warn(leak)
    for slot in service.models.values():
        if slot.current is None:
            raise ValueError(f"model {slot.name!r}: cannot load {slot.uri}: {slot.error}")
        if slot.task not in ROUTES:
            raise ValueError(f"model {slot.name!r}: task {slot.task!r} has no route; served tasks: {sorted(ROUTES)}")
    if poll_seconds < 0:
        raise ValueError(f"poll_seconds must be >= 0 (0: never), got {poll_seconds}")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        stop = threading.Event()
        if poll_seconds > 0:
            threading.Thread(target=service.poll, args=(poll_seconds, stop), name="twins-poll", daemon=True).start()
        yield
        stop.set()

    app = FastAPI(title="twins", version=twins.__version__, lifespan=lifespan,
                  description="Scores customers with the configured twins bundles; every request is a batch.")
    app.state.service = service
    app.add_middleware(BodyLimit, limits=limits)          # innermost: runs last, after the checks below
    if token:
        app.add_middleware(BearerAuth, token=token)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.add_middleware(RequestLog)                         # outermost: logs every answer, refusals included
    _add_handlers(app)
    for slot in service.models.values():
        _add_model_route(app, slot, ROUTES[slot.task], limits)
    _add_service_routes(app, service)
    return app


def _body_in_thread(model: type[BaseModel], check: Callable[[dict], None]) -> type[APIRoute]:
    """A route class whose endpoint gets its JSON body parsed, ``check``ed, validated as ``model`` and answered in
    a worker thread.

    FastAPI parses and validates a body on the event loop, even for a ``def`` endpoint: an 8 MiB batch of
    purchases held it for 0.7 s, during which no other request (``/health`` included) was answered. Here the loop
    only receives the bytes (bounded by ``BodyLimit``). The thread still holds the GIL while ``json.loads`` and
    pydantic run, which is why ``check`` (the work cap) refuses a large batch before validation, the slower part.
    The endpoint's ``body`` annotation still documents the schema in OpenAPI, and errors are the
    ``RequestValidationError`` FastAPI would raise."""

    class BodyInThread(APIRoute):
        def get_route_handler(self):
            endpoint = self.endpoint

            async def handle(request: Request) -> Response:
                raw = await request.body()
                kind = request.headers.get("content-type", "")
                return await run_in_threadpool(lambda: endpoint(_parse_body(model, raw, kind, check), request))

            return handle

    return BodyInThread


def _parse_body(model: type[BaseModel], raw: bytes, content_type: str, check: Callable[[dict], None]) -> BaseModel:
    def invalid(kind: str, message: str) -> RequestValidationError:
        return RequestValidationError([{"type": kind, "loc": ("body",), "msg": message, "input": None}])

    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise invalid("content_type", f"send JSON with Content-Type: application/json (got {media or 'none'!r})")
    if not raw:
        raise invalid("missing", "Field required")
    try:
        data = json.loads(raw)
    except RecursionError:
        raise invalid("json_invalid", "JSON nested too deeply") from None
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8/16/32
        raise invalid("json_invalid", f"JSON decode error: {error}") from None
    if isinstance(data, dict):
        check(data)
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in error.errors(include_url=False)]) from None


def _add_model_route(app: FastAPI, slot: ModelSlot, route: TaskRoute, limits: Limits) -> None:
    cap, flag = limits.cap(route.unit)

    def check(data: dict) -> None:
        cost = route.cost(data)
        if cost > cap:
            raise HTTPException(413, f"model {slot.name!r}: the request holds {cost:,} {route.unit}, over the cap of "
                                     f"{cap:,} per request ({flag}); split the batch")

    def endpoint(body: Annotated[route.request, Body()], request: Request) -> Response:
        bundle, version = slot.get()
        request.state.log = {"model": slot.name, "version": version}
        try:
            results = route.handler(bundle, body)
        except (ValueError, TypeError, OverflowError) as error:
            raise HTTPException(422, f"model {slot.name!r}: {public(str(error))}") from None
        request.state.log["batch"] = len(results)
        answer = route.response(model=slot.name, version=version, results=results)
        return Response(answer.model_dump_json(), media_type="application/json")

    app.router.add_api_route(f"/v1/models/{slot.name}/{route.action}", endpoint, methods=["POST"],
                             response_model=route.response, summary=f"{route.summary} ({slot.name})",
                             operation_id=f"{route.action}_{slot.name}", tags=["models"],
                             route_class_override=_body_in_thread(route.request, check),
                             responses={413: {"description": f"body over the size cap, or more {route.unit} than {flag}"},
                                        422: {"description": "invalid request, explained in 'message'"},
                                        503: {"description": "model not loaded"}})


def _add_service_routes(app: FastAPI, service: Service) -> None:
    @app.get("/health", tags=["service"], summary="The process is up")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready", tags=["service"], summary="Every configured model and twin source is loaded (else 503)")
    def ready() -> JSONResponse:
        state = service.ready()
        return JSONResponse(state, status_code=200 if state["ready"] else 503)

    @app.get("/v1/models", tags=["models"], summary="Configured models: task, version served, refused versions")
    def list_models() -> list[dict[str, Any]]:
        return [slot.status() for slot in service.models.values()]

    if not service.twins:
        return
    from enum import Enum

    Source = Enum("Source", {s: s for s in service.twins}, type=str)

    @app.get("/v1/twins/{source}/{twin_id}", tags=["twins"], summary="One customer twin by id (404 if absent)")
    def get_twin(source: Source, twin_id: Annotated[str, PathParam(max_length=256)]) -> dict[str, Any]:
        from twins.twin.store import TwinNotFound

        snap = service.twins[source.value].get()
        try:
            return {"source": source.value, "snapshot": snap.label, "twin": _plain(snap.get(twin_id))}
        except TwinNotFound:
            raise HTTPException(404, f"no twin {twin_id!r} in snapshot {snap.label} of {source.value!r}") from None

    @app.post("/v1/twins/{source}", tags=["twins"], summary="A batch of twins by id; absent ids are listed in 'missing'")
    def get_twins(source: Source, body: TwinIds) -> dict[str, Any]:
        from twins.twin.store import TwinNotFound

        snap = service.twins[source.value].get()
        found, missing = [], []
        for twin_id in body.ids:
            try:
                found.append(_plain(snap.get(twin_id)))
            except TwinNotFound:
                missing.append(twin_id)
        return {"source": source.value, "snapshot": snap.label, "twins": found, "missing": missing}


class RequestLog:
    """ASGI middleware: one JSON log line per request (method, path, status, ms, request id, and the model,
    version and batch size an endpoint puts in ``request.state.log``); echoes or sets ``x-request-id``."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        request_id = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = 500

        async def send_with_id(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode("latin-1"))]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            client = scope.get("client")
            log_event("request", method=scope["method"], path=scope["path"], status=status,
                      ms=round((time.perf_counter() - start) * 1000, 3), request_id=request_id,
                      client=client[0] if client else None, **state.get("log", {}))


def _add_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def explain(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        message = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        return JSONResponse({"error": "invalid_request", "message": message + more, "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        error = {404: "not_found", 422: "invalid_request"}.get(exc.status_code, f"http_{exc.status_code}")
        message = exc.detail
        if exc.status_code == 404 and exc.detail == "Not Found":  # no route: say what there is
            message = _no_route(request.app.state.service, request.url.path)
        return JSONResponse({"error": error, "message": message}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        """A bug, not a bad request: JSON like every other answer with the request id only (the message may hold
        paths or data); the message and traceback go to the log under that id."""
        request_id = getattr(request.state, "request_id", None)
        log_event("internal_error", level="ERROR", path=request.url.path, request_id=request_id,
                  error=f"{type(exc).__name__}: {exc}", traceback="".join(traceback.format_exception(exc)))
        # sent from outside the middlewares (Starlette's ServerErrorMiddleware), so the request id header is set here
        return JSONResponse({"error": "internal", "request_id": request_id}, status_code=500,
                            headers={"x-request-id": request_id} if request_id else None)

    @app.exception_handler(NotLoaded)
    async def not_loaded(request: Request, exc: NotLoaded) -> JSONResponse:
        return JSONResponse({"error": "unavailable", "message": str(exc)}, status_code=503)


def _no_route(service: Service, path: str) -> str:
    """A 404's message for a path no route has: the model or task asked for, and what the service has."""
    routes = {name: ROUTES[slot.task].action for name, slot in service.models.items() if slot.task in ROUTES}
    served = ", ".join(f"POST /v1/models/{name}/{action}" for name, action in routes.items()) or "none"
    parts = path.strip("/").split("/")
    if parts[:2] == ["v1", "models"] and len(parts) > 2:
        name = parts[2][:64]
        if name in routes:
            return (f"model {name!r} answers {routes[name]!r} only (task {service.models[name].task}): "
                    f"POST /v1/models/{name}/{routes[name]}")
        return f"no model {name!r} is served; models: {served}"
    if parts[:2] == ["v1", "twins"] and len(parts) > 2:
        return f"no twins of {parts[2][:64]!r} are served; sources: {', '.join(service.twins) or 'none'}"
    return (f"no route {path[:200]!r}; this service has: {served}; GET/POST /v1/twins/<source> for "
            f"{', '.join(service.twins) or 'no source'}; GET /v1/models, /health, /ready, /docs")


def _where(loc: Sequence) -> str:
    """``("body", "histories", 0, 1)`` -> ``histories[0][1]``."""
    text = ""
    for part in loc[1:] if loc and loc[0] in ("body", "path", "query") else loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "body"


def _plain(value: Any) -> Any:
    """A twin's value as JSON: datetimes in ISO 8601, NaN and infinities as null, structs and lists recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
