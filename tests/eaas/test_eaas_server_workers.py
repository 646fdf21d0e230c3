"""`run_server` in a child process, 1 and 2 workers behind one port on 127.0.0.1: a key's limit holds across
workers (shared SQLite buckets), SIGTERM lets in-flight requests finish and exits 0, and the shared query log
has exactly one row per request (matched by x-request-id)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from eaas_api_helpers import stop_group

from tamperlab.eaas.querylog import QueryLog

HERE = Path(__file__).parent
KEYS = {"alice": "sk-alice", "limited": "sk-limited"}
N_INFLIGHT = 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_share_limits_and_log_and_stop_gracefully_on_sigterm(tmp_path, workers):
    port = _free_port()
    flag = tmp_path / "received"
    cfg = {"keys": [{"name": "alice"}, {"name": "limited", "burst": 3, "requests_per_minute": 1}],
           "requests_per_minute": 100000, "burst": 1000, "retention": "full", "graceful_timeout_s": 60}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
           "TL_TEST_STATE": str(tmp_path), "TL_TEST_CFG": json.dumps(cfg), "TL_TEST_KEYS": json.dumps(KEYS),
           "TL_TEST_SLEEP": "0.5", "TL_TEST_SHARED": "1" if workers > 1 else "0", "TL_TEST_FLAG": str(flag)}
    code = ("import sys; from tamperlab.eaas.server import run_server; "
            f"sys.exit(run_server('eaas_api_helpers:bow_app', '127.0.0.1', {port}, workers={workers}, "
            "graceful_timeout_s=60, log_level='warning'))")
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        ready = 0
        while ready < 3:  # a few successes in a row: with 2 workers, both have usually started
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "server did not come up"
            try:
                ready = ready + 1 if httpx.get(url + "/health", timeout=2).status_code == 200 else 0
            except httpx.TransportError:
                ready = 0
            time.sleep(0.3)

        # One key, one limit, whichever worker answers: a fresh connection per request spreads them.
        codes = [httpx.get(url + "/v1/models", headers={"Authorization": "Bearer sk-limited"}).status_code
                 for _ in range(6)]
        assert sorted(codes) == [200] * 3 + [429] * 3

        flag.unlink(missing_ok=True)
        results: list[httpx.Response | Exception] = []

        def one(i: int) -> None:
            try:
                results.append(httpx.post(url + "/v1/embeddings", timeout=60,
                                          json={"input": [f"request {i} text", "apple"], "model": "test-embed"},
                                          headers={"Authorization": "Bearer sk-alice",
                                                   "x-client-request-id": f"c-{i}"}))
            except Exception as e:  # reported by the assertion below
                results.append(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(N_INFLIGHT)]
        for t in threads:
            t.start()
        # SIGTERM once the server has received every request (each encode takes 0.5 s, so they are in flight)
        while not flag.exists() or flag.read_text().count("received") < N_INFLIGHT:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=120)
        rc = proc.wait(timeout=120)
    finally:
        stop_group(proc)
    out = proc.stdout.read().decode()
    assert rc == 0, out[-3000:]
    assert all(isinstance(r, httpx.Response) and r.status_code == 200 for r in results), results
    assert len(results) == N_INFLIGHT
    with pytest.raises(httpx.TransportError):  # the port is closed after the stop
        httpx.get(url + "/health", timeout=2)
    qlog = QueryLog(tmp_path / "q.sqlite", retention="full")
    rows = [r for r in qlog.rows() if r["path"] == "/v1/embeddings"]
    qlog.close()
    sent = sorted(r.headers["x-request-id"] for r in results)
    assert sorted(r["request_id"] for r in rows) == sent  # none lost, none duplicated
    assert sorted(r["client_request_id"] for r in rows) == sorted(f"c-{i}" for i in range(N_INFLIGHT))


@pytest.mark.slow
def test_tamperlab_serve_two_workers_end_to_end(tmp_path):
    """`tamperlab serve demo_eaas --workers 2` (real all-MiniLM-L6-v2): both workers serve the same watermark
    (one secret, created by the parent), SIGTERM exits 0."""
    import numpy as np

    port = _free_port()
    env = {**os.environ, "TAMPERLAB_EAAS_KEY_STEALER": "sk-e2e", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tamperlab.cli", "serve", "demo_eaas", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "2", "--set", f"output_dir={tmp_path}",
                             "--set", "data.n_train=50"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        ok = 0
        while ok < 4:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "server did not come up"
            try:
                ok = ok + 1 if httpx.get(url + "/health", timeout=2).status_code == 200 else 0
            except httpx.TransportError:
                ok = 0
            time.sleep(0.5)
        body = {"input": ["hello world", "a sentence about rivers"], "model": "tamperlab-minilm"}
        vecs = []
        for _ in range(6):  # fresh connections: the kernel spreads them over the workers
            r = httpx.post(url + "/v1/embeddings", json=body, headers={"Authorization": "Bearer sk-e2e"},
                           timeout=60)
            assert r.status_code == 200
            vecs.append(np.array([d["embedding"] for d in r.json()["data"]]))
        assert all(np.allclose(v, vecs[0], atol=1e-5) for v in vecs)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 0
    finally:
        stop_group(proc)
    mode = (tmp_path / "demo_eaas" / "provider" / "querylog.sqlite").stat().st_mode & 0o777
    assert mode == 0o600
