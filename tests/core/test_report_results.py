"""Uncertainty stored in the fingerprint, extraction and EaaS results and read back by their reports.

* the stored rate records equal a direct statsmodels Wilson call on hand-counted k / n;
* each report renders from a synthetic metrics.json in the new format and in the old one (no stored intervals,
  no per-item flags): the same intervals either way, computed from the stored counts for the old one;
* paired tests on hand-made flags give the hand-computed exact McNemar p-values (Holm-adjusted), and the
  bootstrap comparisons equal a direct scipy call.
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from statsmodels.stats.proportion import proportion_confint

from tamperlab import stats
from tamperlab.runs import RunDir


def wilson_str(k: int, n: int, digits: int) -> str:
    """`value [lo, hi]` straight from statsmodels (fractions), as the report tables print it."""
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    return f"{k / n:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def strip(obj, keys: set[str]):
    """A copy of a results tree without the given keys anywhere: the metrics.json written before this change."""
    if isinstance(obj, dict):
        return {k: strip(v, keys) for k, v in obj.items() if k not in keys}
    if isinstance(obj, list):
        return [strip(v, keys) for v in obj]
    return obj


def write_run(path, config: dict, results: dict, **extra) -> RunDir:
    run = RunDir.create(path, config)
    run.save_metrics(results, **extra)
    return run


def table_lines(md: str, marker: str) -> list[str]:
    return [line for line in md.splitlines() if line.startswith("|") and marker in line]


# -- the shared records -------------------------------------------------------------------------------------
def test_rate_record_is_statsmodels_wilson_and_stored_interval_prefers_the_record():
    rec = stats.rate_record(7, 23)
    lo, hi = proportion_confint(7, 23, alpha=0.05, method="wilson")
    assert rec == {"value": 7 / 23, "lo": pytest.approx(lo, abs=1e-12), "hi": pytest.approx(hi, abs=1e-12),
                   "n": 23, "k": 7, "method": "wilson"}
    assert json.loads(json.dumps(rec)) == rec
    # the stored record wins; without one, the same interval from k (or round(value·n)) and n; else the bare value
    assert stats.stored_interval(rec) == stats.stored_interval(None, 7 / 23, n=23) == stats.wilson(7, 23, 1.0)
    assert stats.stored_interval(None, 7 / 23, k=7, n=23) == stats.wilson(7, 23, 1.0)
    assert stats.stored_interval({**rec, "lo": 0.0}).lo == 0.0
    assert stats.stored_interval(None, 0.5) == 0.5 and stats.stored_interval(None, None, n=4) is None
    m = stats.mean_record([0.2, 0.4, 0.9, 0.1])
    assert m["method"] == "bootstrap-bca" and m["value"] == pytest.approx(0.4) and m["lo"] < 0.4 < m["hi"]


def test_two_sample_bootstrap_equals_a_direct_scipy_call():
    from scipy.stats import bootstrap

    a = np.array([0.8, 0.7, 0.9, 0.75, 0.85, 0.6])
    b = np.array([0.1, 0.3, 0.2, 0.25, 0.0])
    t = stats.bootstrap_diff(a, b)
    ref = bootstrap((a, b), lambda u, v, axis=-1: u.mean(axis) - v.mean(axis), paired=False, vectorized=True,
                    n_resamples=stats.N_RESAMPLES, method="percentile", rng=np.random.default_rng(0))
    assert t.diff == pytest.approx(a.mean() - b.mean()) and t.n == 11
    assert (t.lo, t.hi) == (pytest.approx(ref.confidence_interval.low), pytest.approx(ref.confidence_interval.high))
    assert t.p == 0.0 and t.significant  # every resampled difference is > 0
    assert stats.diff_record(a, b)["lo"] == pytest.approx(t.lo)
    # the paired variant (shared mechanism) still gives the exact answer on a constant difference
    assert stats.paired_bootstrap([1.0, 2.0, 3.0], [0.5, 1.5, 2.5]).p == 0.0


# -- fingerprints -------------------------------------------------------------------------------------------
def _fsr(hits: list[bool], control_hits: int) -> dict:
    from tamperlab.fingerprints.verify import FSRSpec, score_outputs, split_control

    n = len(hits)
    prompts = [f"trigger {i}" for i in range(n)] + [f"plain chat {i}" for i in range(4)]
    outs = ["TARGET" if h else "something else" for h in hits] + ["TARGET"] * control_hits + \
           ["no"] * (4 - control_hits)
    res = split_control(score_outputs("official", FSRSpec(), prompts, ["TARGET"] * (n + 4), outs), n)
    return {"official": res.to_dict()}


def _fingerprint_results() -> dict:
    util = {"ppl": 10.0, "acc": 30 / 40, "acc_n": 40, "acc_interval": stats.rate_record(30, 40)}
    return {"base": {}, "fingerprints": {"instructional": {
        "fingerprinted": {"fsr": _fsr([True] * 8, 1), "utility": util},
        "removals": {
            "meraser": {"name": "meraser", "stages": {"after": {
                "fsr": _fsr([True] + [False] * 7, 0), "info": {},
                "utility": {**util, "acc": 27 / 40, "acc_interval": stats.rate_record(27, 40)}}}},
            "prune": {"name": "prune_magnitude", "stages": {"after": {
                "fsr": _fsr([True] * 7 + [False], 0), "info": {}, "utility": util}}}}}}}


def test_fsr_result_stores_wilson_interval_flags_and_trigger_digest():
    rec = _fsr([True] * 6 + [False] * 2, 1)["official"]
    lo, hi = proportion_confint(6, 8, alpha=0.05, method="wilson")
    assert rec["interval"]["k"] == 6 and rec["interval"]["n"] == 8
    assert (rec["interval"]["lo"], rec["interval"]["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert rec["flags"] == [1] * 6 + [0] * 2
    assert rec["prompts_sha"] == stats.digest([f"trigger {i}" for i in range(8)])
    c_lo, _ = proportion_confint(1, 4, alpha=0.05, method="wilson")
    assert rec["control"]["interval"]["k"] == 1 and rec["control"]["interval"]["lo"] == pytest.approx(c_lo)


def test_fingerprint_report_new_and_old_metrics_show_the_same_intervals_and_mcnemar(tmp_path):
    from tamperlab.report.fingerprints import build_report

    res = _fingerprint_results()
    cfg = {"experiment": "fingerprints", "model": {"name_or_path": "tiny:llama"}}
    old = strip(res, {"interval", "flags", "prompts_sha", "acc_interval"})
    assert "interval" not in json.dumps(old)
    mds = []
    for name, r in (("new", res), ("old", old)):
        run = write_run(tmp_path / name, cfg, r)
        build_report(run, SimpleNamespace(description=""))
        mds.append((tmp_path / name / "report.md").read_text())
    new_rows, old_rows = table_lines(mds[0], "| instructional |"), table_lines(mds[1], "| instructional |")
    assert new_rows == old_rows and len(new_rows) == 3
    fpd, mer, prune = new_rows
    assert wilson_str(8, 8, 2) in fpd and wilson_str(1, 4, 2) in fpd and wilson_str(30, 40, 2) in fpd
    assert wilson_str(1, 8, 2) in mer and wilson_str(27, 40, 2) in mer
    # meraser lost 7 of 8 triggers, none gained: exact McNemar p = 2·(1/2)^7; prune lost 1: p = 1, n.s.
    assert f"p={2 / 2 ** 7:.2g} |" in mer and "n.s." not in mer
    assert "p=1 n.s." in prune


def test_fingerprint_mcnemar_only_pairs_results_on_the_same_triggers():
    from tamperlab.report.fingerprints import summary_rows

    res = _fingerprint_results()
    ev = res["fingerprints"]["instructional"]["removals"]["meraser"]["stages"]["after"]
    ev["fsr"]["official"]["prompts_sha"] = "other-set"
    rows = summary_rows(res)
    assert rows[1]["vs fingerprinted"] == "–" and rows[2]["vs fingerprinted"].startswith("p=")


# -- extraction ---------------------------------------------------------------------------------------------
class WordCodec:
    def __call__(self, text: str) -> tuple[str, ...]:
        return tuple(text.split()) + ("<eos>",)


D2 = ["What is a bond ?", "What is a stock ?", "How do I save money ?", "Explain inflation simply .",
      "In 2020 what was inflation ?", "I need a budget plan .", "401k or IRA ?"]


def test_query_recall_keeps_per_query_flags_in_d2_order_and_intervals_from_them():
    from tamperlab.extraction.metrics import evaluation_intervals
    from tamperlab.extraction.metrics import query_recall

    preds = {"What": ["What is a bond ?", "What is a car ?"], "How": ["How do I spend money ?"],
             "I": ["In 2020 what was inflation ?"]}
    r = query_recall(preds, D2, WordCodec(), thresholds=(1.0, 0.5))
    # hand-checked (tests/extraction/test_extraction_metrics.py): bond and "In 2020" verbatim; stock Dice 0.5;
    # "save money" Dice 6/14 and coverage 3/7
    assert r["per_query"]["recall@1"] == [1, 0, 0, 0, 1, 0, 0]
    assert r["per_query"]["recall@0.5"] == [1, 1, 0, 0, 1, 0, 0]
    assert r["per_query"]["coverage"] == pytest.approx([1, 3 / 6, 3 / 7, 0, 1, 0, 0], abs=1e-6)
    assert r["recall@1"] == sum(r["per_query"]["recall@1"]) / 7 and r["queries_sha"] == stats.digest(D2)
    ivs = evaluation_intervals({"pipeline": r, "identification": {"tp": 2, "fp": 1, "fn": 1}})
    lo, hi = proportion_confint(2, 7, alpha=0.05, method="wilson")
    assert ivs["pipeline_recall@1"]["k"] == 2 and ivs["pipeline_recall@1"]["lo"] == pytest.approx(lo)
    assert ivs["pipeline_recall@0.5"]["k"] == 3 and ivs["opener_precision"]["n"] == 3
    assert ivs["pipeline_coverage"]["value"] == pytest.approx(r["coverage"])


def _ev(recovered: list[int], word_match: dict[str, float]) -> dict:
    n = len(recovered)
    qsha = stats.digest([f"q{i}" for i in range(n)])
    per_word = [{"word": w, "mean_match": m, "max_match": m, "mean_bleu": m / 2} for w, m in word_match.items()]
    pipe = {"n_queries": n, "recall@1": sum(recovered) / n, "coverage": sum(recovered) / n,
            "per_query": {"recall@1": recovered, "coverage": [float(x) for x in recovered]}, "queries_sha": qsha}
    ev = {"identification": {"tp": 3, "fp": 1, "fn": 1, "precision": 0.75, "recall": 0.75},
          "known_openers": {"per_word": per_word}, "pipeline": pipe, "opener_scores": {}}
    mean = float(np.mean(list(word_match.values())))
    ev["summary"] = {"opener_precision": 0.75, "opener_recall": 0.75, "mean_match": mean, "max_match": mean,
                     "mean_bleu": mean / 2, "pipeline_recall@1": sum(recovered) / n,
                     "pipeline_coverage": sum(recovered) / n}
    return ev


def _extraction_results() -> dict:
    from tamperlab.extraction.metrics import evaluation_intervals

    words = ["What", "How", "Explain", "In", "I"]
    evs = {"backdoor_sft": _ev([1] * 8 + [0] * 2, dict(zip(words, (0.9, 0.8, 0.95, 0.7, 0.85)))),
           "backdoor_sft_before_victim": _ev([1] + [0] * 9, dict(zip(words, (0.2, 0.1, 0.3, 0.2, 0.1)))),
           "no_backdoor": _ev([0] * 10, dict(zip(words, (0.1, 0.2, 0.3, 0.1, 0.2))))}
    for ev in evs.values():
        ev["intervals"] = evaluation_intervals(ev)
    data = {"n": 10, "n_openers": 5, "mean_words": 5.0, "source": "offline", "generated": True}
    return {"data": {"d1": data, "d2": data, "shared_queries": 0},
            "backdoor_samples": {"counts": {"positive": 4}, "negative_words": ["x"]}, "candidates": words,
            "true_openers": words, "evaluations": evs, "summary": {k: v["summary"] for k, v in evs.items()},
            "publisher_diagnostics": {}, "stand_ins": ["synthetic"], "stage_seconds": {},
            "defense": {"backdoor_sft": {"detection_rate": 0.25, "n_samples": 12, "flagged": False,
                                         "interval": stats.rate_record(3, 12)}}}


def test_extraction_paired_tests_against_the_no_backdoor_baseline_hand_computed():
    from tamperlab.report.extraction import paired_rows

    evs = _extraction_results()["evaluations"]
    sft = next(r for r in paired_rows(evs) if r["model"].startswith("backdoor (SFT) → victim"))
    before = next(r for r in paired_rows(evs) if "before victim" in r["model"])
    # backdoor recovers 8 of 10 queries the baseline misses (b = 8, c = 0): exact p = 2·(1/2)^8 = 1/128;
    # before-victim recovers 1 (p = 1). Holm over the two: 2/128 and 1.
    assert sft["recall@1 Δ vs baseline"] == f"+0.800 (p={2 / 128:.2g})"
    assert before["recall@1 Δ vs baseline"] == "+0.100 (p=1) n.s."
    # per-word mean match: paired bootstrap over the same 5 opener words (Holm over the two arms)
    direct = stats.paired_bootstrap([0.9, 0.8, 0.95, 0.7, 0.85], [0.1, 0.2, 0.3, 0.1, 0.2])
    assert direct.p == 0 and sft["mean match Δ vs baseline"] == f"{direct.diff:+.3f} (p<0.0005)"
    assert sft["n (queries / words)"] == "10 / 5"
    # different D2 queries: no McNemar
    evs["backdoor_sft"]["pipeline"]["queries_sha"] = "other"
    assert all("recall@1 Δ vs baseline" not in r or "before" in r["model"] for r in paired_rows(evs))


def test_extraction_report_new_and_old_metrics_show_the_same_intervals(tmp_path):
    from tamperlab.experiments.extraction import ExtractionConfig, ExtractionExperiment

    res = _extraction_results()
    old = strip(res, {"intervals", "interval", "per_query", "queries_sha"})
    exp = ExtractionExperiment(ExtractionConfig())
    mds = []
    for name, r in (("new", res), ("old", old)):
        run = write_run(tmp_path / name, {"experiment": "extraction"}, r)
        exp.report(run)
        mds.append((tmp_path / name / "report.md").read_text())
    new, old_md = mds
    marker = "| backdoor (SFT) → victim FT |"
    row, old_row = table_lines(new, marker)[0], table_lines(old_md, marker)[0]
    # same cells, except the coverage: its bootstrap interval needs the per-query coverage only new results keep
    assert row.split("|")[:-2] == old_row.split("|")[:-2]
    assert old_row.endswith("| 0.8 |") and row.endswith("| 0.800 [0.500, 1.000] |")
    assert wilson_str(3, 4, 3) in row and wilson_str(8, 10, 3) in row  # opener P, recall@1
    assert wilson_str(3, 12, 3) in new and wilson_str(3, 12, 3) in old_md  # detection rate
    assert "Paired tests against the no-backdoor baseline" in new and "n.s." in new
    # old results kept the per-word means (paired bootstrap still possible) but no per-query flags: no McNemar
    assert "mean match Δ vs baseline" in old_md and "recall@1 Δ vs baseline" not in old_md
    assert "recall@1 Δ vs baseline" in new


# -- EaaS ---------------------------------------------------------------------------------------------------
def _verify(cos_b: list[float], cos_n: list[float]) -> dict:
    from tamperlab.eaas.verify import verification_stats

    t = np.eye(3)[0]
    emb = lambda cos: np.array([[c, math.sqrt(1 - c * c), 0.0] for c in cos])  # noqa: E731
    st = verification_stats(emb(cos_b), emb(cos_n), t)
    return {"statistic": "cos", "delta": st["delta_cos"], "delta_l2": st["delta_l2"], "p_value": st["p_value"],
            "detected": st["p_value"] < 0.05, "delta_interval": st["delta_cos_interval"],
            "delta_l2_interval": st["delta_l2_interval"], "scores_backdoor": st["cos_backdoor"],
            "scores_benign": st["cos_benign"]}


def _eaas_results() -> dict:
    from tamperlab.eaas.spa import detection_report
    from tamperlab.eaas.spa import spa_records

    texts = [f"text {i}" for i in range(20)]
    counts = np.array([1] * 5 + [2] * 5 + [0] * 10)
    rule = np.array([True] * 9 + [False] + [True] + [False] * 9)  # TPR 9/10, FPR 1/10
    kde = np.array([True] + [False] * 19)  # TPR 1/10, FPR 0/10
    scores = {k: np.linspace(0, 1, 20) for k in ("cos", "l2", "pca")}
    det = {**detection_report(scores, counts, rule), "removal": "fraction", "score": "pca", "threshold": None,
           **spa_records(counts, rule, texts)}
    kd = detection_report(scores, counts, kde)
    det["kde"] = {"threshold": 0.1, **{k: kd[k] for k in ("tpr", "fpr", "tpr_k1", "tpr_k2plus", "n_deleted",
                                                          "precision")},
                  "intervals": spa_records(counts, kde, texts)["intervals"], "deleted": stats.bits(kde)}
    rng = np.random.default_rng(3)
    before = _verify(list(0.8 + 0.05 * rng.random(20)), list(0.2 + 0.05 * rng.random(20)))
    after = _verify(list(0.25 + 0.05 * rng.random(20)), list(0.2 + 0.05 * rng.random(20)))
    acc = {"gen_topic": 0.8}
    sc = {"watermark": "embmarker", "role": "attack", "triggers": [], "triggered_fraction": 0.5,
          "trigger_count_histogram": [10, 5, 5, 0, 0], "verify_api": before, "utility_api": acc, "spa": det,
          "query_log_audit": [], "verify_copy_before_spa": before, "verify_copy_after_spa": after,
          "utility_copy_before_spa": {"gen_topic": 0.75}, "utility_copy_after_spa": {"gen_topic": 0.7}}
    n = 40
    ivs = {"clean_provider": {"gen_topic": stats.rate_record(34, n)},
           "embmarker_api": {"gen_topic": stats.rate_record(32, n)},
           "embmarker_copy_before_spa": {"gen_topic": stats.rate_record(30, n)},
           "embmarker_copy_after_spa": {"gen_topic": stats.rate_record(28, n)}}
    # copy after SPA: 3 test texts it gets wrong that the copy before SPA got right, 1 the other way round
    before_ok = [1] * 30 + [0] * 10
    after_ok = [0] * 3 + [1] * 27 + [1] + [0] * 9
    flags = {"embmarker_copy_before_spa": {"gen_topic": before_ok}, "embmarker_copy_after_spa": {"gen_topic": after_ok}}
    return {"scenarios": {"embmarker": sc}, "utility_clean_provider": {"gen_topic": 34 / n},
            "utility_intervals": ivs, "utility_flags": flags, "data_is_generated": True}


def test_spa_records_are_wilson_on_hand_counts():
    r = _eaas_results()["scenarios"]["embmarker"]["spa"]
    assert r["intervals"]["tpr"]["k"] == 9 and r["intervals"]["tpr"]["n"] == 10 and r["tpr"] == 0.9
    lo, hi = proportion_confint(1, 10, alpha=0.05, method="wilson")
    assert (r["intervals"]["fpr"]["lo"], r["intervals"]["fpr"]["hi"]) == (pytest.approx(lo), pytest.approx(hi))
    assert r["intervals"]["tpr_k1"]["n"] == 5 and r["intervals"]["precision"]["k"] == 9
    assert r["flags"]["deleted"][:10] == [1] * 9 + [0] and r["texts_sha"] == stats.digest(
        [f"text {i}" for i in range(20)])


def test_eaas_paired_tests_hand_computed():
    from scipy.stats import bootstrap

    from tamperlab.report.eaas import paired_rows

    r = _eaas_results()
    (row,) = paired_rows(r)
    # among the 10 triggered texts, the fraction rule deletes 8 that KDE keeps and none the other way:
    # exact McNemar p = 2·(1/2)^8; among the clean ones 1 vs 0: p = 1
    assert row["TPR: fraction − KDE"] == f"+0.800 (p={2 / 2 ** 8:.2g})"
    assert row["FPR: fraction − KDE"] == "+0.100 (p=1) n.s."
    # accuracy after vs before SPA on the same 40 test texts: b = 1, c = 3 →
    # exact p = 2·P(Binom(4, ½) ≤ 1) = 10/16
    assert row["acc gen_topic: after − before SPA"] == f"-0.050 (p={10 / 16:.2g}) n.s."
    s = r["scenarios"]["embmarker"]
    db = np.subtract(s["verify_copy_before_spa"]["scores_backdoor"], s["verify_copy_after_spa"]["scores_backdoor"])
    dn = np.subtract(s["verify_copy_before_spa"]["scores_benign"], s["verify_copy_after_spa"]["scores_benign"])
    ref = bootstrap((db, dn), lambda u, v, axis=-1: u.mean(axis) - v.mean(axis), paired=False, vectorized=True,
                    n_resamples=stats.N_RESAMPLES, method="percentile", rng=np.random.default_rng(0))
    p = 2 * min(np.mean(ref.bootstrap_distribution <= 0), np.mean(ref.bootstrap_distribution >= 0))
    assert p == 0  # every resample keeps the drop > 0: printed as below the bootstrap's resolution
    assert row["Δ before − after SPA"] == f"{db.mean() - dn.mean():+.4f} (p<0.0005)"
    assert s["verify_copy_before_spa"]["delta"] == pytest.approx(db.mean() - dn.mean()
                                                                 + s["verify_copy_after_spa"]["delta"])


def test_eaas_report_new_and_old_metrics_show_the_same_intervals(tmp_path):
    from tamperlab.experiments.eaas import EaaSConfig, EaaSExperiment

    res = _eaas_results()
    old = strip(res, {"intervals", "utility_intervals", "utility_flags", "flags", "texts_sha", "deleted",
                      "delta_interval",
                      "delta_l2_interval", "scores_backdoor", "scores_benign"})
    cfg = {"experiment": "eaas", "data": {"task": "gen_topic", "n_test": 40}}
    exp = EaaSExperiment(EaaSConfig())
    mds = []
    for name, r in (("new", res), ("old", old)):
        run = write_run(tmp_path / name, cfg, r)
        exp.report(run)
        mds.append((tmp_path / name / "report.md").read_text())
    new, old_md = mds
    for md in (new, old_md):
        spa = table_lines(md, "| embmarker | 20 |")[0]
        assert wilson_str(9, 10, 3) in spa and wilson_str(1, 10, 3) in spa  # TPR, FPR (rule and KDE)
        assert wilson_str(32, 40, 3) in md and wilson_str(28, 40, 3) in md  # accuracies
    assert table_lines(new, "| embmarker | 20 |") == table_lines(old_md, "| embmarker | 20 |")
    before = res["scenarios"]["embmarker"]["verify_copy_before_spa"]["delta_interval"]
    assert f"[{before['lo']:.3f}, {before['hi']:.3f}]" in new  # the copy's Δcos with its stored interval
    assert "Paired tests on the same sentences / texts" in new and "n.s." in new
    assert "Paired tests" not in old_md
