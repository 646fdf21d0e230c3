"""Scale path: 2 processes (`accelerate launch`, DDP over gloo) give the results of 1 process at the same global
batch — per-step losses of SFT, NPO and CTRAP alignment and the fine-tuning attack, and the final adapters —
on a small model whose loss is not flat (trained first for a few dozen steps), with responses of different lengths
so that the ranks hold different numbers of label tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from launching import CPU_2PROC, ENV, ROOT, launch, run_ok  # tests/ is on sys.path

SCRIPT = ROOT / "tests" / "scripts" / "ddp_ctrap_steps.py"
# scripts/gpu_check.sh points this at multi_gpu.yaml to run the same comparison on 2 GPUs.
CONFIG = Path(os.environ.get("TAMPERLAB_DDP_CONFIG", CPU_2PROC))


@pytest.fixture(scope="module")
def trained_model(tmp_path_factory):
    """tiny:llama after 24 SFT steps on the script's data: a model with a non-flat loss (≈10.8 → ≈2)."""
    sys.path.insert(0, str(SCRIPT.parent))
    from ddp_ctrap_steps import _data

    from tamperlab.models import ModelConfig, load_model
    from tamperlab.training import TrainConfig, train_sft

    out = tmp_path_factory.mktemp("pretrained")
    model, tok = load_model(ModelConfig(name_or_path="tiny:llama"), seed=0)
    d = _data(16)
    stats = train_sft(model, tok, list(d.refusal) + list(d.harmful) + list(d.helpful),
                      TrainConfig(learning_rate=1e-2, max_steps=24, batch_size=8, save_steps=1000),
                      out / "ckpt", resume=False)
    model.save_pretrained(out / "model", safe_serialization=True)
    tok.save_pretrained(out / "model")
    return out / "model", stats


def _run(cmd, out):
    run_ok(cmd)
    return json.loads(out.read_text())


def test_two_processes_equal_one(tmp_path, trained_model):
    model_dir, pre = trained_model
    one = _run([sys.executable, str(SCRIPT), str(tmp_path / "one.json"), str(model_dir), "4"], tmp_path / "one.json")
    two = _run(launch(str(SCRIPT), str(tmp_path / "two.json"), str(model_dir), "2", config=CONFIG),
               tmp_path / "two.json")
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert abs(two["checksums"][0] - two["checksums"][1]) < 1e-9, two["checksums"]  # replicas identical
    stages = list(one["stages"])
    assert stages == list(two["stages"]) and {"sft", "npo", "ctrap", "attack"} <= set(stages)
    for stage in stages:
        a, b = one["stages"][stage], two["stages"][stage]
        assert a["steps"] == b["steps"] == 3 and b["trainer_world_size"] == 2
        assert len(a["losses"]) == len(b["losses"]) == 3
        diff = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
        print(f"{stage}: losses 1 proc {a['losses']}  2 proc {b['losses']}  max |diff| {diff:.2e}")
        assert diff < 1e-4, (stage, a["losses"], b["losses"])
        assert a["losses"][0] < 9.0  # the trained model: far from the flat ln(vocab) ≈ 10.8 of a random init
    for stage in stages:
        wa, wb = one["adapters"][stage], two["adapters"][stage]
        diff = max(abs(x - y) for x, y in zip(wa, wb))
        print(f"{stage}: adapter max |diff| {diff:.2e}")
        assert diff < 1e-4, stage
    # the stages actually trained: the attack moved the CTRAP adapter
    assert max(abs(x - y) for x, y in zip(one["adapters"]["ctrap"], one["adapters"]["attack"])) > 1e-4


def test_auxiliary_loader_shards_equal_the_single_process_batch(tokenizer):
    """CycledLoader: the rows ranks 0 and 1 draw at batch b are, together, the rows 1 process draws at batch 2b,
    for every step k (through epoch boundaries); the rank is read at the first batch, not at construction."""
    import sys

    sys.path.insert(0, str(SCRIPT.parent))
    from ddp_ctrap_steps import _data

    from tamperlab.training import CycledLoader, PadCollator, TokenizedDataset

    ds = TokenizedDataset(tokenizer, list(_data(10).helpful))
    coll = PadCollator(tokenizer.pad_token_id)

    def rows(loader, k):
        b = loader.batch(k)
        return sorted(tuple(r[m.bool()].tolist()) for r, m in zip(b["input_ids"], b["attention_mask"]))

    one = CycledLoader(ds, 4, coll, seed=3)
    ranks = [CycledLoader(ds, 2, coll, seed=3) for _ in range(2)]
    assert one._shard is None  # nothing read at construction
    for r, loader in enumerate(ranks):
        loader._shard = (r, 2)  # what rank r of 2 reads at its first batch
    for k in range(7):
        assert rows(one, k) == sorted(rows(ranks[0], k) + rows(ranks[1], k)), k
        assert not set(rows(ranks[0], k)) & set(rows(ranks[1], k))


def test_shard_and_gather_single_process_is_the_function():
    from tamperlab.distributed import shard_and_gather

    assert shard_and_gather(list(range(5)), lambda xs: [x * x for x in xs]) == [0, 1, 4, 9, 16]


@pytest.mark.slow  # a full 2-process CLI run: ≈1.5 min on the loaded 2-core machine
def test_readme_command_on_a_fresh_directory(tmp_path):
    """`accelerate launch --config_file cpu_2proc.yaml -m tamperlab.cli run RECIPE` on a fresh directory: rank 0
    creates and writes the run, rank 1 waits and computes its shards — one run_start (world size 2), every stage
    once, one metrics.json and report, files 0644."""
    recipe = ROOT / "tests" / "fixtures" / "tiny_ctrap.yaml"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG), "-m", "tamperlab.cli",
           "run", str(recipe), "--output-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run = tmp_path / "tiny_ctrap"
    events = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["event"] == "run_start"]
    assert len(starts) == 1 and starts[0]["world_size"] == 2
    stages = [e["stage"] for e in events if e["event"] == "stage_done"]
    assert len(stages) == len(set(stages)) == 7  # data, 2 × (align, eval-aligned, attack)
    assert sum(e["event"] == "metrics_written" for e in events) == 1
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["results"]) == {"sft", "ctrap"}
    mask = os.umask(0)
    os.umask(mask)
    for f in ("config.yaml", "metrics.json", "report.md", "log.jsonl"):
        assert (run / f).stat().st_mode & 0o777 == 0o666 & ~mask, f  # 0644 under the usual umask
