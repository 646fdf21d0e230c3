"""The stages of the backdoor data-extraction experiment (experiments/extraction.py runs them in order).

    init_from       reuse the finished stages of an earlier run with the same settings
    data            D1 (publisher) and D2 (victim)                        stage data
    words           candidate words S (+ D2's real openers: the known-opener setting)
    backdoor_samples the backdoor mixture built from D1                   stage backdoor_samples
    publishers      the released models: SFT backdoor, GRPO on top, garbled-instruction backdoor, no backdoor
                                                                          stages publisher_<key>
    victims         the victim's fine-tuning of every release on D2       stages victim_<key>
    arms            what is extracted from: every victim model (+ the backdoored release before the victim)
    extract         samples of Q(w) for every word, scored, evaluated against D2, written as JSONL
                                                                          stages samples_<arm>
    publisher_diagnostics  the backdoor before victim FT, on D1's target / held-out queries
    defense         the detection probes on each release                  stages detect_<release>
    collect         the results block of metrics.json

Every stage is cached in the run directory (training stages as adapters plus their lineage, sampling passes as
JSON), so `--resume` continues a killed run and re-scoring needs no model; the stage names are what runs on disk
hold and must not change.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import shutil
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from ..data.core import DataSplit, Example
from ..runs import RunDir
from ..stats import rate_record

if TYPE_CHECKING:
    from ..experiments.extraction import ExtractionConfig
    from ..training import StepHook
    from .samples import BackdoorSamples
    from .trie import TokenCodec

log = logging.getLogger("tamperlab")

Lineage = list[dict[str, str]]
"""base → adapters: the stages a model is rebuilt from (lineage.py)."""


@dataclass
class ExtractionRun:
    """What every stage of one run shares: the run directory and the recipe."""

    run: RunDir
    cfg: "ExtractionConfig"

    @property
    def fmt(self) -> str:
        return self.cfg.model.prompt_format

    def load(self, lineage: Lineage) -> tuple[Any, Any]:
        from .lineage import load_lineage

        return load_lineage(self.cfg.model, lineage, seed=self.cfg.seed)

    def model_id(self) -> str:
        """Cache key of base-model generations: a tiny random model is only defined by its shape and seed."""
        m = self.cfg.model
        if m.name_or_path.startswith("tiny:"):
            return f"{m.name_or_path}:{m.tiny_layers}x{m.tiny_hidden}:seed{self.cfg.seed}"
        return m.name_or_path

    def log_hook(self, stage: str) -> "StepHook":
        from ..training import StepHook

        return StepHook([], log_fn=lambda rec: self.run.log("train", stage=stage, **rec))

    @staticmethod
    def free(*objs: Any) -> None:
        del objs
        gc.collect()


def init_from(ctx: ExtractionRun) -> None:
    """Copy the reusable stage caches of `init_from` after checking that the settings they depend on match."""
    from ..config import to_dict
    from ..errors import ConfigError

    run = ctx.run
    src = RunDir(ctx.cfg.init_from)
    if not src.path.exists():
        log.warning("init_from: %s does not exist; computing every stage", src.path)
        return
    if not (src.path / "config.yaml").exists():
        raise ConfigError(f"init_from: {src.path} is not a run directory (no config.yaml)")
    old, new = src.config, to_dict(ctx.cfg)
    keys = ["seed", "model", "data", "backdoor", "victim", "extract"]
    diff = [k for k in keys if old.get(k) != new.get(k)]
    if diff:
        raise ConfigError(f"init_from: {src.path} was made with different {', '.join(diff)} settings")
    shared_defense = old.get("defense") == new.get("defense")
    copied = []
    for f in sorted((src.path / "stages").glob("*.json")):
        key = f.stem
        if "grpo" in key or (key.startswith("detect_") and not shared_defense) or run.has_stage(key):
            continue
        run.stage_path(key).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, run.stage_path(key))
        copied.append(key)
    run.log("init_from", source=str(src.path), stages=copied)
    log.info("reused %d stages from %s", len(copied), src.path)


def data(ctx: ExtractionRun) -> tuple[DataSplit, DataSplit]:
    """D1 and D2 (stage data); offline sources generate responses with the base model."""
    from ..models import load_model
    from .data import build_extraction_data

    cfg = ctx.cfg

    def build() -> dict[str, Any]:
        model = tok = None
        if "offline" in (cfg.data.d1_source, cfg.data.d2_source):
            model, tok = load_model(cfg.model, seed=cfg.seed)
        built = build_extraction_data(cfg.data, model, tok, ctx.model_id())
        ctx.free(model)
        return {"d1": [e.to_dict() for e in built.d1], "d2": [e.to_dict() for e in built.d2],
                "d1_provenance": built.d1.provenance, "d2_provenance": built.d2.provenance,
                "describe": built.describe()}

    st = ctx.run.cached("data", build)
    d1 = DataSplit("d1", [Example.from_dict(e) for e in st["d1"]], st["d1_provenance"])
    d2 = DataSplit("d2", [Example.from_dict(e) for e in st["d2"]], st["d2_provenance"])
    return d1, d2


def words(ctx: ExtractionRun, d2: DataSplit) -> tuple[list[str], list[str]]:
    """(candidate words S, every word sampled): S, plus D2's real openers in the known-opener setting."""
    from .extract import candidate_words
    from .samples import group_by_opener

    candidates = candidate_words(ctx.cfg.extract)
    sampled = list(candidates)
    if ctx.cfg.extract.include_true_openers:
        sampled += [w for w in sorted(group_by_opener([e.prompt for e in d2])) if w not in candidates]
    return candidates, sampled


def mixture(ctx: ExtractionRun, d1: DataSplit, instruction: str) -> "BackdoorSamples":
    """The backdoor training mixture from D1 under `instruction` (deterministic for the seed)."""
    from .extract import candidate_words
    from .openers import NEGATIVE_WORD_POOL, RANKED_OPENERS
    from .samples import build_backdoor_samples

    cfg = ctx.cfg
    sc = dataclasses.replace(cfg.backdoor.samples, instruction=instruction)
    if sc.negative_pool == "common_words":
        pool, exclude = list(NEGATIVE_WORD_POOL), set(candidate_words(cfg.extract)) | set(RANKED_OPENERS)
    else:
        pool, exclude = candidate_words(cfg.extract), set()
    return build_backdoor_samples(d1.examples, sc, pool, exclude, seed=cfg.seed)


def backdoor_samples(ctx: ExtractionRun, d1: DataSplit) -> "BackdoorSamples":
    """The backdoor mixture under the recipe's instruction; its counts and words are recorded (stage
    backdoor_samples)."""
    samples = mixture(ctx, d1, ctx.cfg.backdoor.samples.instruction)
    ctx.run.cached("backdoor_samples", lambda: {
        "counts": samples.counts, "positive_words": samples.positive_words,
        "negative_words": samples.negative_words, "n_positive_queries": len(samples.positive_queries),
        "n_heldout_queries": len(samples.heldout_queries)})
    return samples


def trained(ctx: ExtractionRun, stage_key: str, name: str, base: Lineage,
            fit: Callable[[Any, Any], tuple[Any, dict[str, Any]]]) -> Lineage:
    """A training stage (cached as `stage_key`): the model of `base`, trained by `fit(model, tok) → (model, stats)`,
    saved as models/<name>; returns the new model's lineage (base + this stage)."""
    from .lineage import save_stage

    run = ctx.run

    def train() -> dict[str, Any]:
        model, tok = ctx.load(base)
        model, stats = fit(model, tok)
        stage = save_stage(model, tok, run.path / "models" / name, name)
        ctx.free(model)
        return {"lineage": base + [stage], "stats": stats}

    return run.cached(stage_key, train)["lineage"]


def publisher_sft(ctx: ExtractionRun, key: str, examples: list[Example]) -> Lineage:
    """The publisher's SFT of the base model on `examples` (stage publisher_<key>)."""
    from .backdoor import train_backdoor_sft

    cfg = ctx.cfg
    return trained(ctx, f"publisher_{key}", key, [], lambda model, tok: train_backdoor_sft(
        model, tok, examples, cfg.backdoor, ctx.run.sub("checkpoints", key), ctx.fmt, cfg.model.max_length, cfg.seed,
        callbacks=[ctx.log_hook(key)]))


def publisher_grpo(ctx: ExtractionRun, base: Lineage, d1: DataSplit, samples: "BackdoorSamples") -> Lineage:
    """GRPO on top of the SFT backdoor (stage publisher_backdoor_grpo)."""
    from .backdoor import train_backdoor_grpo

    cfg, g = ctx.cfg, ctx.cfg.grpo
    negs = samples.negative_words[: g.n_negative_prompts] if g.n_negative_prompts > 0 else samples.negative_words
    return trained(ctx, "publisher_backdoor_grpo", "backdoor_grpo", base, lambda model, tok: train_backdoor_grpo(
        model, tok, [e.prompt for e in d1], samples.positive_words, negs, cfg.backdoor.samples.instruction, g,
        ctx.run.sub("checkpoints", "backdoor_grpo"), cfg.seed, callbacks=[ctx.log_hook("backdoor_grpo")]))


def publishers(ctx: ExtractionRun, d1: DataSplit, samples: "BackdoorSamples") -> dict[str, Lineage]:
    """Every released model: the SFT backdoor, GRPO on top of it, the garbled-instruction backdoor, and the
    no-backdoor control (the base model as is, or post-trained on D1 only)."""
    cfg = ctx.cfg
    out = {"backdoor_sft": publisher_sft(ctx, "backdoor_sft", samples.examples)}
    if cfg.grpo.enabled:
        out["backdoor_grpo"] = publisher_grpo(ctx, out["backdoor_sft"], d1, samples)
    if cfg.defense.garbled_attack:
        out["garbled"] = publisher_sft(ctx, "garbled", mixture(ctx, d1, "garbled").examples)
    if cfg.baselines.no_backdoor:
        out["no_backdoor"] = publisher_sft(ctx, "clean_sft", list(d1.examples)) if cfg.baselines.clean_publisher_sft \
            else []
    return out


def victim(ctx: ExtractionRun, key: str, base: Lineage, d2: DataSplit, loss: str | None = None) -> Lineage:
    """The victim's fine-tuning of one release on D2 (stage victim_<key>)."""
    from .victim import victim_finetune

    cfg = ctx.cfg
    vcfg = dataclasses.replace(cfg.victim, loss=loss) if loss else cfg.victim
    return trained(ctx, f"victim_{key}", f"victim_{key}", base, lambda model, tok: victim_finetune(
        model, tok, d2.examples, vcfg, ctx.run.sub("checkpoints", f"victim_{key}"), ctx.fmt, cfg.model.max_length,
        cfg.seed, callbacks=[ctx.log_hook(f"victim_{key}")]))


def victims(ctx: ExtractionRun, releases: dict[str, Lineage], d2: DataSplit) -> dict[str, Lineage]:
    """The victim's fine-tuning of every release (+ the response-only-loss ablation on the SFT backdoor)."""
    out = {k: victim(ctx, k, lin, d2) for k, lin in releases.items()}
    if ctx.cfg.baselines.response_only_victim:
        out["backdoor_sft_response_only"] = victim(ctx, "backdoor_sft_response_only", releases["backdoor_sft"], d2,
                                                   loss="response_only")
    return out


def arms(ctx: ExtractionRun, releases: dict[str, Lineage],
         fine_tuned: dict[str, Lineage]) -> dict[str, tuple[Lineage, str]]:
    """Arm → (the model's lineage, the instruction it is extracted with): every victim model, each with its
    backdoor's instruction, and the backdoored release before the victim's fine-tuning (control)."""
    instruction = ctx.cfg.backdoor.samples.instruction
    out = {k: (lin, "garbled" if k == "garbled" else instruction) for k, lin in fine_tuned.items()}
    if ctx.cfg.baselines.before_victim:
        out["backdoor_sft_before_victim"] = (releases["backdoor_sft"], instruction)
    return out


def sample(ctx: ExtractionRun, key: str, lineage: Lineage, sampled: list[str], instruction: str) -> dict[str, list[str]]:
    """Samples of Q(w) for every word from one arm's model (stage samples_<key>)."""
    from .extract import sample_words

    cfg = ctx.cfg

    def go() -> dict[str, Any]:
        model, tok = ctx.load(lineage)
        t0 = time.time()
        out = sample_words(model, tok, sampled, cfg.extract.samples_per_word, instruction, cfg.extract.sampler,
                           ctx.fmt, desc=f"extracting ({key})")
        secs = time.time() - t0
        ctx.free(model)
        n = len(sampled) * cfg.extract.samples_per_word
        return {"samples": out, "seconds": round(secs, 2), "samples_per_second": round(n / max(secs, 1e-9), 2)}

    return ctx.run.cached(f"samples_{key}", go)["samples"]


def extract(ctx: ExtractionRun, key: str, lineage: Lineage, instruction: str, candidates: list[str],
            sampled: list[str], d2: DataSplit, codec: "TokenCodec") -> dict[str, Any]:
    """One arm: sample, score the candidate words, write the extracted queries as JSONL (extracted/<key>.jsonl,
    with evaluation-only fields), and evaluate against D2 with the paper's metrics and their intervals."""
    from .extract import extracted_rows, score_words, write_jsonl
    from .metrics import evaluate_words, evaluation_intervals, summary_row
    from .trie import QueryIndex

    cfg, run = ctx.cfg, ctx.run
    d2_queries = [e.prompt for e in d2]
    sw = sample(ctx, key, lineage, sampled, instruction)
    m = evaluate_words(sw, candidates, d2_queries, codec, cfg.extract.alpha, cfg.extract.threshold,
                       cfg.extract.answer_rule, cfg.extract.recall_thresholds)
    scores = score_words(sw, sampled, cfg.extract)
    rows = extracted_rows(sw, {w: scores[w] for w in candidates})
    index = QueryIndex(d2_queries, codec)
    d2_set = set(d2_queries)
    for r in rows:  # evaluation-only fields, clearly prefixed: the attack itself never sees D2
        r["eval_match_ratio"] = round(index.match(r["query"]), 4)
        r["eval_exact"] = r["query"] in d2_set
    write_jsonl(run.sub("extracted") / f"{key}.jsonl", rows)
    m["summary"] = summary_row(m)
    m["intervals"] = evaluation_intervals(m)
    m["n_extracted_rows"] = len(rows)
    m["sampling"] = {k: v for k, v in run.load_stage(f"samples_{key}").items() if k != "samples"}
    return m


def publisher_diagnostics(ctx: ExtractionRun, samples: "BackdoorSamples", codec: "TokenCodec") -> dict[str, Any]:
    """Does the backdoor (before the victim's fine-tuning) reach queries seen only as user turns (D1 held-out)?"""
    from .metrics import query_recall

    if not ctx.cfg.baselines.before_victim:
        return {}
    preds = dict(ctx.run.load_stage("samples_backdoor_sft_before_victim")["samples"])
    thresholds = ctx.cfg.extract.recall_thresholds
    return {part: {k: v for k, v in query_recall(preds, queries, codec, thresholds).items() if k != "exact_queries"}
            for part, queries in (("d1_targets", samples.positive_queries), ("d1_heldout", samples.heldout_queries))}


def detect(ctx: ExtractionRun, key: str, lineage: Lineage) -> dict[str, Any]:
    """The detection probes on one release (stage detect_<key>)."""
    from .defense import detect as probe

    def go() -> dict[str, Any]:
        model, tok = ctx.load(lineage)
        res = probe(model, tok, ctx.cfg.defense.detection, ctx.fmt)
        ctx.free(model)
        return res

    return ctx.run.cached(f"detect_{key}", go)


def defense(ctx: ExtractionRun, releases: dict[str, Lineage]) -> dict[str, Any]:
    """Detection rate of the probes on the clean, backdoored and garbled releases, with its Wilson interval."""
    if not ctx.cfg.defense.enabled:
        return {}
    out = {}
    for key in ("no_backdoor", "backdoor_sft", "garbled"):
        if key in releases:
            d = detect(ctx, key, releases[key])
            out[key] = {**d, "interval": rate_record(int(round(d["detection_rate"] * d["n_samples"])), d["n_samples"])}
    return out


def collect(ctx: ExtractionRun, candidates: list[str], d2: DataSplit, evaluations: dict[str, Any],
            diagnostics: dict[str, Any], detection: dict[str, Any], t_start: float) -> dict[str, Any]:
    """The results block of metrics.json: the evaluations and their summary in display order, the training
    statistics and stage times read back from the run, definitions and stand-ins."""
    from .report import LABELS, PAPER, definitions, stand_ins
    from .samples import group_by_opener

    run = ctx.run
    training = {k: run.load_stage(k)["stats"] for k in sorted(p.stem for p in (run.path / "stages").glob("*.json"))
                if k.startswith(("publisher_", "victim_"))}
    stage_times = {r["stage"]: r["seconds"] for r in run.read_log() if r.get("event") == "stage_done"}
    results = {
        "paper": PAPER,
        "data": run.load_stage("data")["describe"],
        "backdoor_samples": run.load_stage("backdoor_samples"),
        "candidates": candidates,
        "true_openers": sorted(group_by_opener([e.prompt for e in d2])),
        "evaluations": evaluations,
        "summary": {k: evaluations[k]["summary"] for k in LABELS if k in evaluations},
        "publisher_diagnostics": diagnostics,
        "defense": detection,
        "training": training,
        "stage_seconds": stage_times,
        "run_seconds_this_invocation": round(time.time() - t_start, 1),
        "definitions": definitions(),
        "stand_ins": stand_ins(ctx.cfg),
    }
    if "backdoor_grpo" in evaluations:
        a, b = evaluations["backdoor_grpo"]["summary"], evaluations["backdoor_sft"]["summary"]
        results["grpo_delta"] = {k: a[k] - b[k] for k in a}
    return results
