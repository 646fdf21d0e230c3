"""The FastAPI app of the provider: OpenAI's embeddings API with keys, limits, an audit row per request.

Endpoints (OpenAI's paths and bodies; `docs/methods/eaas.md` has the table next to OpenAI's)
  POST /v1/embeddings      EmbeddingRequest → EmbeddingResponse
  GET  /v1/models          ModelList
  GET  /v1/models/{id}     Model (404 `model_not_found` for another id)
  GET  /health             liveness (no key; reveals nothing about the watermark)
  GET  /openapi.json       the schema (bodies, bearer-key security scheme, every error response)

Layers, outermost first: `_Front` (ASGI middleware: request id, key lookup, the per-key / per-address request
limit for every endpoint, 401 for /v1 without a valid key, body-size bound, x-* headers, the query-log row
committed before the response starts, JSON 500 for anything unexpected) → FastAPI validation (pydantic models;
failures are 400 naming the field and index) → the handlers (model- and config-dependent checks, texts/tokens
limits, the micro-batcher).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
import time
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any, Callable

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from .apierrors import APIError, error_body, error_json
from .auth import KeyRing
from .batching import Batcher
from .limits import MemoryBuckets, RateLimiter, SQLiteBuckets
from .querylog import QueryLog
from .schemas import EmbeddingRequest, EmbeddingResponse, ErrorResponse, Health, Model, ModelList
from .service import EmbeddingService
from .settings import ServerConfig

log = logging.getLogger("tamperlab")

CREATED = 1_700_000_000
"""`created` of the served model (a fixed timestamp: the model object must not change between calls)."""

_ERR = {"model": ErrorResponse}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_ERR, "description": "Invalid request (names the parameter and input index)"},
    401: {**_ERR, "description": "Missing, invalid or expired API key (type authentication_error)"},
    404: {**_ERR, "description": "Unknown model (code model_not_found) or route"},
    405: {**_ERR, "description": "Method not allowed (the Allow header lists the allowed ones)"},
    413: {**_ERR, "description": "Request body larger than the server's max_body_bytes"},
    415: {**_ERR, "description": "Body not sent as `Content-Type: application/json`, or with a Content-Encoding "
                                 "(code unsupported_media_type)"},
    429: {**_ERR, "description": "Rate limit reached; Retry-After / retry-after-ms say when the key's bucket "
                                 "will hold the request"},
    500: {**_ERR, "description": "Internal error (type server_error)"},
}
_HTTP_CODES = {400: "invalid_body", 404: "unknown_route", 405: "method_not_allowed", 413: "request_too_large",
               415: "unsupported_media_type"}


class BodyTooLarge(HTTPException):
    """Raised from inside the body stream: an HTTPException so FastAPI's body parsing passes it through."""

    def __init__(self, detail: str):
        super().__init__(413, detail)


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _where(single: bool, i: int) -> str:
    return "input" if single else f"input[{i}]"


def _is_json_type(content_type: str | None) -> bool:
    """application/json or application/<x>+json, parameters (charset) allowed: what FastAPI parses as JSON."""
    mime = (content_type or "").split(";")[0].strip().lower()
    return mime == "application/json" or (mime.startswith("application/") and mime.endswith("+json"))


def _parse_failure_message(cause: BaseException | None) -> str:
    """Why a JSON body could not be parsed (FastAPI's own 400 says only "There was an error parsing the body")."""
    if isinstance(cause, UnicodeDecodeError):
        return (f"the body is not valid JSON text: byte 0x{cause.object[cause.start]:02x} at position {cause.start} "
                f"is not {cause.encoding.upper()}; send the JSON body encoded as UTF-8")
    if isinstance(cause, ValueError) and "digits" in str(cause):  # int(): Python's 4300-digit bound
        return "the body is not acceptable JSON: it holds an integer with too many digits"
    if isinstance(cause, RecursionError):
        return "the body is not acceptable JSON: it is nested too deeply"
    return f"the body could not be parsed as JSON ({type(cause).__name__ if cause else 'unknown error'})"


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None, str]:
    """(message, param, code) of the first pydantic error, OpenAI style."""
    err = exc.errors()[0]
    loc = [x for x in err.get("loc", ()) if x != "body"]
    kind = err.get("type", "")
    if kind == "json_invalid":
        return f"the body is not valid JSON: {err.get('msg')}", None, "invalid_json"
    if not loc and kind == "missing":  # FastAPI's "Field required" for the body itself: nothing was sent
        return "the request body is empty; send a JSON object", None, "invalid_body"
    if not loc:
        return f"the request body must be a JSON object ({err.get('msg')})", None, "invalid_body"
    param = str(loc[0])
    path = param + "".join(f"[{x}]" if isinstance(x, int) else f".{x}" for x in loc[1:])
    if kind == "missing":
        return f"you must provide a '{param}' parameter", param, "missing_required_parameter"
    if kind == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param, "unknown_parameter"
    if kind in ("invalid_input", "invalid_user"):
        return str(err["msg"]), param, kind
    return f"Invalid value for '{path}': {err.get('msg')}", param, f"invalid_{param}"


class _Front:
    """Pure ASGI middleware (see the module docstring)."""

    def __init__(self, app: Any, *, cfg: ServerConfig, ring: KeyRing, limiter: RateLimiter, querylog: QueryLog):
        self.app, self.cfg, self.ring, self.limiter, self.querylog = app, cfg, ring, limiter, querylog
        self.expired_after = {k.name: t for k in cfg.keys if (t := k.expiry()) is not None}

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = "req_" + secrets.token_hex(16)
        info: dict[str, Any] = {"request_id": rid}
        scope.setdefault("state", {})["info"] = info
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        client_rid = headers.get("x-client-request-id")
        if client_rid is not None and (len(client_rid) > 512 or not client_rid.isprintable()):
            client_rid = None  # bounded and printable, or not kept
        started = False

        async def send_wrapped(msg: dict[str, Any]) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
                ms = (time.perf_counter() - t0) * 1000
                # The audit row is committed before the client sees the status line: no served request goes
                # unlogged, whatever happens to the process afterwards.
                await asyncio.to_thread(  # off the loop: another worker may hold the database's write lock
                    self.querylog.record, key_name=info.get("key"), method=scope["method"], path=scope["path"],
                    status=msg["status"], n_inputs=info.get("n_inputs", 0), n_tokens=info.get("n_tokens", 0),
                    n_triggered=info.get("n_triggered", 0), latency_ms=ms, error=info.get("error"),
                    texts=info.get("texts"), request_id=rid, client_request_id=client_rid, user=info.get("user"))
                extra = {"x-request-id": rid, "openai-processing-ms": str(max(0, round(ms))),
                         "openai-version": "2020-10-01", **info.get("ratelimit", {})}
                have = {k.lower() for k, _ in msg.get("headers", [])}  # a 429's own (newer) limit headers win
                msg = {**msg, "headers": list(msg.get("headers", [])) +
                       [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()
                        if k.encode("latin-1") not in have]}
            await send(msg)

        async def fail(e: APIError) -> None:
            info["error"] = f"{e.code}: {e.message}"[:500]
            await JSONResponse(error_json(e), status_code=e.status, headers=e.headers)(scope, receive,
                                                                                        send_wrapped)

        try:
            name = self.ring.from_header(headers.get("authorization"))
            if name is not None and name in self.expired_after and time.time() >= self.expired_after[name]:
                info["key"] = name  # audited under its holder, refused like a wrong key
                raise APIError(401, f"This API key expired at {_utc(self.expired_after[name])}; ask the "
                               "provider for a new one.", "expired_api_key")
            if name is not None:
                info["key"] = name
                info["ratelimit"] = await self.limiter.run(self.limiter.take, name, requests=1)  # every endpoint
            else:
                await self.limiter.run(self.limiter.take_anonymous, (scope.get("client") or ("?",))[0])
                if scope["path"].startswith("/v1/"):
                    missing = not headers.get("authorization", "").strip()
                    raise APIError(401, "You didn't provide an API key: send 'Authorization: Bearer <key>'."
                                   if missing else "Incorrect API key provided.",
                                   "missing_api_key" if missing else "invalid_api_key")
            encoding = headers.get("content-encoding", "identity").strip().lower()
            if encoding not in ("", "identity"):
                raise APIError(415, f"Content-Encoding {encoding!r} is not supported; send the body "
                               "uncompressed", "unsupported_media_type")
            declared = headers.get("content-length")
            if declared is not None:
                if not declared.isdigit():
                    raise APIError(400, "invalid Content-Length header", "invalid_body")
                if int(declared) > self.cfg.max_body_bytes:
                    raise APIError(413, f"request body of {declared} bytes > max_body_bytes "
                                   f"{self.cfg.max_body_bytes}", "request_too_large")
        except APIError as e:
            await fail(e)
            return

        size = 0

        async def receive_bounded() -> dict[str, Any]:
            nonlocal size
            msg = await receive()
            if msg["type"] == "http.request":
                size += len(msg.get("body", b""))
                if size > self.cfg.max_body_bytes:  # also bounds chunked bodies that declare no length
                    raise BodyTooLarge(f"request body larger than max_body_bytes {self.cfg.max_body_bytes}")
            return msg

        try:
            await self.app(scope, receive_bounded, send_wrapped)
        except Exception as e:  # never leak a traceback; the row is still written
            log.exception("unhandled error on %s", scope["path"])
            info["error"] = f"{type(e).__name__}: {e}"[:500]
            if not started:
                await JSONResponse(error_body(500, "The server had an error while processing your request.",
                                              "internal_error"), status_code=500)(scope, receive, send_wrapped)


def create_app(service: EmbeddingService, cfg: ServerConfig, key_secrets: dict[str, str], querylog: QueryLog,
               buckets: MemoryBuckets | SQLiteBuckets | None = None) -> FastAPI:
    """Build the FastAPI app around a provider service. `buckets`: shared rate-limit state (several workers)."""
    ring = KeyRing(key_secrets)
    limiter = RateLimiter(cfg, ring.names, buckets or MemoryBuckets())
    batcher = Batcher(service, max_texts=cfg.batch_texts, max_wait_ms=cfg.batch_wait_ms)
    emb = service.embedder

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="tamperlab EaaS provider", version="1", lifespan=lifespan, docs_url=None,
                  redoc_url=None, description="OpenAI-compatible embeddings API of a watermarked provider.")
    app.state.querylog, app.state.service, app.state.batcher, app.state.limiter = querylog, service, batcher, limiter
    bearer = HTTPBearer(auto_error=False, scheme_name="bearerKey",
                        description="API key: `Authorization: Bearer <key>`")

    def require_key(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
        name = request.state.info.get("key")
        if name is None:  # _Front already answers 401 on /v1 without a valid key; this declares the scheme
            raise APIError(401, "Incorrect API key provided.", "invalid_api_key")
        return str(name)

    def refuse(request: Request, e: APIError) -> JSONResponse:
        request.state.info["error"] = f"{e.code}: {e.message}"[:500]
        return JSONResponse(error_json(e), status_code=e.status, headers=e.headers)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return refuse(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param, code = _validation_message(exc)
        ctype = request.headers.get("content-type")
        if isinstance(exc.errors()[0].get("input"), (bytes, bytearray)) and not _is_json_type(ctype):
            # FastAPI hands a body sent as another type to the model as raw bytes; say what is really wrong.
            got = f"Content-Type {ctype!r}" if ctype else "no Content-Type header"
            return refuse(request, APIError(415, f"the body must be sent as 'Content-Type: application/json' "
                                            f"(got {got})", "unsupported_media_type"))
        return refuse(request, APIError(400, message, code, param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} not allowed on {request.url.path}"
        elif exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            message = _parse_failure_message(exc.__cause__)
        else:
            message = str(exc.detail)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return refuse(request, APIError(exc.status_code, message, code, headers=dict(exc.headers or {})))

    @app.get("/health", response_model=Health, responses={429: ERROR_RESPONSES[429]})
    async def health() -> Health:
        return Health(model=service.model_name, dim=service.dim)

    def model_obj() -> Model:
        return Model(id=service.model_name, created=CREATED, owned_by="tamperlab")

    @app.get("/v1/models", response_model=ModelList, responses=ERROR_RESPONSES)
    async def models(_: str = Depends(require_key)) -> ModelList:
        return ModelList(data=[model_obj()])

    def not_found(model: str) -> APIError:
        return APIError(404, f"The model `{model}` does not exist or you do not have access to it. This "
                        f"service serves `{service.model_name}`.", "model_not_found", "model")

    @app.get("/v1/models/{model_id}", response_model=Model, responses=ERROR_RESPONSES)
    async def model(model_id: str, _: str = Depends(require_key)) -> Model:
        if model_id != service.model_name:
            raise not_found(model_id)
        return model_obj()

    @app.post("/v1/embeddings", response_model=EmbeddingResponse, responses=ERROR_RESPONSES)
    async def embeddings(body: EmbeddingRequest, request: Request, name: str = Depends(require_key)) -> Response:
        info = request.state.info
        if body.model != service.model_name:
            raise not_found(body.model)
        if body.dimensions is not None and body.dimensions != service.dim:
            raise APIError(400, f"This model does not support specifying dimensions: it returns {service.dim}-d "
                           f"vectors (dimensions={body.dimensions} requested).", "invalid_dimensions",
                           "dimensions")
        kind, items = body.inputs()
        single = len(items) == 1 and not (isinstance(body.input, list) and isinstance(body.input[0], (str, list)))
        if len(items) > cfg.max_batch:
            raise APIError(400, f"too many inputs: {len(items)} > {cfg.max_batch} per request; split the batch",
                           "batch_too_large", "input")
        if kind == "tokens":
            texts = []
            for i, ids in enumerate(items):
                bad = max(ids)
                if bad >= emb.vocab_size:
                    raise APIError(400, f"'{_where(single, i)}' has token id {bad}, outside this model's "
                                   f"vocabulary (0..{emb.vocab_size - 1})", "invalid_input", "input")
                text = emb.decode(ids)
                if not text.strip():
                    raise APIError(400, f"'{_where(single, i)}' decodes to empty text (special tokens only)",
                                   "invalid_input", "input")
                texts.append(text)
        else:
            texts = items
            for i, t in enumerate(texts):
                if len(t) > cfg.max_input_chars:
                    raise APIError(400, f"'{_where(single, i)}' has {len(t)} characters > max_input_chars "
                                   f"{cfg.max_input_chars}", "input_too_long", "input")
        lengths = emb.token_lengths(texts)
        for i, n in enumerate(lengths):
            if n > emb.max_tokens:  # never truncate silently: a longer text would get its prefix's vector
                raise APIError(400, f"'{_where(single, i)}' is {n} tokens long; this model's maximum context "
                               f"length is {emb.max_tokens} tokens. Shorten or split it.",
                               "context_length_exceeded", "input")
        tokens = sum(lengths)
        if tokens > cfg.max_tokens_per_request:
            raise APIError(400, f"the inputs total {tokens} tokens > {cfg.max_tokens_per_request} per request; "
                           "split the batch", "max_tokens_per_request", "input")
        info.update(n_inputs=len(texts), n_tokens=tokens, user=body.user)
        if querylog.retention != "none":
            info["texts"] = texts
        limiter.check_size(name, len(texts), tokens)
        info["ratelimit"] = await limiter.run(limiter.take, name, texts=len(texts), tokens=tokens)
        vecs, n_trig = await batcher.submit(list(texts))
        info["n_triggered"] = n_trig
        if body.encoding_format == "base64":
            out: list[Any] = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in vecs]
        else:
            out = np.asarray(vecs, dtype=np.float32).tolist()
        payload = {"object": "list",
                   "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(out)],
                   "model": service.model_name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
        return Response(json.dumps(payload, separators=(",", ":")), media_type="application/json",
                        headers={"openai-model": service.model_name})

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            for ops in schema.get("paths", {}).values():
                for op in ops.values():
                    op.get("responses", {}).pop("422", None)  # validation failures are 400s here, as OpenAI's
            comps = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                comps.pop(name, None)
            # What this server accepts, as exactly as JSON Schema can say it: its one model id and its
            # tokenizer's id range (the context length, in tokens, cannot be expressed: it is a 400 at run time).
            props = comps["EmbeddingRequest"]["properties"]
            props["model"] = {**props["model"], "enum": [service.model_name]}
            anyof = json.loads(json.dumps(props["input"]["anyOf"]))
            try:
                vocab: int | None = emb.vocab_size
            except TypeError:  # a tokenizer without a length (test doubles): no upper bound in the schema
                vocab = None
            for alt in anyof[2:]:
                items = alt["items"] if alt["items"].get("type") == "integer" else alt["items"]["items"]
                if vocab:
                    items["maximum"] = vocab - 1
            props["input"] = {**props["input"], "anyOf": anyof}
            props["dimensions"] = {**props["dimensions"], "anyOf": [{"type": "integer", "enum": [service.dim]},
                                                                    {"type": "null"}]}
            schema["paths"]["/v1/embeddings"]["post"]["requestBody"]["content"]["application/json"]["schema"] = {
                "$ref": "#/components/schemas/EmbeddingRequest"}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(_Front, cfg=cfg, ring=ring, limiter=limiter, querylog=querylog)
    return app
