"""The stages of the EaaS watermark + SPA experiment (experiments/eaas.py runs them in order).

    open_run        texts (main task, extra tasks), SPA suffix pool, the provider's embedder
    utility         downstream accuracy of one embedding source          stage utility_<source>
    steal_and_spa   serve one watermarked provider over HTTP, steal the corpus through the API, the provider's
                    own check of its API, SPA's perturbed queries and deletion
                                                                          arrays <sc>_api_*, spa_suffix_idx;
                                                                          stages <sc>_verify_api, utility_<sc>_api
    copies          copy models on the stolen / SPA-purified set, verified and measured
                                                                          stages <sc>_copy_<phase>,
                                                                          <sc>_verify_copy_<phase>,
                                                                          utility_<sc>_copy_<phase>
    sweep           the attacker's SPA sweep (experiments/eaas_sweep.py)  stages sweep-<sc>-*
    control         a copy of the unwatermarked provider, verified against the first scenario's secret
                                                                          stages control_copy, control_verify,
                                                                          control_verify_clean_provider

Every stage is cached in the run directory (JSON stages through `RunDir.cached`, embedding arrays as .npy with a
small JSON stage `array-<key>` recording them), so `--resume` continues a killed run; the stage names are what runs
on disk hold and must not change. Every stage is versioned by its inputs: the recipe sections it reads, the texts it
embeds (by content) and the inputs of the embedding source it measures (the provider's secret, a copy model), so
`--resume` with a changed recipe recomputes exactly the stages downstream of the change and deletes what the old
inputs wrote (a watermark secret, arrays, copy models): a changed verification re-verifies, it does not re-steal
or retrain a copy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .. import distributed
from ..errors import ConfigError
from ..config import to_dict
from ..runs import RunDir, atomic_write_bytes, inputs_hash
from ..stats import bits, digest, rate_record

if TYPE_CHECKING:
    from ..experiments.eaas import EaaSConfig, ScenarioConfig
    from .data import TextTask

log = logging.getLogger("tamperlab")

Encode = Callable[[list[str], str], np.ndarray]
"""An embedding source: (texts, tag) → embeddings; the tag names the texts' cache entry."""


def cached_array(run: RunDir, key: str, fn: Callable[[], Any], inputs: Any) -> np.ndarray:
    """Cache an array stage as arrays/<key>.npy, written atomically (JSON stages are for small results), versioned
    by `inputs` through the JSON stage `array-<key>` (shape, dtype and sha256 of the .npy): changed inputs delete the
    old array and recompute it; an array that is missing or not the recorded one is recomputed too."""
    import hashlib

    p = run.path / "arrays" / f"{key}.npy"

    def compute() -> dict[str, Any]:
        arr = np.asarray(fn())
        atomic_write_bytes(p, lambda f: np.save(f, arr))
        return {"shape": list(arr.shape), "dtype": str(arr.dtype),
                "sha256": hashlib.sha256(p.read_bytes()).hexdigest() if distributed.is_main_process() else None}

    rec = run.cached(f"array-{key}", compute, inputs=inputs, outputs=[p])
    ok = distributed.run_collectively(lambda: p.exists() and hashlib.sha256(p.read_bytes()).hexdigest() == rec["sha256"])
    if not ok:  # deleted or replaced by hand since it was recorded: compute it again under the same inputs
        log.warning("array %s: missing or not the recorded one, recomputing", p)
        run.save_stage(f"array-{key}", compute(), inputs)
        distributed.barrier()
    return np.load(p)


def texts_id(texts: list[str]) -> str:
    """The identity of a list of texts (sha256 of their canonical JSON): what an embedding of them depends on."""
    return inputs_hash(list(texts))


def load_task(cfg: "EaaSConfig", name: str, split: str, n: int) -> "TextTask":
    from .data import load_task as load

    return load(name, split, n, cfg.data.seed, cfg.data.mind_path)


@dataclass
class EaaSRun:
    """What the stages of one run share: the run directory, the recipe, the texts, the provider's embedder, and
    the results being built (the utility stages add their intervals and per-text flags to it)."""

    run: RunDir
    cfg: "EaaSConfig"
    train: "TextTask"
    """Main task's train split: the provider's corpus and the stealer's queries."""
    test: "TextTask"
    extras: dict[str, tuple["TextTask", "TextTask"]]
    """Extra downstream tasks: name → (train, test)."""
    pool: list[str]
    """SPA's suffix pool."""
    emb: Any
    """The provider's (unwatermarked) embedder, shared by every scenario."""
    results: dict[str, Any] = field(default_factory=dict)

    # -- stage inputs (what each cached stage depends on; runs.RunDir.cached) -------------------------------
    def embedder_inputs(self) -> dict[str, Any]:
        """The provider's clean embedder."""
        return {"model": self.cfg.provider.model, "batch_size": self.cfg.provider.batch_size}

    def secret_inputs(self, sc: "ScenarioConfig") -> dict[str, Any]:
        """A scenario's watermark secret and what its API returns: the embedder, the watermark and its settings, the
        corpus its triggers / target are chosen from, and the run's seed (set before the secret is drawn)."""
        return {"embedder": self.embedder_inputs(), "watermark": sc.watermark,
                "watermark_config": to_dict(sc.watermark_config), "corpus": texts_id(self.train.texts),
                "seed": self.cfg.seed}

    def verify_inputs(self, secret: dict[str, Any]) -> dict[str, Any]:
        """The provider's verification against the secret `secret` describes."""
        return {"secret": secret, "verify": to_dict(self.cfg.verify)}

    def utility_inputs(self, source: Any) -> dict[str, Any]:
        """Downstream accuracy of an embedding source (`source`: its inputs) on the main and extra tasks."""
        tasks = {t: [texts_id(tr), tr_l, texts_id(te), te_l] for t, (tr, tr_l, te, te_l) in
                 ((t, (v[0], v[1].tolist(), v[2], v[3].tolist())) for t, v in self.utility_sets().items())}
        return {"source": source, "tasks": tasks, "downstream": to_dict(self.cfg.downstream), "seed": self.cfg.seed}

    def copy_inputs(self, targets: Any, kept: np.ndarray) -> dict[str, Any]:
        """A copy model: the embeddings it is trained on (their inputs), which texts it keeps, the stealer."""
        return {"targets": targets, "kept": inputs_hash(bits(kept)), "stealer": to_dict(self.cfg.stealer),
                "seed": self.cfg.seed}

    @property
    def n_test(self) -> dict[str, int]:
        return {self.cfg.data.task: len(self.test.labels), **{t: len(v[1].labels) for t, v in self.extras.items()}}

    def clean_encoder(self) -> Encode:
        return lambda texts, tag: self.emb.encode(texts)

    def utility_sets(self) -> dict[str, tuple[list[str], np.ndarray, list[str], np.ndarray]]:
        """Task → (train texts, labels, test texts, labels); the main task first."""
        return {self.cfg.data.task: (self.train.texts, np.array(self.train.labels), self.test.texts,
                                     np.array(self.test.labels)),
                **{t: (tr.texts, np.array(tr.labels), te.texts, np.array(te.labels))
                   for t, (tr, te) in self.extras.items()}}


def open_run(run: RunDir, cfg: "EaaSConfig") -> EaaSRun:
    """Load the texts and the suffix pool, load the provider's embedder, and start the results with the data's
    provenance."""
    from .data import suffix_pool
    from .embedder import Embedder

    train = load_task(cfg, cfg.data.task, "train", cfg.data.n_train)
    test = load_task(cfg, cfg.data.task, "test", cfg.data.n_test)
    extras = {t: (load_task(cfg, t, "train", cfg.data.n_extra_train), load_task(cfg, t, "test", cfg.data.n_extra_test))
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
    results: dict[str, Any] = {"scenarios": {}, "data_provenance": provenance, "data_is_generated": generated}
    results.update(utility_intervals={}, utility_flags={}, utility_texts_sha={
        cfg.data.task: digest(test.texts), **{t: digest(v[1].texts) for t, v in extras.items()}})
    return EaaSRun(run, cfg, train, test, extras, pool, emb, results)


def utility(ctx: EaaSRun, encode: Encode, key: str, source: Any) -> dict[str, float]:
    """Downstream accuracy of one embedding source (`source`: its inputs) on the main task and the extra tasks
    (stage utility_<key>).
    Its Wilson intervals go to results["utility_intervals"][key], its per-test-text 0/1 correctness to
    results["utility_flags"][key]; accuracy = correct / n, so k is exact."""
    from .downstream import classify_correct

    cfg = ctx.cfg

    def compute() -> dict[str, dict[str, Any]]:
        def one(x_tr: Any, labels_tr: Any, x_te: Any, labels_te: Any) -> dict[str, Any]:
            ok = classify_correct(x_tr, np.asarray(labels_tr), x_te, np.asarray(labels_te), cfg.downstream, cfg.seed)
            return {"acc": float(ok.mean()), "correct": bits(ok)}

        out = {cfg.data.task: one(encode(ctx.train.texts, "main_train"), np.array(ctx.train.labels),
                                  encode(ctx.test.texts, "main_test"), np.array(ctx.test.labels))}
        for name, (etr, ete) in ctx.extras.items():
            out[name] = one(encode(etr.texts, f"{name}_train"), etr.labels, encode(ete.texts, f"{name}_test"),
                            ete.labels)
        return out

    cached = ctx.run.cached(f"utility_{key}", compute, inputs=ctx.utility_inputs(source))
    # stage caches written before the flags were kept hold the bare accuracy
    acc = {t: v["acc"] if isinstance(v, dict) else v for t, v in cached.items()}
    n_test = ctx.n_test
    ctx.results["utility_flags"][key] = {t: v["correct"] for t, v in cached.items() if isinstance(v, dict)}
    ctx.results["utility_intervals"][key] = {t: rate_record(int(round(v * n_test[t])), n_test[t])
                                             for t, v in acc.items()}
    return acc


@dataclass
class Stolen:
    """What stealing one scenario's service left the attacker (and the evaluation) with."""

    watermark: Any
    """The scenario's watermark (its `verify` is the provider's check)."""
    embeddings: np.ndarray
    """(N, d) the API's embeddings of the corpus."""
    perturbed: np.ndarray
    """(N, K, d) the API's embeddings of each text with its K searched suffixes."""
    counts: np.ndarray
    """Trigger words per text (ground truth of SPA's detection rates)."""
    deleted: np.ndarray
    """SPA's deletion (True = removed from the copy's training set)."""


def verify(ctx: EaaSRun, wm: Any, encode: Callable[[list[str]], np.ndarray]) -> dict[str, Any]:
    """The provider's watermark verification of one embedding source (EmbMarker's eval_copier)."""
    v = ctx.cfg.verify
    return wm.verify(encode, v.size, v.seed, v.alpha, v.target_source)


def steal_and_spa(ctx: EaaSRun, sc: "ScenarioConfig") -> tuple[dict[str, Any], Stolen]:
    """Serve the scenario's watermarked provider (real uvicorn on 127.0.0.1, ephemeral port), steal the corpus
    through the API, let the provider verify its own API, measure the API's downstream utility, and run SPA's
    perturbed queries, scores and deletion. Returns the scenario's results so far and what the attacker holds."""
    from .client import EmbeddingClient
    from .querylog import QueryLog
    from .server import ServerHandle, create_app, resolve_key_secrets
    from .service import ProviderConfig, build_service

    cfg, run = ctx.cfg, ctx.run
    state_dir = run.sub("provider", sc.name)
    secret = ctx.secret_inputs(sc)
    # The secret is created from the corpus on first use and restored from watermark.json afterwards: this stage
    # deletes it when its inputs change, so the service below creates the new one instead of restoring the old.
    run.cached(f"{sc.name}_secret", lambda: {"watermark": sc.watermark, "state": str(state_dir)}, inputs=secret,
               outputs=[state_dir / "watermark.json"])
    pcfg = ProviderConfig(model=cfg.provider.model, model_name=cfg.provider.model_name, watermark=sc.watermark,
                          watermark_config=sc.watermark_config, batch_size=cfg.provider.batch_size)
    service = build_service(pcfg, ctx.train.texts, state_dir, embedder=ctx.emb)
    wm = service.watermark
    keys = resolve_key_secrets(cfg.server, state_dir)
    if "stealer" not in keys:
        raise ConfigError("server.keys must include a key named 'stealer' (the demo's customer)")
    qlog = QueryLog(state_dir / cfg.server.query_log, retention=cfg.server.retention)
    app = create_app(service, cfg.server, keys, qlog)
    res: dict[str, Any] = {"watermark": sc.watermark, "role": sc.role, "triggers": list(getattr(wm, "triggers", []))}
    counts = wm.trigger_counts(ctx.train.texts)
    res["triggered_fraction"] = float((counts > 0).mean())
    res["trigger_count_histogram"] = np.bincount(counts, minlength=5).tolist()
    with ServerHandle(app) as srv:
        log.info("[%s] provider up at %s", sc.name, srv.url)
        run.log("server_up", scenario=sc.name, url=srv.url)
        client = EmbeddingClient(srv.url, keys["stealer"], cfg.provider.model_name, batch_size=cfg.stealer.query_batch,
                                 concurrency=cfg.stealer.query_concurrency)

        def api(texts: list[str], tag: str) -> np.ndarray:
            return cached_array(run, f"{sc.name}_api_{tag}", lambda: client.embed(texts, desc=f"[{sc.name}] query {tag}"),
                                inputs={"api": secret, "texts": texts_id(texts)})

        stolen = api(ctx.train.texts, "main_train")
        # Provider's own check of its API (API misuse case): the service itself must verify.
        res["verify_api"] = run.cached(f"{sc.name}_verify_api",
                                       lambda: verify(ctx, wm, lambda t: client.embed(t, progress=False)),
                                       inputs=ctx.verify_inputs(secret))
        res["utility_api"] = utility(ctx, api, f"{sc.name}_api", {"api": secret})
        perturbed, deleted, res["spa"] = spa(ctx, sc, api, stolen, counts)
        client.close()
        res["query_log_audit"] = qlog.audit()
        res["query_log_rows"] = qlog.count()
    qlog.close()
    return res, Stolen(wm, stolen, perturbed, counts, deleted)


def spa(ctx: EaaSRun, sc: "ScenarioConfig", api: Encode, stolen: np.ndarray,
        counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """SPA: suffix search on the local surrogate, perturbed queries through the API, tightness scores, deletion;
    detection rates against the true trigger labels, under the configured rule and the paper's KDE rule.
    Returns (perturbed embeddings, deletion mask, detection results); the scores go to arrays/<sc>_spa_scores.npz."""
    from . import spa as S

    cfg, texts = ctx.cfg, ctx.train.texts
    suffix_idx = spa_suffixes(ctx)
    pert = S.perturbed_texts(texts, ctx.pool, suffix_idx)
    e_pert = api(pert, "spa_perturbed").reshape(len(texts), cfg.spa.n_suffixes, -1)
    scores = S.tightness_scores(stolen, e_pert, cfg.spa.pca_components)
    deleted, thr = S.select_for_deletion(scores, cfg.spa)
    det = S.detection_report(scores, counts, deleted)
    det["threshold"] = thr
    det["score"] = cfg.spa.score
    det["removal"] = cfg.spa.removal
    det.update(S.spa_records(counts, deleted, texts))
    # The paper's detection rule (KDE threshold) is always reported, whatever deletion feeds the copy.
    kde_mask, kde_thr = S.select_for_deletion(scores, replace(cfg.spa, removal="kde"))
    kde = S.detection_report(scores, counts, kde_mask)
    det["kde"] = {"threshold": kde_thr, **{k: kde[k] for k in ("tpr", "fpr", "tpr_k1", "tpr_k2plus", "n_deleted",
                                                             "precision")},
                  "intervals": S.spa_records(counts, kde_mask, texts)["intervals"], "deleted": bits(kde_mask)}
    atomic_write_bytes(ctx.run.sub("arrays") / f"{sc.name}_spa_scores.npz",
                       lambda f: np.savez(f, label=counts > 0, deleted=deleted, **scores))
    return e_pert, deleted, det


def spa_suffixes(ctx: EaaSRun) -> np.ndarray:
    """Suffix search with the attacker's local surrogate (shared by all scenarios: it never sees the API)."""
    from .embedder import Embedder
    from .spa import search_suffixes

    cfg = ctx.cfg

    def search() -> np.ndarray:
        sur = Embedder.load(cfg.spa.surrogate, batch_size=cfg.provider.batch_size)
        return search_suffixes(ctx.train.texts, ctx.pool, sur.encode, cfg.spa.candidates, cfg.spa.n_suffixes)

    return cached_array(ctx.run, "spa_suffix_idx", search, inputs={
        "texts": texts_id(ctx.train.texts), "pool": texts_id(ctx.pool), "surrogate": cfg.spa.surrogate,
        "batch_size": cfg.provider.batch_size, "candidates": cfg.spa.candidates, "n_suffixes": cfg.spa.n_suffixes})


def copies(ctx: EaaSRun, sc: "ScenarioConfig", stolen: Stolen) -> dict[str, Any]:
    """Copy models trained on the stolen embeddings (before SPA) and on the SPA-purified set (after SPA), each
    verified by the provider and measured downstream."""
    from .stealer import copier_encode, load_copier, train_copier

    cfg, run, texts = ctx.cfg, ctx.run, ctx.train.texts
    keep = ~stolen.deleted
    phases = [("before_spa", np.ones(len(keep), bool))] + ([("after_spa", keep)] if sc.steal_after_spa else [])
    res: dict[str, Any] = {}
    stolen_from = {"api": ctx.secret_inputs(sc), "texts": texts_id(texts)}
    for phase, mask in phases:
        folder = run.path / "copies" / f"{sc.name}_{phase}"
        made = ctx.copy_inputs(stolen_from, mask)

        def fit(_m: np.ndarray = mask, _f: Path = folder) -> dict[str, Any]:
            kept = [t for t, k in zip(texts, _m) if k]
            model = train_copier(kept, stolen.embeddings[_m], cfg.stealer, _f, cfg.seed)
            return {"n_train": len(kept), **getattr(model, "train_summary", {})}

        res[f"copy_{phase}"] = run.cached(f"{sc.name}_copy_{phase}", fit, inputs=made, outputs=[folder])
        model = load_copier(folder)

        def enc(t: list[str], tag: str, _m: Any = model, _k: str = f"{sc.name}_{phase}", _c: Any = made) -> np.ndarray:
            return cached_array(run, f"{_k}_{tag}", lambda: copier_encode(_m, t),
                                inputs={"copy": _c, "texts": texts_id(t)})

        res[f"verify_copy_{phase}"] = run.cached(f"{sc.name}_verify_copy_{phase}", lambda _m=model: verify(
            ctx, stolen.watermark, lambda t: copier_encode(_m, t)),
            inputs={**ctx.verify_inputs(ctx.secret_inputs(sc)), "copy": made})
        res[f"utility_copy_{phase}"] = utility(ctx, enc, f"{sc.name}_copy_{phase}", {"copy": made})
        v = res[f"verify_copy_{phase}"]
        log.info("[%s] copy %s: Δ=%+.4f p=%.3g detected=%s", sc.name, phase, v.get("delta", 0), v.get("p_value", 1),
                 v.get("detected"))
    return res


def sweep(ctx: EaaSRun, sc: "ScenarioConfig", stolen: Stolen, res: dict[str, Any]) -> dict[str, Any]:
    """The attacker's SPA sweep on this scenario's cached API embeddings (experiments/eaas_sweep.py)."""
    from ..experiments.eaas_sweep import SPAInputs, run_sweep

    inputs = SPAInputs(ctx.train.texts, stolen.embeddings, stolen.perturbed, stolen.counts, stolen.watermark,
                       ctx.utility_sets())
    secret = ctx.secret_inputs(sc)
    # a trial's inputs, all but its SPA settings: the API's embeddings and perturbed queries, the copy, its checks
    trial = {"api": secret, "texts": texts_id(ctx.train.texts), "perturbed": texts_id(ctx.pool),
             "suffixes": to_dict(ctx.cfg.spa), "stealer": to_dict(ctx.cfg.stealer),
             "verify": ctx.verify_inputs(secret), "utility": ctx.utility_inputs(None), "seed": ctx.cfg.seed}
    return run_sweep(ctx.run, ctx.cfg, sc.name, inputs, res, trial)


def control(ctx: EaaSRun) -> dict[str, Any]:
    """Negative control: a copy of the *unwatermarked* provider, verified against the first scenario's secret
    (and the clean provider itself)."""
    from .stealer import copier_encode, load_copier, train_copier
    from .watermarks import load_watermark

    cfg, run, texts = ctx.cfg, ctx.run, ctx.train.texts
    wm0 = load_watermark(run.sub("provider", cfg.scenarios[0].name))
    secret0 = ctx.secret_inputs(cfg.scenarios[0])
    folder = run.path / "copies" / "control"
    clean_from = {"embedder": ctx.embedder_inputs(), "texts": texts_id(texts)}
    clean_train = cached_array(run, "clean_main_train", lambda: ctx.emb.encode(texts), inputs=clean_from)
    made = ctx.copy_inputs(clean_from, np.ones(len(texts), bool))
    ctrl = run.cached("control_copy", lambda: {"n_train": len(texts), **getattr(
        train_copier(texts, clean_train, cfg.stealer, folder, cfg.seed), "train_summary", {})}, inputs=made,
        outputs=[folder])
    model = load_copier(folder)
    return {"copy": ctrl, "verified_against": cfg.scenarios[0].name,
            "verify_copy": run.cached("control_verify", lambda: verify(ctx, wm0, lambda t: copier_encode(model, t)),
                                      inputs={**ctx.verify_inputs(secret0), "copy": made}),
            "verify_clean_provider": run.cached("control_verify_clean_provider",
                                                lambda: verify(ctx, wm0, ctx.emb.encode),
                                                inputs={**ctx.verify_inputs(secret0), "embedder": ctx.embedder_inputs()})}
