"""EaaS watermark + Semantic Perturbation Attack, end to end.

For each scenario (a watermark served by the provider):
  serve (real uvicorn on 127.0.0.1, ephemeral port) → steal (HTTP queries of the corpus) → copy model →
  verify (Δcos, Δl2, KS p) → SPA (suffix search with a local surrogate, perturbed queries over HTTP, tightness
  scores, KDE threshold, deletion; TPR/FPR/AUROC against the true trigger labels) → copy model on the purified
  set → verify again → downstream accuracy of every embedding source.
A control copies an unwatermarked provider and is verified against the first scenario's secret.
Every stage is cached in the run directory, so `--resume` continues a killed run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np

from ..config import OneOf, check_positive
from ..errors import ConfigError
from ..registry import EXPERIMENTS
from .. import distributed
from ..runs import RunDir, atomic_write_bytes
from ..report.cells import Comparison
from ..stats import Interval, bits, bootstrap_diff, digest, holm, mcnemar_test, rate_record, stored_interval
from ..eaas.downstream import DownstreamConfig, classify_correct
from ..eaas.server import ServerConfig
from ..eaas.service import ProviderConfig
from ..eaas.spa import SPAConfig
from ..eaas.stealer import StealerConfig
from .base import Experiment, RunConfig
from .eaas_sweep import EaaSSweepConfig

log = logging.getLogger("tamperlab")


def _task_names() -> list[str]:
    from ..eaas.data import TASK_NAMES

    return TASK_NAMES


@dataclass
class DataConfig:
    """Texts the provider is set up on, the stealer queries, and utility is measured on."""

    task: Annotated[str, OneOf(_task_names, "task")] = "gen_topic"
    """Main task: its train split is the stealer's query corpus (gen_topic, gen_sentiment, gen_spam, sst2,
    ag_news, enron_spam, mind)."""
    n_train: int = 1000
    """Texts the stealer queries (official SPA stealing test: a 5000-sample subset)."""
    n_test: int = 400
    """Test texts for downstream accuracy (official: 500)."""
    extra_tasks: list[Annotated[str, OneOf(_task_names, "task")]] = field(default_factory=list)
    """More tasks for downstream utility only (their texts are embedded through the API and the copies)."""
    n_extra_train: int = 400
    """Train texts per extra task."""
    n_extra_test: int = 200
    """Test texts per extra task."""
    mind_path: str = ""
    """MIND news.tsv, needed for task 'mind'."""
    seed: int = 2024
    """Sampling seed (official subset seed: 2024)."""

    def __post_init__(self) -> None:
        check_positive("data", n_train=self.n_train, n_test=self.n_test, n_extra_train=self.n_extra_train,
                       n_extra_test=self.n_extra_test)


@dataclass
class ScenarioConfig:
    """One watermarked (or defended) service that is stolen and attacked."""

    name: str = "embmarker"
    """Scenario label in tables and file names."""
    watermark: str = "embmarker"
    """Registered watermark (embmarker, warden, saw)."""
    watermark_config: dict[str, Any] = field(default_factory=dict)
    """Fields of the watermark's config dataclass."""
    steal: bool = True
    """Train a copy model on the stolen embeddings and verify it; false = SPA detection on the API only."""
    steal_after_spa: bool = True
    """Also train a copy on the SPA-purified set and verify it (the attack's end result)."""
    role: Literal["attack", "defense"] = "attack"
    """'defense' marks a defended service (reported in the defense section)."""

    def __post_init__(self) -> None:
        from ..eaas.watermarks import build_watermark

        if self.watermark == "none":
            raise ConfigError(f"scenario {self.name!r}: use `control: true` for the unwatermarked provider")
        build_watermark(self.watermark, self.watermark_config)


@dataclass
class VerifyConfig:
    """Provider's watermark verification (EmbMarker's eval_copier)."""

    size: int = 20
    """Sentences in each of D_b and D_n (official --verify_dataset_size 20)."""
    alpha: float = 0.05
    """'detected' means p < alpha and Δ > 0."""
    target_source: Literal["provider", "copy"] = "provider"
    """Target vector: the provider's secret, or the suspect's own embedding of the target text (the adv variant)."""
    seed: int = 0
    """Seed of the verification sentences."""


@dataclass
class EaaSConfig(RunConfig):
    """Recipe of the EaaS watermark + SPA experiment."""

    provider: ProviderConfig = field(default_factory=ProviderConfig)
    """The provider: embedder and (default) watermark; `tamperlab serve` serves exactly this."""
    server: ServerConfig = field(default_factory=ServerConfig)
    """HTTP front: keys, rate limits, size limits, query log."""
    data: DataConfig = field(default_factory=DataConfig)
    """Corpus and downstream tasks."""
    scenarios: list[ScenarioConfig] = field(default_factory=lambda: [ScenarioConfig()])
    """Watermarked services to steal and attack (the defense is a scenario with role: defense)."""
    control: bool = True
    """Also copy an unwatermarked provider and verify it (negative control: p should be large)."""
    stealer: StealerConfig = field(default_factory=StealerConfig)
    """Copy model."""
    spa: SPAConfig = field(default_factory=SPAConfig)
    """Semantic Perturbation Attack."""
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    """Verification."""
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    """Utility classifier."""
    sweep: EaaSSweepConfig = field(default_factory=EaaSSweepConfig)
    """Attacker sweep: SPA re-run over its deleted fraction, score and perturbations per text, one copy per
    trial (off by default)."""

    def __post_init__(self) -> None:
        names = [s.name for s in self.scenarios]
        if not names:
            raise ConfigError("scenarios: at least one scenario is needed")
        if len(set(names)) != len(names):
            raise ConfigError(f"scenarios: duplicate names {names}")
        self.sweep.validate(self.scenarios, self.spa)


def _arrays(run: RunDir, key: str, fn: Any) -> np.ndarray:
    """Cache a float array stage as .npy (JSON stages are for small results)."""
    p = run.sub("arrays") / f"{key}.npy"
    if p.exists():
        return np.load(p)
    t0 = time.time()
    arr = np.asarray(fn())
    atomic_write_bytes(p, lambda f: np.save(f, arr))
    run.log("stage_done", stage=key, seconds=round(time.time() - t0, 2))
    distributed.barrier()  # as RunDir.cached: every rank sees the array before the next existence check
    return arr


@EXPERIMENTS.register("eaas")
class EaaSExperiment(Experiment):
    """EaaS watermark (EmbMarker/WARDEN/SAW) → model stealing → verification → SPA → defense."""

    config_cls = EaaSConfig

    def __init__(self, cfg: EaaSConfig):
        super().__init__(cfg)
        self.cfg: EaaSConfig = cfg

    # -- data ---------------------------------------------------------------------------------------------------
    def _task(self, name: str, split: str, n: int) -> Any:
        from ..eaas.data import load_task

        return load_task(name, split, n, self.cfg.data.seed, self.cfg.data.mind_path)

    def provider_corpus(self) -> list[str]:
        """Texts the watermark secret is set up on (target = corpus[target_index])."""
        return self._task(self.cfg.data.task, "train", self.cfg.data.n_train).texts

    # -- run ----------------------------------------------------------------------------------------------------
    def run(self, run: RunDir) -> dict[str, Any]:
        from ..eaas.data import suffix_pool
        from ..eaas.embedder import Embedder
        from ..eaas.querylog import QueryLog
        from ..eaas.server import ServerHandle, create_app, resolve_key_secrets
        from ..eaas.service import build_service
        from ..eaas.stealer import copier_encode, load_copier, train_copier
        from ..eaas.watermarks import load_watermark
        from ..eaas import spa as S

        cfg = self.cfg
        t_start = time.time()
        train = self._task(cfg.data.task, "train", cfg.data.n_train)
        test = self._task(cfg.data.task, "test", cfg.data.n_test)
        extras = {t: (self._task(t, "train", cfg.data.n_extra_train), self._task(t, "test", cfg.data.n_extra_test))
                  for t in cfg.data.extra_tasks}
        pool = suffix_pool(cfg.spa.pool_size, cfg.seed)
        provenance = {"main_task": train.provenance, "main_task_test": test.provenance,
                      "extra_tasks": {k: v[0].provenance for k, v in extras.items()},
                      "suffix_pool": {"source": "procedurally generated encyclopedic sentences "
                                                "(stand-in for WikiText-103)", "generated": True,
                                      "n": len(pool)}}
        generated = bool(train.provenance.get("generated")) or any(v[0].provenance.get("generated")
                                                                   for v in extras.values())

        # One provider embedder (with a cache: the same texts served under several watermarks cost one encode).
        emb = Embedder.load(cfg.provider.model, batch_size=cfg.provider.batch_size,
                            cache_size=max(cfg.provider.cache_size, 200_000))
        results: dict[str, Any] = {"scenarios": {}, "data_provenance": provenance,
                                   "data_is_generated": generated}
        y_tr, y_te = np.array(train.labels), np.array(test.labels)
        n_test = {cfg.data.task: len(test.labels), **{t: len(v[1].labels) for t, v in extras.items()}}
        acc_intervals: dict[str, dict[str, Any]] = {}
        acc_flags: dict[str, dict[str, list[int]]] = {}
        results.update(utility_intervals=acc_intervals, utility_flags=acc_flags, utility_texts_sha={
            cfg.data.task: digest(test.texts), **{t: digest(v[1].texts) for t, v in extras.items()}})

        def utility(encode_train: Any, encode_test: Any, key: str) -> dict[str, float]:
            """Downstream accuracy of one embedding source on the main task and the extra tasks (its Wilson
            intervals go to results["utility_intervals"][key], its per-test-text 0/1 correctness to
            results["utility_flags"][key]; accuracy = correct / n, so k is exact)."""
            def compute() -> dict[str, dict[str, Any]]:
                def one(x_tr: Any, labels_tr: Any, x_te: Any, labels_te: Any) -> dict[str, Any]:
                    ok = classify_correct(x_tr, np.asarray(labels_tr), x_te, np.asarray(labels_te),
                                          cfg.downstream, cfg.seed)
                    return {"acc": float(ok.mean()), "correct": bits(ok)}
                out = {cfg.data.task: one(encode_train(train.texts, "main_train"), y_tr,
                                          encode_test(test.texts, "main_test"), y_te)}
                for name, (etr, ete) in extras.items():
                    out[name] = one(encode_train(etr.texts, f"{name}_train"), etr.labels,
                                    encode_test(ete.texts, f"{name}_test"), ete.labels)
                return out
            cached = run.cached(f"utility_{key}", compute)
            # stage caches written before the flags were kept hold the bare accuracy
            acc = {t: v["acc"] if isinstance(v, dict) else v for t, v in cached.items()}
            acc_flags[key] = {t: v["correct"] for t, v in cached.items() if isinstance(v, dict)}
            acc_intervals[key] = {t: rate_record(int(round(v * n_test[t])), n_test[t]) for t, v in acc.items()}
            return acc

        clean_enc = lambda texts, tag: emb.encode(texts)  # noqa: E731
        results["utility_clean_provider"] = utility(clean_enc, clean_enc, "clean_provider")

        first_wm = None
        for sc in cfg.scenarios:
            state_dir = run.sub("provider", sc.name)
            pcfg = ProviderConfig(model=cfg.provider.model, model_name=cfg.provider.model_name,
                                  watermark=sc.watermark, watermark_config=sc.watermark_config,
                                  batch_size=cfg.provider.batch_size)
            service = build_service(pcfg, train.texts, state_dir, embedder=emb)
            wm = service.watermark
            first_wm = first_wm or (state_dir, wm)
            keys = resolve_key_secrets(cfg.server, state_dir)
            if "stealer" not in keys:
                raise ConfigError("server.keys must include a key named 'stealer' (the demo's customer)")
            qlog = QueryLog(state_dir / cfg.server.query_log, retention=cfg.server.retention)
            app = create_app(service, cfg.server, keys, qlog)
            res: dict[str, Any] = {"watermark": sc.watermark, "role": sc.role,
                                   "triggers": list(getattr(wm, "triggers", []))}
            counts = wm.trigger_counts(train.texts)
            res["triggered_fraction"] = float((counts > 0).mean())
            res["trigger_count_histogram"] = np.bincount(counts, minlength=5).tolist()
            with ServerHandle(app) as srv:
                from ..eaas.client import EmbeddingClient

                log.info("[%s] provider up at %s", sc.name, srv.url)
                run.log("server_up", scenario=sc.name, url=srv.url)
                client = EmbeddingClient(srv.url, keys["stealer"], cfg.provider.model_name,
                                         batch_size=cfg.stealer.query_batch,
                                         concurrency=cfg.stealer.query_concurrency)
                api = lambda texts, tag, _c=client, _n=sc.name: _arrays(  # noqa: E731
                    run, f"{_n}_api_{tag}", lambda: _c.embed(texts, desc=f"[{_n}] query {tag}"))
                stolen = api(train.texts, "main_train")
                # Provider's own check of its API (API misuse case): the service itself must verify.
                res["verify_api"] = run.cached(f"{sc.name}_verify_api", lambda: wm.verify(
                    lambda t: client.embed(t, progress=False), cfg.verify.size, cfg.verify.seed, cfg.verify.alpha,
                    cfg.verify.target_source))
                res["utility_api"] = utility(api, api, f"{sc.name}_api")

                # --- SPA: suffix search on the local surrogate, perturbed queries through the API -----------
                suffix_idx = _spa_suffixes(run, cfg, train.texts, pool)
                pert = S.perturbed_texts(train.texts, pool, suffix_idx)
                e_pert = api(pert, "spa_perturbed").reshape(len(train.texts), cfg.spa.n_suffixes, -1)
                scores = S.tightness_scores(stolen, e_pert, cfg.spa.pca_components)
                deleted, thr = S.select_for_deletion(scores, cfg.spa)
                det = S.detection_report(scores, counts, deleted)
                det["threshold"] = thr
                det["score"] = cfg.spa.score
                det["removal"] = cfg.spa.removal
                det.update(spa_records(counts, deleted, train.texts))
                # The paper's detection rule (KDE threshold) is always reported, whatever deletion feeds the copy.
                kde_mask, kde_thr = S.select_for_deletion(scores, replace(cfg.spa, removal="kde"))
                kde = S.detection_report(scores, counts, kde_mask)
                det["kde"] = {"threshold": kde_thr, **{k: kde[k] for k in ("tpr", "fpr", "tpr_k1", "tpr_k2plus",
                                                                         "n_deleted", "precision")},
                              "intervals": spa_records(counts, kde_mask, train.texts)["intervals"],
                              "deleted": bits(kde_mask)}
                res["spa"] = det
                atomic_write_bytes(run.sub("arrays") / f"{sc.name}_spa_scores.npz",
                                   lambda f: np.savez(f, label=counts > 0, deleted=deleted, **scores))
                res["query_log_audit"] = qlog.audit()
                res["query_log_rows"] = qlog.count()
            qlog.close()

            if sc.steal:
                keep = ~deleted
                phases = [("before_spa", np.ones(len(keep), bool))] + ([("after_spa", keep)] if sc.steal_after_spa
                                                                      else [])
                for phase, mask in phases:
                    folder = run.sub("copies", f"{sc.name}_{phase}")

                    def fit(_m: np.ndarray = mask, _f: Path = folder) -> dict[str, Any]:
                        texts = [t for t, k in zip(train.texts, _m) if k]
                        model = train_copier(texts, stolen[_m], cfg.stealer, _f, cfg.seed)
                        return {"n_train": len(texts), **getattr(model, "train_summary", {})}

                    res[f"copy_{phase}"] = run.cached(f"{sc.name}_copy_{phase}", fit)
                    model = load_copier(folder)
                    enc = lambda texts, tag, _m=model, _k=f"{sc.name}_{phase}": _arrays(  # noqa: E731
                        run, f"{_k}_{tag}", lambda: copier_encode(_m, texts))
                    res[f"verify_copy_{phase}"] = run.cached(f"{sc.name}_verify_copy_{phase}", lambda _m=model: wm.verify(
                        lambda t: copier_encode(_m, t), cfg.verify.size, cfg.verify.seed, cfg.verify.alpha,
                        cfg.verify.target_source))
                    res[f"utility_copy_{phase}"] = utility(enc, enc, f"{sc.name}_copy_{phase}")
                    log.info("[%s] copy %s: %s", sc.name, phase, _brief(res[f"verify_copy_{phase}"]))
            if cfg.sweep.enabled and sc.name in cfg.sweep.targets(cfg.scenarios):
                from .eaas_sweep import SPAInputs, run_sweep

                sets = {cfg.data.task: (train.texts, y_tr, test.texts, y_te),
                        **{t: (tr.texts, np.array(tr.labels), te.texts, np.array(te.labels))
                           for t, (tr, te) in extras.items()}}
                res["sweep"] = run_sweep(run, cfg, sc.name, SPAInputs(train.texts, stolen, e_pert, counts, wm, sets),
                                         res)
            results["scenarios"][sc.name] = res
            log.info("[%s] SPA: TPR %.3f FPR %.3f AUROC(pca) %.3f", sc.name, res["spa"]["tpr"], res["spa"]["fpr"],
                     res["spa"]["auroc_pca"])

        if cfg.control and first_wm is not None:
            # Negative control: a copy of the *unwatermarked* provider, verified against the first secret.
            state_dir, _ = first_wm
            wm0 = load_watermark(state_dir)
            folder = run.sub("copies", "control")
            clean_train = _arrays(run, "clean_main_train", lambda: emb.encode(train.texts))
            ctrl = run.cached("control_copy", lambda: {"n_train": len(train.texts), **getattr(
                train_copier(train.texts, clean_train, cfg.stealer, folder, cfg.seed), "train_summary", {})})
            model = load_copier(folder)
            results["control"] = {
                "copy": ctrl, "verified_against": cfg.scenarios[0].name,
                "verify_copy": run.cached("control_verify", lambda: wm0.verify(
                    lambda t: copier_encode(model, t), cfg.verify.size, cfg.verify.seed, cfg.verify.alpha,
                    cfg.verify.target_source)),
                "verify_clean_provider": run.cached("control_verify_clean_provider", lambda: wm0.verify(
                    emb.encode, cfg.verify.size, cfg.verify.seed, cfg.verify.alpha, cfg.verify.target_source)),
            }
        results["definitions"] = DEFINITIONS
        results["stand_ins"] = STAND_INS
        results["pipeline_seconds"] = round(time.time() - t_start, 1)
        run.save_metrics(results)
        return results

    # -- report -------------------------------------------------------------------------------------------------
    def report(self, run: RunDir) -> list[Path]:
        from ..report.render import Report, plot_bars, provenance_block

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
        from .eaas_sweep import report_section as sweep_section

        sweep_section(rep, r, run.sub("plots"))
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
                imgs.append(_score_hist(plots / f"spa_scores_{name}.png", np.load(p), name))
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


def _spa_suffixes(run: RunDir, cfg: EaaSConfig, texts: list[str], pool: list[str]) -> np.ndarray:
    """Suffix search with the attacker's local surrogate (shared by all scenarios: it never sees the API)."""
    from ..eaas.embedder import Embedder
    from ..eaas.spa import search_suffixes

    p = run.sub("arrays") / "spa_suffix_idx.npy"
    if p.exists():
        return np.load(p)
    t0 = time.time()
    sur = Embedder.load(cfg.spa.surrogate, batch_size=cfg.provider.batch_size)
    idx = search_suffixes(texts, pool, sur.encode, cfg.spa.candidates, cfg.spa.n_suffixes)
    atomic_write_bytes(p, lambda f: np.save(f, idx))
    run.log("stage_done", stage="spa_suffix_search", seconds=round(time.time() - t0, 2))
    distributed.barrier()
    return idx


def _brief(v: dict[str, Any]) -> str:
    return f"Δ={v.get('delta', 0):+.4f} p={v.get('p_value', 1):.3g} detected={v.get('detected')}"


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


def spa_records(counts: np.ndarray, deleted: np.ndarray, texts: list[str]) -> dict[str, Any]:
    """Rate records of one SPA deletion (TPR over triggered texts, FPR over clean ones, TPR by trigger count,
    precision over deleted ones) and its per-text 0/1 flags with the texts' digest, for paired tests between two
    deletions of the same texts."""
    counts, deleted = np.asarray(counts), np.asarray(deleted, bool)
    label = counts > 0

    def share(mask: np.ndarray, of: np.ndarray) -> dict[str, Any]:
        return rate_record(int((mask & of).sum()), int(of.sum()))

    return {"intervals": {"tpr": share(deleted, label), "fpr": share(deleted, ~label),
                          "tpr_k1": share(deleted, counts == 1), "tpr_k2plus": share(deleted, counts >= 2),
                          "precision": share(label, deleted)},
            "flags": {"trigger_counts": [int(c) for c in counts], "deleted": bits(deleted)},
            "texts_sha": digest(texts)}


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


def _score_hist(path: Path, data: Any, name: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    label = data["label"].astype(bool)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=110)
    for ax, key in zip(axes, ("pca", "cos")):
        x = data[key]
        bins = np.linspace(x.min(), x.max(), 40)
        ax.hist(x[~label], bins=bins, alpha=0.6, label="clean", density=True)
        ax.hist(x[label], bins=bins, alpha=0.6, label="triggered (≥1 trigger)", density=True)
        ax.set_title(f"{name}: SPA {key} score")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
