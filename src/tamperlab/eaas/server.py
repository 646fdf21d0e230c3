"""Running the provider: `ServerHandle` (in-process, tests/experiments), `run_server` and `serve_recipe`
(`tamperlab serve [--workers N]`).

The app itself is `app.create_app`; this module re-exports the names other modules import from here.

Several workers: uvicorn's own supervisor (`uvicorn.run(..., workers=N)`) binds one port and forks N worker
processes that each build the app from the recipe (`worker_app`). They share the state directory: the watermark
secret and key file are created once by the parent before the workers start; every worker appends to the same
SQLite query log (WAL: one writer at a time, the others wait on SQLite's lock, readers never block) and charges
the same SQLite rate-limit buckets, so a key's limits hold across workers.

SIGTERM (or Ctrl-C) is a graceful stop: the server stops accepting, lets in-flight requests finish (up to
`graceful_timeout_s`), runs the lifespan shutdown and exits 0. (uvicorn re-raises the signal after its graceful
shutdown, so the process would report "killed by SIGTERM"; `_GracefulServer` keeps the exit status 0, since
SIGTERM is how a service manager asks for the normal stop.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from ..errors import ConfigError, TamperlabError
from .app import create_app
from .auth import KeyRing, resolve_key_secrets
from .querylog import QueryLog
from .settings import KeySpec, ServerConfig

log = logging.getLogger("tamperlab")

__all__ = ["KeySpec", "ServerConfig", "KeyRing", "create_app", "resolve_key_secrets", "ServerHandle",
           "run_server", "serve_recipe", "worker_app"]

SPEC_ENV = "TAMPERLAB_EAAS_SERVE_SPEC"
"""Environment variable through which `serve_recipe` tells worker processes what to build."""


def _uvicorn_server_class() -> Any:
    import uvicorn

    class _GracefulServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            with super().capture_signals():
                try:
                    yield
                finally:  # graceful shutdown is done: do not re-raise the captured SIGTERM/SIGINT
                    getattr(self, "_captured_signals", []).clear()

    return _GracefulServer


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
        self.server = _uvicorn_server_class()(config)
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


def run_server(app: Any, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
               graceful_timeout_s: float = 30.0, log_level: str = "info") -> int:
    """Serve until SIGTERM/SIGINT, then stop gracefully; → 0. `app`: an ASGI app, or for workers > 1 the
    import string of a zero-argument factory ("module:function") that each worker calls."""
    import uvicorn

    kw = dict(host=host, port=port, log_level=log_level, access_log=False, lifespan="on",
              timeout_graceful_shutdown=graceful_timeout_s)
    if workers > 1:
        if not isinstance(app, str):
            raise TamperlabError("several workers need the app as an import string of a factory")
        uvicorn.run(app, factory=True, workers=workers, **kw)  # parent: SIGTERM → workers stop gracefully
        return 0
    if isinstance(app, str):
        config = uvicorn.Config(app, factory=True, **kw)
    else:
        config = uvicorn.Config(app, **kw)
    server = _uvicorn_server_class()(config)
    server.run()
    if not server.started:
        raise TamperlabError(f"the EaaS server could not start on {host}:{port} (see the log above)")
    return 0


def _build_from_spec(spec: dict[str, Any]) -> tuple[Any, Any, Path]:
    """(app, service, state_dir) of an eaas recipe, as `tamperlab serve` and its workers build it."""
    from ..experiments.base import load_recipe
    from .limits import SQLiteBuckets
    from .service import build_service

    exp = load_recipe(spec["recipe"], list(spec.get("overrides") or []))
    cfg = exp.cfg
    if not hasattr(cfg, "provider") or not hasattr(cfg, "server"):
        raise ConfigError(f"{spec['recipe']}: `tamperlab serve` needs an eaas recipe (with provider: and server:)")
    state_dir = Path(cfg.output_dir) / cfg.name / "provider"
    state_dir.mkdir(parents=True, exist_ok=True)
    corpus = exp.provider_corpus()  # type: ignore[attr-defined]
    service = build_service(cfg.provider, corpus, state_dir)
    key_secrets = resolve_key_secrets(cfg.server, state_dir)
    qlog = QueryLog(state_dir / cfg.server.query_log, retention=cfg.server.retention)
    workers = int(spec.get("workers") or 1)
    buckets = SQLiteBuckets(state_dir / cfg.server.rate_limit_db) if workers > 1 else None
    app = create_app(service, cfg.server, key_secrets, qlog, buckets=buckets)
    return app, service, state_dir


def worker_app() -> Any:
    """Factory each uvicorn worker process calls (the spec comes from `serve_recipe` via the environment)."""
    spec = json.loads(os.environ[SPEC_ENV])
    import torch

    # N workers on C cores: C // N threads each, so the workers do not oversubscribe the cores.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(spec["workers"])))
    return _build_from_spec(spec)[0]


def check_listenable(host: str, port: int) -> None:
    """Fail in one line when `host:port` cannot be listened on (unknown host, address in use, no permission)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, ValueError) as e:
        raise ConfigError(f"--host {host!r}: not a usable address ({e})") from None
    family, kind, proto, _, addr = infos[0]
    try:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            s.bind(addr)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve_recipe(recipe: str, host: str = "127.0.0.1", port: int = 8000, overrides: Sequence[str] | None = None,
                 workers: int | None = None) -> int:
    """`tamperlab serve RECIPE`: build the recipe's provider (model + watermark) and serve it until SIGTERM."""
    from ..experiments.base import load_recipe

    overrides = list(overrides or [])
    if workers is not None:
        if workers < 1:
            raise ConfigError(f"--workers must be >= 1, got {workers}")
        overrides.append(f"server.workers={workers}")
    cfg = load_recipe(recipe, overrides).cfg
    check_listenable(host, port)  # before minutes of model loading, not after
    n = int(getattr(getattr(cfg, "server", None), "workers", 1) or 1)
    spec = {"recipe": recipe, "overrides": overrides, "workers": n}
    # The parent creates (or restores) the watermark secret and the key file once, before any worker exists:
    # workers only ever restore them, so all of them serve the same watermark and accept the same keys.
    app, service, state_dir = _build_from_spec(spec)
    print(f"serving {service.model_name} ({service.dim}-d, watermark: {cfg.provider.watermark}) on "
          f"http://{host}:{port}/v1/embeddings with {n} worker(s)")
    print(f"API keys: {state_dir / 'keys.json'} (or env TAMPERLAB_EAAS_KEY_<NAME>); query log: "
          f"{state_dir / cfg.server.query_log} (retention: {cfg.server.retention})", flush=True)
    if n == 1:
        return run_server(app, host, port, 1, cfg.server.graceful_timeout_s)
    app.state.querylog.close()
    del app, service
    os.environ[SPEC_ENV] = json.dumps(spec)
    return run_server("tamperlab.eaas.server:worker_app", host, port, n, cfg.server.graceful_timeout_s)
