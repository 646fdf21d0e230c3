"""The provider over a real socket: uvicorn on 127.0.0.1 (ephemeral port), httpx as the client."""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest
from eaas_helpers import TRIGGERS

from tamperlab.eaas.client import EmbeddingClient
from tamperlab.eaas.querylog import QueryLog
from tamperlab.eaas.server import KeySpec, ServerConfig, ServerHandle, create_app, resolve_key_secrets
from tamperlab.eaas.service import EmbeddingService
from tamperlab.eaas.watermarks import EmbMarker, EmbMarkerConfig
from tamperlab.errors import TamperlabError

MODEL = "test-embed"
KEY = "sk-test-123"
SLOW_KEY = "sk-test-slow"


@pytest.fixture
def server(tmp_path, bow_embedder, corpus):
    wm = EmbMarker(EmbMarkerConfig(triggers=TRIGGERS[:4]))
    wm.setup(corpus, bow_embedder.encode)
    service = EmbeddingService(bow_embedder, wm, MODEL)
    cfg = ServerConfig(keys=[KeySpec("alice"), KeySpec("slow", requests_per_minute=1)], burst=3,
                       requests_per_minute=100000, texts_per_minute=1e9, max_batch=8, max_input_chars=200,
                       max_body_bytes=4000)
    qlog = QueryLog(tmp_path / "q.sqlite", retention="full")
    app = create_app(service, cfg, {"alice": KEY, "slow": SLOW_KEY}, qlog)
    with ServerHandle(app, host="127.0.0.1", port=0) as h:
        with httpx.Client(base_url=h.url, timeout=30) as c:
            yield h, c, qlog, service
    qlog.close()


def _post(c, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return c.post("/v1/embeddings", json=body, headers=headers, **kw)


def test_binds_loopback_on_an_ephemeral_port(server):
    h, c, _, _ = server
    assert h.host == "127.0.0.1" and h.port > 0
    r = c.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "ok" and "watermark" not in r.text


def test_openai_compatible_batch_response(server):
    _, c, _, service = server
    texts = ["the cat sat", "apple river stone cloud", "a dog"]
    r = _post(c, {"input": texts, "model": MODEL})
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "list" and data["model"] == MODEL
    assert [d["index"] for d in data["data"]] == [0, 1, 2]
    got = np.array([d["embedding"] for d in data["data"]])
    assert np.allclose(got, service.embed(texts)[0], atol=1e-6)
    # the watermark is applied inside the service: the 4-trigger text *is* the target
    assert np.allclose(got[1], service.watermark.targets[0], atol=1e-5)
    assert data["usage"]["prompt_tokens"] == data["usage"]["total_tokens"] == (3 + 2) + (4 + 2) + (2 + 2)
    one = _post(c, {"input": "the cat sat", "model": MODEL}).json()
    assert len(one["data"]) == 1 and np.allclose(one["data"][0]["embedding"], got[0], atol=1e-6)
    b64 = _post(c, {"input": texts, "model": MODEL, "encoding_format": "base64"}).json()
    dec = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64["data"]])
    assert np.allclose(dec, got, atol=1e-6)


def test_auth_is_required(server):
    _, c, _, _ = server
    r = _post(c, {"input": "x", "model": MODEL}, key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"
    r = _post(c, {"input": "x", "model": MODEL}, key="sk-wrong")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert c.get("/v1/models").status_code == 401


def test_rate_limit_returns_429_with_retry_after(server):
    _, c, qlog, _ = server
    codes = [_post(c, {"input": "hello", "model": MODEL}, key=SLOW_KEY).status_code for _ in range(5)]
    assert codes[:3] == [200, 200, 200]  # burst of 3
    assert codes[3:] == [429, 429]       # 1/min refills one per minute: no refill during this loop even on a loaded machine
    r = _post(c, {"input": "hello", "model": MODEL}, key=SLOW_KEY)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    # another key is not affected
    assert _post(c, {"input": "hello", "model": MODEL}).status_code == 200
    assert [a for a in qlog.audit() if a["key"] == "slow"][0]["rate_limited"] == 3


@pytest.mark.parametrize("body,status,code", [
    ({"input": ["a"] * 9, "model": MODEL}, 400, "batch_too_large"),
    ({"input": "x" * 201, "model": MODEL}, 400, "input_too_long"),
    ({"input": [], "model": MODEL}, 400, "invalid_input"),
    ({"input": ["ok", ""], "model": MODEL}, 400, "invalid_input"),
    ({"input": [[101, -2]], "model": MODEL}, 400, "invalid_input"),
    ({"input": ["ok", 3], "model": MODEL}, 400, "invalid_input"),
    ({"input": {"a": 1}, "model": MODEL}, 400, "invalid_input"),
    ({"input": "hi"}, 400, "missing_required_parameter"),
    ({"model": MODEL}, 400, "missing_required_parameter"),
    ({"input": "hi", "model": "gpt-x"}, 404, "model_not_found"),
    ({"input": "hi", "model": MODEL, "encoding_format": "int8"}, 400, "invalid_encoding_format"),
    ({"input": "hi", "model": MODEL, "user": 5}, 400, "invalid_user"),
    ({"input": "hi", "model": MODEL, "dimensions": True}, 400, "invalid_dimensions"),
    ({"input": "hi", "model": MODEL, "dimensions": 7}, 400, "invalid_dimensions"),
    ({"input": "hi", "model": MODEL, "temperature": 1}, 400, "unknown_parameter"),
    ([1, 2, 3], 400, "invalid_body"),
])
def test_malformed_requests_get_a_clear_4xx(server, body, status, code):
    _, c, _, _ = server
    r = _post(c, body)
    assert r.status_code == status
    err = r.json()["error"]
    assert err["code"] == code and err["message"]


def test_bad_json_and_oversized_bodies(server):
    _, c, _, _ = server
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = c.post("/v1/embeddings", content=b'{"input": "x", "model": ', headers=h)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    r = c.post("/v1/embeddings", content=b"\xff\xfe\x00garbage", headers=h)
    assert r.status_code == 400
    r = c.post("/v1/embeddings", content=b"[" * 1900 + b"]" * 1900, headers=h)  # nesting beyond the parser's depth
    assert r.status_code == 400
    r = c.post("/v1/embeddings", content=b'{"input": "x", "model": "m", "dimensions": ' + b"9" * 3900 + b"}", headers=h)
    assert r.status_code in (400, 404)
    big = json.dumps({"input": "word", "model": MODEL}).encode()[:-1] + b" " * 5000 + b"}"  # valid JSON, 5 kB
    r = c.post("/v1/embeddings", content=big, headers=h)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the stream itself is bounded
        for _ in range(10):
            yield b" " * 1000
    r = c.post("/v1/embeddings", content=chunks(), headers=h)
    assert r.status_code == 413
    assert c.get("/v1/nothing").status_code == 401  # /v1 needs a key before anything else, as OpenAI
    auth = {"Authorization": f"Bearer {KEY}"}
    assert c.get("/v1/nothing", headers=auth).status_code == 404
    r = c.get("/v1/embeddings", headers=auth)
    assert r.status_code == 405 and r.headers["allow"] == "POST" and r.json()["error"]["code"] == "method_not_allowed"


def test_query_log_records_every_request(server):
    _, c, qlog, _ = server
    before = qlog.count()
    sent = [
        _post(c, {"input": ["apple pie", "plain text"], "model": MODEL}),
        _post(c, {"input": "x", "model": MODEL}, key=None),
        _post(c, {"input": "hi", "model": "nope"}),
        c.get("/health"),
    ]
    rows = qlog.rows()[before:]
    assert len(rows) == len(sent)
    assert [r["status"] for r in rows] == [s.status_code for s in sent]
    ok = rows[0]
    assert ok["key_name"] == "alice" and ok["n_inputs"] == 2 and ok["n_triggered"] == 1 and ok["n_tokens"] > 0
    assert json.loads(ok["texts"]) == ["apple pie", "plain text"]
    assert rows[1]["key_name"] is None and rows[1]["error"].startswith("missing_api_key")
    assert rows[2]["key_name"] == "alice" and rows[2]["status"] == 404
    # persistent: a fresh connection to the file sees the same rows
    again = QueryLog(qlog.path)
    assert again.count() == qlog.count()
    again.close()


def test_client_batches_and_raises_clear_errors(server):
    h, _, qlog, service = server
    texts = [f"text number {w}" for w in "abcdefghijklmnopqrst"]
    with EmbeddingClient(h.url, KEY, MODEL, batch_size=8, concurrency=2) as cl:
        got = cl.embed(texts, progress=False)
        assert cl.requests_sent == 3
    assert np.allclose(got, service.embed(texts)[0], atol=1e-6)
    with EmbeddingClient(h.url, "sk-bad", MODEL) as cl:
        with pytest.raises(TamperlabError, match="401: Incorrect API key provided"):
            cl.embed(["x"], progress=False)


def test_key_secrets_from_env_or_generated_and_persisted(tmp_path, monkeypatch):
    cfg = ServerConfig(keys=[KeySpec("alice"), KeySpec("bob-2")])
    monkeypatch.setenv("TAMPERLAB_EAAS_KEY_BOB_2", "sk-from-env")
    keys = resolve_key_secrets(cfg, tmp_path)
    assert keys["bob-2"] == "sk-from-env" and keys["alice"].startswith("sk-tl-")
    saved = json.loads((tmp_path / "keys.json").read_text())
    assert saved == {"alice": keys["alice"]}  # env secrets are never written
    assert (tmp_path / "keys.json").stat().st_mode & 0o077 == 0
    assert resolve_key_secrets(cfg, tmp_path)["alice"] == keys["alice"]  # stable across restarts
