"""The FastAPI app: routes, JSON errors, the upload byte limit, Prometheus metrics, the web page.

``create_app(store_dir_or_landmarks, settings)`` loads the model and the store once. Every error is
``{"error": "...", "status": N}``; bad input is a 4xx that says what is wrong and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..api import Landmarks
from ..index import StoreError
from .engine import Service
from .errors import ServiceError
from .settings import ServiceSettings
from .uploads import check_id

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"
FORM_SLACK = 64 * 1024  # multipart framing and small fields on top of the photo itself
T = TypeVar("T")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # what the store's SQLite integers hold


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


class Metrics:
    """Prometheus metrics of one app (own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "landmark_http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "landmark_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.images = Gauge("landmark_index_images", "Photos in the served store", registry=self.registry)
        self.landmarks = Gauge(
            "landmark_index_landmarks", "Named landmarks in the served store", registry=self.registry
        )
        self.generation = Gauge(
            "landmark_index_generation", "Committed generation being served", registry=self.registry
        )
        self.inflight = Gauge(
            "landmark_inference_in_flight", "Photos being decoded/embedded or waiting for it", registry=self.registry
        )
        self.writes = Counter("landmark_store_writes_total", "Committed writes", ["op"], registry=self.registry)


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (not the raw path: bounded labels)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or ("/static" if scope["path"].startswith("/static/") else "unmatched")
            self.metrics.requests.labels(scope["method"], name, str(status[0])).inc()
            self.metrics.latency.labels(scope["method"], name).observe(time.perf_counter() - start)


class BodyLimitMiddleware:
    """Refuse request bodies over the limit with 413 before the form parser sees them.

    The body (at most ``max_bytes``) is read here and replayed to the app, so a chunked upload
    without Content-Length is bounded too.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._refuse(scope, receive, send, int(length))
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            total += len(body)
            if total > self.max_bytes:
                return await self._refuse(scope, receive, send, total)
            chunks.append(body)
            if not message.get("more_body"):
                break
        data, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": data, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope, receive, send, size: int):
        resp = error(
            413,
            f"request body of {'at least ' if size else ''}{size:,} bytes is over the upload limit "
            f"of {self.max_bytes - FORM_SLACK:,} bytes per photo",
        )
        await resp(scope, receive, send)


def create_app(
    store: str | Path | Landmarks, settings: ServiceSettings | None = None, *, device: str | None = None
) -> FastAPI:
    """The service over a store directory (the model is loaded here, once) or an open ``Landmarks``."""
    settings = settings or ServiceSettings()
    lm = store if isinstance(store, Landmarks) else Landmarks.open(store, device=device)
    service = Service(lm, settings)
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        service.close()

    # /docs and /redoc with Swagger UI / ReDoc served from the package, not a CDN (works offline)
    app = FastAPIOffline(
        title="landmark",
        version=__version__,
        lifespan=lifespan,
        description="Recognise landmarks in photos and search a store of photos. Errors are "
        '`{"error": ..., "status": ...}`; uploads are multipart field `photo`.',
    )
    app.state.service, app.state.metrics, app.state.settings = service, metrics, settings

    async def run(pool, fn: Callable[..., T], *args, **kwargs) -> T:
        return await asyncio.get_running_loop().run_in_executor(pool, partial(fn, *args, **kwargs))

    async def infer(fn: Callable[..., T], *args, **kwargs) -> T:
        metrics.inflight.inc()
        try:
            return await run(service.infer_pool, fn, *args, **kwargs)
        finally:
            metrics.inflight.dec()

    async def read_photo(photo: UploadFile) -> bytes:
        data = await photo.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise ServiceError(
                413, f"{photo.filename or 'upload'}: over the upload limit of {settings.max_upload_bytes:,} bytes"
            )
        return data

    # -- errors ----------------------------------------------------------------------------------
    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError):
        return error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
        return error(exc.status_code, message)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            where = ".".join(str(x) for x in e.get("loc", ()) if x not in ("body", "query", "path"))
            if e.get("type") == "missing" and where == "photo":
                parts.append("missing the photo: send it as multipart/form-data field 'photo'")
            else:
                parts.append(f"{where or 'request'}: {e.get('msg')}")
        return error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("%s %s failed", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the store is unchanged unless a write was committed")

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError):
        return error(409, f"the store refused the change: {exc}")

    # -- page, health, metrics -----------------------------------------------------------------
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/health", summary="Liveness and what is served")
    async def health() -> dict[str, Any]:
        return await run(service.io_pool, service.health)

    @app.get("/metrics", summary="Prometheus metrics: requests, latencies, index size")
    async def metrics_endpoint():
        h = await run(service.io_pool, service.health)
        metrics.images.set(h["images"])
        metrics.landmarks.set(h["landmarks"])
        metrics.generation.set(h["generation"])
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # -- recognition and search ------------------------------------------------------------------
    @app.post("/recognize", summary="Recognise the landmark in an uploaded photo")
    async def recognize(
        photo: UploadFile = File(..., description="The photo (JPEG, PNG, WebP, ...)"),
    ) -> dict[str, Any]:
        data = await read_photo(photo)
        return await infer(service.recognize, data, photo.filename)

    @app.post("/search", summary="The stored photos most similar to an uploaded photo")
    async def search(
        photo: UploadFile = File(...),
        k: int | None = Query(None, description="results (default from settings)"),
        expand: bool | None = Query(
            None,
            description="DBA + alpha-QE (default: as the store is configured); "
            "scores are then similarities to the augmented photos",
        ),
    ) -> dict[str, Any]:
        k = settings.default_k if k is None else k
        if not 1 <= k <= settings.max_k:
            raise ServiceError(422, f"k must be between 1 and {settings.max_k}, got {k}")
        data = await read_photo(photo)
        return await infer(service.search, data, k, photo.filename, expand=expand)

    # -- browsing ------------------------------------------------------------------------------
    @app.get("/landmarks", summary="Landmarks in the store with photo counts (landmark_id null = unlabelled)")
    async def landmarks() -> dict[str, Any]:
        return {"landmarks": await run(service.io_pool, service.landmarks)}

    @app.get("/images", summary="A page of stored photos, optionally of one landmark")
    async def list_images(
        landmark_id: int | None = Query(None, ge=INT64_MIN, le=INT64_MAX),
        unlabelled: bool = False,
        offset: int = Query(0, ge=0, le=INT64_MAX),
        limit: int = Query(60, ge=1, le=500),
    ) -> dict[str, Any]:
        if unlabelled and landmark_id is not None:
            raise ServiceError(422, "give landmark_id or unlabelled=true, not both")
        return await run(service.io_pool, service.list_images, landmark_id, unlabelled, offset, limit)

    @app.get(
        "/images/{image_id:path}/thumbnail",
        summary="JPEG thumbnail of a stored photo",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}},
    )
    async def thumbnail(image_id: str):
        data = await run(service.io_pool, service.thumbnail, image_id)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=300"})

    @app.get("/images/{image_id:path}/photo", summary="The stored photo file", response_class=FileResponse)
    async def photo_file(image_id: str):
        return FileResponse(await run(service.io_pool, service.photo_path, image_id))

    @app.get(
        "/images/{image_id:path}/matches/{other:path}",
        summary="PNG of verified keypoint matches between two stored photos",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def matches(image_id: str, other: str):
        check_id(image_id), check_id(other)
        return Response(await run(service.io_pool, service.evidence, image_id, other), media_type="image/png")

    @app.get(
        "/uploads/{token}/matches/{other:path}",
        summary="PNG of verified keypoint matches: a recognised upload vs a stored photo",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}}},
    )
    async def upload_matches(token: str, other: str):
        check_id(other)
        img = service.upload_image(token)
        return Response(await run(service.io_pool, service.evidence, img, other), media_type="image/png")

    @app.get("/images/{image_id:path}", summary="Metadata of a stored photo")
    async def get_image(image_id: str) -> dict[str, Any]:
        return await run(service.io_pool, service.image_json, image_id)

    # -- writes --------------------------------------------------------------------------------
    @app.post("/images", status_code=201, summary="Add a photo to the store (optionally labelled)")
    async def add_image(
        request: Request,
        photo: UploadFile = File(...),
        landmark_id: str | None = Form(None),
        name: str | None = Form(None),
        id: str | None = Form(None),
    ) -> dict[str, Any]:
        if (await request.form()).get("id") == "":  # which FastAPI's Form reads as absent: no id
            raise ServiceError(
                400,
                "invalid id '' for a new photo: leave the id field out to get a generated id, or use 1-128 "
                "letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
        lab = None
        if landmark_id not in (None, ""):
            try:
                lab = int(landmark_id)
            except ValueError:
                raise ServiceError(422, f"landmark_id must be an integer, got {landmark_id!r}") from None
            if not INT64_MIN <= lab <= INT64_MAX:
                raise ServiceError(422, f"landmark_id must be a 64-bit integer, got {landmark_id}")
        elif (name or "").strip():
            raise ServiceError(422, "a name needs the landmark_id it names")
        data = await read_photo(photo)
        up, vector = await infer(service.prepare_add, data, photo.filename)
        out = await run(
            service.write_pool,
            service.commit_add,
            data,
            up,
            vector,
            image_id=id or None,
            landmark_id=lab,
            name=(name or "").strip() or None,
        )
        metrics.writes.labels("add").inc()
        return out

    @app.delete("/images/{image_id:path}", summary="Remove a photo from the store")
    async def delete_image(image_id: str) -> dict[str, Any]:
        check_id(image_id)
        out = await run(service.write_pool, service.commit_remove, image_id)
        metrics.writes.labels("remove").inc()
        return out

    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_upload_bytes + FORM_SLACK)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
