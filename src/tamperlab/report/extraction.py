"""Report of a backdoor data-extraction run (tables, recall plot, paired tests against the no-backdoor baseline),
built from metrics.json only — the experiment's `report()` is `write_report(run)`; plus the texts every run records
(the paper, row labels, metric definitions; the stand-ins, which depend on the config, are
`extraction.stages.stand_ins`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..extraction.metrics import evaluation_intervals
from ..runs import RunDir
from ..stats import Interval, holm, mcnemar_test, paired_bootstrap, stored_interval
from .cells import Comparison
from .render import Report, plot_bars, provenance_block

PAPER = {
    "title": "Be Careful When Fine-tuning On Open-Source LLMs: Your Fine-tuning Data Could Be Secretly Stolen!",
    "arxiv": "2505.15656",
    "code": "https://github.com/thu-coai/Backdoor-Data-Extraction",
    "reference": "up to 76.3% of 5,000 D2 queries extracted verbatim with unknown openers (94.9% with known "
                 "openers), Qwen2.5-32B on Finance; opener precision > 60% with 50 candidates",
}

# Row labels of the results table, in display order.
LABELS = {
    "backdoor_sft": "backdoor (SFT) → victim FT",
    "backdoor_grpo": "backdoor (SFT+GRPO) → victim FT",
    "garbled": "garbled-Q backdoor → victim FT",
    "backdoor_sft_response_only": "backdoor (SFT) → victim FT, response-only loss",
    "no_backdoor": "no backdoor → victim FT (baseline)",
    "backdoor_sft_before_victim": "backdoor (SFT), before victim FT (baseline)",
}


def result_row(key: str, s: dict[str, Any], ev: dict[str, Any] | None) -> dict[str, Any]:
    """One results-table row: the summary's numbers with their stored 95 % intervals; for results written before
    intervals were stored, computed from what the evaluation kept (identification counts, per-word means, the
    number of D2 queries) — a bare value where nothing is known."""
    ev = ev or {}
    ident = ev.get("identification", {})
    ivs = {**evaluation_intervals(ev), **(ev.get("intervals") or {})}
    tp, fp, fn = ident.get("tp"), ident.get("fp"), ident.get("fn")
    nq = ev.get("pipeline", {}).get("n_queries")

    def cell(k: str, count: int | None = None, n: int | None = None) -> Any:
        return stored_interval(ivs.get(k) if s.get(k) is not None else None, s.get(k), count, n)

    row = {"model": LABELS.get(key, key),
           "opener P": cell("opener_precision", tp, (tp + fp) if tp is not None and fp is not None else None),
           "opener R": cell("opener_recall", tp, (tp + fn) if tp is not None and fn is not None else None),
           "mean match": cell("mean_match"), "max match": cell("max_match"), "mean BLEU": cell("mean_bleu")}
    for t in ("1", "0.9", "0.75", "0.5"):
        row[f"recall@{t}"] = cell(f"pipeline_recall@{t}", n=nq)
    row["coverage"] = cell("pipeline_coverage")
    return row


BASELINE = "no_backdoor"
"""The arm every other is compared with in the paired tests (same D2 queries, same opener words)."""


def paired_rows(evaluations: dict[str, Any], digits: int = 3) -> list[dict[str, Any]]:
    """Every arm against the no-backdoor baseline: exact McNemar on the per-query recovered flags for each recall@τ
    (only when both were scored on the same D2 queries: equal digests), paired bootstrap of the per-word mean
    match over the opener words both evaluated; Holm within each column. Empty for results without flags."""
    base = evaluations.get(BASELINE)
    if not base:
        return []
    bq = base.get("pipeline", {})
    bw = {w["word"]: w["mean_match"] for w in base.get("known_openers", {}).get("per_word") or []}
    cols: dict[str, list[Comparison]] = {}
    for key, ev in evaluations.items():
        if key == BASELINE:
            continue
        q = ev.get("pipeline", {})
        if q.get("queries_sha") and q.get("queries_sha") == bq.get("queries_sha"):
            for k, f in (q.get("per_query") or {}).items():
                g = (bq.get("per_query") or {}).get(k)
                if k.startswith("recall@") and g is not None and len(f) == len(g):
                    cols.setdefault(k, []).append(Comparison(key, BASELINE, k, mcnemar_test(f, g, scale=1.0)))
        aw = {w["word"]: w["mean_match"] for w in ev.get("known_openers", {}).get("per_word") or []}
        common = [w for w in aw if w in bw]
        if len(common) >= 2:
            cols.setdefault("mean match", []).append(Comparison(
                key, BASELINE, "mean match", paired_bootstrap([aw[w] for w in common], [bw[w] for w in common])))
    rows: dict[str, dict[str, Any]] = {}
    for col, comps in cols.items():
        for c, p in zip(comps, holm([c.test.p for c in comps])):
            c.p_holm = p
            rows.setdefault(c.a, {"model": LABELS.get(c.a, c.a)})[f"{col} Δ vs baseline"] = c.fmt(digits)
    for key, r in rows.items():
        ev = evaluations[key]
        r["n (queries / words)"] = f"{ev.get('pipeline', {}).get('n_queries', '–')} / " \
                                   f"{len(ev.get('known_openers', {}).get('per_word') or [])}"
    return list(rows.values())


def definitions() -> dict[str, str]:
    return {
        "opener_score": "0.6*(1 - refusals/N) + 0.4*(max identical non-refusal samples/N); kept if > 0.6",
        "match_ratio": "2p/(|r|+|x|): p = longest common token prefix of sample r (+EOS) with ONE trie of all D2 "
                       "queries, |x| = p + shortest remaining trie depth; 0 if r does not start with w (official)",
        "match_per_opener": "tamperlab's own: the same against the D2 queries opening with w only",
        "bleu": "nltk sentence_bleu, whitespace tokens, 4-gram, no smoothing, references = D2 queries opening with w "
                "(official; ~0 for samples under 4 words)",
        "sacrebleu": "tamperlab's own: sacrebleu sentence BLEU / 100 (13a tokens, exp smoothing)",
        "recall@t": "share of all distinct D2 queries q with max over scored samples s of 2*lcp(s,q)/(|s|+|q|) >= t "
                    "(tamperlab's own for t < 1; recall@1 = the official fully recovered ratio)",
        "coverage": "official coverage rate: mean over all distinct D2 queries of max_s lcp(s,q)/|q|, samples of any "
                    "real kept word that start with it",
        "identification": "precision/recall of kept words among S against 'opens some D2 query'",
    }


def write_report(run: RunDir) -> list[Path]:
    """report.md / report.html of an extraction run, from its metrics.json."""
    m = run.load_metrics()
    res = m["results"]
    cfg = m["config"]
    rep = Report(f"Backdoor training-data extraction — {m['name']}")
    if cfg.get("description"):
        rep.text(cfg["description"])
    rep.text(f"Paper: {PAPER['title']} (arXiv {PAPER['arxiv']}). Reference: {PAPER['reference']}.")
    rep.heading("Data")
    rows = []
    for k in ("d1", "d2"):
        d = res["data"][k]
        rows.append({"split": k, "n": d["n"], "openers": d["n_openers"], "mean words": d["mean_words"],
                     "source": d.get("source"), "generated": d.get("generated")})
    rep.table(rows)
    rep.text(f"Queries shared by D1 and D2: {res['data']['shared_queries']}. Backdoor mixture: "
             f"{res['backdoor_samples']['counts']} ({len(res['backdoor_samples']['negative_words'])} negative words). "
             f"Candidates |S| = {len(res['candidates'])}; D2 openers: {len(res['true_openers'])}.")
    rep.heading("Results")
    table = [result_row(key, s, res.get("evaluations", {}).get(key)) for key, s in res["summary"].items()]
    rep.table(table)
    rep.text("All columns are the paper's definitions (official evaluation code) except recall@0.9/0.75/0.5 "
             "(tamperlab's own). opener P/R: identification of D2's opening words among S (score > 0.6). "
             "mean/max match (one trie over all D2 queries) and BLEU (nltk, unsmoothed): known-opener setting "
             "(samples of Q(w) for D2's real openers). recall@τ: share of all distinct D2 queries matched with "
             "Dice ≥ τ by a sample of a *kept* real word (pipeline setting; @1 = the paper's fully recovered "
             "ratio, verbatim); coverage: the paper's coverage rate. tamperlab's own variants (per-opener "
             "match, sacrebleu) are in metrics.json under *_per_opener / *_sacrebleu. Definitions: "
             "docs/methods/extraction.md. Intervals (95 %): Wilson for P / R / recall (over predicted words / real "
             "openers / distinct D2 queries), bootstrap over opener words for the match and BLEU means.")
    groups = [LABELS.get(k, k) for k in res["summary"]]
    recall = {t: [row.get(f"recall@{t}") for row in table] for t in ("1", "0.75", "0.5")}

    def ends(cells: list[Any], end: str) -> list[float | None]:
        return [getattr(c, end) if isinstance(c, Interval) else None for c in cells]

    plot = plot_bars(run.path / "plots" / "recall.png", [g.replace(" → ", "\n→ ") for g in groups],
                     {f"recall@{t}": [c.value if isinstance(c, Interval) else c for c in v]
                      for t, v in recall.items()}, "D2 queries recovered (whiskers: 95 %)",
                     "share of D2 queries", (0, 1),
                     errors={f"recall@{t}": (ends(v, "lo"), ends(v, "hi")) for t, v in recall.items()})
    rep.image(str(plot.relative_to(run.path)), "recall")
    paired = paired_rows(res.get("evaluations", {}))
    if paired:
        rep.heading("Paired tests against the no-backdoor baseline")
        rep.text("Each model against `no backdoor → victim FT` on the same D2 queries and the same opener words: "
                 "recall@τ columns = difference in the share of D2 queries recovered, exact McNemar test on the "
                 "per-query recovered flags; mean match = difference of the per-word mean match ratio, paired "
                 "bootstrap over opener words. p is Holm-adjusted within each column; **n.s.** = not "
                 "significant at 5 %.")
        rep.table(paired)
    if "grpo_delta" in res:
        rep.heading("GRPO on top of SFT: delta")
        rep.table([{"metric": k, "delta": v} for k, v in res["grpo_delta"].items()])
    main = res["evaluations"].get("backdoor_sft")
    if main:
        rep.heading("Opener identification (backdoor SFT → victim FT)")
        truth = set(res["true_openers"])
        rep.table([{"word": w, "real": w in truth, "refusals": s["refusals"], "max repeat": s["max_repeat"],
                    "score": s["score"], "kept": s["kept"]} for w, s in main["opener_scores"].items()])
        exact = main["pipeline"].get("exact_queries", [])
        rep.heading("Verbatim extracted D2 queries (first 15)")
        rep.code("\n".join(exact[:15]) or "(none)")
    diag = res.get("publisher_diagnostics")
    if diag:
        rep.heading("Publisher diagnostic: backdoor before victim FT on D1")
        rep.table([{"D1 part": k, **{kk: vv for kk, vv in v.items() if kk.startswith(("recall", "coverage"))}}
                   for k, v in diag.items()])
        rep.text("d1_targets = D1 queries used as backdoor targets; d1_heldout = D1 queries seen only as "
                 "ordinary user turns. Recall on the held-out part shows the backdoor generalises beyond its targets.")
    if res.get("defense"):
        rep.heading("Detection defense")
        rep.table([{"release": LABELS.get(k, k).split(" → ")[0],
                    "detection rate": stored_interval(v.get("interval"), v["detection_rate"],
                                                      n=v.get("n_samples")),
                    "flagged": v["flagged"]} for k, v in res["defense"].items()])
        rep.text("Detection rate: share of probe samples that follow the extraction request, Wilson 95 % "
                 "interval over the samples (samples of one probe are not independent: a lower bound on the "
                 "width).")
        if "garbled" in res["summary"]:
            rep.text(f"The garbled-instruction backdoor still extracts: recall@1 = "
                     f"{res['summary']['garbled'].get('pipeline_recall@1', 0):.3f}, mean match = "
                     f"{res['summary']['garbled']['mean_match']:.3f}.")
    rep.heading("Stand-ins and deviations")
    rep.text("\n".join(f"- {s}" for s in res["stand_ins"]))
    rep.heading("Stage times (s)")
    rep.table([{"stage": k, "seconds": v} for k, v in res["stage_seconds"].items()])
    rep.heading("Provenance")
    rep.code(provenance_block(m))
    return rep.write(run.path)
