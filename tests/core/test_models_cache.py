"""The per-run model cache: each distinct model is read from disk once, the copies handed out are independent of
each other and of the pristine copy (peft wrapping, merging and pruning change a model in place), the code after a
cached load sees the RNG state of a fresh load, and a whole run gives the metrics of the uncached code."""

from __future__ import annotations

import collections
import json
import math

import pytest
import torch

from tamperlab import models
from tamperlab.models import LoraSettings, ModelConfig, apply_lora, load_model, model_cache, save_model

TINY = ModelConfig(name_or_path="tiny:llama")


@pytest.fixture
def disk_reads(monkeypatch):
    """Counts the real loads (disk reads, or the random init of a tiny model) per name_or_path."""
    counts: collections.Counter[str] = collections.Counter()
    real = models._load_from_disk

    def counted(cfg, seed=0):  # noqa: ANN001, ANN202
        counts[cfg.name_or_path] += 1
        return real(cfg, seed)

    monkeypatch.setattr(models, "_load_from_disk", counted)
    return counts


def _state(model) -> dict[str, torch.Tensor]:  # noqa: ANN001
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_read_and_independent_copies(disk_reads):
    fresh = _state(load_model(TINY, seed=0)[0])  # the uncached code path: the reference weights
    assert disk_reads["tiny:llama"] == 1
    with model_cache() as cache:
        m1, tok1 = load_model(TINY, seed=0)
        # what the arms of a run do to their copy: LoRA (freezes and wraps the base in place), merge, prune
        peft = apply_lora(m1, LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for n, p in peft.named_parameters():
                if "lora_B" in n:
                    p.fill_(0.5)
        merged = peft.merge_and_unload()
        with torch.no_grad():
            merged.model.layers[0].mlp.up_proj.weight.zero_()
        merged.generation_config.bad_words_ids = [[5]]
        m2, tok2 = load_model(TINY, seed=0)
        assert _equal(_state(m2), fresh) and not _equal(_state(merged), fresh)
        assert all(p.requires_grad for p in m2.parameters())  # not frozen by the first copy's peft wrap
        assert m2.generation_config.bad_words_ids is None
        assert m2.lm_head.weight is m2.model.embed_tokens.weight  # tied weights stay tied in a copy
        assert not m2.training and tok2 is tok1
        assert cache.disk_loads == {"tiny:llama": 1} and cache.hits == {"tiny:llama": 1}
        load_model(TINY, seed=1)  # another init seed is another model
        assert cache.disk_loads == {"tiny:llama": 2}
    assert disk_reads["tiny:llama"] == 3
    load_model(TINY, seed=0)  # outside a run: no cache
    assert disk_reads["tiny:llama"] == 4


def test_random_numbers_after_a_cached_load_equal_those_after_a_fresh_load():
    load_model(TINY, seed=3)
    after_fresh = torch.rand(8)
    with model_cache():
        load_model(TINY, seed=3)  # miss
        torch.rand(100)  # what happens in between (LoRA init, dropout) moves the generator on
        load_model(TINY, seed=3)  # hit
        after_hit = torch.rand(8)
    assert torch.equal(after_fresh, after_hit)


def test_a_resaved_local_checkpoint_is_read_again(tmp_path, disk_reads):
    model, tok = load_model(TINY, seed=0)
    folder = tmp_path / "ckpt"
    save_model(model, tok, folder)
    cfg = ModelConfig(name_or_path=str(folder))
    with model_cache():
        a, _ = load_model(cfg)
        b, _ = load_model(cfg)
        assert disk_reads[str(folder)] == 1 and _equal(_state(a), _state(b))
        with torch.no_grad():
            model.model.norm.weight.fill_(2.0)
        save_model(model, tok, folder)  # a stage re-saved during the run
        c, _ = load_model(cfg)
        assert disk_reads[str(folder)] == 2 and torch.equal(c.model.norm.weight, torch.full_like(c.model.norm.weight, 2.0))


def test_budget_keeps_the_most_recent_model_and_zero_disables(disk_reads):
    with model_cache(max_bytes=1) as cache:  # smaller than any model: one (the newest) is kept
        load_model(TINY, seed=0)
        load_model(TINY, seed=1)
        load_model(TINY, seed=1)
        assert cache.disk_loads["tiny:llama"] == 2 and len(cache._entries) == 1
        load_model(TINY, seed=0)  # evicted: read again
        assert cache.disk_loads["tiny:llama"] == 3
    with model_cache(max_bytes=0) as cache:
        load_model(TINY, seed=0)
        load_model(TINY, seed=0)
        assert cache.disk_loads["tiny:llama"] == 2 and not cache._entries


def _leaves(d, path=""):  # noqa: ANN001, ANN202
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _leaves(v, f"{path}/{k}")
    elif isinstance(d, list):
        for i, v in enumerate(d):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, d


def test_a_run_reads_its_model_once_and_gives_the_uncached_metrics(tmp_path, monkeypatch, disk_reads):
    """The extraction demo's smoke run (publisher backdoor, victims, extraction, detection: 9 loads of the base
    model) with the cache off (every load from disk, the code before the cache) and on."""
    from tamperlab.cli import main

    metrics = {}
    for label, budget in (("uncached", "0"), ("cached", "4")):
        monkeypatch.setenv("TAMPERLAB_MODEL_CACHE_GB", budget)
        disk_reads.clear()
        out = tmp_path / label
        assert main(["run", "demo_extraction", "--smoke", "--name", "x", "--set", f"output_dir={out}"]) == 0
        metrics[label] = (json.loads((out / "x-smoke" / "metrics.json").read_text()), dict(disk_reads))
    (before, reads_before), (after, reads_after) = metrics["uncached"], metrics["cached"]
    assert reads_before == {"tiny:llama": 9} and reads_after == {"tiny:llama": 1}
    timing = ("seconds", "per_second", "wall", "git_hash", "output_dir")
    a = {k: v for k, v in _leaves(before) if not any(t in k for t in timing)}
    b = {k: v for k, v in _leaves(after) if not any(t in k for t in timing)}
    assert a.keys() == b.keys() and len(a) > 500
    diff = [k for k in a if a[k] != b[k] and not (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k]))]
    assert not diff, diff[:10]
