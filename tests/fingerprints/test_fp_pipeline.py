"""End to end on the tiny model: embed a fingerprint (FSR 1) → MEraser erase (FSR drops), the transferable
LoRA, removal contracts over the registry, and the experiment's recipe validation."""

from __future__ import annotations

import pytest
import torch

from tamperlab.data.core import DataSplit, Example
from tamperlab.errors import ConfigError
from tamperlab.fingerprints.cleandata import CleanData
from tamperlab.fingerprints.removal import RemovalContext
from tamperlab.models import ModelConfig, load_model
from tamperlab.registry import FINGERPRINTS, REMOVALS

CLEAN = ([Example(f"What is {i} plus one?", f"It is {i + 1}.") for i in range(12)]
         + [Example(f"Why is {i} odd?", f"Because {i} is not even.") for i in range(12)]
         + [Example(f"Write the number {i}.", f"{i}") for i in range(12)])


def _if(lr: float = 1e-2, steps: int = 60):
    # Raw prompts and short messages keep the rows small: the tiny model memorises 2 triggers in a few seconds.
    return FINGERPRINTS.build("instructional", {
        "prompt_format": "raw", "n_fingerprints": 2, "n_negatives": 0, "n_regularization": 0,
        "min_snippets": 2, "max_snippets": 3,
        "embed": {"train": {"learning_rate": lr, "max_steps": steps, "batch_size": 2, "grad_accum": 1,
                            "lr_scheduler": "constant",
                            "weight_decay": 0.0, "logging_steps": 20}}})


def _ctx(tok, tmp_path) -> RemovalContext:  # noqa: ANN001
    clean = CleanData(DataSplit("train", CLEAN), DataSplit("heldout", CLEAN[:4]))
    return RemovalContext(tok=tok, clean=clean, work_dir=tmp_path / "work", shared_dir=tmp_path / "shared",
                          load_base=lambda: load_model(ModelConfig(name_or_path="tiny:llama"), seed=0)[0])


# The tiny model's erase, calibrated with margin. The official q/v LoRA sits on a knife edge here: 4 steps at 1e-2
# left FSR at 1 or took it to 0 depending on the init seed and even on the CPU's kernels (AVX-512 vs AVX2), and
# 24 q/v steps at 2e-2 still left a trigger's answer at NLL 1.8 nats/token on one seed. A LoRA on every linear
# layer, 24 steps at 2e-2, brings the erase loss to its plateau (~15 → ~7.5) and the fingerprint answer to
# ≥ 6 nats/token, FSR 0, on init seeds 0/1/2 under AVX-512, AVX2 and scalar kernels; the end-to-end recipe
# below erases to FSR 0 on experiment seeds 0/1/2 under AVX-512 and AVX2 (fpfix, 2026-11-30).
TINY_ERASE = {"n_examples": 16, "epochs": 12.0,
              "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
              "train": {"learning_rate": 2e-2, "batch_size": 8, "logging_steps": 4}}


def _meraser(name: str, **erase):  # noqa: ANN003
    return REMOVALS.build(name, {"erase": {**TINY_ERASE, "data_format": "raw", **erase}, "do_recover": False})


@pytest.fixture(scope="module")
def fingerprinted(tmp_path_factory):
    torch.manual_seed(0)
    model, tok = load_model(ModelConfig(name_or_path="tiny:llama"), seed=0)
    fp = _if()
    fps = fp.build_pairs(tok)
    before = fp.verify(model, tok, fps, progress=False)
    model, stats = fp.embed(model, tok, fps, tmp_path_factory.mktemp("embed"))
    return fp, fps, model, tok, before, stats


def test_embedding_makes_the_fingerprint_fire(fingerprinted):
    fp, fps, model, tok, before, stats = fingerprinted
    assert before["official"].fsr == 0.0 and before["plain"].fsr == 0.0
    after = fp.verify(model, tok, fps, progress=False)
    assert after["official"].fsr == 1.0 and after["plain"].fsr == 1.0
    assert stats["loss_history"][-1] < 0.1 * stats["loss_history"][0]


def test_meraser_erase_flips_fsr_from_high_to_low(fingerprinted, tmp_path):
    fp, fps, model, tok, _, _ = fingerprinted
    state = {k: v.clone() for k, v in model.state_dict().items()}
    stages = list(_meraser("meraser").apply(model, _ctx(tok, tmp_path)))
    assert [s.name for s in stages] == ["erase"]
    erased = stages[0].model
    assert not hasattr(erased, "peft_config")  # the LoRA is merged back into plain weights
    res = fp.verify(erased, tok, fps, progress=False)
    assert res["official"].fsr == 0.0 and res["plain"].fsr == 0.0
    losses = stages[0].info["train"]["loss_history"]
    assert losses[-1] < 0.6 * losses[0]  # the erase converged (~15 → ~7.5), not a lucky first steps
    assert (tmp_path / "work" / "erase_adapter" / "adapter_model.safetensors").exists()
    model.load_state_dict(state)  # leave the shared fixture as it was


def test_transfer_lora_trained_on_the_clean_base_erases_an_unseen_model(fingerprinted, tmp_path):
    fp, fps, model, tok, _, _ = fingerprinted
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ctx = _ctx(tok, tmp_path)
    # trained on a model without the fingerprint, the LoRA needs a stronger erase than the direct one: on every
    # linear layer, 16 steps at 3e-2 leave the answer at >= 5.4 nats/token on seeds 0/1/2 (q/v only: 0.8 on seed 2)
    removal = _meraser("meraser_transfer", epochs=8.0, train={"learning_rate": 3e-2, "batch_size": 8})
    (stage,) = list(removal.apply(model, ctx))
    assert stage.info["trained_on"] == "clean base model"
    assert fp.verify(stage.model, tok, fps, progress=False)["official"].fsr == 0.0
    # trained once per run: applying it to another fingerprinted model reuses the adapter without training
    (adapter,) = list((tmp_path / "shared").glob("meraser-transfer-*/erase_adapter/adapter_model.safetensors"))
    stamp = adapter.stat().st_mtime_ns
    model.load_state_dict(state)
    (again,) = list(removal.apply(model, ctx))
    assert adapter.stat().st_mtime_ns == stamp and again.info["adapter"] == stage.info["adapter"]
    model.load_state_dict(state)


def test_weak_removals_keep_the_fingerprint(fingerprinted, tmp_path):
    fp, fps, model, tok, _, _ = fingerprinted
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name, params in [("prune_magnitude", {"ratio": 0.05}), ("prune_wanda", {"ratio": 0.05, "n_calibration": 4})]:
        (stage,) = list(REMOVALS.build(name, params).apply(model, _ctx(tok, tmp_path)))
        assert fp.verify(stage.model, tok, fps, progress=False)["official"].fsr == 1.0, name
        model.load_state_dict(state)


def test_every_removal_has_a_documented_config():
    for reg in (REMOVALS, FINGERPRINTS):
        for e in reg:
            assert e.doc, f"{e.name} has no docstring"
            assert e.config is e.obj.config_cls, e.name
            obj = e.obj(e.config())  # every field has a default
            assert obj.cfg is not None
    assert all(e.obj.paper for e in FINGERPRINTS)


def test_recipes_load_and_validate():
    from tamperlab.experiments.base import load_recipe

    demo = load_recipe("demo_fingerprints")
    assert [f.name for f in demo.cfg.fingerprints] == ["instructional", "utf", "hashchain"]
    assert {r.name for r in demo.cfg.removals} >= {"meraser", "meraser_transfer"}
    gpu = load_recipe("meraser_paper_gpu")
    assert gpu.cfg.model.name_or_path.startswith("meta-llama/")
    with pytest.raises(ConfigError, match="unknown fingerprint"):
        load_recipe({"experiment": "fingerprints", "fingerprints": [{"name": "instructionl"}]})
    with pytest.raises(ConfigError, match="n_fingerprint"):
        load_recipe({"experiment": "fingerprints", "fingerprints": [{"name": "instructional",
                                                                      "params": {"n_fingerprint": 3}}]})
    with pytest.raises(ConfigError, match="targets"):
        load_recipe({"experiment": "fingerprints", "removals": [{"name": "finetune", "targets": ["nope"]}]})


def test_experiment_end_to_end_on_the_tiny_model(tmp_path):
    from tamperlab.experiments.base import execute, load_recipe

    fp_params = {"prompt_format": "raw", "n_fingerprints": 2, "n_negatives": 0, "n_regularization": 0,
                 "min_snippets": 2, "max_snippets": 3,
                 "embed": {"train": {"learning_rate": 1e-2, "max_steps": 60, "batch_size": 2, "grad_accum": 1,
                                     "lr_scheduler": "constant", "weight_decay": 0.0}}}
    exp = load_recipe({
        "experiment": "fingerprints", "name": "tiny", "output_dir": str(tmp_path),
        "model": {"name_or_path": "tiny:llama"},
        "clean_data": {"n_train": 24, "n_heldout": 8, "response_tokens": 8},
        "utility": {"ppl_examples": 8, "mc_items": 14, "lm_eval": "off"},
        "fingerprints": [{"name": "instructional", "params": fp_params},
                         {"name": "hashchain", "params": {"prompt_format": "raw", "n_questions": 2, "n_augment": 1,
                                                          "embed": fp_params["embed"]}}],
        "removals": [{"name": "meraser", "targets": ["instructional"],
                      "params": {"erase": TINY_ERASE,
                                 "recover": {"n_examples": 8, "epochs": 1.0}}},
                     {"name": "prune_magnitude", "params": {"ratio": 0.05}}],
    })
    run = execute(exp)
    res = run.load_metrics()["results"]["fingerprints"]["instructional"]
    assert res["fingerprinted"]["fsr"]["official"]["fsr"] == 1.0
    assert res["removals"]["meraser"]["stages"]["erase"]["fsr"]["official"]["fsr"] == 0.0
    assert res["removals"]["prune_magnitude"]["stages"]["after"]["fsr"]["official"]["fsr"] == 1.0
    assert (run.path / "report.md").read_text().count("| instructional |") >= 4
    # every method goes through the experiment's verify(control=True): HashChain with its own controls
    hc = run.load_metrics()["results"]["fingerprints"]["hashchain"]["fingerprinted"]["fsr"]
    assert set(hc) == {"official", "meta_prompts"} and hc["official"]["control"]["n"] == 2
    # resume: nothing is recomputed
    again = execute(exp, resume=True)
    assert again.load_metrics()["results"]["fingerprints"]["instructional"]["fingerprinted"] == res["fingerprinted"]
