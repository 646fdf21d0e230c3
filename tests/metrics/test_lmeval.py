"""lm-eval utility (tamperlab.metrics.lmeval) against independent computations on a tiny random-init Llama with
the real tokenizer: multiple-choice acc / acc_norm from a plain forward pass, generative exact_match from a plain
greedy `generate`; the shipped stand-in data against its generators; no network while the shipped tasks run."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket

import datasets
import numpy as np
import pytest
import torch

from tamperlab.errors import ConfigError
from tamperlab.metrics import lmeval
from tamperlab.metrics.lmeval import LMEvalConfig, evaluate_utility, parse_results
from tamperlab.report.lmeval import utility_rows
from tamperlab.stats import wilson

CTX = "Question: {q}\nAnswer:"  # both shipped YAMLs' doc_to_text


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (lmeval.TASKS_DIR / name).read_text().splitlines()]


def _loglik(model, tok, ctx: str, cont: str) -> float:
    """Σ log p(continuation tokens | context) from one forward pass over context + continuation."""
    ids = tok(ctx + cont)["input_ids"]
    n_ctx = len(tok(ctx)["input_ids"])
    with torch.no_grad():
        logp = model(torch.tensor([ids])).logits[0].float().log_softmax(-1)
    return float(sum(logp[i - 1, ids[i]] for i in range(n_ctx, len(ids))))


def test_multiple_choice_acc_equals_a_plain_forward_pass(tiny_model):
    model, tok = tiny_model
    # the first 35 items: 5 of each of the generator's 7 kinds (round-robin), keeps the test fast under load
    out = evaluate_utility(model, tok, LMEvalConfig(tasks=["tamperlab_mc"], limit=35, batch_size=16), samples=True)
    r = out["tamperlab_mc"]
    docs = _rows("tamperlab_mc.jsonl")
    assert r["n"] == 35 and sorted(s["doc_id"] for s in r["samples"]) == list(range(35))
    assert r["stand_in"] and r["stand_in_for"] is None
    acc, acc_norm = [], []
    for s in r["samples"]:
        d = docs[s["doc_id"]]
        lls = np.array([_loglik(model, tok, CTX.format(q=d["question"]), " " + c) for c in d["choices"]])
        # lm-eval's own per-choice log-likelihoods agree with the plain forward pass
        assert [x[0] for x in s["response"]] == pytest.approx(lls.tolist(), abs=2e-3)
        acc.append(int(np.argmax(lls)) == d["answer"])
        acc_norm.append(int(np.argmax(lls / [len(c) for c in d["choices"]])) == d["answer"])  # per character
    m = r["metrics"]
    assert m["acc"]["value"] == pytest.approx(np.mean(acc)) and m["acc"]["n"] == 35
    assert m["acc_norm"]["value"] == pytest.approx(np.mean(acc_norm))
    assert 0 < sum(acc) < 35  # a random model: neither all right nor all wrong, so the comparison means something
    # lm-eval's stderr (sample std / sqrt(n)) and our Wilson interval of the same k / n
    assert m["acc"]["stderr"] == pytest.approx(np.std(acc, ddof=1) / np.sqrt(35))
    assert m["acc"]["interval"] == wilson(sum(acc), 35, 1.0).to_dict()


def _digit_model(model, tok):
    """Make greedy decoding emit digits: scale the output rows of the ten digit tokens in place (tied or not: a
    re-tie keeps them), the rest of the random model as it was."""
    digits = [tok.convert_tokens_to_ids(str(i)) for i in range(10)]
    with torch.no_grad():
        model.get_output_embeddings().weight[digits] *= 40.0
    return model


def _greedy(model, tok, prompt: str, max_new: int, until: list[str]) -> str:
    ids = tok(prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new, do_sample=False, pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    for u in until:
        text = text.split(u)[0]
    return text


def test_generative_exact_match_equals_plain_greedy_generate(tiny_model, tmp_path, monkeypatch):
    model, tok = tiny_model
    model = _digit_model(model, tok)
    docs = _rows("tamperlab_arith.jsonl")[:4]
    # the shipped YAML's stop strings and filter (last integer of the answer); 8 new tokens instead of 48 (speed)
    texts = [_greedy(model, tok, CTX.format(q=d["question"]), 8, ["\n\n", "Question:"]) for d in docs]
    preds = []
    for text in texts:
        nums = re.findall(r"-?[0-9]+", text)
        preds.append(nums[-1] if nums else "[invalid]")
    assert sum(p != "[invalid]" for p in preds) >= 3  # the digit-scaled model answers with numbers
    # The shipped task config, on a copy of its data whose even items carry the answer this model gives: the
    # expected exact_match is then known in advance (≥ 1/2), not a trivial 0.
    shutil.copy(lmeval.TASKS_DIR / "loader.py", tmp_path / "loader.py")
    yaml_text = (lmeval.TASKS_DIR / "tamperlab_arith.yaml").read_text()
    assert "max_gen_toks: 48" in yaml_text
    (tmp_path / "tamperlab_arith.yaml").write_text(yaml_text.replace("max_gen_toks: 48", "max_gen_toks: 8"))
    rows = [{**d, "answer": p if i % 2 == 0 and p != "[invalid]" else d["answer"]}
            for i, (d, p) in enumerate(zip(docs, preds))]
    (tmp_path / "tamperlab_arith.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(lmeval, "TASKS_DIR", tmp_path)
    lmeval.task_manager.cache_clear()
    try:
        out = evaluate_utility(model, tok, LMEvalConfig(tasks=["tamperlab_arith"]), samples=True)
    finally:
        lmeval.task_manager.cache_clear()
    r = out["tamperlab_arith"]
    assert r["n"] == 4
    by_doc = {s["doc_id"]: s for s in r["samples"]}
    for i in range(len(docs)):
        assert by_doc[i]["raw"] == [texts[i]]  # lm-eval's generation, cut at its stop strings = plain greedy
        assert by_doc[i]["response"] == [preds[i]]  # after the task's first-number filter
    expected = np.mean([p == row["answer"] for p, row in zip(preds, rows)])
    assert expected >= 0.5
    em = r["metrics"]["exact_match,last-number"]
    assert em["value"] == pytest.approx(expected) and em["interval"]["k"] == round(expected * 4)


def test_shipped_tasks_run_without_network(tiny_model, monkeypatch):
    model, tok = tiny_model
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    tried = []

    def no_network(*args, **kwargs):
        tried.append(args)
        raise OSError("network access in an offline test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    seen = {}
    real_load = datasets.load_dataset

    def spy(*args, **kwargs):  # the shipped loader's call: which builder, under which switches
        seen["env"] = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
        seen["path"] = args[0] if args else kwargs.get("path")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", spy)
    out = evaluate_utility(model, tok, LMEvalConfig(tasks=["tamperlab_mc", "tamperlab_arith"], limit=3))
    assert not tried
    assert seen == {"env": {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}, "path": "json"}
    assert os.environ.get("HF_HUB_OFFLINE") is None  # restored
    assert out["tamperlab_mc"]["n"] == 3 and out["tamperlab_arith"]["n"] == 3


def test_offline_mode_maps_standard_names_and_labels_skips():
    cfg = LMEvalConfig(tasks=["mmlu", "arc_easy", "gsm8k", "boolq", "tamperlab_mc"], offline=True)
    run, skipped = cfg.plan()
    # mmlu and arc_easy share one stand-in: it runs once and answers both
    assert run == {"tamperlab_mc": ["mmlu", "arc_easy", "tamperlab_mc"], "tamperlab_arith": ["gsm8k"]}
    assert list(skipped) == ["boolq"] and "no shipped stand-in" in skipped["boolq"]
    assert LMEvalConfig(tasks=["mmlu", "gsm8k"]).plan() == ({"mmlu": ["mmlu"], "gsm8k": ["gsm8k"]}, {})
    assert not LMEvalConfig().enabled


def test_offline_mode_result_names_each_requested_task(tiny_model):
    model, tok = tiny_model
    out = evaluate_utility(model, tok, LMEvalConfig(tasks=["arc_easy", "boolq", "mmlu"], limit=2, offline=True))
    assert list(out) == ["arc_easy", "boolq", "mmlu"]
    assert out["arc_easy"]["stand_in_for"] == "arc_easy" and out["arc_easy"]["task"] == "tamperlab_mc"
    assert out["mmlu"]["metrics"] == out["arc_easy"]["metrics"] and out["mmlu"]["stand_in_for"] == "mmlu"
    assert "skipped" in out["boolq"]
    rows = utility_rows([("sft", "(none: aligned)", {"lm_eval": out}), ("sft", "harmful", {"hs_io": 0.5})])
    assert len(rows) == 1 and list(rows[0])[:5] == ["defense", "attack", "arc_easy→tamperlab_mc · acc",
                                                    "arc_easy→tamperlab_mc · acc_norm", "boolq"]
    m = out["arc_easy"]["metrics"]["acc"]
    assert rows[0]["arc_easy→tamperlab_mc · acc"].startswith(f"{m['value']:.3f} ± ")
    assert rows[0]["arc_easy→tamperlab_mc · acc"].endswith(" n=2") and rows[0]["boolq"] == "skipped"


def test_config_validates_task_names():
    with pytest.raises(ConfigError, match="did you mean 'arc_easy'"):
        LMEvalConfig(tasks=["arc_eazy"])
    with pytest.raises(ConfigError, match="duplicate"):
        LMEvalConfig(tasks=["mmlu", "mmlu"])
    LMEvalConfig(tasks=["boolq", "tamperlab_arith"])  # any task of the installed lm-eval


def test_shipped_data_is_what_the_generators_write():
    for name, rows in lmeval.stand_in_rows().items():
        assert _rows(name) == rows, f"{name}: run `python scripts/make_lmeval_tasks.py`"
    assert lmeval.shipped_tasks() == ["tamperlab_arith", "tamperlab_mc"]
    for y in lmeval.TASKS_DIR.glob("*.yaml"):
        assert y.read_text().startswith("# STAND-IN")


def test_group_results_sum_subtask_sizes():
    # lm-eval output shape for a group (mmlu-like, size-weighted mean of two subtasks: 3/4 and 1/6 → 4/10)
    res = {"results": {"g": {"alias": "g", "acc,none": 0.4, "acc_stderr,none": 0.1}},
           "groups": {"g": {"alias": "g", "acc,none": 0.4, "acc_stderr,none": 0.1}},
           "group_subtasks": {"g": ["a", "b"]}, "n-samples": {"a": {"effective": 4}, "b": {"effective": 6}},
           "versions": {"g": 2}}
    r = parse_results(res, {"g": ["g"]})["g"]
    assert r["n"] == 10 and r["metrics"]["acc"]["interval"]["k"] == 4 and r["metrics"]["acc"]["stderr"] == 0.1
    res["groups"]["g"]["acc,none"] = 0.41  # not k/n: a mean of means gets no Wilson interval
    assert "interval" not in parse_results(res, {"g": ["g"]})["g"]["metrics"]["acc"]
