"""Report of an EaaS watermark + SPA run (tables, plots, definitions), built from metrics.json and the SPA score
arrays only — the experiment's `report()` is `write_report(run)`.

Rates (SPA TPR / FPR, accuracies) carry their Wilson 95 % interval (stored, or for older metrics.json recomputed from
k = round(value·n)); paired tests compare two measurements on the same sentences / texts (`paired_rows`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..runs import RunDir
from ..stats import Interval, bootstrap_diff, holm, mcnemar_test, stored_interval
from .cells import Comparison
from .render import Report, plot_bars, plot_histograms, provenance_block
from .sweep import spa_sweep_section


DEFINITIONS = {
    "Δcos": "mean cos(e, e_t) over D_b − over D_n (embeddings L2-normalised)",
    "Δl2": "mean ‖e − e_t‖² over D_b − over D_n (squared L2, as the official code)",
    "p": "scipy.stats.kstest(cos_Db, cos_Dn).pvalue, two-sample two-sided; min over targets for WARDEN",
    "Δ proj_u (SAW)": "mean e_s·u(e_c) (suspect embedding along the expected keyed direction) over D_b − over D_n; "
                      "p = KS test of the two",
    "TPR / FPR": "deleted∩triggered/triggered, deleted∩clean/clean; triggered = ≥1 trigger word (ground truth); "
                 "KDE = the paper's threshold rule, deletion = what the re-trained copy does without (fraction/count "
                 "as the official stealing script)",
    "AUROC / AUPRC": "of the watermark-likeness score (cos, −l2, −pca) against the triggered label",
    "accuracy": "MLP (emb→256→classes, dropout 0.2, Adam 1e-2, 3 epochs) trained on the train-split "
                "embeddings of that source, evaluated on the test split",
}
STAND_INS = [
    "Provider: all-MiniLM-L6-v2 (384-d) instead of text-embedding-ada-002 (1536-d).",
    "Copier backbone: the first layers of the same packaged MiniLM + a fresh MLP head (bert-base-cased is not "
    "available offline); its watermark knowledge comes only from the stolen embeddings.",
    "SPA surrogate: the packaged all-MiniLM-L6-v2 instead of paraphrase-MiniLM-L6-v2 (the only local embedder); "
    "it is used only for suffix selection.",
    "Triggers are whole words from a wordfreq frequency band, not bert word pieces from WikiText-103 counts.",
    "Verification queries the copy model in-process (the provider's access to a suspect service).",
]


def rate(value: float | None, n: int | None, record: dict[str, Any] | None = None) -> Interval | float | None:
    """A stored fraction with its Wilson 95 % interval: the stored record, else (older metrics.json) from
    k = round(value·n); the bare value when n is unknown."""
    return stored_interval(record, value, n=n)


def split_sizes(config: dict[str, Any], r: dict[str, Any]) -> dict[str, int]:
    """Test-split size per downstream task, from the recipe (main task: n_test, extra tasks: n_extra_test)."""
    data = config.get("data", {})
    main = data.get("task")
    tasks = list(r.get("utility_clean_provider", {}))
    return {t: int(data.get("n_test" if t == main else "n_extra_test") or 0) for t in tasks}


def summary_rows(r: dict[str, Any], n_test: dict[str, int] | None = None) -> list[dict[str, Any]]:
    n_test = n_test or {}
    rows = []
    for name, s in r["scenarios"].items():
        row: dict[str, Any] = {"scenario": name, "role": s["role"], "triggered": s["triggered_fraction"],
                               "API p": s["verify_api"]["p_value"]}
        for ph, lab in (("before_spa", "copy p"), ("after_spa", "copy p after SPA")):
            v = s.get(f"verify_copy_{ph}")
            row[lab] = v["p_value"] if v else None
            row[f"{lab.replace(' p', '')} Δ"] = rate(v["delta"], None, v.get("delta_interval")) if v else None
        d = s["spa"]
        ivs = d.get("intervals", {})
        row.update({"SPA TPR": rate(d["tpr"], d.get("n_triggered"), ivs.get("tpr")),
                    "SPA FPR": rate(d["fpr"], d["n"] - d["n_triggered"] if "n_triggered" in d else None,
                                    ivs.get("fpr")),
                    "AUROC(pca)": d["auroc_pca"]})
        main = next(iter(s["utility_api"]))
        acc_ivs = r.get("utility_intervals", {})
        row["acc API"] = rate(s["utility_api"][main], n_test.get(main), acc_ivs.get(f"{name}_api", {}).get(main))
        for ph in ("before_spa", "after_spa"):
            u = s.get(f"utility_copy_{ph}")
            row[f"acc copy {ph.replace('_spa', '')}"] = rate(
                u[main], n_test.get(main), acc_ivs.get(f"{name}_copy_{ph}", {}).get(main)) if u else None
        rows.append(row)
    return rows


def verification_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []

    def add(scn: str, what: str, v: dict[str, Any] | None) -> None:
        if v:
            rows.append({"scenario": scn, "embeddings": what, "statistic": v.get("statistic", "cos"),
                         "Δ": rate(v.get("delta"), None, v.get("delta_interval")),
                         "Δl2": rate(v.get("delta_l2"), None, v.get("delta_l2_interval")), "p": v.get("p_value"),
                         "detected": v.get("detected")})

    for name, s in r["scenarios"].items():
        add(name, "provider API", s.get("verify_api"))
        add(name, "copy (before SPA)", s.get("verify_copy_before_spa"))
        add(name, "copy (after SPA)", s.get("verify_copy_after_spa"))
    if "control" in r:
        c = r["control"]
        add(c["verified_against"], "clean provider (control)", c.get("verify_clean_provider"))
        add(c["verified_against"], "copy of clean provider (control)", c.get("verify_copy"))
    return rows


def spa_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, s in r["scenarios"].items():
        d = s["spa"]
        kde = d.get("kde", {})
        n_pos, n_neg, n1, n2 = d["n_triggered"], d["n"] - d["n_triggered"], d.get("n_k1"), d.get("n_k2plus")
        ki, di = kde.get("intervals", {}), d.get("intervals", {})
        rows.append({"scenario": name, "n": d["n"], "triggered": n_pos,
                     "k=1 / k≥2": f"{n1} / {n2}",
                     "AUROC cos": d["auroc_cos"], "AUROC l2": d["auroc_l2"], "AUROC pca": d["auroc_pca"],
                     "AUPRC pca": d["auprc_pca"],
                     "KDE: flagged": kde.get("n_deleted"), "KDE TPR": rate(kde.get("tpr"), n_pos, ki.get("tpr")),
                     "KDE TPR k=1": rate(kde.get("tpr_k1"), n1, ki.get("tpr_k1")),
                     "KDE TPR k≥2": rate(kde.get("tpr_k2plus"), n2, ki.get("tpr_k2plus")),
                     "KDE FPR": rate(kde.get("fpr"), n_neg, ki.get("fpr")),
                     f"deleted ({d['removal']})": d["n_deleted"], "TPR": rate(d["tpr"], n_pos, di.get("tpr")),
                     "TPR k=1": rate(d.get("tpr_k1"), n1, di.get("tpr_k1")),
                     "TPR k≥2": rate(d.get("tpr_k2plus"), n2, di.get("tpr_k2plus")),
                     "FPR": rate(d["fpr"], n_neg, di.get("fpr"))})
    return rows


def utility_rows(r: dict[str, Any], n_test: dict[str, int] | None = None) -> list[dict[str, Any]]:
    n_test = n_test or {}

    stored = r.get("utility_intervals", {})

    def acc(u: dict[str, float], key: str) -> dict[str, Any]:
        return {t: rate(v, n_test.get(t), stored.get(key, {}).get(t)) for t, v in u.items()}

    rows = [{"embeddings": "clean provider", **acc(r["utility_clean_provider"], "clean_provider")}]
    for name, s in r["scenarios"].items():
        rows.append({"embeddings": f"{name} API", **acc(s["utility_api"], f"{name}_api")})
        for ph in ("before_spa", "after_spa"):
            if s.get(f"utility_copy_{ph}"):
                rows.append({"embeddings": f"{name} copy {ph.replace('_', ' ')}",
                             **acc(s[f"utility_copy_{ph}"], f"{name}_copy_{ph}")})
    return rows


def paired_rows(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Paired comparisons on the same items, one row per scenario, p Holm-adjusted within each column:

    * a copy before vs after SPA, verified on the same D_b / D_n sentences (same verify size and seed): the change
      of Δ (the watermark evidence), a two-sample bootstrap of the per-sentence differences (before − after) on
      D_b against those on D_n;
    * the deletion that fed the copy vs the paper's KDE rule, on the same texts: exact McNemar on the per-text
      deleted flags, among the triggered texts (TPR) and among the clean ones (FPR);
    * the copy's downstream accuracy after vs before SPA, per task, on the same test texts: exact McNemar on the
      per-text correctness flags.

    Empty for results written before the per-sentence / per-text values were stored."""
    cols: dict[str, list[Comparison]] = {}
    for name, s in r["scenarios"].items():
        b, a = s.get("verify_copy_before_spa") or {}, s.get("verify_copy_after_spa") or {}
        if all(len(b.get(k) or []) == len(a.get(k) or []) > 1 for k in ("scores_backdoor", "scores_benign")):
            db = np.subtract(b["scores_backdoor"], a["scores_backdoor"])
            dn = np.subtract(b["scores_benign"], a["scores_benign"])
            cols.setdefault("Δ before − after SPA", []).append(
                Comparison(name, name, "Δ before − after SPA", bootstrap_diff(db, dn)))
        d = s["spa"]
        flags, kde_deleted = d.get("flags"), d.get("kde", {}).get("deleted")
        if flags and kde_deleted is not None and d.get("removal") != "kde":
            triggered = np.asarray(flags["trigger_counts"]) > 0
            rule, kde = np.asarray(flags["deleted"], bool), np.asarray(kde_deleted, bool)
            for col, m in ((f"TPR: {d['removal']} − KDE", triggered), (f"FPR: {d['removal']} − KDE", ~triggered)):
                if m.any():
                    cols.setdefault(col, []).append(Comparison(name, "kde", col, mcnemar_test(rule[m], kde[m], 1.0)))
        flags = r.get("utility_flags", {})
        before, after = flags.get(f"{name}_copy_before_spa", {}), flags.get(f"{name}_copy_after_spa", {})
        for task, ok_after in after.items():
            if len(before.get(task, [])) == len(ok_after) > 0:
                col = f"acc {task}: after − before SPA"
                cols.setdefault(col, []).append(Comparison(name, name, col, mcnemar_test(ok_after, before[task], 1.0)))
    rows: dict[str, dict[str, Any]] = {}
    for col, comps in cols.items():
        for c, p in zip(comps, holm([c.test.p for c in comps])):
            c.p_holm = p
            rows.setdefault(c.a, {"scenario": c.a})[col] = c.fmt(4 if col.startswith("Δ") else 3)
    return list(rows.values())


def score_histograms(path: Path, data: Any, name: str) -> Path:
    """SPA's pca and cos scores of the clean vs the triggered texts (one panel each)."""
    label = data["label"].astype(bool)
    return plot_histograms(path, {f"{name}: SPA {key} score": {"clean": data[key][~label],
                                                                "triggered (≥1 trigger)": data[key][label]}
                                  for key in ("pca", "cos")})


def write_report(run: RunDir) -> list[Path]:
    """report.md / report.html of an EaaS run, from its metrics.json and the SPA score arrays."""
    m = run.load_metrics()
    r = m["results"]
    rep = Report(f"EaaS watermark + SPA — {m['name']}")
    if m["config"].get("description"):
        rep.text(m["config"]["description"])
    if r.get("data_is_generated"):
        rep.text("**Data: procedurally generated stand-ins** (labelled classification texts with wordfreq "
                 "filler; suffix pool of generated encyclopedic sentences). Numbers are not comparable with "
                 "the paper's SST2/AG News/MIND/Enron results.")
    n_test = split_sizes(m["config"], r)
    rep.heading("Summary")
    rep.text("Rates (SPA TPR / FPR, accuracies) are fractions with their Wilson 95 % interval: TPR over the "
             "triggered samples, FPR over the clean ones, accuracy over the test split (n from the recipe: "
             + ", ".join(f"{k} {v}" for k, v in n_test.items()) + "). Δ (copy): the watermark evidence with its "
             "95 % two-sample bootstrap interval over the D_b / D_n sentences. p-values are KS tests "
             "(no interval).")
    rep.table(summary_rows(r, n_test), digits=3)
    rep.heading("Watermark verification")
    rep.text("Δcos / Δl2 / KS p on the provider's D_b (4 trigger words) vs D_n (4 ordinary words); SAW: Δ of "
             "the projection on the expected keyed direction. detected = p < α and Δ > 0.")
    rep.table(verification_rows(r))
    rep.heading("SPA detection of watermarked samples")
    rep.table(spa_rows(r), digits=3)
    paired = paired_rows(r)
    if paired:
        rep.heading("Paired tests on the same sentences / texts")
        rep.text("`Δ before − after SPA`: how much watermark evidence (Δcos; SAW: Δ proj_u) the SPA-purified "
                 "copy lost against the copy trained on the full stolen set, verified on the same D_b / D_n "
                 "sentences — two-sample bootstrap of the per-sentence differences. `TPR / FPR: <rule> − KDE`: "
                 "the deletion that fed the copy against the paper's KDE rule on the same texts, exact McNemar "
                 "on the per-text deleted flags among triggered / clean texts. `acc <task>: after − before "
                 "SPA`: the copy's downstream accuracy, exact McNemar on the per-text correctness on the same "
                 "test texts. "
                 "p is Holm-adjusted within each column; **n.s.** = not significant at 5 %.")
        rep.table(paired)
    spa_sweep_section(rep, r, run.sub("plots"))
    rep.heading("Utility (downstream MLP accuracy)")
    rep.table(utility_rows(r, n_test), digits=3)
    rep.heading("Provider query-log audit")
    audit = []
    for name, s in r["scenarios"].items():
        for a in s.get("query_log_audit", []):
            audit.append({"scenario": name, **{k: a[k] for k in ("key", "requests", "refused", "texts",
                                                                  "tokens", "triggered_fraction")}})
    rep.table(audit)
    plots = run.sub("plots")
    imgs = []
    for name in r["scenarios"]:
        p = run.path / "arrays" / f"{name}_spa_scores.npz"
        if p.exists():
            imgs.append(score_histograms(plots / f"spa_scores_{name}.png", np.load(p), name))
    vr = [row for row in verification_rows(r) if row["p"] is not None]
    if vr:
        plot_bars(plots / "verification_p.png", [f"{x['scenario']}\n{x['embeddings']}" for x in vr],
                  {"-log10 p": [-np.log10(max(x["p"], 1e-300)) for x in vr]},
                  "Watermark evidence (−log10 KS p; higher = stronger)", "−log10 p")
        imgs.append(plots / "verification_p.png")
    ur = utility_rows(r, n_test)
    tasks = [k for k in ur[0] if k not in ("embeddings",)] if ur else []
    if ur:
        def val(c: Any) -> float | None:
            return c.value if isinstance(c, Interval) else c

        plot_bars(plots / "utility.png", [x["embeddings"] for x in ur],
                  {t: [val(x.get(t)) for x in ur] for t in tasks}, "Downstream accuracy (whiskers: 95 %)",
                  "accuracy", (0, 1),
                  errors={t: ([x[t].lo if isinstance(x.get(t), Interval) else None for x in ur],
                              [x[t].hi if isinstance(x.get(t), Interval) else None for x in ur]) for t in tasks})
        imgs.append(plots / "utility.png")
    rep.heading("Plots")
    for p in imgs:
        rep.image(str(p.relative_to(run.path)), p.stem)
    rep.heading("Definitions and stand-ins")
    rep.text("\n".join(f"- **{k}**: {v}" for k, v in DEFINITIONS.items()))
    rep.text("\n".join(f"- {v}" for v in STAND_INS))
    rep.heading("Provenance")
    rep.code(provenance_block(m))
    return rep.write(run.path)
