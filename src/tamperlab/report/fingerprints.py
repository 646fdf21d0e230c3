"""Report of a fingerprint run: one table (method × fingerprint → FSR before/after, PPL, accuracy), plots,
per-pair outputs, the papers' reference numbers and provenance — built from metrics.json only.

FSR, control rate and accuracy carry n and a Wilson 95 % interval; every removal is compared with the
fingerprinted model on the same triggers by an exact McNemar test (`vs fingerprinted`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..runs import RunDir
from ..stats import Interval, mcnemar_test, stored_interval
from .render import Report, plot_bars, plot_lines, provenance_block
from .sweep import fingerprint_sweep_section

OFFICIAL = "official"


def _fsr(ev: dict[str, Any], variant: str = OFFICIAL) -> Interval | None:
    """FSR = hits / triggers with its Wilson 95 % interval (as a fraction): the stored record, else (older
    metrics.json) computed from the stored counts."""
    v = ev.get("fsr", {}).get(variant)
    return None if v is None else stored_interval(v.get("interval"), v["fsr"], v["hits"], v["n"])  # type: ignore


def _control(ev: dict[str, Any], variant: str = OFFICIAL) -> Interval | None:
    v = (ev.get("fsr", {}).get(variant) or {}).get("control")
    return None if not v else stored_interval(v.get("interval"), v["rate"], v["hits"], v["n"])  # type: ignore


def _acc(utility: dict[str, Any]) -> Interval | float | None:
    return stored_interval(utility.get("acc_interval"), utility.get("acc"), n=utility.get("acc_n"))


def _hits(ev: dict[str, Any], variant: str = OFFICIAL) -> tuple[list[int], str | None] | None:
    """Per-trigger 0/1 hits (stored flags, else the pairs' `hit`) and the triggers' digest (None if not stored)."""
    v = ev.get("fsr", {}).get(variant)
    if v is None:
        return None
    flags = v.get("flags") or [int(bool(p["hit"])) for p in v["pairs"]]
    return flags, v.get("prompts_sha") or None


def _vs(before: dict[str, Any], after: dict[str, Any]) -> str:
    """Exact McNemar p of the official FSR before vs after, on the same triggers (n.s. = not significant).
    Paired only when the trigger digests agree (or, for older metrics.json without them, the counts do)."""
    a, b = _hits(before), _hits(after)
    if not a or not b or len(a[0]) != len(b[0]) or not a[0] or (a[1] and b[1] and a[1] != b[1]):
        return "–"
    t = mcnemar_test(b[0], a[0], scale=1.0)
    return f"p={t.p:.2g}" + ("" if t.significant else " n.s.")


def _variant(ev: dict[str, Any], extra: str | None) -> str:
    iv = _fsr(ev, extra) if extra else None
    return f"{extra}: {iv.fmt(2)}" if iv else ""


def _extra_variant(ev: dict[str, Any]) -> str | None:
    return next((k for k in ev.get("fsr", {}) if k != OFFICIAL), None)


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (fingerprint, model state): fingerprinted, then every removal stage."""
    rows: list[dict[str, Any]] = []
    base = results.get("base", {})
    for fp, r in results["fingerprints"].items():
        fpe = r["fingerprinted"]
        before = _fsr(fpe)
        extra = _extra_variant(fpe)
        ppl0 = fpe["utility"]["ppl"]
        if fp in base:
            rows.append({"fingerprint": fp, "model": "clean base", "FSR before": None, "FSR after": _fsr(base[fp]),
                         "vs fingerprinted": _vs(fpe, base[fp]), "control": _control(base[fp]),
                         "FSR variant": _variant(base[fp], extra),
                         "PPL": base.get("utility", {}).get("ppl"), "acc": _acc(base.get("utility", {}))})
        rows.append({"fingerprint": fp, "model": "fingerprinted", "FSR before": None, "FSR after": before,
                     "vs fingerprinted": None, "control": _control(fpe), "FSR variant": _variant(fpe, extra),
                     "PPL": ppl0, "acc": _acc(fpe["utility"])})
        for rk, rem in r["removals"].items():
            for stage, ev in rem["stages"].items():
                label = rk if stage == "after" else f"{rk} · {stage}"
                rows.append({"fingerprint": fp, "model": label, "FSR before": before.value if before else None,
                             "FSR after": _fsr(ev), "vs fingerprinted": _vs(fpe, ev), "control": _control(ev),
                             "FSR variant": _variant(ev, extra), "PPL": ev["utility"]["ppl"],
                             "acc": _acc(ev["utility"])})
    return rows


def pivot(rows: list[dict[str, Any]], value: str) -> tuple[list[str], dict[str, list[float | None]],
                                                          dict[str, tuple[list, list]]]:
    """model labels (x groups), one series per fingerprint (None where a model state has no value: drawn as
    "n/a", never as 0) and the series' 95 % interval ends where the values are intervals."""
    labels: list[str] = []
    for r in rows:
        if r["model"] not in labels:
            labels.append(r["model"])
    series: dict[str, list[float | None]] = {}
    errors: dict[str, tuple[list, list]] = {}
    for fp in dict.fromkeys(r["fingerprint"] for r in rows):
        vals = {r["model"]: r[value] for r in rows if r["fingerprint"] == fp}
        cells = [vals.get(m) for m in labels]
        series[fp] = [c.value if isinstance(c, Interval) else (float(c) if c is not None else None) for c in cells]
        if any(isinstance(c, Interval) for c in cells):
            errors[fp] = ([c.lo if isinstance(c, Interval) else None for c in cells],
                          [c.hi if isinstance(c, Interval) else None for c in cells])
    return labels, series, errors


def paper_rows(res: dict[str, Any], config: dict[str, Any]) -> list[dict[str, Any]]:
    """MERASER_REFERENCES against every MEraser stage of the run."""
    from .references import MERASER_REFERENCES, verdict

    model = str(config.get("model", {}).get("name_or_path", "?"))
    rows = []
    for fp, r in res["fingerprints"].items():
        for rk, rem in r["removals"].items():
            for stage, ev in rem["stages"].items():
                for ref in MERASER_REFERENCES:
                    if ref.method != rem.get("name") or ref.setting["fingerprint"] != fp or \
                            ref.setting["stage"] != stage:
                        continue
                    measured = _fsr(ev)
                    rows.append({"removal": rk, "fingerprint": fp, "stage": stage, "paper": ref.value,
                                 "measured": measured, "verdict": verdict(ref, measured, {
                                     "model": model, "fingerprint": fp, "stage": stage}), "source": ref.source})
    return rows


def build_report(run: RunDir, cfg: Any) -> list[Path]:
    m = run.load_metrics()
    res = m["results"]
    rows = summary_rows(res)
    rep = Report(f"Fingerprints and removal — {m['name']}")
    if cfg.description:
        rep.text(cfg.description)
    rep.heading("Method × fingerprint")
    rep.text("FSR = fraction of distinct fingerprint triggers whose greedy output matches the owner's target, under "
             "each method's own definition (column `FSR after`); `FSR variant` is the second definition each method "
             "reports here (IF: `plain` = no forced answer prefix; HashChain: `meta_prompts` = system prompts never "
             "trained on). `control`: the official definition applied to as many prompts *without* a trigger "
             "(IF: its negatives, then normal chats; HashChain: pool questions the key did not select; UTF: none) — "
             "how often the owner's answer comes out anyway; a real fingerprint hit needs FSR high *and* control "
             "low. PPL: held-out clean answers given their chat prompts. acc: "
             + (res.get("base", {}).get("utility", {}).get("acc_source") or "generated multiple choice") + ". "
             "FSR, control and acc: value [Wilson 95 % interval] over the triggers / prompts / questions. "
             "`vs fingerprinted`: exact McNemar test of this model's trigger hits against the fingerprinted "
             "model's on the same triggers (**n.s.** = the removal did not change FSR significantly).")
    rep.table(rows, ["fingerprint", "model", "FSR before", "FSR after", "vs fingerprinted", "control",
                     "FSR variant", "PPL", "acc"], digits=2)
    plots = run.sub("plots")
    labels, fsr, fsr_err = pivot([r for r in rows if r["model"] != "clean base"], "FSR after")
    plot_bars(plots / "fsr.png", labels, fsr, "FSR (official definition) per model state; whiskers: 95 %", "FSR",
              (0, 1.05), errors=fsr_err)
    rep.image("plots/fsr.png", "FSR")
    labels, ppl, _ = pivot([r for r in rows if r["model"] != "clean base"], "PPL")
    plot_bars(plots / "ppl.png", labels, ppl, "Held-out perplexity per model state", "PPL")
    rep.image("plots/ppl.png", "PPL")
    curves: dict[str, tuple[list[float], list[float]]] = {}
    traj: dict[str, tuple[list[float], list[float]]] = {}
    for fp, r in res["fingerprints"].items():
        for rk, rem in r["removals"].items():
            for stage, ev in rem["stages"].items():
                train = ev.get("info", {}).get("train") or {}
                hist = train.get("loss_history") or []
                if hist and rk.startswith("meraser"):
                    curves[f"{fp} · {rk} · {stage}"] = (list(range(len(hist))), hist)
                points = train.get("trajectory") or []
                for variant in (points[0].keys() - {"step"}) if points else ():
                    traj[f"{fp} · {rk} · {stage} · {variant}"] = ([p["step"] for p in points],
                                                                  [p[variant] for p in points])
    if curves:
        plot_lines(plots / "meraser_loss.png", curves, "MEraser training loss (per logging step)", "log step", "loss")
        rep.image("plots/meraser_loss.png", "MEraser loss")
    if traj:
        plot_lines(plots / "fsr_trajectory.png", traj, "FSR during MEraser training", "optimizer step", "FSR",
                   (-0.05, 1.05))
        rep.image("plots/fsr_trajectory.png", "FSR during training")

    rep.heading("Per-trigger outputs (fingerprinted → after each removal)")
    for fp, r in res["fingerprints"].items():
        sample = []
        evs = [("fingerprinted", r["fingerprinted"])] + [
            (f"{rk} · {st}", ev) for rk, rem in r["removals"].items() for st, ev in rem["stages"].items()]
        for label, ev in evs:
            pairs = ev["fsr"][OFFICIAL]["pairs"][:2]
            for i, p in enumerate(pairs):
                sample.append({"model": label, "trigger": i, "hit": p["hit"], "target": p["target"][:24],
                               "output": p["output"].replace("\n", " ")[:70]})
        rep.heading(fp, 3).table(sample, ["model", "trigger", "hit", "target", "output"])

    tf = [(fp, rem["stages"]["after"]["info"]) for fp, r in res["fingerprints"].items()
          for rk, rem in r["removals"].items() if rem["name"] == "token_forcing" and "after" in rem["stages"]]
    if tf:
        rep.heading("Token Forcing: flagged continuations")
        rep.table([{"fingerprint": fp, "probes": i["n_probes"], "flagged": i["n_flagged"],
                    "top phrases": " | ".join(repr(f["text"][:30]) for f in i["flagged"][:4])} for fp, i in tf])

    fingerprint_sweep_section(rep, res, plots)

    paper = paper_rows(res, m["config"])
    if paper:
        rep.heading("Paper vs measured")
        rep.text("MEraser's published FSR after erase / recover next to this run's (official definition, Wilson 95 %). "
                 "**pass** = the paper's value within the measured interval ± tolerance; **not comparable** names the "
                 "setting fields that differ.")
        rep.table(paper, digits=2)
    rep.heading("Definitions, settings and the papers' numbers")
    for name, ref in m.get("references", {}).items():
        rep.text(f"**{name}** — {ref.get('paper') or ''} reference: {ref.get('reference')}")
    for fp, r in res["fingerprints"].items():
        defs = {k: v["definition"] for k, v in r["fingerprinted"]["fsr"].items()}
        rep.text(f"FSR of {fp}: " + "; ".join(f"{k}: {v}" for k, v in defs.items()))
    rep.text(f"Clean data: {m.get('clean_data')}")
    rep.heading("Timings (s)")
    rep.table([{"stage": k, "seconds": v} for k, v in m.get("timings", {}).items()])
    rep.heading("Provenance")
    rep.code(provenance_block(m))
    return rep.write(run.path)
