"""Slow (real all-MiniLM-L6-v2): the copy model learns the watermark; `tamperlab serve` end to end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_copy_of_watermarked_service_verifies_copy_of_clean_does_not(tmp_path):
    from tamperlab.eaas.data import load_task
    from tamperlab.eaas.service import ProviderConfig, build_service
    from tamperlab.eaas.stealer import StealerConfig, copier_encode, train_copier

    texts = load_task("gen_topic", "train", 400, seed=0).texts
    service = build_service(ProviderConfig(), texts, None)
    stolen, triggered = service.embed(texts)
    assert 0.05 < triggered.mean() < 0.3
    cfg = StealerConfig(n_layers=2, head_epochs=30, epochs=0)
    wm = service.watermark
    copy = train_copier(texts, stolen, cfg, tmp_path / "wm", seed=0)
    hit = wm.verify(lambda t: copier_encode(copy, t))
    clean = train_copier(texts, service.embedder.encode(texts), cfg, tmp_path / "clean", seed=0)
    miss = wm.verify(lambda t: copier_encode(clean, t))
    assert hit["detected"] and hit["p_value"] < 0.01 and hit["delta_cos"] > 0.05
    assert not miss["detected"] and miss["delta_cos"] < hit["delta_cos"]
    assert (tmp_path / "wm" / "model" / "model.safetensors").exists() or any((tmp_path / "wm" / "model").rglob(
        "*.safetensors"))


def test_tamperlab_serve_end_to_end(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TAMPERLAB_EAAS_KEY_STEALER": "sk-e2e", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tamperlab.cli", "serve", "demo_eaas", "--host", "127.0.0.1",
                             "--port", str(port), "--set", f"output_dir={tmp_path}", "--set", "data.n_train=50"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()[-2000:]
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.5)
        r = httpx.post(url + "/v1/embeddings", json={"input": ["hello", "world"], "model": "tamperlab-minilm"},
                       headers={"Authorization": "Bearer sk-e2e"}, timeout=30)
        assert r.status_code == 200 and len(r.json()["data"]) == 2
        assert np.isclose(np.linalg.norm(r.json()["data"][0]["embedding"]), 1, atol=1e-4)
        state = tmp_path / "demo_eaas" / "provider"
        assert json.loads((state / "watermark.json").read_text())["name"] == "embmarker"
        assert "sk-e2e" not in (state / "keys.json").read_text()  # env secrets never written
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_with_unreachable_hub_model_exits_2_with_a_message(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tamperlab.cli", "serve", "demo_eaas", "--port", "1",
                          "--set", "provider.model=no-such-org/no-such-model", "--set", f"output_dir={tmp_path}"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2
    assert "Hugging Face Hub could not provide it" in out.stderr and "Traceback" not in out.stderr
