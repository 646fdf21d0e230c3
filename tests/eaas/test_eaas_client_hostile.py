"""The client (what the stealer and auditor use) against a misbehaving service over a real socket: a scripted
ASGI app under uvicorn on 127.0.0.1 answers each request with the next scripted behaviour. The client must
retry what a later attempt can fix (429, 5xx, a dropped connection, a cut or garbled body), fail at once on
anything else, and every failure is one TamperlabError line; a wrong answer is never returned as vectors."""

from __future__ import annotations

import base64
import json
import socket

import numpy as np
import pytest

from tamperlab.eaas.client import EmbeddingClient, EmbeddingServiceError
from tamperlab.eaas.server import ServerHandle
from tamperlab.errors import TamperlabError

DIM = 4


def _vec(i: int, dim: int = DIM) -> list[float]:
    return [float(i + 1)] * dim


def _ok(n: int, dim: int = DIM, b64: bool = True) -> dict:
    rows = []
    for i in range(n):
        v = np.asarray(_vec(i, dim), dtype="<f4")
        rows.append({"object": "embedding", "index": i,
                     "embedding": base64.b64encode(v.tobytes()).decode() if b64 else v.tolist()})
    return {"object": "list", "data": rows, "model": "m", "usage": {"prompt_tokens": n, "total_tokens": n}}


class Scripted:
    """ASGI app: request k gets behaviour script[min(k, len-1)]; `seen` counts requests."""

    def __init__(self, *script):
        self.script, self.seen = list(script), 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                await send({"type": msg["type"] + ".complete"})
                if msg["type"] == "lifespan.shutdown":
                    return
        more = True
        body = b""
        while more:
            msg = await receive()
            body += msg.get("body", b"")
            more = msg.get("more_body", False)
        n = len(json.loads(body)["input"])
        step = self.script[min(self.seen, len(self.script) - 1)]
        self.seen += 1
        status, headers, payload, declared = step(n)
        headers = [(k.encode(), v.encode()) for k, v in headers.items()]
        headers.append((b"content-length", str(declared if declared is not None else len(payload)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def json_answer(status, obj=None, headers=None):
    return lambda n: (status, {"content-type": "application/json", **(headers or {})},
                      json.dumps(obj(n) if callable(obj) else obj).encode(), None)


OK = json_answer(200, _ok)
ERR500 = json_answer(500, {"error": {"message": "boom\nwith a second line", "type": "server_error"}})


def raw(status, payload: bytes, declared=None):
    return lambda n: (status, {"content-type": "application/json"}, payload, declared)


@pytest.fixture
def serve():
    handles = []

    def start(*script):
        app = Scripted(*script)
        h = ServerHandle(app).start()
        handles.append(h)
        return app, EmbeddingClient(h.url, "sk", "m", batch_size=2, concurrency=1, max_retries=2, backoff_s=0.01,
                                    max_total_s=60, timeout=10)

    yield start
    for h in handles:
        h.stop()


def _one_line_error(cl, texts=("a", "b")):
    with pytest.raises(TamperlabError) as ei:
        cl.embed(list(texts), progress=False)
    msg = str(ei.value)
    assert isinstance(ei.value, EmbeddingServiceError) and "\n" not in msg and msg.startswith("embedding service")
    return msg


@pytest.mark.parametrize("first", [
    ERR500,
    json_answer(503, {"error": {"message": "overloaded"}}, {"retry-after": "soon"}),  # unusable Retry-After
    json_answer(429, {"error": {"message": "slow down"}}, {"retry-after": "-5"}),      # negative Retry-After
    raw(200, b"<html>proxy error</html>"),                                             # garbage 200 body
    raw(200, json.dumps(_ok(2)).encode()[:40]),                                        # JSON cut short
    raw(200, json.dumps(_ok(2)).encode()[:40], declared=400),                          # connection cut mid-body
], ids=["500", "503-bad-retry-after", "429-negative-retry-after", "garbage", "truncated-json", "cut-body"])
def test_transient_failures_are_retried_then_succeed(serve, first):
    app, cl = serve(first, OK)
    got = cl.embed(["a", "b", "c"], progress=False)
    np.testing.assert_array_equal(got, np.array([_vec(0), _vec(1), _vec(0)], np.float32))  # 2 chunks of ≤ 2
    assert cl.retries == 1 and app.seen == 3


@pytest.mark.parametrize("always,fragment", [
    (ERR500, "answered 500: boom with a second line (after 2 retries)"),
    (raw(200, b"not json at all"), "not JSON"),
    (raw(200, json.dumps(_ok(2)).encode()[:40], declared=400), "unreachable (RemoteProtocolError"),
])
def test_persistent_failures_end_in_one_line_after_bounded_retries(serve, always, fragment):
    app, cl = serve(always)
    assert fragment in _one_line_error(cl)
    assert app.seen == 3  # 1 + max_retries, then the other chunk is never sent


@pytest.mark.parametrize("answer,fragment", [
    (json_answer(400, {"error": {"message": "bad input"}}), "answered 400: bad input"),
    (json_answer(200, lambda n: _ok(n, dim=3)), "dimension [3]"),                        # not the expected 4
    (json_answer(200, lambda n: {**_ok(n), "data": _ok(n)["data"][:1]}), "1 embeddings for 2 inputs"),
    (json_answer(200, lambda n: {**_ok(n), "data": [{**d, "index": 5} for d in _ok(n)["data"]]}), "indices"),
    (json_answer(200, lambda n: {"data": [{"index": 0, "embedding": [1.0] * 4},
                                          {"index": 1, "embedding": [1.0] * 5}]}), "dimension"),
    (json_answer(200, lambda n: {"data": [{"index": i, "embedding": [float("nan")] * 4} for i in range(n)]}),
     "non-finite"),
    (json_answer(200, lambda n: {"data": [{"index": i, "embedding": base64.b64encode(
        np.array([1, np.inf, 0, 0], "<f4").tobytes()).decode()} for i in range(n)]}), "non-finite"),
    (json_answer(200, lambda n: {"data": [{"index": i, "embedding": "!!notbase64"} for i in range(n)]}),
     "malformed"),
    (json_answer(200, lambda n: {"data": [{"index": i, "embedding": [[1.0, 2.0]]} for i in range(n)]}),
     "malformed"),
    (json_answer(200, [1, 2, 3]), "malformed"),
], ids=["400", "wrong-dim", "missing-row", "bad-indices", "ragged", "nan", "inf-base64", "bad-base64", "nested",
        "not-an-object"])
def test_wrong_answers_fail_at_once_never_as_vectors(serve, answer, fragment):
    app, cl = serve(answer)
    cl.dim = DIM
    assert fragment in _one_line_error(cl)
    assert app.seen == 1 and cl.retries == 0


def test_dimension_is_fixed_by_the_first_answer(serve):
    """Without an expected size, the first answer sets it and a later one of another size is refused."""
    app, cl = serve(OK, json_answer(200, lambda n: _ok(n, dim=DIM + 1)))
    assert "dimension [5]" in _one_line_error(cl, ["a", "b", "c"])
    assert cl.dim == DIM and app.seen == 2


def test_unreachable_service(serve):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with EmbeddingClient(f"http://127.0.0.1:{port}", "sk", "m", max_retries=2, backoff_s=0.01) as cl:
        msg = _one_line_error(cl)
        assert "unreachable (ConnectError" in msg and "after 2 retries" in msg and cl.requests_sent == 3


def test_retry_wait_past_the_deadline_gives_up_at_once(serve):
    app, cl = serve(json_answer(429, {"error": {"message": "later"}}, {"retry-after": "3600"}), OK)
    assert "gave up" in _one_line_error(cl) and app.seen == 1
