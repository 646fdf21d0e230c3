"""EaaS provider throughput and latency on loopback, as a ratio to calling the embedder in-process.

Serves the embedded all-MiniLM-L6-v2 with EmbMarker through real uvicorn on 127.0.0.1 (ephemeral port), then
drives it with a bounded concurrent load (C client threads, R requests of B distinct texts each, and a wall-clock
cap). Baseline: the same requests as sequential in-process `service.embed` calls (embedder + watermark, no HTTP).
A second baseline encodes all texts in-process in batches of 128 (the micro-batcher's target), the
upper bound for one process. Checks: zero HTTP errors and one query-log row per request (zero lost rows). Prints throughput (texts/s), p50/p99
latency of both and the ratios. No assertions on time: the ratio is the result.

    python benchmarks/bench_eaas.py [--concurrency 8] [--requests 64] [--batch 16] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64, help="total requests (bounded load)")
    ap.add_argument("--batch", type=int, default=16, help="texts per request")
    ap.add_argument("--max-seconds", type=float, default=300, help="wall-clock cap of the HTTP phase")
    ap.add_argument("--out", type=Path, help="also write the numbers as JSON")
    args = ap.parse_args()

    import httpx

    from tamperlab.eaas.data import generated_task
    from tamperlab.eaas.querylog import QueryLog
    from tamperlab.eaas.server import KeySpec, ServerConfig, ServerHandle, create_app
    from tamperlab.eaas.service import ProviderConfig, build_service

    n_texts = args.requests * args.batch
    texts = generated_task("gen_topic", n_texts, seed=123).texts  # distinct texts: no cache effects
    batches = [texts[i:i + args.batch] for i in range(0, n_texts, args.batch)]
    service = build_service(ProviderConfig(cache_size=0), texts[:200], None)
    service.embed(texts[:32])  # warm-up (first-call allocations)

    # In-process baselines: (a) the same requests one after the other; (b) all texts in batches of 128, which is
    # what the server's micro-batcher aims for — the best a single process can do with this model.
    lat_in = []
    t0 = time.perf_counter()
    for b in batches:
        t = time.perf_counter()
        service.embed(b)
        lat_in.append(time.perf_counter() - t)
    wall_in = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(0, n_texts, 128):
        service.embed(texts[i:i + 128])
    wall_bulk = time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp(prefix="bench_eaas_"))
    qlog = QueryLog(tmp / "q.sqlite", log_texts=True)
    cfg = ServerConfig(keys=[KeySpec("bench")], requests_per_minute=0, texts_per_minute=0, burst=1_000_000,
                       max_batch=max(256, args.batch))
    app = create_app(service, cfg, {"bench": "sk-bench"}, qlog)
    lat_http: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    todo = list(range(len(batches)))
    deadline = time.monotonic() + args.max_seconds

    def worker(url: str) -> None:
        with httpx.Client(base_url=url, timeout=120, headers={"Authorization": "Bearer sk-bench"}) as c:
            while time.monotonic() < deadline:
                with lock:
                    if not todo:
                        return
                    i = todo.pop()
                t = time.perf_counter()
                try:
                    r = c.post("/v1/embeddings", json={"input": batches[i], "model": service.model_name})
                    ok = r.status_code == 200 and len(r.json()["data"]) == len(batches[i])
                    err = None if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                except Exception as e:  # counted, not raised: the benchmark reports errors
                    err = f"{type(e).__name__}: {e}"
                with lock:
                    lat_http.append(time.perf_counter() - t)
                    if err:
                        errors.append(err)

    with ServerHandle(app) as srv:
        with httpx.Client(base_url=srv.url, headers={"Authorization": "Bearer sk-bench"}) as c:
            c.post("/v1/embeddings", json={"input": texts[:8], "model": service.model_name})  # warm-up
        rows_before = qlog.count()
        threads = [threading.Thread(target=worker, args=(srv.url,)) for _ in range(args.concurrency)]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall_http = time.perf_counter() - t0
    rows = qlog.count() - rows_before
    qlog.close()

    sent = len(lat_http)
    served_texts = sum(len(batches[i]) for i in range(len(batches))) if sent == len(batches) else sent * args.batch
    res = {
        "device": "cpu", "cpu_count": os.cpu_count(), "requests": sent, "texts": served_texts,
        "batch": args.batch, "concurrency": args.concurrency,
        "inprocess_texts_per_s": n_texts / wall_in,
        "inprocess_bulk_texts_per_s": n_texts / wall_bulk,
        "http_texts_per_s": served_texts / wall_http,
        "inprocess_p50_ms": 1000 * float(np.percentile(lat_in, 50)),
        "inprocess_p99_ms": 1000 * float(np.percentile(lat_in, 99)),
        "http_p50_ms": 1000 * float(np.percentile(lat_http, 50)) if lat_http else None,
        "http_p99_ms": 1000 * float(np.percentile(lat_http, 99)) if lat_http else None,
        "errors": len(errors), "log_rows": rows, "lost_log_rows": sent - rows,
        "unfinished_requests": len(batches) - sent,
    }
    res["throughput_ratio_http_over_inprocess"] = res["http_texts_per_s"] / res["inprocess_texts_per_s"]
    res["throughput_ratio_http_over_inprocess_bulk"] = res["http_texts_per_s"] / res["inprocess_bulk_texts_per_s"]
    if lat_http:
        res["p50_latency_ratio"] = res["http_p50_ms"] / res["inprocess_p50_ms"]
    for k, v in res.items():
        print(f"{k:40s} {v:.4g}" if isinstance(v, float) else f"{k:40s} {v}")
    print(f"RATIO throughput (HTTP / in-process, same requests): {res['throughput_ratio_http_over_inprocess']:.3f}")
    print(f"RATIO throughput (HTTP / in-process, bulk batches of 128): "
          f"{res['throughput_ratio_http_over_inprocess_bulk']:.3f}")
    if errors:
        print("first errors:", *errors[:3], sep="\n  ")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))
    ok = not errors and res["lost_log_rows"] == 0 and res["unfinished_requests"] == 0
    print("OK: zero errors, zero lost log rows" if ok else "FAILED: errors, lost log rows or unfinished requests")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
