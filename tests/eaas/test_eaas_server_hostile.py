"""Hostile requests against the provider over a real socket (uvicorn on 127.0.0.1): wrong content types and
encodings, bodies that are not JSON text, inputs without text, odd Unicode, oversize bodies, clients that hang
up mid-request, many at once. Each gets a 4xx with a JSON error naming the problem (never a 5xx or a hang), and
the server keeps answering correct requests with the right vectors afterwards."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import numpy as np
import pytest
from test_eaas_api import KEY, MODEL, serving

AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}
GOOD = json.dumps({"input": ["hello world", "apple river"], "model": MODEL}).encode()


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with serving(tmp_path_factory.mktemp("hostile"), max_body_bytes=1_000_000) as s:
        yield s


def _check_good(url, service):
    r = httpx.post(url + "/v1/embeddings", content=GOOD, headers=JSON, timeout=60)
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(got, service.embed(["hello world", "apple river"])[0], atol=1e-6)


@pytest.mark.parametrize("content,headers,status,code,fragment", [
    (GOOD, {**AUTH, "Content-Type": "text/plain"}, 415, "unsupported_media_type", "'text/plain'"),
    (GOOD, AUTH, 415, "unsupported_media_type", "no Content-Type header"),
    (b"input=hi&model=test-embed", {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}, 415,
     "unsupported_media_type", "application/json"),
    (b"\x1f\x8b\x08\x00garbage", {**JSON, "Content-Encoding": "gzip"}, 415, "unsupported_media_type", "gzip"),
    (b"", JSON, 400, "invalid_body", "body is empty"),
    (b"3", JSON, 400, "invalid_body", "JSON object"),
    (b"null", JSON, 400, "invalid_body", "JSON object"),
    (b'"hello"', JSON, 400, "invalid_body", "JSON object"),
    (b'{"input": "caf\xe9", "model": "test-embed"}', JSON, 400, "invalid_body", "byte 0xe9 at position 14"),
    (b'{"input": [' + b"9" * 5000 + b'], "model": "test-embed"}', JSON, 400, "invalid_body", "too many digits"),
    (b'{"input": [NaN], "model": "test-embed"}', JSON, 400, "invalid_input", "input[0]"),
    (b'{"input": "x", "model": "test-embed"', JSON, 400, "invalid_json", "not valid JSON"),
    (json.dumps({"input": ["ok", None], "model": MODEL}).encode(), JSON, 400, "invalid_input", "input[1]"),
    (json.dumps({"input": [[["a"]]], "model": MODEL}).encode(), JSON, 400, "invalid_input", "input[0][0]"),
    (json.dumps({"input": "\x00\x07\u200b", "model": MODEL}).encode(), JSON, 400, "invalid_input",
     "no visible text"),
    (json.dumps({"input": ["ok", "\x1b\x1b"], "model": MODEL}).encode(), JSON, 400, "invalid_input", "input[1]"),
    (json.dumps({"input": "x" * 40_000, "model": MODEL}).encode(), JSON, 400, "input_too_long", "40000"),
    (json.dumps({"input": "x " * 600_000, "model": MODEL}).encode(), JSON, 413, "request_too_large",
     "max_body_bytes"),
], ids=["text-plain", "no-type", "form", "gzip", "empty", "scalar", "null", "string", "latin1", "huge-int", "nan",
        "cut-json", "null-item", "nested", "ctrl-only", "ctrl-item", "long-text", "1.2MB"])
def test_hostile_bodies_get_a_4xx_naming_the_problem(live, content, headers, status, code, fragment):
    h, service, qlog, _ = live
    r = httpx.post(h.url + "/v1/embeddings", content=content, headers=headers, timeout=60)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and fragment in err["message"], err
    assert err["type"] == "invalid_request_error"
    assert qlog.rows()[-1]["status"] == status  # audited like any other request
    _check_good(h.url, service)


def test_unusual_unicode_is_embedded_like_any_text(live):
    """Emoji, RTL with a bidi override, combining marks, zero-width and control characters inside real text,
    and NUL: 200, the vectors of the service called directly (the query log stores them too)."""
    h, service, qlog, _ = live
    texts = ["😀 👍🏽 family 👨‍👩‍👧", "שלום עולם \u202eabc", "e\u0301 cafe\u0301\u200b", "tab\there\x00nul \x1b[31mred",
             "مرحبا بالعالم", "日本語のテキスト"]
    r = httpx.post(h.url + "/v1/embeddings", json={"input": texts, "model": MODEL}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]])
    np.testing.assert_allclose(got, service.embed(texts)[0], atol=1e-6)
    assert json.loads(qlog.rows()[-1]["texts"]) == texts


def _hang_up(host, port, body: bytes, send: int) -> None:
    """Send the headers and `send` bytes of the body, then close the connection without reading."""
    s = socket.create_connection((host, port))
    s.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + KEY.encode() +
              b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body[:send])
    s.close()


def test_disconnects_and_a_crowd_leave_every_other_request_served(tmp_path):
    """20 clients at once (a slow encoder keeps them in flight) while 8 others hang up — half mid-body, half
    after sending a whole request: every staying client gets 200 with its own vectors, nothing is a 5xx, and
    the server answers afterwards."""
    with serving(tmp_path, sleep_s=0.02, batch_wait_ms=20) as (h, service, qlog, _):
        results: dict[int, httpx.Response] = {}

        def stay(i):
            results[i] = httpx.post(h.url + "/v1/embeddings", json={"input": [f"text {i}", f"other {i}"],
                                                                    "model": MODEL}, headers=AUTH, timeout=120)

        body = json.dumps({"input": ["dropped text"] * 4, "model": MODEL}).encode()
        threads = [threading.Thread(target=stay, args=(i,)) for i in range(20)]
        threads += [threading.Thread(target=_hang_up, args=(h.host, h.port, body, len(body) if i % 2 else 10))
                    for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert sorted(results) == list(range(20))
        for i, r in results.items():
            assert r.status_code == 200, r.text
            got = np.array([d["embedding"] for d in r.json()["data"]])
            np.testing.assert_allclose(got, service.embed([f"text {i}", f"other {i}"])[0], atol=1e-6)
        _check_good(h.url, service)
        assert all(row["status"] < 500 for row in qlog.rows())
        assert httpx.get(h.url + "/health", timeout=30).status_code == 200


def test_expired_and_wrong_keys_are_401s_naming_why(tmp_path):
    """A key past its `expires_at` is refused on every endpoint with `expired_api_key` and the expiry time (and
    audited under its holder); a key not yet expired works; a bad date stops the config, not a request."""
    from tamperlab.eaas.server import KeySpec, ServerConfig
    from tamperlab.errors import ConfigError

    keys = [KeySpec("alice"), KeySpec("slow", expires_at="2020-01-01T00:00:00Z"),
            KeySpec("tiny", expires_at="2999-12-31")]
    with serving(tmp_path, keys=keys) as (h, service, qlog, _):
        for path, call in (("/v1/embeddings", lambda hd: httpx.post(h.url + "/v1/embeddings", headers=hd,
                                                                     json={"input": "x", "model": MODEL})),
                           ("/v1/models", lambda hd: httpx.get(h.url + "/v1/models", headers=hd))):
            r = call({"Authorization": "Bearer sk-slow"})
            err = r.json()["error"]
            assert r.status_code == 401 and err["code"] == "expired_api_key", (path, err)
            assert "expired at 2020-01-01T00:00:00+00:00" in err["message"] and err["type"] == "authentication_error"
            assert call({"Authorization": "Bearer sk-tiny"}).status_code == 200
            for bad in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic c2stYWxpY2U="},
                        {"Authorization": "Bearer sk-alice-but-longer"}):
                r = call(bad)
                assert r.status_code == 401 and r.json()["error"]["code"] in ("missing_api_key", "invalid_api_key")
        rows = [r for r in qlog.rows() if r["key_name"] == "slow"]
        assert len(rows) == 2 and all(r["status"] == 401 and r["error"].startswith("expired_api_key") for r in rows)
        _check_good(h.url, service)
    with pytest.raises(ConfigError, match="not an ISO 8601"):
        ServerConfig(keys=[KeySpec("a", expires_at="next tuesday")])
