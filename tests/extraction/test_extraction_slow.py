"""The demo's claim on the embedded SmolLM2-135M (minutes on CPU): after the victim's fine-tuning, the backdoored
model leaks D2's queries far better than the same pipeline without the backdoor and than itself before the
victim's fine-tuning, and the detection probes fire on the backdoored release more than on the clean one."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_demo_recipe_backdoor_leaks_d2(tmp_path):
    from tamperlab.experiments.base import execute, load_recipe

    # The demo recipe at a reduced extraction size (the training stages are the demo's).
    exp = load_recipe("demo_extraction", ["extract.n_candidates=30", "extract.samples_per_word=12"])
    exp.cfg.output_dir = str(tmp_path)
    run = execute(exp)
    res = run.load_metrics()["results"]
    s = res["summary"]
    bd, clean, before = s["backdoor_sft"], s["no_backdoor"], s["backdoor_sft_before_victim"]
    assert bd["mean_match"] > clean["mean_match"] + 0.1
    assert bd["mean_match"] > before["mean_match"]
    assert bd["pipeline_recall@0.75"] > clean["pipeline_recall@0.75"]
    assert bd["known_recall@0.75"] > before["known_recall@0.75"]
    det = res["defense"]
    assert det["backdoor_sft"]["detection_rate"] > det["no_backdoor"]["detection_rate"]
    assert (run.path / "extracted" / "backdoor_sft.jsonl").stat().st_size > 0
