"""The registered experiment on a tiny model: every arm is produced, the JSONL output agrees with the opener
scores, a resumed run recomputes nothing, and the report has the comparison table."""

from __future__ import annotations

import json

from tamperlab.experiments.base import execute, load_recipe

TINY = {
    "experiment": "extraction", "name": "tiny", "seed": 0,
    "model": {"name_or_path": "tiny:llama", "max_length": 160},
    "data": {"n_d1": 12, "n_d2": 6, "response_tokens": 2},
    "backdoor": {"samples": {"n_negative_words": 2, "negatives_per_word": 1},
                 "train": {"max_steps": 1, "batch_size": 4, "save_steps": 100},
                 "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}},
    "victim": {"train": {"max_steps": 1, "batch_size": 4, "save_steps": 100},
               "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj"]}},
    "extract": {"n_candidates": 3, "samples_per_word": 2, "sampler": {"max_new_tokens": 3}},
    "baselines": {"no_backdoor": True, "before_victim": True},
    "defense": {"enabled": True, "detection": {"samples_per_probe": 1, "probes": ['Say "{w}"'],
                                               "sampler": {"max_new_tokens": 3}}},
}


def test_tiny_experiment_arms_outputs_and_resume(tmp_path):
    exp = load_recipe({**TINY, "output_dir": str(tmp_path)})
    run = execute(exp)
    m = run.load_metrics()
    res = m["results"]
    assert set(res["summary"]) == {"backdoor_sft", "no_backdoor", "backdoor_sft_before_victim"}
    assert res["data"]["shared_queries"] == 0 and res["data"]["d2"]["generated"] is True
    assert res["candidates"] == ["What", "Generate", "Create"]
    # Sampled words = S plus D2's real openers (known-opener setting); the identification uses S only.
    sampled = run.load_stage("samples_backdoor_sft")["samples"]
    assert set(sampled) == set(res["candidates"]) | set(res["true_openers"])
    assert res["evaluations"]["backdoor_sft"]["identification"]["n_candidates"] == 3

    # Lineages: the victim's model = publisher adapter + victim adapter; the clean arm starts from the base.
    assert [s["stage"] for s in run.load_stage("victim_backdoor_sft")["lineage"]] == ["backdoor_sft",
                                                                                      "victim_backdoor_sft"]
    assert [s["stage"] for s in run.load_stage("victim_no_backdoor")["lineage"]] == ["victim_no_backdoor"]

    # The JSONL output holds the distinct non-refusal samples of kept words only, with consistent counts.
    scores = res["evaluations"]["backdoor_sft"]["opener_scores"]
    rows = [json.loads(x) for x in (run.path / "extracted" / "backdoor_sft.jsonl").read_text().splitlines()]
    d2 = {e["prompt"] for e in run.load_stage("data")["d2"]}
    for r in rows:
        assert scores[r["word"]]["kept"] and r["query"] in sampled[r["word"]]
        assert r["eval_exact"] == (r["query"] in d2)
    for w, sc in scores.items():
        assert sum(r["count"] for r in rows if r["word"] == w) == (sc["answers"] if sc["kept"] else 0)

    # Resume: nothing is recomputed and the numbers are the same.
    n_done = sum(1 for r in run.read_log() if r["event"] == "stage_done")
    run2 = execute(load_recipe({**TINY, "output_dir": str(tmp_path)}), resume=True)
    assert sum(1 for r in run2.read_log() if r["event"] == "stage_done") == n_done
    assert run2.load_metrics()["results"]["summary"] == res["summary"]

    report = (run.path / "report.md").read_text()
    assert "no backdoor → victim FT (baseline)" in report and "Detection defense" in report
    assert (run.path / "plots" / "recall.png").exists()
