"""The embedding API as OpenAI's clients see it: the official `openai` client and raw httpx against uvicorn on
127.0.0.1; failure isolation in the micro-batcher; limits; the OpenAPI schema; query-log retention."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time

import httpx
import numpy as np
import pytest
from eaas_api_helpers import MODEL, make_service, word_id

from tamperlab.eaas.querylog import QueryLog
from tamperlab.eaas.server import KeySpec, ServerConfig, ServerHandle, create_app

KEY = "sk-alice"
KEYS = {"alice": KEY, "slow": "sk-slow", "tiny": "sk-tiny"}


@contextlib.contextmanager
def serving(tmp_path, retention="full", sleep_s=0.0, **cfg_kw):
    service = make_service(sleep_s)
    kw = dict(keys=[KeySpec("alice"), KeySpec("slow", requests_per_minute=60, burst=2),
                    KeySpec("tiny", texts_per_minute=10, tokens_per_minute=60)],
              requests_per_minute=100000, burst=1000, texts_per_minute=1e9, tokens_per_minute=1e9,
              retention=retention)
    kw.update(cfg_kw)
    qlog = QueryLog(tmp_path / "q.sqlite", retention=retention)
    app = create_app(service, ServerConfig(**kw), KEYS, qlog)
    with ServerHandle(app) as h:
        yield h, service, qlog, app
    qlog.close()


@pytest.fixture
def api(tmp_path):
    with serving(tmp_path) as s:
        yield s


def post(url, body, key=KEY, **kw):
    # json.dumps escapes a lone surrogate as "\\ud800" (valid JSON), as a client in any language may send it
    return httpx.post(url + "/v1/embeddings", content=json.dumps(body).encode(), timeout=30,
                      headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"}, **kw)


# --- 1. failure isolation --------------------------------------------------------------------------------------
def test_poisoned_requests_never_fail_clean_ones_merged_with_them(tmp_path):
    """Poisoned and clean requests sent at once (merged by the batcher: 150 ms window): every clean one gets
    200 with its own vectors; a lone surrogate is a 400 naming its index; an input the encoder chokes on fails
    only its own request (500)."""
    with serving(tmp_path, batch_wait_ms=150, batch_texts=10_000) as (h, service, qlog, app):
        clean = {i: [f"clean text {i}", f"apple river {i}"] for i in range(12)}
        poisoned = {100: ["fine", "bad \ud800 text"], 101: ["also fine", "POISON here"], 102: ["POISON"]}
        bodies = {**clean, **poisoned}
        results: dict[int, httpx.Response] = {}
        barrier = threading.Barrier(len(bodies))

        def go(i):
            barrier.wait()
            results[i] = post(h.url, {"input": bodies[i], "model": MODEL})

        threads = [threading.Thread(target=go, args=(i,)) for i in bodies]
        [t.start() for t in threads]
        [t.join() for t in threads]
        for i, texts in clean.items():
            r = results[i]
            assert r.status_code == 200, (i, r.text)
            got = np.array([d["embedding"] for d in r.json()["data"]])
            assert np.allclose(got, service.embed(texts)[0], atol=1e-6)
        bad = results[100].json()["error"]
        assert results[100].status_code == 400 and bad["type"] == "invalid_request_error"
        assert "input[1]" in bad["message"] and "surrogate" in bad["message"] and bad["param"] == "input"
        for i in (101, 102):
            assert results[i].status_code == 500 and results[i].json()["error"]["type"] == "server_error"
            assert "POISON" not in results[i].text  # no internals leak
        assert app.state.batcher.isolated_failures >= 1  # the poison really was merged with others
        assert sorted(r["status"] for r in qlog.rows()) == sorted(r.status_code for r in results.values())


# --- 3. OpenAI compatibility -------------------------------------------------------------------------------------
def test_official_openai_client(api):
    import openai  # a dev dependency (CI installs it)

    h, service, qlog, _ = api
    client = openai.OpenAI(base_url=h.url + "/v1", api_key=KEY, max_retries=0)
    texts = ["the cat sat", "apple river stone cloud"]
    r = client.embeddings.create(model=MODEL, input=texts)  # the client asks for base64 and decodes it
    want = service.embed(texts)[0]
    assert np.allclose([d.embedding for d in r.data], want, atol=1e-6)
    assert r.usage.prompt_tokens == r.usage.total_tokens == (3 + 2) + (4 + 2)  # words + [CLS]/[SEP]
    f = client.embeddings.create(model=MODEL, input="the cat sat", encoding_format="float", user="u-1",
                                 dimensions=service.dim)
    assert np.allclose(f.data[0].embedding, want[0], atol=1e-6)
    ids = [word_id(w) for w in "the cat sat".split()]
    t1 = client.embeddings.create(model=MODEL, input=ids)  # one input as token ids
    t2 = client.embeddings.create(model=MODEL, input=[ids, [word_id(w) for w in texts[1].split()]])
    assert np.allclose(t1.data[0].embedding, want[0], atol=1e-6)
    assert np.allclose([d.embedding for d in t2.data], want, atol=1e-6)  # the watermark sees decoded text too
    assert [m.id for m in client.models.list()] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    raw = client.embeddings.with_raw_response.create(model=MODEL, input="x y")
    assert raw.headers["x-request-id"].startswith("req_") and int(raw.headers["openai-processing-ms"]) >= 0
    assert raw.headers["x-ratelimit-limit-requests"] == "100000"
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=h.url + "/v1", api_key="sk-nope", max_retries=0).models.list()
    assert e.value.type == "authentication_error" and e.value.code == "invalid_api_key"
    with pytest.raises(openai.NotFoundError) as e:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert e.value.code == "model_not_found" and e.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL, input="x", dimensions=8)
    assert e.value.param == "dimensions" and "does not support specifying dimensions" in e.value.message
    slow = openai.OpenAI(base_url=h.url + "/v1", api_key="sk-slow", max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(3):  # burst 2
            slow.embeddings.create(model=MODEL, input="x")
    assert e.value.type == "requests" and e.value.code == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_raw_httpx_batches_headers_and_formats(api):
    h, service, qlog, _ = api
    texts = [f"word{i} apple" for i in range(2048)]  # OpenAI's largest batch
    r = post(h.url, {"input": texts, "model": MODEL, "encoding_format": "base64"})
    assert r.status_code == 200 and len(r.json()["data"]) == 2048
    dec = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in r.json()["data"]])
    assert np.allclose(dec, service.embed(texts)[0], atol=1e-6)
    assert r.json()["usage"]["prompt_tokens"] == 2048 * 4
    assert post(h.url, {"input": texts + ["one more"], "model": MODEL}).json()["error"]["code"] == "batch_too_large"
    ids = {post(h.url, {"input": "x", "model": MODEL}).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3
    rows = qlog.rows()
    assert {r["request_id"] for r in rows} >= ids


def test_inputs_longer_than_the_context_are_refused_not_truncated(api):
    h, service, _, _ = api
    ctx = service.embedder.max_tokens  # 32 with [CLS]/[SEP]
    fits = " ".join(f"w{i}" for i in range(ctx - 2))
    assert post(h.url, {"input": fits, "model": MODEL}).status_code == 200
    r = post(h.url, {"input": ["ok", fits + " extra"], "model": MODEL})
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and "input[1]" in err["message"]
    assert f"{ctx + 1} tokens" in err["message"]


@pytest.mark.parametrize("body,code,fragment", [
    ({"input": [[5, 6], [7, 50_000]]}, "invalid_input", "input[1]"),        # id outside the vocabulary
    ({"input": [1, 2]}, "invalid_input", "special tokens only"),           # decodes to nothing
    ({"input": [[1, 2], "x"]}, "invalid_input", "input[1]"),
    ({"input": [True]}, "invalid_input", "input"),
    ({"input": ["a", "  "]}, "invalid_input", "input[1]"),
    ({"input": "x", "user": "a\nb"}, "invalid_user", "control"),
    ({"input": "x", "user": "u" * 257}, "invalid_user", "user"),
    ({"input": "x", "dimensions": 0}, "invalid_dimensions", "dimensions"),
])
def test_malformed_inputs_are_400_naming_the_index(api, body, code, fragment):
    h, _, _, _ = api
    r = post(h.url, {"model": MODEL, **body})
    err = r.json()["error"]
    assert r.status_code == 400 and err["type"] == "invalid_request_error"
    assert err["code"] == code and fragment in err["message"], err


# --- 4. limits ---------------------------------------------------------------------------------------------------
def test_limits_are_per_key_cover_every_endpoint_and_retry_after_is_satisfiable(tmp_path):
    with serving(tmp_path, anonymous_requests_per_minute=60, anonymous_burst=2) as (h, _, qlog, _):
        slow = {"Authorization": "Bearer sk-slow"}
        with httpx.Client(base_url=h.url, timeout=30) as c:
            # per-key burst 2 (the server default is 1000): /v1/models counts like any endpoint
            codes = [c.get("/v1/models", headers=slow).status_code for _ in range(3)]
            assert codes == [200, 200, 429]
            r = c.get("/v1/models/" + MODEL, headers=slow)
            assert r.status_code == 429
            wait = int(r.headers["retry-after"])
            assert 1 <= wait <= 2 and int(r.headers["retry-after-ms"]) <= 1000 * wait
            time.sleep(wait)  # a client that obeys Retry-After gets through
            assert c.get("/v1/models/" + MODEL, headers=slow).status_code == 200
            # unauthenticated traffic has a per-address bucket (burst 2)
            assert [c.get("/health").status_code for _ in range(3)] == [200, 200, 429]
        # more texts / tokens than the key's whole per-minute budget: a 400 (no wait would help), not a 429
        r = post(h.url, {"input": ["a"] * 11, "model": MODEL}, key="sk-tiny")
        assert r.status_code == 400 and r.json()["error"]["code"] == "request_exceeds_rate_limit"
        t0 = time.monotonic()
        r = post(h.url, {"input": " ".join(["w"] * 29), "model": MODEL}, key="sk-tiny")  # 31 tokens fits context
        assert r.status_code == 200
        r = post(h.url, {"input": " ".join(["w"] * 29), "model": MODEL}, key="sk-tiny")  # 62 > 60 tokens left
        elapsed = time.monotonic() - t0
        assert r.status_code == 429 and r.json()["error"]["type"] == "tokens"
        assert int(r.headers["retry-after"]) <= 60  # the bucket refills fully within a minute
        # 60 - 31 = 29 left, plus the refill (1 token/s) of however long a loaded machine took between the two
        assert 29 <= int(r.headers["x-ratelimit-remaining-tokens"]) <= 29 + elapsed
    # a request over max_tokens_per_request is a 400 too
    with serving(tmp_path / "b", max_tokens_per_request=10) as (h, _, _, _):
        r = post(h.url, {"input": ["a b c d e", "f g h i j"], "model": MODEL})
        assert r.status_code == 400 and r.json()["error"]["code"] == "max_tokens_per_request"


# --- 2. schema -----------------------------------------------------------------------------------------------------
def test_openapi_schema_describes_bodies_security_and_errors(api):
    h, _, _, _ = api
    s = httpx.get(h.url + "/openapi.json").json()
    assert s["components"]["securitySchemes"]["bearerKey"] == {
        "type": "http", "scheme": "bearer", "description": "API key: `Authorization: Bearer <key>`"}
    op = s["paths"]["/v1/embeddings"]["post"]
    assert op["security"] == [{"bearerKey": []}]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/EmbeddingRequest")
    assert set(op["responses"]) == {"200", "400", "401", "404", "405", "413", "415", "429", "500"}
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/EmbeddingResponse")
    req = s["components"]["schemas"]["EmbeddingRequest"]
    assert set(req["properties"]) == {"input", "model", "encoding_format", "dimensions", "user"}
    assert req["additionalProperties"] is False and len(req["properties"]["input"]["anyOf"]) == 4
    assert "/v1/models/{model_id}" in s["paths"] and "HTTPValidationError" not in s["components"]["schemas"]


# --- 5. privacy ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("retention", ["full", "hash", "none"])
def test_query_log_retention_and_file_modes(tmp_path, retention):
    with serving(tmp_path, retention=retention) as (h, _, qlog, _):
        assert post(h.url, {"input": ["secret text one", "two"], "model": MODEL, "user": "u-7"}).status_code == 200
        row = qlog.rows()[-1]
        assert row["n_inputs"] == 2 and row["retention"] == retention
        if retention == "full":
            assert json.loads(row["texts"]) == ["secret text one", "two"] and row["user_id"] == "u-7"
        elif retention == "hash":
            assert row["texts"] is None and "secret" not in json.dumps(row)
            assert json.loads(row["text_hashes"])[0] == qlog.text_hash("secret text one") and row["user_id"]
        else:
            assert row["texts"] is None and row["text_hashes"] is None and row["user_id"] is None
        assert qlog.sent_text("alice", "secret text one") == (retention != "none")
        assert not qlog.sent_text("alice", "never sent")
        files = [p for p in tmp_path.iterdir() if p.name.startswith("q.sqlite")]
        assert {p.name for p in files} >= {"q.sqlite", "q.sqlite-wal", "q.sqlite-shm"}
        for p in files:
            assert p.stat().st_mode & 0o777 == 0o600, p


def test_client_obeys_retry_after_and_gets_everything(api):
    """A client that waits as told is never refused for good: burst 2, 60/min, 5 sequential requests."""
    from tamperlab.eaas.client import EmbeddingClient

    h, service, _, _ = api
    texts = [f"text {i}" for i in range(10)]
    with EmbeddingClient(h.url, "sk-slow", MODEL, batch_size=2, concurrency=1, max_retries=20,
                         max_total_s=120) as cl:
        got = cl.embed(texts, progress=False)
        assert cl.retries >= 1 and cl.requests_sent == 5 + cl.retries
    assert np.allclose(got, service.embed(texts)[0], atol=1e-6)
