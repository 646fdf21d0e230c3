"""OpenAI-compatible embedding service: FastAPI app, uvicorn runner, `tamperlab serve`.

Endpoints
  POST /v1/embeddings   {"input": str | [str], "model": str, "encoding_format": "float"|"base64", "dimensions"?}
                        → {"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "model",
                           "usage": {"prompt_tokens", "total_tokens"}}
  GET  /v1/models       the served model
  GET  /health          liveness (no key needed; reveals nothing about the watermark)

Every /v1 route needs `Authorization: Bearer <key>` (401 otherwise). Per-key token buckets limit requests and
texts per minute (429 + Retry-After). Bodies over `max_body_bytes` get 413; more than `max_batch` inputs, empty
or over-long texts, token-id inputs, bad JSON, wrong model → 400/404 with an OpenAI-style error object. Every
request, refused or not, is a row in the SQLite query log.
"""

from __future__ import annotations

import base64
import hmac
import json
import logging
import math
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ..config import check_positive
from ..errors import ConfigError, TamperlabError
from .querylog import QueryLog
from .service import Batcher, EmbeddingService

log = logging.getLogger("tamperlab")


@dataclass
class KeySpec:
    """One API key holder. The secret never sits in a recipe: it comes from the environment or is generated."""

    name: str = "default"
    """Key holder's name (what the query log records)."""
    requests_per_minute: float = 0
    """Per-key request rate limit (0 = the server default)."""
    texts_per_minute: float = 0
    """Per-key input-text rate limit (0 = the server default)."""


@dataclass
class ServerConfig:
    """HTTP front of the provider."""

    keys: list[KeySpec] = field(default_factory=lambda: [KeySpec()])
    """Key holders. Secret of key NAME: env TAMPERLAB_EAAS_KEY_<NAME> (upper-case), else generated at start-up
    and written to <state_dir>/keys.json (mode 600)."""
    requests_per_minute: float = 600
    """Default per-key request limit (token bucket refilled continuously; 0 = unlimited)."""
    burst: int = 20
    """Bucket size for requests: how many can arrive at once."""
    texts_per_minute: float = 60000
    """Default per-key input-text limit (bucket of one minute's worth; 0 = unlimited)."""
    max_batch: int = 256
    """Most inputs in one request (OpenAI: 2048)."""
    max_input_chars: int = 8192
    """Longest accepted input text, in characters."""
    max_body_bytes: int = 2_000_000
    """Largest accepted request body (413 above)."""
    batch_texts: int = 128
    """Dynamic batcher: most texts merged into one encode."""
    batch_wait_ms: float = 5.0
    """Dynamic batcher: how long a request waits for company."""
    query_log: str = "querylog.sqlite"
    """SQLite query log, relative to the state dir."""
    log_texts: bool = True
    """Store the input texts in the query log (needed for content audits; off = counts only)."""

    def __post_init__(self) -> None:
        check_positive("server", max_batch=self.max_batch, max_input_chars=self.max_input_chars,
                       max_body_bytes=self.max_body_bytes, burst=self.burst, batch_texts=self.batch_texts)
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ConfigError(f"server.keys: duplicate key names in {names}")


class TokenBucket:
    """Continuous-refill token bucket (rate per second, capacity); thread-safe."""

    def __init__(self, rate_per_s: float, capacity: float):
        self.rate, self.capacity = rate_per_s, capacity
        self.tokens = capacity
        self.t = time.monotonic()
        self._lock = threading.Lock()

    def take(self, n: float = 1.0) -> float:
        """Take n tokens → 0.0, or the seconds to wait until they would be there (nothing taken)."""
        with self._lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.t) * self.rate)
            self.t = now
            if n <= self.tokens:
                self.tokens -= n
                return 0.0
            if n > self.capacity:  # can never be satisfied at once: wait for a full bucket, caller splits
                return (self.capacity - self.tokens) / self.rate + 1.0
            return (n - self.tokens) / self.rate


class KeyRing:
    """Key secret → holder, compared in constant time; per-key rate-limit buckets."""

    def __init__(self, secrets_by_name: dict[str, str], cfg: ServerConfig):
        self._by_hash = {hmac.digest(b"tamperlab", s.encode(), "sha256"): n for n, s in secrets_by_name.items()}
        self.limits: dict[str, tuple[TokenBucket | None, TokenBucket | None]] = {}
        specs = {k.name: k for k in cfg.keys}
        for name in secrets_by_name:
            spec = specs.get(name, KeySpec(name))
            rpm = spec.requests_per_minute or cfg.requests_per_minute
            tpm = spec.texts_per_minute or cfg.texts_per_minute
            self.limits[name] = (TokenBucket(rpm / 60.0, cfg.burst) if rpm > 0 else None,
                                 TokenBucket(tpm / 60.0, tpm) if tpm > 0 else None)

    def who(self, secret: str) -> str | None:
        d = hmac.digest(b"tamperlab", secret.encode(), "sha256")
        for h, name in self._by_hash.items():
            if hmac.compare_digest(h, d):
                return name
        return None


def resolve_key_secrets(cfg: ServerConfig, state_dir: Path | None) -> dict[str, str]:
    """Secrets from TAMPERLAB_EAAS_KEY_<NAME>, then <state_dir>/keys.json, else newly generated (and saved)."""
    saved: dict[str, str] = {}
    kfile = state_dir / "keys.json" if state_dir else None
    if kfile is not None and kfile.is_file():
        saved = json.loads(kfile.read_text())
    out: dict[str, str] = {}
    generated: dict[str, str] = {}
    for k in cfg.keys:
        env = os.environ.get(f"TAMPERLAB_EAAS_KEY_{k.name.upper().replace('-', '_')}")
        if env:
            out[k.name] = env
        elif k.name in saved:
            out[k.name] = saved[k.name]
        else:
            out[k.name] = generated[k.name] = "sk-tl-" + secrets.token_urlsafe(24)
    if generated and kfile is not None:
        kfile.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(str(kfile), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({**saved, **generated}, f, indent=2)  # env-provided secrets are never written
    return out


class _Reject(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.headers = status, message, code, param, headers or {}


def _error_body(status: int, message: str, code: str, param: str | None = None) -> dict[str, Any]:
    kind = {401: "authentication_error", 404: "not_found_error", 413: "request_too_large",
            429: "rate_limit_error"}.get(status, "invalid_request_error" if status < 500 else "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _parse_inputs(body: Any, cfg: ServerConfig, model_name: str, dim: int) -> tuple[list[str], str]:
    if not isinstance(body, dict):
        raise _Reject(400, "the request body must be a JSON object", "invalid_body")
    unknown = set(body) - {"input", "model", "encoding_format", "dimensions", "user"}
    if unknown:
        raise _Reject(400, f"unknown field(s): {', '.join(sorted(unknown))}", "unknown_parameter",
                      sorted(unknown)[0])
    if "model" not in body:
        raise _Reject(400, "you must provide a 'model' parameter", "missing_model", "model")
    if body["model"] != model_name:
        raise _Reject(404, f"the model {body['model']!r} does not exist; this service serves {model_name!r}",
                      "model_not_found", "model")
    if "input" not in body:
        raise _Reject(400, "you must provide an 'input' parameter (a string or a list of strings)",
                      "missing_input", "input")
    raw = body["input"]
    texts = [raw] if isinstance(raw, str) else raw
    if not isinstance(texts, list):
        raise _Reject(400, "'input' must be a string or a list of strings", "invalid_input", "input")
    if not texts:
        raise _Reject(400, "'input' must not be an empty list", "invalid_input", "input")
    if len(texts) > cfg.max_batch:
        raise _Reject(400, f"too many inputs: {len(texts)} > max_batch {cfg.max_batch}; split the batch",
                      "batch_too_large", "input")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            what = "token ids are not supported" if isinstance(t, (int, list)) else f"got {type(t).__name__}"
            raise _Reject(400, f"input[{i}] must be a string ({what})", "invalid_input", "input")
        if not t.strip():
            raise _Reject(400, f"input[{i}] is empty", "invalid_input", "input")
        if len(t) > cfg.max_input_chars:
            raise _Reject(400, f"input[{i}] has {len(t)} characters > max_input_chars {cfg.max_input_chars}",
                          "input_too_long", "input")
    fmt = body.get("encoding_format", "float")
    if fmt not in ("float", "base64"):
        raise _Reject(400, f"encoding_format must be 'float' or 'base64', got {fmt!r}", "invalid_encoding_format",
                      "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (isinstance(dims, bool) or dims != dim):
        raise _Reject(400, f"dimensions={dims!r} is not supported: this model returns {dim}-d vectors",
                      "invalid_dimensions", "dimensions")
    return texts, fmt


def create_app(service: EmbeddingService, cfg: ServerConfig, key_secrets: dict[str, str], querylog: QueryLog) -> Any:
    """Build the FastAPI app around a provider service."""
    from contextlib import asynccontextmanager

    ring = KeyRing(key_secrets, cfg)
    batcher = Batcher(service, max_texts=cfg.batch_texts, max_wait_ms=cfg.batch_wait_ms)

    @asynccontextmanager
    async def lifespan(app: Any):  # noqa: ANN202
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="tamperlab EaaS provider", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.querylog = querylog
    app.state.service = service

    @app.middleware("http")
    async def audit(request: Request, call_next: Any) -> Any:
        t0 = time.perf_counter()
        request.state.info = {}
        try:
            response = await call_next(request)
        except Exception as e:  # never leak a traceback; still log the request
            log.exception("unhandled error on %s", request.url.path)
            response = JSONResponse(_error_body(500, "internal error", "internal_error"), status_code=500)
            request.state.info["error"] = f"{type(e).__name__}: {e}"[:500]
        info = request.state.info
        querylog.record(key_name=info.get("key"), method=request.method, path=request.url.path,
                        status=response.status_code, n_inputs=info.get("n_inputs", 0),
                        n_tokens=info.get("n_tokens", 0), n_triggered=info.get("n_triggered", 0),
                        latency_ms=(time.perf_counter() - t0) * 1000, error=info.get("error"),
                        texts=info.get("texts"))
        return response

    def reject(request: Request, r: _Reject) -> JSONResponse:
        request.state.info["error"] = f"{r.code}: {r.message}"[:500]
        return JSONResponse(_error_body(r.status, r.message, r.code, r.param), status_code=r.status,
                            headers=r.headers)

    def authenticate(request: Request) -> str:
        auth = request.headers.get("authorization", "")
        scheme, _, secret = auth.partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise _Reject(401, "missing API key: send 'Authorization: Bearer <key>'", "missing_api_key")
        name = ring.who(secret.strip())
        if name is None:
            raise _Reject(401, "invalid API key", "invalid_api_key")
        request.state.info["key"] = name
        return name

    def limit(bucket: TokenBucket | None, n: float, what: str) -> None:
        if bucket is None:
            return
        wait = bucket.take(n)
        if wait > 0:
            raise _Reject(429, f"rate limit reached for {what}; retry after {wait:.2f}s", "rate_limit_exceeded",
                          headers={"Retry-After": str(max(1, math.ceil(wait)))})

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                if int(declared) > cfg.max_body_bytes:
                    raise _Reject(413, f"request body of {declared} bytes > max_body_bytes {cfg.max_body_bytes}",
                                  "request_too_large")
            except ValueError:
                raise _Reject(400, "invalid Content-Length header", "invalid_body") from None
        chunks, size = [], 0
        async for chunk in request.stream():  # also bounds chunked bodies that declare no length
            size += len(chunk)
            if size > cfg.max_body_bytes:
                raise _Reject(413, f"request body larger than max_body_bytes {cfg.max_body_bytes}",
                              "request_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": service.model_name, "dim": service.dim}

    @app.get("/v1/models")
    async def models(request: Request) -> Any:
        try:
            authenticate(request)
        except _Reject as r:
            return reject(request, r)
        return {"object": "list", "data": [{"id": service.model_name, "object": "model", "owned_by": "tamperlab"}]}

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Any:
        info = request.state.info
        try:
            name = authenticate(request)
            req_bucket, text_bucket = ring.limits[name]
            limit(req_bucket, 1, "requests")
            raw = await read_body(request)
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError) as e:  # ValueError ⊃ JSONDecodeError, huge ints
                raise _Reject(400, f"the body is not valid JSON: {e}", "invalid_json") from None
            texts, fmt = _parse_inputs(body, cfg, service.model_name, service.dim)
            info["n_inputs"] = len(texts)
            if querylog.log_texts:
                info["texts"] = texts
            limit(text_bucket, len(texts), "input texts")
        except _Reject as r:
            return reject(request, r)
        emb, n_trig = await batcher.submit(texts)
        tokens = sum(service.embedder.count_tokens(texts))
        info.update(n_tokens=tokens, n_triggered=n_trig)
        if fmt == "base64":
            vecs: list[Any] = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode() for v in emb]
        else:
            vecs = [[float(x) for x in v] for v in emb]
        return {"object": "list",
                "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs)],
                "model": service.model_name, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    @app.exception_handler(404)
    async def not_found(request: Request, exc: Any) -> JSONResponse:
        return JSONResponse(_error_body(404, f"no route {request.method} {request.url.path}", "unknown_route"),
                            status_code=404)

    @app.exception_handler(405)
    async def not_allowed(request: Request, exc: Any) -> JSONResponse:
        return JSONResponse(_error_body(405, f"method {request.method} not allowed on {request.url.path}",
                                        "method_not_allowed"), status_code=405)

    return app


class ServerHandle:
    """Run a FastAPI app with real uvicorn in a background thread on 127.0.0.1 (port 0 = an ephemeral port)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0):
        self.app, self.host, self.port, self.start_timeout = app, host, port, start_timeout
        self.server: Any = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "ServerHandle":
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        self._sock = sock
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="on",
                                timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name=f"uvicorn-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise TamperlabError(f"the EaaS server did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> "ServerHandle":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve_recipe(recipe: str, host: str = "127.0.0.1", port: int = 8000, overrides: Sequence[str] | None = None) -> int:
    """`tamperlab serve RECIPE`: build the recipe's provider (model + watermark) and serve it until Ctrl-C."""
    import uvicorn

    from ..experiments.base import load_recipe
    from .service import build_service

    exp = load_recipe(recipe, list(overrides or []))
    cfg = exp.cfg
    if not hasattr(cfg, "provider") or not hasattr(cfg, "server"):
        raise ConfigError(f"{recipe}: `tamperlab serve` needs an eaas recipe (with provider: and server:)")
    state_dir = Path(cfg.output_dir) / cfg.name / "provider"
    state_dir.mkdir(parents=True, exist_ok=True)
    corpus = exp.provider_corpus()  # type: ignore[attr-defined]
    service = build_service(cfg.provider, corpus, state_dir)
    key_secrets = resolve_key_secrets(cfg.server, state_dir)
    qlog = QueryLog(state_dir / cfg.server.query_log, log_texts=cfg.server.log_texts)
    app = create_app(service, cfg.server, key_secrets, qlog)
    print(f"serving {service.model_name} ({service.dim}-d, watermark: {cfg.provider.watermark}) on "
          f"http://{host}:{port}/v1/embeddings")
    print(f"API keys: {state_dir / 'keys.json'} (or env TAMPERLAB_EAAS_KEY_<NAME>); query log: {qlog.path}")
    uvicorn.run(app, host=host, port=port, log_level="info")
    qlog.close()
    return 0
