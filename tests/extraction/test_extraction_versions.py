"""`--resume` with a changed extraction recipe (versioned stages): a changed downstream setting recomputes only the
stages that read it, and they equal a fresh run of the changed recipe in a new directory; a changed upstream setting
recomputes every stage downstream of it (and deletes the old adapters), the others are loaded untouched."""

from __future__ import annotations

import copy
import json

from tamperlab.experiments.base import execute, load_recipe

from stage_log import log_events, resume_stages, stage_stamps  # tests/ is on sys.path

from test_extraction_experiment import TINY


SAMPLES = ["samples_backdoor_sft", "samples_backdoor_sft_before_victim", "samples_no_backdoor"]
ALL = sorted(["backdoor_samples", "data", "detect_backdoor_sft", "detect_no_backdoor", "publisher_backdoor_sft",
              "victim_backdoor_sft", "victim_no_backdoor", *SAMPLES])


def test_changed_recipe_recomputes_exactly_the_stages_downstream(tmp_path):
    recipe = {**copy.deepcopy(TINY), "output_dir": str(tmp_path), "name": "v"}
    run = execute(load_recipe(recipe))
    assert sorted(e["stage"] for e in log_events(run.path) if e["event"] == "stage_done") == ALL
    before = stage_stamps(run.path)
    old_samples = run.load_stage("samples_backdoor_sft")["samples"]

    # downstream: the decoding of the extraction re-samples every arm; nothing is retrained or re-probed
    sampled = copy.deepcopy(recipe)
    sampled["extract"]["sampler"]["max_new_tokens"] = 5
    assert resume_stages(sampled, run.path) == SAMPLES
    after = stage_stamps(run.path)
    assert {k: after[k] for k in ALL if k not in SAMPLES} == {k: before[k] for k in ALL if k not in SAMPLES}
    fresh = execute(load_recipe({**sampled, "name": "fresh"}))  # a second, independent computation
    for key in SAMPLES:
        assert run.load_stage(key)["samples"] == fresh.load_stage(key)["samples"], key
    assert run.load_stage("samples_backdoor_sft")["samples"] != old_samples  # 5 new tokens, not 3
    assert run.load_metrics()["results"]["summary"] == fresh.load_metrics()["results"]["summary"]

    # upstream: the publisher's LoRA rank retrains the backdoor and everything built on it — its victim, the two
    # arms sampled from them, its detection probe — and deletes the old adapters; the clean arm is untouched
    # (not its learning rate: the one warm-up step of this tiny schedule trains at lr 0 whatever the rate)
    adapter = run.path / "models" / "backdoor_sft" / "adapter_model.safetensors"
    old_adapter = adapter.read_bytes()
    lr = copy.deepcopy(sampled)
    lr["backdoor"]["lora"]["r"] = 4
    before = stage_stamps(run.path)
    assert resume_stages(lr, run.path) == ["detect_backdoor_sft", "publisher_backdoor_sft", "samples_backdoor_sft",
                                     "samples_backdoor_sft_before_victim", "victim_backdoor_sft"]
    after = stage_stamps(run.path)
    untouched = ["backdoor_samples", "data", "detect_no_backdoor", "samples_no_backdoor", "victim_no_backdoor"]
    assert {k: after[k] for k in untouched} == {k: before[k] for k in untouched}
    assert adapter.read_bytes() != old_adapter
    assert json.loads((adapter.parent / "adapter_config.json").read_text())["r"] == 4
    changed = [e for e in log_events(run.path) if e["event"] == "stage_inputs_changed"][-5:]
    assert {e["stage"] for e in changed} == {"publisher_backdoor_sft", "victim_backdoor_sft", "samples_backdoor_sft",
                                             "samples_backdoor_sft_before_victim", "detect_backdoor_sft"}
    assert "train.lora.r: 2 → 4" in next(
        e for e in changed if e["stage"] == "publisher_backdoor_sft")["changed"]
    # unchanged recipe: nothing is computed
    assert resume_stages(lr, run.path) == []
